"""The Flower App's declaration and the run settings that ``vfl-sim run`` hands to Flower."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from tests.conftest import small_config
from vfl_sim.config import ExperimentConfig, config_from_dict
from vfl_sim.runtimes.flower_app import APP_CONFIG, run_config_for
from vfl_sim.runtimes.flower_handoff import SERVER_ONLY
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
    rc = run_config_for(cfg, str(tmp_path), server_token="s", data_token="d", overwrite=True)
    assert set(rc) == set(APP_CONFIG)
    # The parties' share: everything but the server-only sections, which keep their defaults.
    share = config_from_dict(json.loads(rc["vfl-config"]))
    assert share == cfg.model_copy(update={k: getattr(ExperimentConfig(), k) for k in SERVER_ONLY})
    assert (rc["server-config"], rc["party-data"]) == ("s", "d")
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


def test_flower_config_command_hands_the_experiment_over(tmp_path: Path, monkeypatch, capsys) -> None:
    """``vfl-sim flower-config`` (for ``flwr run`` by hand) writes the server's config and the
    parties' data to the two hand-off folders and prints a run config that names them; without
    the folders it is one line and exit 2, writing nothing."""
    import tomllib

    from vfl_sim.cli import EXIT_INPUT_ERROR, main
    from vfl_sim.runtimes.flower_handoff import PARTY_DATA_ENV, SERVER_DIR_ENV

    monkeypatch.delenv(SERVER_DIR_ENV, raising=False)
    monkeypatch.delenv(PARTY_DATA_ENV, raising=False)
    config = ROOT / "configs" / "digits.yaml"
    assert main(["flower-config", str(config), "--out", str(tmp_path / "run")]) == EXIT_INPUT_ERROR
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{SERVER_DIR_ENV} and {PARTY_DATA_ENV}" in err, err
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv(SERVER_DIR_ENV, str(tmp_path / "server"))
    monkeypatch.setenv(PARTY_DATA_ENV, str(tmp_path / "parties"))
    assert main(["flower-config", str(config), "--out", str(tmp_path / "run")]) == 0
    rc = tomllib.loads(capsys.readouterr().out)
    assert json.loads((tmp_path / "server" / f"{rc['server-config']}.json").read_text())["forget"]["classes"] == [0]
    assert "forget" not in json.loads(rc["vfl-config"])
    assert sorted(p.name for p in (tmp_path / "parties" / rc["party-data"]).iterdir()) == ["party_0.npy", "party_1.npy"]
