#!/bin/sh
# The image's entrypoint: run the command as the owner of /runs, the host folder that
# docker-compose.yml mounts there, so that the run folder it writes belongs to whoever owns
# ./runs on the host, with no uid to configure. A /runs that belongs to root (or no /runs)
# keeps the container's user. The process's home is a fresh folder that user can write
# (Flower keeps its state in ~/.flwr).
set -eu

if [ "$(id -u)" = 0 ] && [ -d /runs ]; then
    uid=$(stat -c %u /runs)
    gid=$(stat -c %g /runs)
    if [ "$uid" != 0 ]; then
        # The hand-off volumes (docker-compose.yml) are created root-owned: give the writable
        # ones to that user too; the server's config stays readable by it alone.
        for dir in "${VFL_SIM_SERVER_DIR:-}" "${VFL_SIM_PARTY_DATA:-}"; do
            if [ -n "$dir" ] && [ -d "$dir" ] && [ -w "$dir" ]; then
                chown "$uid:$gid" "$dir"
            fi
        done
        if [ -n "${VFL_SIM_SERVER_DIR:-}" ] && [ -d "$VFL_SIM_SERVER_DIR" ] && [ -w "$VFL_SIM_SERVER_DIR" ]; then
            chmod 700 "$VFL_SIM_SERVER_DIR"
        fi
        home="/tmp/vfl-home-$uid"
        mkdir -p "$home"
        chown "$uid:$gid" "$home"
        export HOME="$home"
        exec setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "$@"
    fi
fi
if [ ! -w /runs ] 2>/dev/null && [ -d /runs ]; then
    echo "vfl-sim-entrypoint: /runs is not writable by uid $(id -u); give the host folder to that uid or run the container as root" >&2
    exit 2
fi
exec "$@"
