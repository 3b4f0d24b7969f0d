"""The run folder: where a run is built until complete, who may write it, and atomic writes.

A run is written into a hidden sibling (``.<name>.partial``) that is renamed to the run folder
when complete, so a reader sees a whole run or none. One process writes a run folder at a time:
a lock file next to it (``.<name>.lock``) holds the writer's pid and host. Every runtime checks
the folder here before it starts any process, so bad output folders fail before work begins.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from pathlib import Path

from vfl_sim.errors import ConfigError, RunFolderError, os_error_text

log = logging.getLogger("vfl_sim")


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``path`` so that a reader (or a run killed mid-write) sees the old file or the new
    one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(data, str):
        tmp.write_text(data)
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)


def partial_dir(out: Path) -> Path:
    """Where the run folder ``out`` is built until it is complete."""
    return out.parent / f".{out.name}.partial"


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse a run folder that another process is writing, that is a file or cannot be
    written, and a non-empty one unless asked to replace it."""
    owner = lock_owner(out)
    if owner is not None and owner != (os.getpid(), socket.gethostname()) and _alive(owner, lock_file(out)):
        raise _locked(out, owner)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} is a file, not a folder")
    if out.is_dir() and not os.access(out, os.R_OK | os.W_OK | os.X_OK):
        raise RunFolderError(f"output folder {out} is not writable (permissions, or an immutable folder)")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"output folder {out} exists and is not empty; choose another --out or pass --overwrite")
    above = _existing_ancestor(out.parent)
    if not above.is_dir():
        raise RunFolderError(f"--out {out}: {above} is a file, not a folder")
    if not os.access(above, os.W_OK | os.X_OK):
        raise RunFolderError(f"cannot write the run folder {out}: {above} is not writable")


def check_before_start(out: Path, overwrite: bool, resume: bool) -> None:
    """What a runtime checks before it starts any process: the run folder can be written (see
    :func:`check_out_dir`), unless ``resume`` finds a partial or finished run there to finish."""
    if not (resume and (partial_dir(out).exists() or (out / "report.json").is_file())):
        check_out_dir(out, overwrite)


def _existing_ancestor(path: Path) -> Path:
    """``path`` or the nearest of its parents that exists (a file, when ``path`` is under one)."""
    while not (path.exists() or path.is_symlink()) and path != path.parent:
        path = path.parent
    return path


def remove_folder(folder: Path) -> None:
    try:
        shutil.rmtree(folder)
    except OSError as exc:
        raise RunFolderError(f"cannot remove {folder}: {os_error_text(exc)}") from None


def replace_folder(src: Path, dst: Path) -> None:
    try:
        os.replace(src, dst)
    except OSError as exc:
        raise RunFolderError(f"cannot move {src} to {dst}: {os_error_text(exc)}") from None


# --------------------------------------------------------------------------------------------
# One writer per run folder


_HELD: set[Path] = set()  # the locks this process holds


def lock_file(out: Path) -> Path:
    """The lock of run folder ``out`` while a process writes it: next to it (and to its partial
    folder), holding the writer's pid and host."""
    return out.parent / f".{out.name}.lock"


def lock_owner(out: Path) -> tuple[int, str] | None:
    """``(pid, host)`` of the process that holds the lock of ``out``, None if it is not locked;
    ``(0, "")`` for a lock that cannot be read (one being written, or garbled)."""
    try:
        text = lock_file(out).read_text(errors="replace")
    except FileNotFoundError:
        return None
    except OSError:
        return (0, "")
    pid, _, host = text.strip().partition(" ")
    return (int(pid), host) if pid.isdigit() else (0, "")


def _alive(owner: tuple[int, str], lock: Path | None = None) -> bool:
    """Whether the process that wrote a lock may still run: a dead pid on this host is not;
    a process on another host cannot be checked and counts as running."""
    pid, host = owner
    if pid == 0:  # unreadable: a writer between creating the file and writing its pid, or garbage
        try:
            return lock is not None and time.time() - lock.stat().st_mtime < 30
        except OSError:
            return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _locked(out: Path, owner: tuple[int, str]) -> RunFolderError:
    pid, host = owner
    who = f"pid {pid} on {host}" if pid else "a process"
    return RunFolderError(
        f"run folder {out} is being written by another vfl-sim process ({who}; lock {lock_file(out)}); "
        "wait for it to finish or choose another --out (delete the lock only if that process is gone)"
    )


class RunFolderLock:
    """Hold the lock of run folder ``out`` (the parent folders are made if needed, and removed
    again if they are still empty on release). The lock file is created atomically
    (``O_EXCL``); a lock whose process is dead is taken over; a live one raises
    :class:`RunFolderError`."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = lock_file(out)
        self._made: list[Path] = []
        self._held = False

    def __enter__(self) -> RunFolderLock:
        self._made = _make_folders(self.out, self.out.parent)
        try:
            self._acquire()
        except BaseException:
            self._remove_made()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._held:
            self.path.unlink(missing_ok=True)
            _HELD.discard(self.path.absolute())
            self._held = False
        self._remove_made()

    def _acquire(self) -> None:
        me = f"{os.getpid()} {socket.gethostname()}\n".encode()
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = lock_owner(self.out)
                if owner is None:
                    continue  # released meanwhile
                mine = owner == (os.getpid(), socket.gethostname())
                # A lock with this pid that this process does not hold was left by an earlier
                # process with the same pid (pids start low again in a restarted container).
                if (self.path.absolute() in _HELD) if mine else _alive(owner, self.path):
                    raise _locked(self.out, owner) from None
                self._take_over_stale(owner)
                continue
            except OSError as exc:
                raise RunFolderError(f"cannot write the run folder {self.out}: {os_error_text(exc)}") from None
            try:
                os.write(fd, me)
            finally:
                os.close(fd)
            self._held = True
            _HELD.add(self.path.absolute())
            return
        raise _locked(self.out, lock_owner(self.out) or (0, ""))

    def _take_over_stale(self, owner: tuple[int, str]) -> None:
        """Remove the lock left by dead ``owner``, unless another process took it over first
        (the rename is atomic: of two processes, one gets the stale file)."""
        aside = self.path.with_name(f"{self.path.name}.{os.getpid()}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        pid, _, host = aside.read_text(errors="replace").strip().partition(" ")
        if (int(pid) if pid.isdigit() else 0, host) == owner:
            log.warning("taking over the lock of %s left by pid %d, which is gone", self.out, owner[0])
            aside.unlink(missing_ok=True)
            return
        try:  # it was a fresh lock of another writer: put it back (link never replaces one)
            os.link(aside, self.path)
        except OSError:
            pass
        aside.unlink(missing_ok=True)

    def _remove_made(self) -> None:
        for folder in reversed(self._made):
            try:
                folder.rmdir()
            except OSError:
                break
        self._made = []


def _make_folders(out: Path, folder: Path) -> list[Path]:
    """Make ``folder`` and its missing parents; returns those made, outermost first. A
    :class:`RunFolderError` names the path when one cannot be made (a file in the way,
    permissions); what was made is removed again then."""
    missing: list[Path] = []
    above = folder
    while not (above.exists() or above.is_symlink()) and above != above.parent:
        missing.append(above)
        above = above.parent
    if not above.is_dir():
        raise RunFolderError(f"--out {out}: {above} is a file, not a folder")
    made: list[Path] = []
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            if not path.is_dir():
                raise RunFolderError(f"--out {out}: {path} is a file, not a folder") from None
            continue
        except OSError as exc:
            for done in reversed(made):
                done.rmdir()
            raise RunFolderError(f"cannot write the run folder {out}: {os_error_text(exc)}") from None
        made.append(path)
    return made
