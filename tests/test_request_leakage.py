"""What an unlearning method's messages give away to a party (vfl_sim.audits.request_leakage).

Known answers: a party asked only about the forget set, or never about it, knows the set
(advantage 1); one asked about every sample alike knows nothing from the ids (AUC 0.5); larger
gradients on the forget set give it away by norm. In a real run every method is measured per
party, and gradient ascent on the forget set is caught outright.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import small_config
from vfl_sim.audits.request_leakage import PartyViewRecorder, request_leakage
from vfl_sim.protocol import Backward, Embed

TRAIN = np.arange(100)
FORGET = np.arange(10)


def _leak(asked: np.ndarray, norms: np.ndarray | None = None) -> dict[str, object]:
    count = (asked > 0).astype(np.int64) if norms is not None else np.zeros(120, dtype=np.int64)
    total = norms * count if norms is not None else np.zeros(120)
    return request_leakage(asked, total, count, FORGET, TRAIN)


def test_asking_only_about_the_forget_set_gives_it_away() -> None:
    asked = np.zeros(120, dtype=np.int64)
    asked[FORGET] = 3
    out = _leak(asked)
    assert out["ids_auc"] == 1.0 and out["ids_advantage"] == 1.0
    assert out["asked_train_samples"] == 10 and out["asked_forget_samples"] == 10
    assert out["gradient_norm_auc"] is None  # no gradients received


def test_never_asking_about_it_gives_it_away_too() -> None:
    asked = np.ones(120, dtype=np.int64)
    asked[FORGET] = 0
    out = _leak(asked)
    assert out["ids_auc"] == 0.0 and out["ids_advantage"] == 1.0


def test_asking_about_every_sample_alike_gives_nothing() -> None:
    out = _leak(np.full(120, 2, dtype=np.int64))
    assert out["ids_auc"] == 0.5 and out["ids_advantage"] == 0.0


def test_larger_gradients_on_the_forget_set_give_it_away_by_norm() -> None:
    norms = np.ones(120)
    norms[FORGET] = 5.0
    out = _leak(np.ones(120, dtype=np.int64), norms)
    assert out["ids_advantage"] == 0.0
    assert out["gradient_norm_auc"] == 1.0 and out["gradient_norm_advantage"] == 1.0


def test_the_recorder_gives_each_gradient_row_to_the_ids_of_the_last_training_embed() -> None:
    rec = PartyViewRecorder(["p"], 8)
    rec.observe({"p": Embed(torch.tensor([1, 2]), train=True)})
    rec.observe({"p": Backward(torch.tensor([[3.0, 4.0], [0.0, 1.0]]), then=Embed(torch.tensor([2, 5]), train=True))})
    rec.observe({"p": Backward(torch.tensor([[6.0, 8.0], [0.0, 0.0]]))})
    rec.observe({"p": Embed(torch.tensor([7]), train=False)})  # inference: asked, no gradient
    rec.observe({"p": Backward(torch.ones(1, 2))})  # no training Embed before it: not attributed
    assert rec.asked["p"].tolist() == [0, 1, 2, 0, 0, 1, 0, 1]
    assert rec.grad_count["p"].tolist() == [0, 1, 2, 0, 0, 1, 0, 0]
    assert rec.grad_norm_sum["p"].tolist() == pytest.approx([0, 5, 11, 0, 0, 0, 0, 0])


def test_a_run_reports_each_methods_leakage_per_party(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from vfl_sim import api

    cfg = small_config(
        train={"epochs": 1},
        methods=["retrain", "neggrad"],
        audit={"relearning": {"enabled": False}, "plots": False, "calibration": {"retrains": 0}},
    )
    run = api.run(cfg, out=tmp_path / "run")
    models = run.report["models"]
    assert "request_leakage" not in models["original"]  # no request, no method messages
    for name in ("retrain", "neggrad"):
        leak = models[name]["request_leakage"]
        assert set(leak) == {"party_0", "party_1"}
        for party in leak.values():
            assert party["ids_advantage"] == 1.0  # retrain never asks about the set, neggrad only about it
    forget = run.report["forget_request"]["forget_train_samples"]
    assert all(p["asked_forget_samples"] == forget for p in models["neggrad"]["request_leakage"].values())
    assert all(p["asked_forget_samples"] == 0 for p in models["retrain"]["request_leakage"].values())
