"""The request ledger, and resuming a run killed in the middle of unlearning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vfl_sim.errors import ForgetRequestError
from vfl_sim.server.ledger import COMPLETED, PENDING, RUNNING, RequestLedger

REQUEST = {"kind": "class", "classes": [1]}


def test_events_fold_into_request_state(tmp_path: Path) -> None:
    ledger = RequestLedger(tmp_path / "ledger.jsonl")
    entry = ledger.open("r1", REQUEST, ["retrain", "neggrad"])
    assert entry.status == PENDING and entry.done == {}
    ledger.method_started("r1", "retrain")
    assert ledger.get("r1").status == RUNNING  # type: ignore[union-attr]
    ledger.method_done("r1", "retrain", {"runtime_s": 1.5})
    ledger.method_started("r1", "neggrad")  # killed here: started, never done
    entry = ledger.get("r1")
    assert entry is not None and entry.done == {"retrain": {"runtime_s": 1.5}} and entry.status == RUNNING
    ledger.method_done("r1", "neggrad", {"runtime_s": 0.5})
    ledger.completed("r1")
    entry = ledger.get("r1")
    assert entry is not None and entry.status == COMPLETED and list(entry.done) == ["retrain", "neggrad"]
    # Every line is one complete JSON event, flushed in order.
    events = [json.loads(line)["event"] for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert events == ["requested", "method_started", "method_done", "method_started", "method_done", "completed"]


def test_replaying_a_request_id_is_a_no_op_and_reusing_it_is_an_error(tmp_path: Path) -> None:
    ledger = RequestLedger(tmp_path / "ledger.jsonl")
    ledger.open("r1", REQUEST, ["retrain"])
    size = (tmp_path / "ledger.jsonl").stat().st_size
    ledger.open("r1", REQUEST, ["retrain"])
    assert (tmp_path / "ledger.jsonl").stat().st_size == size  # nothing appended
    with pytest.raises(ForgetRequestError, match="forget.id 'r1' is already in the ledger"):
        ledger.open("r1", {"kind": "class", "classes": [2]}, ["retrain"])


def test_more_methods_reopen_a_completed_request_and_keep_what_was_done(tmp_path: Path) -> None:
    ledger = RequestLedger(tmp_path / "ledger.jsonl")
    ledger.open("r1", REQUEST, ["retrain"])
    ledger.method_done("r1", "retrain", {})
    ledger.completed("r1")
    entry = ledger.open("r1", REQUEST, ["retrain", "neggrad"])
    assert entry.status == PENDING and list(entry.done) == ["retrain"] and entry.methods == ["retrain", "neggrad"]


def test_a_torn_last_line_is_ignored_then_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = RequestLedger(path)
    ledger.open("r1", REQUEST, ["retrain"])
    ledger.method_started("r1", "retrain")
    with open(path, "ab") as fh:  # the process died while writing the next event
        fh.write(b'{"event": "method_done", "request_id": "r1", "meth')
    entry = ledger.get("r1")
    assert entry is not None and entry.done == {} and entry.status == RUNNING
    ledger.method_done("r1", "retrain", {"ok": 1})
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line) for line in lines)
    assert ledger.get("r1").done == {"retrain": {"ok": 1}}  # type: ignore[union-attr]


PLUGIN = '''
import os, signal
from vfl_sim.methods import register_method
from vfl_sim.methods.baselines import Finetune


@register_method("finetune_or_die")
class FinetuneOrDie(Finetune):
    """Fine-tuning, except that it kills its own process when VFL_TEST_KILL is set."""

    def unlearn(self, ctx):
        if os.environ.get("VFL_TEST_KILL"):
            ctx.server.train_epochs(ctx.forget.retain_ids[:64], epochs=1, batch_size=32,
                                    optim=self.params.optim(), generator=ctx.generator)
            os.kill(os.getpid(), signal.SIGKILL)
        super().unlearn(ctx)
'''

CONFIG = """\
name: killed
seed: 1
threads: 1
plugins: [die_plugin]
data:
  name: synthetic
  synthetic: {samples: 300, features: 8, classes: 3, informative_per_party: 3}
model: {embedding_dim: 8, bottom_hidden: [16], top_hidden: [16], bottom_dropout: 0.1, top_dropout: 0.1}
train: {epochs: 2, batch_size: 64}
forget: {kind: class, classes: [1], id: req-7}
methods:
  - retrain
  - {name: finetune_or_die, params: {epochs: 1}}
  - {name: neggrad, params: {epochs: 1}}
audit: {max_samples: 200}
"""


def _cli(cwd: Path, *args: str, kill: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("VFL_TEST_KILL", None)
    if kill:
        env["VFL_TEST_KILL"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "vfl_sim.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _outputs(report: dict) -> dict:
    return {name: m["output"] for name, m in report["models"].items()}


def test_a_run_killed_during_unlearning_is_finished_by_a_rerun(tmp_path: Path) -> None:
    (tmp_path / "die_plugin.py").write_text(PLUGIN)
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    killed = _cli(tmp_path, "run", "cfg.yaml", "--out", "runs/a", "--quiet", kill=True)
    assert killed.returncode == -9, killed.stderr
    partial = tmp_path / "runs" / ".a.partial"
    assert not (tmp_path / "runs" / "a").exists() and partial.is_dir()
    entry = RequestLedger(partial / "ledger.jsonl").get("req-7")
    assert entry is not None and entry.status == RUNNING
    assert list(entry.done) == ["retrain"] and entry.started == ["retrain", "finetune_or_die"]

    # Without --resume the partial run is not silently replaced.
    refused = _cli(tmp_path, "run", "cfg.yaml", "--out", "runs/a", "--quiet")
    assert refused.returncode == 2 and "--resume" in refused.stderr

    resumed = _cli(tmp_path, "run", "cfg.yaml", "--out", "runs/a", "--quiet", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert not partial.exists()
    report = json.loads((tmp_path / "runs" / "a" / "report.json").read_text())
    assert report["ledger"] == [
        {
            "id": "req-7",
            "status": "completed",
            "methods": ["retrain", "finetune_or_die", "neggrad"],
            "methods_applied": ["retrain", "finetune_or_die", "neggrad"],
        }
    ]
    # The same numbers as a run that was never interrupted.
    clean = _cli(tmp_path, "run", "cfg.yaml", "--out", "runs/b", "--quiet")
    assert clean.returncode == 0, clean.stderr
    assert _outputs(report) == _outputs(json.loads((tmp_path / "runs" / "b" / "report.json").read_text()))

    # Replaying the completed request is a no-op: nothing in the run folder changes.
    folder = tmp_path / "runs" / "a"
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    again = _cli(tmp_path, "run", "cfg.yaml", "--out", "runs/a", "--quiet", "--resume")
    assert again.returncode == 0, again.stderr
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before
