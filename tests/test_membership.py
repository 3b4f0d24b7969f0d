"""Tests of audits.membership: threshold MIAs (Yeom et al. 2018; Song & Mittal 2021) and
difficulty calibration (Watson et al., ICLR 2022)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import roc_auc_score

from vfl_sim.audits.membership import (
    MembershipInference,
    auc_by_ranks,
    bootstrap_auc_ci,
    membership_inference,
    membership_scores,
)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(11)


def _logits_with_loss(loss: np.ndarray, labels: np.ndarray, n_classes: int = 5) -> np.ndarray:
    """Logits whose cross-entropy on ``labels`` is exactly ``loss`` (> 0).

    The true class gets logit 0 and the others ``c`` with ``log(1 + (C - 1) e^c) = loss``.
    """
    c = np.log(np.expm1(loss) / (n_classes - 1))
    z = np.repeat(c[:, None], n_classes, axis=1)
    z[np.arange(loss.size), labels] = 0.0
    return z


def test_scores_match_their_definitions(rng: np.random.Generator) -> None:
    z = rng.normal(size=(40, 4)) * 3.0
    y = rng.integers(0, 4, size=40)
    p = softmax(z, axis=1)
    rows = np.arange(40)
    np.testing.assert_allclose(membership_scores(z, y, "loss"), np.log(p[rows, y]), rtol=1e-12)
    np.testing.assert_allclose(membership_scores(z, y, "entropy"), np.sum(p * np.log(p), axis=1), rtol=1e-12)
    off = np.arange(4)[None, :] != y[:, None]
    mentr = -(1 - p[rows, y]) * np.log(p[rows, y]) - np.sum(np.where(off, p * np.log(1 - p), 0.0), axis=1)
    np.testing.assert_allclose(membership_scores(z, y, "mentropy"), -mentr, rtol=1e-10)
    loss = rng.uniform(0.1, 3.0, size=40)
    np.testing.assert_allclose(membership_scores(_logits_with_loss(loss, y), y, "loss"), -loss, rtol=1e-10)


def test_extreme_logits_stay_finite() -> None:
    z = np.array([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 0.0]])
    y = np.array([0, 0])
    for signal in ("loss", "entropy", "mentropy"):
        assert np.all(np.isfinite(membership_scores(z, y, signal)))


def test_rank_auc_equals_sklearn_with_ties(rng: np.random.Generator) -> None:
    for _ in range(5):
        s = rng.integers(0, 6, size=211).astype(float)  # many ties
        m = rng.random(211) < 0.3
        assert auc_by_ranks(s, m) == pytest.approx(roc_auc_score(m, s), abs=1e-12)
    assert auc_by_ranks([1.0, 1.0, 1.0], [1, 0, 0]) == 0.5
    assert auc_by_ranks([3.0, 2.0, 1.0], [1, 0, 0]) == 1.0
    assert auc_by_ranks([3.0, 2.0, 1.0], [0, 0, 1]) == 0.0


def test_lower_member_loss_gives_auc_near_one(rng: np.random.Generator) -> None:
    n = 400
    group = np.array(["forget_train"] * n + ["test"] * n + ["retain_train"] * n)
    loss = np.r_[rng.uniform(0.01, 0.3, n), rng.uniform(0.5, 3.0, n), rng.uniform(0.001, 0.005, n)]
    y = rng.integers(0, 5, size=3 * n)
    res = membership_inference(_logits_with_loss(loss, y), y, group)
    # Perfect separation; the ignored retain_train rows (lowest loss) would have pulled it below 1.
    assert res.auc == 1.0
    assert res.auc_ci == (1.0, 1.0)
    assert res.n_member == n and res.n_nonmember == n
    assert res.calibrated_auc is None and res.calibrated_auc_ci is None
    # Confident members are also flagged by the entropy signals.
    for signal in ("entropy", "mentropy"):
        assert membership_inference(_logits_with_loss(loss, y), y, group, signal=signal).auc > 0.99


def test_overlapping_member_shift_gives_interval_around_the_auc(rng: np.random.Generator) -> None:
    n = 600
    loss = np.exp(np.r_[rng.normal(-1.0, 1.0, n), rng.normal(0.0, 1.0, n)])
    y = rng.integers(0, 5, size=2 * n)
    group = np.r_[np.ones(n, int), np.zeros(n, int)]
    res = membership_inference(_logits_with_loss(loss, y), y, group, member=1, nonmember=0)
    # Two unit normals one apart: AUC = Phi(1 / sqrt 2) = 0.760.
    assert res.auc == pytest.approx(0.760, abs=0.04)
    lo, hi = res.auc_ci
    assert lo < res.auc < hi
    assert 0.01 < hi - lo < 0.1


def test_identical_distributions_give_chance_auc_with_covering_interval(rng: np.random.Generator) -> None:
    n = 500
    loss = rng.exponential(1.0, size=2 * n) + 1e-3
    y = rng.integers(0, 5, size=2 * n)
    group = np.array(["forget_train"] * n + ["test"] * n)
    res = membership_inference(_logits_with_loss(loss, y), y, group, n_bootstrap=2000, seed=3)
    assert res.auc == pytest.approx(0.5, abs=0.05)
    lo, hi = res.auc_ci
    assert lo < 0.5 < hi
    assert hi - lo < 0.15


def test_calibration_removes_a_difficulty_confound(rng: np.random.Generator) -> None:
    """Loss = difficulty + member shift; members are the easy samples."""
    n = 500
    difficulty = np.r_[rng.uniform(0.2, 1.0, n), rng.uniform(1.2, 3.0, n)]
    group = np.array(["forget_train"] * n + ["test"] * n)
    y = rng.integers(0, 5, size=2 * n)
    # No membership effect at all: the target's loss is difficulty plus noise, as is the
    # reference's (a model that never trained on any of the samples).
    target = difficulty + rng.normal(0.0, 0.05, 2 * n)
    reference = difficulty + rng.normal(0.0, 0.05, 2 * n)
    res = membership_inference(_logits_with_loss(target, y), y, group, reference_logits=_logits_with_loss(reference, y))
    assert res.auc > 0.99  # the raw attack reads difficulty as membership
    assert res.calibrated_auc == pytest.approx(0.5, abs=0.05)
    assert res.calibrated_auc_ci is not None
    assert res.calibrated_auc_ci[0] < 0.5 < res.calibrated_auc_ci[1]


def test_calibration_recovers_a_membership_effect_hidden_by_difficulty(rng: np.random.Generator) -> None:
    n = 500
    member = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    # Members are the *hard* samples, but the target lowered their loss by 0.4.
    difficulty = np.r_[rng.uniform(1.5, 3.0, n), rng.uniform(0.6, 2.0, n)]
    y = rng.integers(0, 5, size=2 * n)
    target = difficulty - 0.4 * member + rng.normal(0.0, 0.05, 2 * n)
    reference = difficulty + rng.normal(0.0, 0.05, 2 * n)
    res = membership_inference(
        _logits_with_loss(target, y),
        y,
        np.where(member, "forget_train", "test"),
        reference_logits=_logits_with_loss(reference, y),
    )
    assert res.auc < 0.5
    assert res.calibrated_auc is not None and res.calibrated_auc > 0.99


def test_minibatches_equal_one_shot(rng: np.random.Generator) -> None:
    n = 300
    group = rng.choice(np.array(["forget_train", "test", "retain_train"]), size=n)
    y = rng.integers(0, 5, size=n)
    z = rng.normal(size=(n, 5)) * 2.0
    ref = z + rng.normal(size=(n, 5))
    one = membership_inference(z, y, group, reference_logits=ref, signal="mentropy", n_bootstrap=300)
    metric = MembershipInference(signal="mentropy", n_bootstrap=300)
    for chunk in np.array_split(np.arange(n), 6):
        metric.update(z[chunk], y[chunk], group[chunk], reference_logits=ref[chunk])
    assert metric.n_samples == int(np.sum(group != "retain_train"))
    assert metric.compute() == one
    assert one.to_dict()["calibrated_auc_ci"] == list(one.calibrated_auc_ci)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="every batch or with none"):
        metric.update(z[:5], y[:5], group[:5])
    metric.reset()
    with pytest.raises(ValueError, match="before any update"):
        metric.compute()


def test_bootstrap_is_seeded_and_level_orders_intervals(rng: np.random.Generator) -> None:
    s = rng.normal(size=400) + np.r_[np.full(200, 0.5), np.zeros(200)]
    m = np.r_[np.ones(200, bool), np.zeros(200, bool)]
    assert bootstrap_auc_ci(s, m, seed=5) == bootstrap_auc_ci(s, m, seed=5)
    lo90, hi90 = bootstrap_auc_ci(s, m, confidence=0.9)
    lo99, hi99 = bootstrap_auc_ci(s, m, confidence=0.99)
    assert lo99 < lo90 < auc_by_ranks(s, m) < hi90 < hi99


def test_input_errors(rng: np.random.Generator) -> None:
    z = rng.normal(size=(10, 3))
    y = rng.integers(0, 3, size=10)
    with pytest.raises(ValueError, match="members and non-members"):
        membership_inference(z, y, np.array(["test"] * 10))
    with pytest.raises(ValueError, match=r"lie in \[0, 3\)"):
        membership_scores(z, np.full(10, 3))
    with pytest.raises(ValueError, match="signal"):
        membership_scores(z, y, "margin")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rows"):
        membership_scores(z, y[:-1])
