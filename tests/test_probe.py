"""Tests of audits.probe, probe_ci and probe_gap: linear probe recovery of a forgotten class (Mirage
protocol), its intervals and the paired gap."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from vfl_sim.audits.probe import (
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


# --- intervals, paired gap, batched solver --------------------------------------------------

from vfl_sim.audits.interval import Interval  # noqa: E402
from vfl_sim.audits.probe_batch import binary_scores, fit_logistic_batch  # noqa: E402
from vfl_sim.audits.probe_ci import LinearProbeRecoveryCI, probe_ci, probe_many_ci  # noqa: E402
from vfl_sim.audits.probe_gap import LinearProbeGap, paired_gap, probe_gap_ci  # noqa: E402


def test_interval_from_values_is_percentile() -> None:
    iv = Interval.from_values(np.arange(11.0), level=0.8)
    assert (iv.mean, iv.low, iv.high) == (5.0, 1.0, 9.0)
    assert iv.values == tuple(float(v) for v in range(11))
    assert iv.covers(5.0) and not iv.covers(9.5)
    with pytest.raises(ValueError, match="level"):
        Interval.from_values([1.0], level=1.0)


@pytest.mark.parametrize("method", ["splits", "bootstrap"])
def test_separable_class_has_lpr_one_and_tight_interval(rng: np.random.Generator, method: str) -> None:
    x, is_forget = _planted(rng)
    ci = probe_ci(x, is_forget, method=method, n_repeats=5, n_bootstrap=200)
    for iv in (ci.balanced_accuracy, ci.auroc):
        assert (iv.low, iv.mean, iv.high) == (1.0, 1.0, 1.0)
    assert len(ci.balanced_accuracy.values) == (5 if method == "splits" else 200)
    assert (ci.n_fit, ci.n_eval, ci.method) == (420, 180, method)


@pytest.mark.parametrize("method", ["splits", "bootstrap"])
def test_random_labels_interval_covers_chance(rng: np.random.Generator, method: str) -> None:
    # Balanced labels: with a rare class the probe predicts "retained" for all and BA sits at
    # exactly 0.5 with no spread; with balanced ones both scores fluctuate around 0.5.
    x = rng.normal(size=(1500, 10))
    is_forget = rng.random(1500) < 0.5
    ci = probe_ci(x, is_forget, method=method, n_repeats=10, n_bootstrap=500, seed=1)
    for iv in (ci.balanced_accuracy, ci.auroc):
        assert iv.covers(0.5)
        assert iv.mean == pytest.approx(0.5, abs=0.05)
        assert 0.0 < iv.high - iv.low < 0.2  # real spread, but not uninformative


def test_splits_repeat_zero_is_the_single_split_result(rng: np.random.Generator) -> None:
    x, is_forget = _planted(rng, shift=1.0)
    ci = probe_ci(x, is_forget, n_repeats=3, seed=4, solver="sklearn")
    for r in range(3):
        single = linear_probe_recovery(x, is_forget, seed=4 + r)
        assert ci.balanced_accuracy.values[r] == pytest.approx(single.balanced_accuracy, abs=1e-12)
        assert ci.auroc.values[r] == pytest.approx(single.auroc, abs=1e-12)


@pytest.mark.parametrize("solver", ["batch", "sklearn"])
@pytest.mark.parametrize("method", ["splits", "bootstrap"])
def test_identical_audited_and_retrain_gap_is_exactly_zero(rng: np.random.Generator, solver: str, method: str) -> None:
    x, is_forget = _planted(rng, shift=1.0)
    gap = probe_gap_ci(x, x.copy(), is_forget, solver=solver, method=method, n_repeats=4, n_bootstrap=100)
    for iv in (gap.balanced_accuracy_gap, gap.auroc_gap):
        assert (iv.low, iv.mean, iv.high) == (0.0, 0.0, 0.0)
        assert set(iv.values) == {0.0}
    assert 0.5 < gap.audited.auroc.mean < 1.0  # the probes themselves are not trivial


def test_paired_gap_is_narrower_than_unpaired(rng: np.random.Generator) -> None:
    # Retrain keeps a weaker copy of the signal plus small noise: the two models' per-split
    # values move together, so the paired interval is narrower than the marginal ones.
    n = 800
    is_forget = rng.random(n) < 0.25
    base = rng.normal(size=(n, 5))
    base[is_forget, 0] += 1.0
    audited = base.copy()
    audited[is_forget, 1] += 0.6
    retrain = base + 0.05 * rng.normal(size=(n, 5))
    gap = probe_gap_ci(audited, retrain, is_forget, n_repeats=10, seed=2)
    width = gap.auroc_gap.high - gap.auroc_gap.low
    assert gap.auroc_gap.mean > 0.02 and gap.auroc_gap.low > 0.0
    assert width < gap.audited.auroc.high - gap.audited.auroc.low
    assert width < gap.retrain.auroc.high - gap.retrain.auroc.low
    a = np.asarray(gap.audited.auroc.values) - np.asarray(gap.retrain.auroc.values)
    assert np.allclose(a, gap.auroc_gap.values)


def test_paired_gap_refuses_different_splits(rng: np.random.Generator) -> None:
    x, is_forget = _planted(rng, shift=1.0)
    a = probe_ci(x, is_forget, n_repeats=2, seed=0)
    with pytest.raises(ValueError, match="seed"):
        paired_gap(a, probe_ci(x, is_forget, n_repeats=2, seed=1))
    with pytest.raises(ValueError, match="method"):
        paired_gap(a, probe_ci(x, is_forget, method="bootstrap", n_bootstrap=2))
    with pytest.raises(ValueError, match="number of repeats"):
        paired_gap(a, probe_ci(x, is_forget, n_repeats=3, seed=0))


def test_ci_classes_equal_functional_after_batches(rng: np.random.Generator) -> None:
    x, is_forget = _planted(rng, n=500, shift=1.0)
    r = x + 0.3 * rng.normal(size=x.shape)
    kw = {"n_repeats": 3, "seed": 5}
    ci, gap = LinearProbeRecoveryCI(**kw), LinearProbeGap(**kw)
    for lo, hi in [(0, 100), (100, 101), (101, 500)]:
        assert ci.update(x[lo:hi], is_forget[lo:hi]) is ci
        assert gap.update(x[lo:hi], r[lo:hi], is_forget[lo:hi]) is gap
    assert ci.n_samples == gap.n_samples == 500
    assert ci.compute() == probe_ci(x, is_forget, **kw)
    assert gap.compute() == probe_gap_ci(x, r, is_forget, **kw)
    ci.reset()
    gap.reset()
    assert ci.n_samples == gap.n_samples == 0
    with pytest.raises(ValueError, match="before any update"):
        ci.compute()
    with pytest.raises(ValueError, match="before any update"):
        gap.compute()
    gap.update(x[:10], r[:10], is_forget[:10])
    with pytest.raises(ValueError, match="retrain width changed"):
        gap.update(x[:10], r[:10, :3], is_forget[:10])
    with pytest.raises(ValueError, match="solver"):
        LinearProbeGap(solver="torch")


def test_ci_bad_arguments(rng: np.random.Generator) -> None:
    x, is_forget = _planted(rng)
    with pytest.raises(ValueError, match="method"):
        probe_ci(x, is_forget, method="jackknife")
    with pytest.raises(ValueError, match="at least 1"):
        probe_ci(x, is_forget, n_repeats=0)
    with pytest.raises(ValueError, match="level"):
        probe_ci(x, is_forget, level=95)
    assert probe_many_ci([], is_forget) == []


def _sklearn_probe(x_fit: np.ndarray, t: np.ndarray, C: float) -> LogisticRegression:
    return LogisticRegression(C=C, solver="lbfgs", max_iter=10_000, tol=1e-12).fit(x_fit, t)


@pytest.mark.parametrize("C", [0.05, 1.0, 20.0])
def test_batched_newton_reaches_sklearn_optimum(rng: np.random.Generator, C: float) -> None:
    # Three problems of one batch: overlapping, separable, and with a constant (zero) column.
    n, d = 300, 6
    xs, ts = [], []
    for shift in (0.5, 6.0, 1.5):
        t = (rng.random(n) < 0.3).astype(float)
        x = rng.normal(size=(n, d))
        x[:, 0] += shift * t
        xs.append(x)
        ts.append(t)
    xs[2][:, 3] = 0.0
    w, b = fit_logistic_batch(np.stack(xs), np.stack(ts), C=C)
    for k in range(3):
        ref = _sklearn_probe(xs[k], ts[k], C)
        assert np.allclose(w[k], ref.coef_[0], atol=1e-5, rtol=1e-5)
        assert b[k] == pytest.approx(ref.intercept_[0], abs=1e-5)
    assert w[2, 3] == 0.0


def test_binary_scores_match_sklearn_metrics(rng: np.random.Generator) -> None:
    y = (rng.random((4, 50)) < 0.4).astype(int)
    s = np.round(rng.normal(size=(4, 50)), 1)  # rounding creates ties
    ba, auc = binary_scores(s, y)
    for k in range(4):
        assert ba[k] == pytest.approx(balanced_accuracy_score(y[k], s[k] > 0), abs=1e-12)
        assert auc[k] == pytest.approx(roc_auc_score(y[k], s[k]), abs=1e-12)


def test_batch_solver_matches_sklearn_lpr(rng: np.random.Generator) -> None:
    # Several representations of mixed widths and difficulty, one shared split.
    n = 1200
    is_forget = rng.random(n) < 0.15
    reps = []
    for d, shift in [(16, 0.3), (16, 0.8), (8, 0.0), (32, 0.2), (16, 3.0)]:
        x = rng.normal(size=(n, d))
        x[is_forget] += shift * rng.normal(size=d)
        reps.append(x)
    reps.append(reps[1].copy())  # a duplicate is fit once and must still come out right
    ref = probe_many(reps, is_forget, seed=3)
    fast = probe_many(reps, is_forget, seed=3, solver="batch")
    for a, b in zip(ref, fast, strict=True):
        assert (a.n_fit, a.n_eval) == (b.n_fit, b.n_eval)
        assert b.balanced_accuracy == pytest.approx(a.balanced_accuracy, abs=1e-3)
        assert b.auroc == pytest.approx(a.auroc, abs=1e-3)
    ci_ref = probe_many_ci(reps[:3], is_forget, n_repeats=3, solver="sklearn")
    ci_fast = probe_many_ci(reps[:3], is_forget, n_repeats=3, solver="batch")
    for a, b in zip(ci_ref, ci_fast, strict=True):
        assert np.allclose(a.auroc.values, b.auroc.values, atol=1e-3)
        assert np.allclose(a.balanced_accuracy.values, b.balanced_accuracy.values, atol=1e-3)
