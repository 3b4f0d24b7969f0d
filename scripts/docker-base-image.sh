#!/usr/bin/env bash
# Make a Python 3.11 base image locally, for machines that reach no image registry:
# debootstrap a minimal Debian bookworm (its python3 is 3.11) and `docker import` it.
#
#   sudo scripts/docker-base-image.sh                       # -> local/python:3.11-bookworm
#   docker-compose build --build-arg PYTHON_IMAGE=local/python:3.11-bookworm   (or VFL_SIM_BASE_IMAGE=...)
#
# Cached by tag: does nothing when the image exists (FORCE=1 makes it again). Needs root,
# debootstrap and a Debian mirror (MIRROR, default deb.debian.org). About 190 MB.
set -euo pipefail

TAG="${1:-local/python:3.11-bookworm}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "docker-base-image: $TAG exists (FORCE=1 to make it again)"
    exit 0
fi
for tool in debootstrap docker; do
    command -v "$tool" >/dev/null || { echo "docker-base-image: $tool is not installed" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "docker-base-image: debootstrap needs root" >&2; exit 2; }

root="$(mktemp -d /tmp/vfl-sim-rootfs.XXXXXX)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$root" "$MIRROR" >"$root.log" 2>&1 \
    || { echo "docker-base-image: debootstrap failed; see $root.log" >&2; exit 1; }
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$TAG" >/dev/null
rm -f "$root.log"
echo "docker-base-image: made $TAG ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
