"""Tests of audits.probe: linear probe recovery of a forgotten class (Mirage protocol)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from audits.probe import (
    LinearProbeRecovery,
    ProbeResult,
    linear_probe_recovery,
    probe_many,
    stratified_split,
)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(2024)


def _planted(rng: np.random.Generator, n: int = 600, d: int = 6, frac: float = 0.2, shift: float = 10.0):
    """Gaussian embeddings where forget samples are moved far along feature 0."""
    is_forget = rng.random(n) < frac
    x = rng.normal(size=(n, d))
    x[is_forget, 0] += shift
    return x, is_forget


def test_perfectly_separable_is_fully_recovered(rng: np.random.Generator) -> None:
    x, is_forget = _planted(rng)
    res = linear_probe_recovery(x, is_forget)
    assert res.balanced_accuracy == 1.0
    assert res.auroc == 1.0
    assert (res.n_fit, res.n_eval) == (420, 180)


def test_independent_labels_give_chance(rng: np.random.Generator) -> None:
    # n_eval = 6000: the standard error of either score is below 0.01, so 0.04 is > 4 sigma.
    n = 20_000
    x = rng.normal(size=(n, 8))
    is_forget = rng.random(n) < 0.3
    res = linear_probe_recovery(x, is_forget, seed=3)
    assert res.balanced_accuracy == pytest.approx(0.5, abs=0.04)
    assert res.auroc == pytest.approx(0.5, abs=0.04)


def test_split_is_stratified_and_deterministic() -> None:
    n, n_forget = 1000, 137
    is_forget = np.zeros(n, dtype=bool)
    is_forget[np.random.default_rng(0).choice(n, n_forget, replace=False)] = True
    fit_idx, eval_idx = stratified_split(is_forget, eval_fraction=0.3, seed=5)
    assert eval_idx.size == 300 and fit_idx.size == 700
    assert np.intersect1d(fit_idx, eval_idx).size == 0
    assert np.array_equal(np.sort(np.concatenate([fit_idx, eval_idx])), np.arange(n))
    assert abs(int(is_forget[eval_idx].sum()) - round(0.3 * n_forget)) <= 1
    again_fit, again_eval = stratified_split(is_forget, eval_fraction=0.3, seed=5)
    assert np.array_equal(fit_idx, again_fit) and np.array_equal(eval_idx, again_eval)
    _, other_eval = stratified_split(is_forget, eval_fraction=0.3, seed=6)
    assert not np.array_equal(np.sort(eval_idx), np.sort(other_eval))


def test_same_seed_same_result_and_seed_matters(rng: np.random.Generator) -> None:
    x, is_forget = _planted(rng, shift=1.0)
    a = linear_probe_recovery(x, is_forget, seed=11)
    b = linear_probe_recovery(x.copy(), is_forget.copy(), seed=11)
    assert a == b
    c = linear_probe_recovery(x, is_forget, seed=12)
    assert (a.balanced_accuracy, a.auroc) != (c.balanced_accuracy, c.auroc)


def test_matches_inline_reimplementation_on_tiny_fixture(rng: np.random.Generator) -> None:
    n = 40
    is_forget = np.array([1] * 12 + [0] * 28)
    x = rng.normal(size=(n, 3))
    x[is_forget == 1, 1] += 0.8  # partially separable, so the scores are not trivial
    x_fit, x_eval, y_fit, y_eval = train_test_split(x, is_forget, test_size=0.3, stratify=is_forget, random_state=7)
    scaler = StandardScaler().fit(x_fit)
    clf = LogisticRegression(C=0.5, solver="lbfgs", max_iter=1000).fit(scaler.transform(x_fit), y_fit)
    z_eval = scaler.transform(x_eval)
    expected_ba = balanced_accuracy_score(y_eval, clf.predict(z_eval))
    expected_auc = roc_auc_score(y_eval, clf.predict_proba(z_eval)[:, 1])

    res = linear_probe_recovery(x, is_forget, C=0.5, seed=7)
    assert res.n_fit == 28 and res.n_eval == 12
    assert res.balanced_accuracy == pytest.approx(expected_ba, abs=1e-12)
    assert res.auroc == pytest.approx(expected_auc, abs=1e-12)
    assert 0.0 < res.auroc < 1.0


def test_class_equals_functional_after_batches(rng: np.random.Generator) -> None:
    x, is_forget = _planted(rng, n=500, shift=1.5)
    metric = LinearProbeRecovery(seed=4, C=2.0)
    for lo, hi in [(0, 17), (17, 200), (200, 201), (201, 500)]:
        assert metric.update(x[lo:hi], is_forget[lo:hi]) is metric
    assert metric.n_samples == 500
    assert metric.compute() == linear_probe_recovery(x, is_forget, seed=4, C=2.0)
    metric.reset()
    assert metric.n_samples == 0
    with pytest.raises(ValueError, match="before any update"):
        metric.compute()
    metric.update(x, is_forget)
    assert metric.compute() == linear_probe_recovery(x, is_forget, seed=4, C=2.0)


def test_class_rejects_width_change(rng: np.random.Generator) -> None:
    metric = LinearProbeRecovery().update(rng.normal(size=(10, 4)), np.arange(10) % 2)
    with pytest.raises(ValueError, match="width changed"):
        metric.update(rng.normal(size=(10, 5)), np.arange(10) % 2)


def test_probe_many_shares_the_split(rng: np.random.Generator) -> None:
    x, is_forget = _planted(rng, n=400, shift=1.0)
    party_a = x[:, :2]
    party_b = x[:, 2:] + rng.normal(size=(400, 4))  # a different width, no planted signal
    results = probe_many([x, party_a, party_b], is_forget, seed=9)
    assert results == [linear_probe_recovery(e, is_forget, seed=9) for e in (x, party_a, party_b)]
    assert len({(r.n_fit, r.n_eval) for r in results}) == 1
    assert probe_many([], is_forget) == []
    with pytest.raises(ValueError, match=r"embeddings_list\[1\] has 399 rows"):
        probe_many([x, x[:-1]], is_forget)


def test_non_finite_features_become_zero(rng: np.random.Generator) -> None:
    x, is_forget = _planted(rng, shift=2.0)
    bad = x.copy()
    bad[::13, 2] = np.nan
    bad[5, 3] = np.inf
    bad[6, 4] = -np.inf
    clean = np.nan_to_num(bad, nan=0.0, posinf=0.0, neginf=0.0)
    res = linear_probe_recovery(bad, is_forget)
    assert np.isfinite(res.balanced_accuracy) and np.isfinite(res.auroc)
    assert res == linear_probe_recovery(clean, is_forget)


def test_constant_features_do_not_crash(rng: np.random.Generator) -> None:
    x, is_forget = _planted(rng)
    with_const = np.column_stack([x, np.full(x.shape[0], 3.0)])
    assert linear_probe_recovery(with_const, is_forget).auroc == 1.0
    # Nothing to learn from at all: the probe cannot beat chance.
    res = linear_probe_recovery(np.ones((x.shape[0], 4)), is_forget)
    assert res.balanced_accuracy == 0.5
    assert res.auroc == 0.5


def test_accepts_torch_tensors(rng: np.random.Generator) -> None:
    torch = pytest.importorskip("torch")
    x, is_forget = _planted(rng, shift=1.0)
    res = linear_probe_recovery(torch.tensor(x, requires_grad=True), torch.tensor(is_forget))
    assert res == linear_probe_recovery(x, is_forget)


def test_to_dict(rng: np.random.Generator) -> None:
    x, is_forget = _planted(rng)
    d = linear_probe_recovery(x, is_forget).to_dict()
    assert d == {"balanced_accuracy": 1.0, "auroc": 1.0, "n_fit": 420, "n_eval": 180}
    assert isinstance(ProbeResult(0.5, 0.5, 1, 1).to_dict()["n_fit"], int)


def test_bad_input_raises(rng: np.random.Generator) -> None:
    x = rng.normal(size=(100, 3))
    y = np.arange(100) % 2
    with pytest.raises(ValueError, match="99 rows but is_forget has 100"):
        linear_probe_recovery(x[:99], y)
    with pytest.raises(ValueError, match="2-D"):
        linear_probe_recovery(x[:, 0], y)
    with pytest.raises(ValueError, match="2-D"):
        linear_probe_recovery(x.reshape(100, 3, 1), y)
    with pytest.raises(ValueError, match="1-D"):
        linear_probe_recovery(x, y.reshape(50, 2))
    with pytest.raises(ValueError, match="only one class"):
        linear_probe_recovery(x, np.zeros(100))
    with pytest.raises(ValueError, match="only one class"):
        linear_probe_recovery(x, np.ones(100, dtype=bool))
    with pytest.raises(ValueError, match="0/1"):
        linear_probe_recovery(x, np.arange(100) % 3)
    with pytest.raises(ValueError, match="eval_fraction"):
        linear_probe_recovery(x, y, eval_fraction=1.0)
    with pytest.raises(ValueError, match="C must be positive"):
        linear_probe_recovery(x, y, C=0.0)
    with pytest.raises(ValueError, match="eval_fraction"):
        LinearProbeRecovery(eval_fraction=0.0)


@pytest.mark.parametrize("n_forget", [1, 2, 3])
def test_too_few_forget_samples_says_how_many(rng: np.random.Generator, n_forget: int) -> None:
    x = rng.normal(size=(100, 3))
    y = np.zeros(100, dtype=bool)
    y[:n_forget] = True
    with pytest.raises(ValueError, match=f"got {n_forget} forget and {100 - n_forget} retained"):
        linear_probe_recovery(x, y)
