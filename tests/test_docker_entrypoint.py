"""The image's entry point (``scripts/docker-entrypoint.py``): the compose services write the run
folder as the owner of the ``./runs`` mount, or stop at once with one line.

No Docker engine here: the script runs as it would in a container, against a temporary folder
standing for ``/runs`` (``VFL_RUNS_DIR``). The tests that change uid run only as root (as a
container starts).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "docker-entrypoint.py"
HOST_UID, HOST_GID = 4321, 4322  # a host user the container does not know

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing uid needs root (as a container starts)")
as_user = pytest.mark.skipif(os.geteuid() == 0, reason="root can write any folder")


def _entry(runs: Path, *command: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": "/nonexistent",
        "VFL_RUNS_DIR": str(runs),
        "VFL_HOME_ROOT": str(runs.parent / "homes"),
    }
    return subprocess.run(
        [*prefix, sys.executable, "-I", "-S", str(SCRIPT), *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def runs() -> Iterator[Path]:
    # Not under pytest's tmp_path, whose parents only their owner may enter: the uid the
    # command runs as must reach the folder.
    top = Path(tempfile.mkdtemp(prefix="vfl-entry-"))
    top.chmod(0o755)
    (top / "homes").mkdir()
    (top / "homes").chmod(0o777)
    (top / "runs").mkdir()
    yield top / "runs"
    shutil.rmtree(top, ignore_errors=True)


@as_root
def test_the_command_runs_as_the_owner_of_the_runs_folder(runs: Path) -> None:
    os.chown(runs, HOST_UID, HOST_GID)
    done = _entry(
        runs,
        "sh",
        "-c",
        'id -u; id -g; echo "$HOME"; mkdir "$VFL_RUNS_DIR/run" && touch "$VFL_RUNS_DIR/run/report.json"',
    )
    assert done.returncode == 0, done.stderr
    uid, gid, home = done.stdout.split()
    assert (int(uid), int(gid)) == (HOST_UID, HOST_GID)
    assert home == str(runs.parent / "homes" / f"vfl-home-{HOST_UID}")  # Flower's ~/.flwr goes there
    for path in (runs / "run", runs / "run" / "report.json"):
        assert (path.stat().st_uid, path.stat().st_gid) == (HOST_UID, HOST_GID)
    assert done.stderr == ""


@as_root
def test_a_runs_folder_owned_by_root_is_written_as_root_with_a_note(runs: Path) -> None:
    os.chown(runs, 0, 0)
    done = _entry(runs, "sh", "-c", "id -u")
    assert done.returncode == 0
    assert done.stdout.strip() == "0"
    assert len(done.stderr.splitlines()) == 1
    assert "belongs to root" in done.stderr and "mkdir -p runs" in done.stderr


@as_root
def test_a_container_started_as_another_user_stops_with_one_line(runs: Path) -> None:
    os.chown(runs, 5000, 5001)
    runs.chmod(0o755)
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv is not installed")
    as_other = (setpriv, f"--reuid={HOST_UID}", f"--regid={HOST_GID}", "--clear-groups")
    done = _entry(runs, "sh", "-c", "echo ran", prefix=as_other)
    assert done.returncode == 2
    assert done.stdout == ""  # the command never ran
    assert done.stderr.count("\n") == 1
    assert f"uid {HOST_UID} cannot write" in done.stderr and "--user 5000:5001" in done.stderr


@as_user
def test_an_unwritable_runs_folder_stops_with_one_line(runs: Path) -> None:
    runs.chmod(0o555)
    try:
        done = _entry(runs, "sh", "-c", "echo ran")
    finally:
        runs.chmod(0o755)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "cannot write" in done.stderr


def test_a_missing_mount_stops_with_one_line(tmp_path: Path) -> None:
    done = _entry(tmp_path / "absent", "sh", "-c", "echo ran")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "mount ./runs there" in done.stderr


def test_no_command_is_one_line(runs: Path) -> None:
    done = _entry(runs)
    assert done.returncode == 2
    assert done.stderr.strip() == "vfl-sim: usage: docker-entrypoint.py COMMAND [ARGS...]"


def test_an_unknown_command_is_one_line(runs: Path) -> None:
    done = _entry(runs, "no-such-command-here")
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == "vfl-sim: cannot run no-such-command-here: No such file or directory"
    assert "Traceback" not in done.stderr


def test_the_image_starts_every_service_through_the_entry_point() -> None:
    import yaml

    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["python", "/app/scripts/docker-entrypoint.py"]' in dockerfile
    assert "\nUSER " not in dockerfile  # it starts as root, to become the owner of /runs
    for compose in ("docker-compose.yml", "docker-compose.tls.yml"):
        services = yaml.safe_load((ROOT / compose).read_text())["services"]
        for name, service in services.items():
            assert "entrypoint" not in service and "user" not in service, (compose, name)
