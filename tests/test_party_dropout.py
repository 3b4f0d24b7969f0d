"""A party that drops out in the middle of an unlearning method.

The run must stop (no report, so no removal is claimed for a model the party did not finish),
keep what was done, and ``--resume`` must then finish it to exactly the numbers of a run in
which nobody dropped out: the interrupted method starts again from the original, with the same
random streams.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import small_config
from vfl_sim import api
from vfl_sim.parties.party import Party
from vfl_sim.protocol import Backward, CoreStep, LocalOp, Request
from vfl_sim.server.ledger import COMPLETED, LEDGER_FILE, RequestLedger

SKIP = {"vfl_sim_version", "runtime_s", "timings_s"}


class PartyDroppedOut(ConnectionError):
    """What the dropped party's link raises (the test's stand-in for a lost connection)."""


def _strip(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items() if k not in SKIP}
    if isinstance(x, list):
        return [_strip(v) for v in x]
    return x


def test_a_party_dropping_out_mid_method_stops_the_run_and_resume_finishes_it_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = small_config(
        train={"epochs": 2},
        methods=["retrain", {"name": "finetune", "params": {"epochs": 2}}],
        audit={"relearning": {"enabled": False}, "plots": False, "calibration": {"retrains": 0}},
        threads=1,
    )
    reference = api.run(cfg, out=tmp_path / "reference")

    handle = Party.handle
    seen = {"in_finetune": False, "backwards": 0}

    def flaky(self: Party, request: Request) -> Any:
        if isinstance(request, LocalOp) and request.name == CoreStep.BEGIN_METHOD:
            seen["in_finetune"] = request.args.get("model") == "finetune"
        if self.party_id == "party_1" and seen["in_finetune"] and isinstance(request, Backward):
            seen["backwards"] += 1
            if seen["backwards"] == 3:
                raise PartyDroppedOut("party_1 is gone")
        return handle(self, request)

    monkeypatch.setattr(Party, "handle", flaky)
    out = tmp_path / "run"
    # (In-process, the drop surfaces as raised by the code that stands in for the party's link.)
    with pytest.raises(Exception, match="party_1 is gone"):
        api.run(cfg, out=out)
    assert seen["backwards"] == 3
    # Nothing is reported (so nothing is certified); what was finished is kept for --resume.
    partial = out.parent / f".{out.name}.partial"
    assert not out.exists() and partial.is_dir()
    assert not (partial / "report.json").exists()
    (entry,) = RequestLedger(partial / LEDGER_FILE).entries().values()
    assert entry.status != COMPLETED
    assert "retrain" in entry.done and "finetune" in entry.started and "finetune" not in entry.done

    monkeypatch.setattr(Party, "handle", handle)  # the party is back
    resumed = api.run(cfg, out=out, resume=True)
    assert _strip(resumed.report) == _strip(reference.report)
    assert resumed.verdict("finetune").to_dict() == reference.verdict("finetune").to_dict()
