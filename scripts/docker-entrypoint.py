#!/usr/bin/env python3
"""Entry point of the image: run the command as the owner of the run-folder mount.

Every compose service mounts the host's ``./runs`` at ``/runs`` and writes into it (the
ServerApp the run folder, each party its checkpoints). Written as the image's own user, the
files would belong to whatever uid that is on the host, or not be written at all (``Permission
denied``) when it is not the folder's owner. So the container starts as root, and this script
runs the command as the uid and gid that own ``/runs``: the run folder belongs to whoever owns
``./runs`` on the host, with no build argument or variable to set. ``./runs`` that Docker created
(because it did not exist) belongs to root; the run is then written as root, and a line says how
to own it instead.

A container started as another user (``docker run --user``, a user namespace) cannot change
uid: it runs the command as it is where it can write ``/runs``, and otherwise exits 2 at once
with one line naming the uid and gid to start it as. Standard library only (it runs before
anything else, and the tests run it with any Python).

    docker-entrypoint.py COMMAND [ARGS...]
"""

from __future__ import annotations

import os
import sys
import warnings  # noqa: F401 - os.execvp imports it; the uid we become may not read the stdlib

RUNS = os.environ.get("VFL_RUNS_DIR", "/runs")
"""The run-folder mount (a variable only for the tests)."""
HOME_ROOT = os.environ.get("VFL_HOME_ROOT", "/tmp")
"""Where a home is made for a uid that has none writable (Flower keeps ``~/.flwr``)."""


def fail(message: str) -> None:
    print(f"vfl-sim: {message}", file=sys.stderr)
    sys.exit(2)


def adopt(uid: int, gid: int) -> None:
    """Become ``uid:gid`` (from root), with no supplementary groups."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def writable_home(uid: int) -> None:
    """Point ``HOME`` at a folder this uid can write (the image's ``/root`` or a host uid's
    missing home are not)."""
    home = os.environ.get("HOME", "")
    if home and os.path.isdir(home) and os.access(home, os.W_OK):
        return
    home = os.path.join(HOME_ROOT, f"vfl-home-{uid}")
    os.makedirs(home, mode=0o700, exist_ok=True)
    os.environ["HOME"] = home


def main(argv: list[str]) -> None:
    if not argv:
        fail("usage: docker-entrypoint.py COMMAND [ARGS...]")
    try:
        info = os.stat(RUNS)
    except OSError as exc:
        fail(f"cannot use the run-folder mount {RUNS}: {exc.strerror}; mount ./runs there (docker-compose.yml does)")
    owner, group = info.st_uid, info.st_gid
    if os.getuid() == 0:
        if owner == 0:
            print(
                f"vfl-sim: {RUNS} (./runs on the host) belongs to root, so the run folder will too; "
                "create ./runs yourself before starting (mkdir -p runs) to own it",
                file=sys.stderr,
            )
        else:
            adopt(owner, group)
    if not os.access(RUNS, os.W_OK | os.X_OK):
        fail(
            f"uid {os.getuid()} cannot write {RUNS} (./runs on the host, owned by uid {owner} gid {group}): "
            f"start the container as root (the image's default) or as --user {owner}:{group}"
        )
    writable_home(os.getuid())
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        fail(f"cannot run {argv[0]}: {exc.strerror}")


if __name__ == "__main__":
    main(sys.argv[1:])
