"""The multi-container demo: docker-compose.yml, its TLS override and the certificate script.

``docker-compose config`` validates the files, the services' commands are compared with the command lines that
:mod:`vfl_sim.runtimes.flower_launch` builds (the ones the process-level runtime runs), and
the TLS setup runs for real on 127.0.0.1 with a SuperLink and a SuperNode started from those
same command lines and certificates from ``scripts/flower-certs.sh``. Building the image and
running the demo with a real engine is ``tests/test_docker_engine.py``.
"""

from __future__ import annotations

import json
import re
import shutil
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from vfl_sim.config import ExperimentConfig, load_config
from vfl_sim.runtimes.flower_handoff import PARTY_DATA_ENV, SERVER_DIR_ENV
from vfl_sim.runtimes.flower_launch import (
    FLOWER_ENV,
    FlowerProcesses,
    TlsFiles,
    free_port,
    superlink_command,
    supernode_command,
    tagged_pids,
)

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_TLS = ROOT / "docker-compose.tls.yml"
CERT_SCRIPT = ROOT / "scripts" / "flower-certs.sh"

SUPERLINK = "superlink:8000"
# Where docker-compose.tls.yml mounts the files of scripts/flower-certs.sh.
CONTAINER_TLS = TlsFiles(Path("/certs/ca.crt"), Path("/certs/server.pem"), Path("/certs/server.key"))
CERT_FILES = {"ca_cert": "ca.crt", "server_cert": "server.pem", "server_key": "server.key"}

needs_compose = pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose is not installed (apt-get install docker-compose; .ci/run installs it)",
)
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")


# The hand-off folders (vfl_sim.runtimes.flower_handoff) each kind of service is given.
_HANDOFF = {
    "superlink": {SERVER_DIR_ENV: "/handoff/server"},
    "supernode": {PARTY_DATA_ENV: "/handoff/party-data"},
    "vfl-sim": {SERVER_DIR_ENV: "/handoff/server", PARTY_DATA_ENV: "/handoff/party-data"},
}


def _role(service: str) -> str:
    return "supernode" if service.startswith("supernode-") else service


def _services(path: Path) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = yaml.safe_load(path.read_text())["services"]
    return services


def _supernodes(services: dict[str, dict[str, Any]]) -> list[str]:
    """The SuperNode services, in partition order (supernode-0, supernode-1, ...)."""
    names = [name for name in services if re.fullmatch(r"supernode-\d+", name)]
    return sorted(names, key=lambda name: int(name.split("-")[1]))


def _expected_commands(services: dict[str, dict[str, Any]], tls: TlsFiles | None) -> dict[str, list[str]]:
    nodes = _supernodes(services)
    expected = {"superlink": superlink_command("0.0.0.0", 8000, tls=tls)}
    for k, name in enumerate(nodes):
        expected[name] = supernode_command(SUPERLINK, k, len(nodes), "127.0.0.1", 9094, tls=tls)
    return expected


def _demo_config(command: list[str]) -> ExperimentConfig:
    """The experiment the vfl-sim service submits: its config file with its ``--set`` overrides."""
    assert command[:2] == ["vfl-sim", "run"], command
    overrides = [command[i + 1] for i, arg in enumerate(command) if arg == "--set"]
    return load_config(ROOT / command[2], overrides)


def _compose(*files: Path) -> subprocess.CompletedProcess[str]:
    args = ["docker-compose"]
    for path in files:
        args += ["-f", str(path)]
    return subprocess.run(
        [*args, "config"], cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )


# -- docker-compose config ---------------------------------------------------------------------


@needs_compose
def test_docker_compose_validates_the_demo() -> None:
    done = _compose(COMPOSE)
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    assert set(services) == {"superlink", "supernode-0", "supernode-1", "vfl-sim"}
    for name, command in _expected_commands(services, None).items():
        assert services[name]["command"] == command, name


@needs_compose
def test_docker_compose_validates_the_tls_override_merged() -> None:
    done = _compose(COMPOSE, COMPOSE_TLS)
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    # The override replaces the commands (it does not append to them) and keeps the rest.
    for name, command in _expected_commands(services, CONTAINER_TLS).items():
        assert services[name]["command"] == command, name
    assert "flower.root_certificates=/certs/ca.crt" in services["vfl-sim"]["command"]
    for name, service in services.items():
        assert service["environment"] == {**FLOWER_ENV, **_HANDOFF[_role(name)]}, name
        assert any(v.endswith(":/runs:rw") for v in service["volumes"]), name
        assert any(v.endswith("/certs/ca.crt:/certs/ca.crt:ro") for v in service["volumes"]), name


# -- the files themselves ----------------------------------------------------------------------


def test_compose_commands_are_the_launchers_command_lines() -> None:
    services = _services(COMPOSE)
    assert _supernodes(services) == ["supernode-0", "supernode-1"]
    for name, command in _expected_commands(services, None).items():
        assert services[name]["command"] == command, name


def test_compose_services_share_image_environment_and_runs_folder() -> None:
    services = _services(COMPOSE)
    for name, service in services.items():
        assert service["image"] == "${VFL_SIM_IMAGE:-vfl-sim:latest}", name
        assert service["build"]["context"] == ".", name
        assert service["build"]["args"]["PYTHON_IMAGE"] == "${VFL_SIM_BASE_IMAGE:-python:3.11-slim}", name
        assert service["environment"] == {**FLOWER_ENV, **_HANDOFF[_role(name)]}, name
        # The ServerApp (in the superlink container) writes the run folder, every party its
        # checkpoint: the same host folder at the same path everywhere.
        assert "./runs:/runs" in service["volumes"], name
    assert set(services["vfl-sim"]["depends_on"]) == set(services) - {"vfl-sim"}


def test_compose_hands_the_request_to_the_server_only() -> None:
    """The whole config (forget request, methods) travels in a volume that only the submitter
    and the SuperLink mount; each party's columns in one the SuperNodes mount read-only."""
    services = _services(COMPOSE)
    server, parties = "server-config:/handoff/server", "party-data:/handoff/party-data"
    assert {n for n, s in services.items() if server in s["volumes"]} == {"superlink", "vfl-sim"}
    assert parties in services["vfl-sim"]["volumes"]
    for name in _supernodes(services):
        assert f"{parties}:ro" in services[name]["volumes"], name
        assert not any("server" in v for v in services[name]["volumes"]), name
    assert set(yaml.safe_load(COMPOSE.read_text())["volumes"]) == {"server-config", "party-data"}


def test_vfl_sim_service_submits_a_valid_demo_config() -> None:
    services = _services(COMPOSE)
    command = services["vfl-sim"]["command"]
    assert command == [
        "vfl-sim",
        "run",
        "configs/flower_demo.yaml",
        "--set",
        f"flower.superlink={SUPERLINK}",
        "--out",
        "/runs/flower-demo",
        "--overwrite",
    ]
    cfg = _demo_config(command)
    assert cfg.runtime == "flower-deploy"
    assert cfg.flower.superlink == SUPERLINK
    assert cfg.flower.root_certificates is None
    # One SuperNode service per party.
    assert cfg.partition.parties == len(_supernodes(services))
    # Without the override the file runs on its own (its processes on 127.0.0.1).
    assert load_config(ROOT / "configs" / "flower_demo.yaml").flower.superlink is None


def test_tls_override_commands_and_mounts() -> None:
    base, tls = _services(COMPOSE), _services(COMPOSE_TLS)
    assert set(tls) == set(base)
    expected = _expected_commands(base, CONTAINER_TLS)
    for name, command in expected.items():
        assert tls[name]["command"] == command, name
    mounts = {name: {v.split(":")[1]: v for v in service["volumes"]} for name, service in tls.items()}
    for name in tls:
        assert mounts[name]["/certs/ca.crt"] == "./certs/ca.crt:/certs/ca.crt:ro", name
    # Only the SuperLink gets its certificate and key; the CA key is mounted nowhere.
    assert mounts["superlink"]["/certs/server.pem"] == "./certs/server.pem:/certs/server.pem:ro"
    assert mounts["superlink"]["/certs/server.key"] == "./certs/server.key:/certs/server.key:ro"
    for name in set(tls) - {"superlink"}:
        assert set(mounts[name]) == {"/certs/ca.crt"}, name
    assert not any("ca.key" in v for service in tls.values() for v in service["volumes"])
    # vfl-sim: the same submission, with the CA for its TLS connection.
    command = tls["vfl-sim"]["command"]
    i = command.index(f"flower.root_certificates={CONTAINER_TLS.ca_cert}")
    assert command[i - 1] == "--set"
    assert command[: i - 1] + command[i + 1 :] == base["vfl-sim"]["command"]
    cfg = _demo_config(command)
    assert cfg.flower.superlink == SUPERLINK
    assert cfg.flower.root_certificates == str(CONTAINER_TLS.ca_cert)
    # The health check of the TLS SuperLink speaks https and trusts the CA.
    assert "https://localhost:8000/health" in " ".join(tls["superlink"]["healthcheck"]["test"])


# -- certificates ------------------------------------------------------------------------------


def _make_certs(folder: Path) -> TlsFiles:
    done = subprocess.run(
        ["bash", str(CERT_SCRIPT), str(folder)], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return TlsFiles(**{field: folder / name for field, name in CERT_FILES.items()})


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    return _make_certs(tmp_path_factory.mktemp("certs"))


def _openssl(*args: str) -> str:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@needs_openssl
def test_cert_script_writes_a_ca_and_a_superlink_certificate(certs: TlsFiles) -> None:
    for path in (certs.ca_cert, certs.server_cert, certs.server_key, certs.ca_cert.parent / "ca.key"):
        assert path.is_file(), path
    assert (certs.ca_cert.parent / "ca.key").stat().st_mode & 0o077 == 0  # the CA key stays private
    assert _openssl("verify", "-CAfile", str(certs.ca_cert), str(certs.server_cert)).strip().endswith(": OK")
    text = _openssl("x509", "-in", str(certs.server_cert), "-noout", "-text")
    san = text.split("X509v3 Subject Alternative Name:")[1].strip().splitlines()[0]
    names = {entry.strip() for entry in san.split(",")}
    assert {"DNS:superlink", "DNS:localhost", "IP Address:127.0.0.1"} <= names
    # The key is the certificate's.
    assert _openssl("x509", "-in", str(certs.server_cert), "-noout", "-pubkey") == _openssl(
        "pkey", "-in", str(certs.server_key), "-pubout"
    )


@needs_openssl
def test_cert_script_needs_an_output_folder() -> None:
    done = subprocess.run(["bash", str(CERT_SCRIPT)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "usage" in done.stderr


# -- TLS for real, on 127.0.0.1 ----------------------------------------------------------------


def _wait_for(what: str, check: Any, timeout: float, procs: FlowerProcesses, names: list[str]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name in names:
            procs.check_alive(name)
        found = check()
        if found:
            return found
        time.sleep(0.5)
    logs = "; ".join(f"{name}: {procs.tail(name)}" for name in names)
    raise AssertionError(f"{what} within {timeout:.0f}s ({logs})")


@pytest.mark.processes
@pytest.mark.timeout(180)
def test_tls_superlink_and_supernode_on_localhost(certs: TlsFiles, tmp_path: Path) -> None:
    with FlowerProcesses(tmp_path) as procs:
        address = procs.start_superlink(free_port(), tls=certs, timeout=60)  # waits on https /health with the CA
        port = int(address.rsplit(":", 1)[1])
        # TLS only: plain http is refused, and a client without our CA does not trust the certificate.
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
        with pytest.raises(OSError):
            urllib.request.urlopen(f"https://127.0.0.1:{port}/health", timeout=5, context=ssl.create_default_context())

        procs.start_supernodes(address, 1, tls=certs)

        def node_id() -> str | None:
            match = re.search(r"SuperNode ID: (\d+)", procs.log("supernode_0").read_text(errors="replace"))
            return match.group(1) if match else None

        node = _wait_for("the SuperNode registered", node_id, 60, procs, ["superlink", "supernode_0"])

        # The flwr CLI over TLS (the CA as its root certificates) sees the node online.
        procs.add_connection("tls", address, root_certificates=certs.ca_cert)
        assert json.loads(procs.flwr("ls", "tls", "--format", "json", timeout=60)) == {"success": True, "runs": []}

        def online() -> bool:
            nodes = json.loads(procs.flwr("supernode", "ls", "tls", "--format", "json", timeout=60))["nodes"]
            return any(n["node-id"] == node and n["status"] == "online" for n in nodes)

        _wait_for("the SuperNode online in 'flwr supernode ls'", online, 30, procs, ["superlink", "supernode_0"])
        assert "https://" in procs.log("superlink").read_text(errors="replace")
    assert tagged_pids(procs.tag) == []
    assert all(p.poll() is not None for p in procs.procs.values())
