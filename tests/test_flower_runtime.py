"""The Flower runtimes with Flower's real processes on 127.0.0.1.

``flower-sim`` starts a simulation SuperLink and runs the app with ``flwr run`` on the Ray
backend; ``flower-deploy`` starts a SuperLink and one SuperNode per party. Every test bounds
its time (``flower.run_timeout``, pytest's timeout) and checks that no process it started is
left running.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import assert_close, small_config
from vfl_sim.config import ExperimentConfig
from vfl_sim.experiment import prepare
from vfl_sim.runtimes.flower_launch import FlowerProcesses, FlowerRuntimeError, tagged_pids
from vfl_sim.runtimes.flower_runtime import run_on_flower

pytestmark = pytest.mark.processes

TINY_DATA = {
    "name": "synthetic",
    "synthetic": {"samples": 240, "features": 8, "classes": 3, "informative_per_party": 2},
}


def _config(runtime: str, **sections: object) -> ExperimentConfig:
    # The relearning attack's full phase costs about 3 rounds per step and model; on the
    # deployment runtime (seconds a round) only the simulation test runs it, with 2 steps.
    relearning = {"steps": 2} if runtime == "flower-sim" else {"enabled": False}
    defaults: dict[str, object] = {
        "runtime": runtime,
        "data": TINY_DATA,
        "partition": {"parties": 2},
        "flower": {"connect_timeout": 60, "round_timeout": 60, "run_timeout": 240},
        # Calibration retrains are retrains with other seeds (retrain itself runs here); over
        # Flower each would cost a whole training.
        "audit": {"relearning": relearning, "calibration": {"retrains": 0}},
    }
    return small_config(**{**defaults, **sections})


class Watch:
    """Remembers the processes of a run, to check afterwards that none is left."""

    def __init__(self) -> None:
        self.procs: FlowerProcesses | None = None

    def __call__(self, procs: FlowerProcesses) -> None:
        self.procs = procs

    def assert_all_stopped(self) -> None:
        assert self.procs is not None
        assert tagged_pids(self.procs.tag) == []
        assert all(p.poll() is not None for p in self.procs.procs.values())


def _assert_same_outputs(a: dict, b: dict) -> None:
    assert a["models"].keys() == b["models"].keys()
    for name, model in a["models"].items():
        assert_close(model["output"], b["models"][name]["output"], where=name)
        if "relearning" in model:  # the attack drives the parties like a method
            for phase in ("top", "full"):
                curve, other = model["relearning"][phase]["curve"], b["models"][name]["relearning"][phase]["curve"]
                assert_close(curve["forget_acc"], other["forget_acc"], where=f"{name} {phase}")
                assert_close(curve["loss"], other["loss"], where=f"{name} {phase}")


def test_flower_sim_matches_local(tmp_path: Path) -> None:
    """``flwr run`` on the simulation runtime gives the local runtime's results, dropout
    included: each party draws its masks from its own random stream, kept in its state."""
    cfg = _config(
        "flower-sim",
        partition={"parties": 3},
        model={"bottom_dropout": 0.2, "top_dropout": 0.2},
        methods=["retrain", "neggrad"],
    )
    local = prepare(cfg.model_copy(update={"runtime": "local"})).run(tmp_path / "local")
    watch = Watch()
    lines: list[str] = []
    flower = run_on_flower(cfg, tmp_path / "sim", on_line=lines.append, keep=watch)
    watch.assert_all_stopped()
    _assert_same_outputs(local, flower)
    assert "relearning" in flower["models"]["neggrad"]
    assert flower["runtime"] == "flower-sim"
    # Same protocol, same traffic: the byte counts of every phase agree too.
    for name, model in local["models"].items():
        assert flower["models"][name]["communication"]["bytes_total"] == model["communication"]["bytes_total"]
    assert any(line.startswith("vfl-sim: train original: done") for line in lines)
    assert (tmp_path / "sim" / "flower_logs" / "superlink.log").is_file()
    assert sorted(p.name for p in (tmp_path / "sim" / "checkpoints" / "original").iterdir()) == [
        "party_0.pt",
        "party_1.pt",
        "party_2.pt",
        "run.json",
        "top.pt",
    ]


@pytest.mark.timeout(600)
def test_flower_deploy_trains_forgets_and_audits(tmp_path: Path) -> None:
    """A SuperLink and one SuperNode per party as processes: training, a forget request, every
    method's protocol, the built-in control (output_mask) and the audit's embedding requests
    all go through Flower messages (seconds a round: the deployment runtime starts a process
    per message)."""
    cfg = _config(
        "flower-deploy",
        train={"epochs": 1, "batch_size": 256},
        methods=[{"name": "neggrad", "params": {"epochs": 1, "batch_size": 256}}],
        flower={"connect_timeout": 60, "round_timeout": 60, "run_timeout": 540},
    )
    watch = Watch()
    report = run_on_flower(cfg, tmp_path / "run", keep=watch)
    watch.assert_all_stopped()
    local = prepare(cfg.model_copy(update={"runtime": "local"})).run(tmp_path / "local")
    _assert_same_outputs(local, report)
    assert set(report["models"]) == {"original", "neggrad"}
    assert report["models"]["neggrad"]["representation"]["fused"]["lpr"] is not None
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["runtime"] == "flower-deploy"
    logs = {p.name for p in (tmp_path / "run" / "flower_logs").iterdir()}
    assert {"superlink.log", "supernode_0.log", "supernode_1.log"} <= logs


def test_killed_party_fails_the_run_cleanly(tmp_path: Path) -> None:
    """A party that dies mid-training fails the run within the round timeout, names the party,
    and leaves no run folder behind."""
    cfg = _config(
        "flower-deploy",
        train={"epochs": 2, "batch_size": 32},  # 12 steps: the log has a line for each
        methods=["retrain"],
        flower={"connect_timeout": 60, "round_timeout": 20, "run_timeout": 240},
    )
    watch = Watch()

    def kill_party_1(line: str) -> None:
        if "train original: 2/12 steps" in line and watch.procs is not None:  # training is under way
            watch.procs.kill("supernode_1")

    out = tmp_path / "run"
    # Flower reports a dead node one of two ways, by timing: no reply within the round timeout,
    # or (killed while it was uploading a reply) an error reply from the SuperLink for it.
    dead = (
        r"no reply from [^;]*party_1[^;]* within 20s"
        r"|party_1 answered with an error: Reply message objects are unavailable"
    )
    with pytest.raises(FlowerRuntimeError, match=dead):
        run_on_flower(cfg, out, keep=watch, on_line=kill_party_1)
    watch.assert_all_stopped()
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.partial")]


def test_flower_sim_refuses_a_superlink_address() -> None:
    from vfl_sim.errors import ConfigError

    with pytest.raises(ConfigError, match="flower.superlink is for runtime 'flower-deploy'"):
        _config("flower-sim", flower={"superlink": "127.0.0.1:9"})
