#!/usr/bin/env bash
# Certificates for a TLS Flower deployment (docker-compose.tls.yml, or any SuperLink on this host).
#
#   scripts/flower-certs.sh OUTDIR
#
# writes, with openssl:
#   OUTDIR/ca.crt      CA certificate: SuperNodes and the flwr CLI (vfl-sim's
#                      flower.root_certificates) trust it                     (TlsFiles.ca_cert)
#   OUTDIR/ca.key      CA private key (0600; only needed to sign more certificates, never mounted)
#   OUTDIR/server.pem  SuperLink certificate signed by the CA, subjectAltName
#                      DNS:superlink, DNS:localhost, IP:127.0.0.1                (TlsFiles.server_cert)
#   OUTDIR/server.key  SuperLink private key                                  (TlsFiles.server_key)
#
# server.key is made readable by everyone (0644) so that the image's non-root user can read it
# through a read-only bind mount whatever the host user's uid is; this is a demo on one host.
# Set SUPERLINK_SAN to replace the subjectAltName (e.g. "DNS:superlink,DNS:link.example.org")
# and DAYS for the validity (default 365). Existing files in OUTDIR are overwritten.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
out=$1
days=${DAYS:-365}
san=${SUPERLINK_SAN:-DNS:superlink,DNS:localhost,IP:127.0.0.1}
command -v openssl >/dev/null || { echo "$0: openssl not found" >&2; exit 1; }

mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The CA.
openssl req -x509 -newkey rsa:4096 -nodes -sha256 -days "$days" \
    -subj "/CN=vfl-sim Flower demo CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$tmp/ca.key" -out "$tmp/ca.crt" 2>/dev/null

# The SuperLink's key and certificate, signed by the CA.
openssl req -newkey rsa:4096 -nodes -sha256 -subj "/CN=superlink" \
    -keyout "$tmp/server.key" -out "$tmp/server.csr" 2>/dev/null
cat > "$tmp/server.ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$san
EXT
openssl x509 -req -sha256 -days "$days" -in "$tmp/server.csr" \
    -CA "$tmp/ca.crt" -CAkey "$tmp/ca.key" -CAcreateserial -CAserial "$tmp/ca.srl" \
    -extfile "$tmp/server.ext" -out "$tmp/server.pem" 2>/dev/null

openssl verify -CAfile "$tmp/ca.crt" "$tmp/server.pem" >/dev/null

install -m 0644 "$tmp/ca.crt" "$out/ca.crt"
install -m 0600 "$tmp/ca.key" "$out/ca.key"
install -m 0644 "$tmp/server.pem" "$out/server.pem"
install -m 0644 "$tmp/server.key" "$out/server.key"
echo "wrote $out/ca.crt $out/server.pem $out/server.key (SAN $san; CA key $out/ca.key)"
