"""The multi-container demo with a real Docker engine: build the image, run the demo and its TLS
variant with docker-compose exactly as docs/docker.md says, and check what they leave behind.

The image is built from this checkout (its tracked and untracked-but-not-ignored files, so
uncommitted work is what gets tested) on a Python base image: ``local/python:3.11-bookworm``
from ``scripts/docker-base-image.sh`` where it exists or can be made (root and debootstrap,
as in CI), else ``python:3.11-slim`` from a registry. The machine's CA bundle goes into the
build context as ``.docker-ca.pem`` so that pip reaches the package index behind an
intercepting proxy. Docker's layer cache keeps the dependency layers between runs, so only the
first build downloads torch.

Each demo runs in its own compose project in a temporary folder (``./runs`` and ``./certs``
there) and is taken down, volumes and network included, whatever happens. The tests skip,
saying why, only where no engine can run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "vfl-sim:engine-test"
LOCAL_BASE = "local/python:3.11-bookworm"
REGISTRY_BASE = "python:3.11-slim"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DEMO_METHODS = {"retrain", "finetune", "neggrad"}  # configs/flower_demo.yaml
DEMO_TIMEOUT = 600


def _engine_problem() -> str | None:
    """Why no engine can run here, or None when one answers."""
    if shutil.which("docker") is None:
        return "the docker client is not installed (apt-get install docker.io; .ci/run installs it)"
    if shutil.which("docker-compose") is None:
        return "docker-compose is not installed (apt-get install docker-compose; .ci/run installs it)"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "the Docker engine did not answer `docker info` within 30 s"
    if info.returncode != 0:
        return "no Docker engine runs here (`docker info` failed; .ci/run starts dockerd as root)"
    return None


_PROBLEM = _engine_problem()
pytestmark = [
    pytest.mark.processes,
    pytest.mark.skipif(_PROBLEM is not None, reason=_PROBLEM or ""),
]


def _docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])} ... exited {done.returncode}:\n{done.stderr[-4000:]}")
    return done


def _has_image(tag: str) -> bool:
    return _docker("image", "inspect", tag, check=False).returncode == 0


def _base_image() -> str:
    """The base image to build on: the local one (made here when possible), else the registry's;
    skips, saying why, when there is neither (an engine with nothing to build on)."""
    why = "scripts/docker-base-image.sh needs root and debootstrap"
    if not _has_image(LOCAL_BASE) and os.geteuid() == 0 and shutil.which("debootstrap"):
        made = subprocess.run(
            ["bash", str(ROOT / "scripts" / "docker-base-image.sh"), LOCAL_BASE],
            capture_output=True,
            text=True,
            timeout=900,
            stdin=subprocess.DEVNULL,
        )
        why = f"scripts/docker-base-image.sh failed: {(made.stderr or made.stdout).strip()[-300:]}"
    if _has_image(LOCAL_BASE):
        return LOCAL_BASE
    if _has_image(REGISTRY_BASE) or _docker("pull", REGISTRY_BASE, timeout=300, check=False).returncode == 0:
        return REGISTRY_BASE
    pytest.skip(f"no base image to build on: {why}, and {REGISTRY_BASE} cannot be pulled")


def _checkout_files() -> list[str]:
    """This checkout's files as a build context sees them: tracked, plus new files git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [name for name in listed.split("\0") if name and (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Build the project's image from this checkout; its tag."""
    context = tmp_path_factory.mktemp("context")
    for name in _checkout_files():
        target = context / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    if CA_BUNDLE.is_file():
        shutil.copyfile(CA_BUNDLE, context / ".docker-ca.pem")
    built = _docker(
        "build",
        "--network",
        "host",  # pip reaches the package index the way this machine does
        "--build-arg",
        f"PYTHON_IMAGE={_base_image()}",
        "--tag",
        IMAGE,
        str(context),
        timeout=2400,
        check=False,
    )
    assert built.returncode == 0, f"docker build failed:\n{built.stdout[-3000:]}{built.stderr[-6000:]}"
    return IMAGE


class ComposeProject:
    """One compose project of the demo in a folder of its own, with ./runs (and ./certs)."""

    def __init__(self, folder: Path, image: str, tls: bool) -> None:
        self.folder = folder
        self.name = f"vflsimtest{uuid.uuid4().hex[:10]}"
        self.files = [folder / "docker-compose.yml"] + ([folder / "docker-compose.tls.yml"] if tls else [])
        self.env = {**os.environ, "VFL_SIM_IMAGE": image, "SUPERLINK_HOST_PORT": "0"}
        shutil.copy2(ROOT / "docker-compose.yml", folder)
        shutil.copy2(ROOT / "docker-compose.tls.yml", folder)
        (folder / "runs").mkdir()
        if tls:
            made = subprocess.run(
                ["bash", str(ROOT / "scripts" / "flower-certs.sh"), str(folder / "certs")],
                capture_output=True,
                text=True,
                timeout=120,
                stdin=subprocess.DEVNULL,
            )
            assert made.returncode == 0, made.stderr

    def compose(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        command = ["docker-compose", "--project-directory", str(self.folder), "-p", self.name]
        for file in self.files:
            command += ["-f", str(file)]
        return subprocess.run(
            [*command, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            cwd=self.folder,
            stdin=subprocess.DEVNULL,
        )

    def up(self) -> subprocess.CompletedProcess[str]:
        return self.compose(
            "up", "--no-build", "--abort-on-container-exit", "--exit-code-from", "vfl-sim", timeout=DEMO_TIMEOUT
        )

    def exit_codes(self) -> dict[str, int]:
        """Every container of the project, by compose service, with its exit code."""
        ids = _docker("ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={self.name}").stdout.split()
        codes = {}
        for container in ids:
            service, code = _docker(
                "inspect", "-f", '{{index .Config.Labels "com.docker.compose.service"}} {{.State.ExitCode}}', container
            ).stdout.split()
            codes[service] = int(code)
        return codes

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "--timeout", "10", timeout=180)


@pytest.fixture()
def project(request: pytest.FixtureRequest, image: str, tmp_path: Path) -> Iterator[ComposeProject]:
    made = ComposeProject(tmp_path, image, tls=request.param)
    try:
        yield made
    finally:
        made.down()


# Stopped by compose when the submitter exits: the SuperLink and SuperNodes end on SIGTERM
# (through the image's init), which some of Flower's processes report as 128 + 15.
STOPPED_CLEANLY = {0, 143}


@pytest.mark.timeout(2400 + DEMO_TIMEOUT + 300)
@pytest.mark.parametrize("project", [False, True], ids=["plain", "tls"], indirect=True)
def test_compose_demo_runs_with_a_real_engine(project: ComposeProject) -> None:
    done = project.up()
    log = done.stdout[-6000:] + done.stderr[-6000:]
    assert done.returncode == 0, f"docker-compose up exited {done.returncode}:\n{log}"

    codes = project.exit_codes()
    assert set(codes) == {"superlink", "supernode-0", "supernode-1", "vfl-sim"}, codes
    assert codes["vfl-sim"] == 0, log
    assert all(code in STOPPED_CLEANLY for code in codes.values()), f"{codes}\n{log}"

    run = project.folder / "runs" / "flower-demo"
    report = json.loads((run / "report.json").read_text())
    assert report["runtime"] == "flower-deploy"
    assert report["parties"] and len(report["parties"]) == 2
    assert DEMO_METHODS <= set(report["models"]), sorted(report["models"])
    for name in DEMO_METHODS:
        entry = report["models"][name]
        assert 0.0 <= entry["output"]["retain_test_acc"] <= 1.0, name
        assert entry["certificate"]["removal"] in (True, False), name
    assert not list(run.parent.glob(".*.partial")), "a half-written run folder was left behind"
    # The entrypoint ran every process as the owner of ./runs: the run folder is theirs.
    owner = (project.folder / "runs").stat().st_uid
    assert {path.stat().st_uid for path in [run, *run.rglob("*")]} == {owner}
