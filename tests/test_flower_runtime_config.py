"""The Flower App's declaration and the run settings that ``vfl-sim run`` hands to Flower."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from tests.conftest import small_config
from vfl_sim.config import config_from_dict
from vfl_sim.runtimes.flower_app import APP_CONFIG, run_config_for
from vfl_sim.runtimes.flower_runtime import app_pyproject, federation_config, write_app

ROOT = Path(__file__).resolve().parents[1]


def test_repository_declares_the_app_that_vfl_sim_submits() -> None:
    """``flwr run .`` from a checkout and ``vfl-sim run`` submit the same app and settings."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    generated = app_pyproject()["tool"]["flwr"]["app"]
    assert declared == generated


def test_written_app_folder_is_a_valid_flower_app(tmp_path: Path) -> None:
    from flwr.common.config import get_project_config

    folder = write_app(tmp_path / "app")
    config = get_project_config(folder)  # Flower's own validation of the app's pyproject.toml
    assert config["tool"]["flwr"]["app"]["components"]["clientapp"] == "vfl_sim.runtimes.flower_app:client_app"


def test_run_config_carries_the_experiment(tmp_path: Path) -> None:
    cfg = small_config(runtime="flower-sim", flower={"round_timeout": 7.5, "poll_interval": 0.2})
    rc = run_config_for(cfg, str(tmp_path), overwrite=True)
    assert set(rc) == set(APP_CONFIG)
    assert config_from_dict(json.loads(rc["vfl-config"])) == cfg
    assert (rc["round-timeout"], rc["poll-interval"], rc["overwrite"]) == (7.5, 0.2, True)


def test_simulation_has_one_supernode_per_party() -> None:
    cfg = small_config(runtime="flower-sim", partition={"parties": 4}, flower={"client_cpus": 2})
    assert federation_config(cfg) == {"num-supernodes": 4, "client-resources-num-cpus": 2}


def test_no_deprecated_flower_api() -> None:
    """The app uses the Message API of flwr 1.41 only (no pre-1.13 client/server API)."""
    import re

    deprecated = re.compile(
        r"flwr\.(common|server|client)\b|start_client\(|start_server\(|NumPyClient|\bDriver\b|create_reply|run_simulation\("
    )
    # The party process of vfl-sim-supernode does what Flower's own flwr-clientapp does, which
    # decodes the SuperNode's Runtime API with flwr.common's serde and reports with its status
    # codes: those two imports, and nothing else of flwr.common, are its due.
    runtime_protocol = {
        "vfl_sim/runtimes/flower_exec.py": {
            "from flwr.common.constant import ErrorCode, SubStatus",
            "from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto",
        }
    }
    sources = [p for d in ("vfl_sim", "parties", "server", "audits") for p in (ROOT / d).rglob("*.py")]
    hits = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in sources
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if deprecated.search(line.split("#")[0])
        and line.strip() not in runtime_protocol.get(p.relative_to(ROOT).as_posix(), set())
    ]
    assert hits == []
