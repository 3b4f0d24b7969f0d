"""Tests of audits.consistency: linear retraining consistency (after arXiv:2606.25001)."""

from __future__ import annotations

import numpy as np
import pytest

from vfl_sim.audits.consistency import RetrainConsistency, retrain_consistency


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def _orthogonal(rng: np.random.Generator, d: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return q


def _retrain(rng: np.random.Generator, n: int = 600, q: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Retrain's representation with a class-dependent mean, and a forget mask (class 0)."""
    labels = rng.integers(0, 4, size=n)
    means = rng.normal(size=(4, q)) * 3.0
    r = means[labels] + rng.normal(size=(n, q)) * np.linspace(2.0, 0.5, q)
    return r, labels == 0


def test_identical_representations_have_zero_residual(rng: np.random.Generator) -> None:
    r, forget = _retrain(rng)
    res = retrain_consistency(r, r, forget)
    assert res.forget_residual == pytest.approx(0.0, abs=1e-9)
    assert res.retain_residual == pytest.approx(0.0, abs=1e-9)
    # Nothing is left to distribute over directions.
    assert res.forget_topk_share is None and res.retain_topk_share is None
    assert res.n_forget == int(forget.sum())
    assert res.n_retain == int(np.ceil(0.3 * (~forget).sum()))
    assert res.n_fit + res.n_retain == int((~forget).sum())


def test_rotated_scaled_shifted_and_wider_representations_map_exactly(rng: np.random.Generator) -> None:
    r, forget = _retrain(rng)
    q = r.shape[1]
    rotated = 4.0 * r @ _orthogonal(rng, q) + 10.0
    # A wider representation: an invertible mixing plus extra features that are linear in R.
    wider = np.concatenate([r @ rng.normal(size=(q, q)), r @ rng.normal(size=(q, 3))], axis=1) - 3.0
    for a in (rotated, wider):
        res = retrain_consistency(a, r, forget)
        assert res.forget_residual is not None and res.forget_residual < 1e-8
        assert res.retain_residual is not None and res.retain_residual < 1e-8


def test_unrelated_representation_has_residual_near_one(rng: np.random.Generator) -> None:
    n = 6000
    r = rng.normal(size=(n, 5))
    a = rng.normal(size=(n, 4))
    forget = rng.random(n) < 0.2
    res = retrain_consistency(a, r, forget)
    assert res.forget_residual == pytest.approx(1.0, abs=0.05)
    assert res.retain_residual == pytest.approx(1.0, abs=0.05)
    # An isotropic residual spreads over directions as k / q does.
    assert res.forget_topk_share == pytest.approx(res.topk_dim_fraction, abs=0.05)


def _exact_retrain(rng: np.random.Generator, n: int, sigmas: np.ndarray) -> np.ndarray:
    """Rows with exactly zero mean and exactly diagonal covariance ``diag(sigmas^2)``."""
    z = rng.normal(size=(n, sigmas.size))
    z -= z.mean(axis=0)
    qz, _ = np.linalg.qr(z)
    # Re-center after QR (the columns of Q span the centered space, so their means are ~0).
    qz -= qz.mean(axis=0)
    return np.sqrt(n) * qz * sigmas


def test_kept_forget_direction_gives_large_forget_residual_and_exact_share(rng: np.random.Generator) -> None:
    sigmas = np.array([10.0, 5.0, 1.0, 0.3, 0.1])  # variances 100, 25, 1, .09, .01: k = 2 at 90 %
    r_fit = _exact_retrain(rng, 400, sigmas)
    r_forget = rng.normal(size=(150, 5)) * sigmas + 2.0
    r_heldout = rng.normal(size=(200, 5)) * sigmas
    theta = 0.6
    v = np.zeros(5)
    v[0], v[3] = np.cos(theta), np.sin(theta)  # unit: part top-k, part outside
    shift = 20.0
    metric = RetrainConsistency().fit(r_fit, r_fit)  # audited == retrain on retained rows
    assert metric.k == 2
    a = np.concatenate([r_forget + shift * v, r_heldout])
    r = np.concatenate([r_forget, r_heldout])
    is_forget = np.r_[np.ones(150, bool), np.zeros(200, bool)]
    res = metric.score(a, r, is_forget)
    # f is the identity (to the ridge), so every forget residual is -shift * v exactly.
    expected = 150 * shift**2 / np.sum(np.square(r_forget - r_forget.mean(axis=0)))
    assert res.forget_residual == pytest.approx(expected, rel=1e-5)
    assert res.forget_residual is not None and res.forget_residual > 1.0
    assert res.retain_residual is not None and res.retain_residual < 1e-9
    assert res.residual_gap == pytest.approx(res.forget_residual - res.retain_residual)
    assert res.forget_topk_share == pytest.approx(np.cos(theta) ** 2, abs=1e-5)  # ridge shrinkage only
    assert res.topk_dim_fraction == pytest.approx(2 / 5)


@pytest.mark.parametrize(("direction", "share"), [(0, 1.0), (4, 0.0)])
def test_share_is_one_inside_and_zero_outside_the_top_directions(
    rng: np.random.Generator, direction: int, share: float
) -> None:
    sigmas = np.array([10.0, 5.0, 1.0, 0.3, 0.1])
    r_fit = _exact_retrain(rng, 300, sigmas)
    r = rng.normal(size=(100, 5)) * sigmas
    a = r + 3.0 * np.eye(5)[direction]
    res = RetrainConsistency().fit(r_fit, r_fit).score(a, r, np.ones(100, bool))
    assert res.forget_topk_share == pytest.approx(share, abs=1e-7)
    assert res.retain_residual is None and res.n_retain == 0


def test_function_flags_a_kept_class_direction(rng: np.random.Generator) -> None:
    r, forget = _retrain(rng, n=1200)
    a = r.copy()
    a[forget] += 5.0 * _orthogonal(rng, r.shape[1])[0]
    res = retrain_consistency(a, r, forget)
    assert res.retain_residual is not None and res.retain_residual < 1e-8
    assert res.forget_residual is not None and res.forget_residual > 0.5


def test_top_k_override_and_variance(rng: np.random.Generator) -> None:
    r, forget = _retrain(rng)
    a = r + rng.normal(size=r.shape)
    assert retrain_consistency(a, r, forget, top_k=r.shape[1]).forget_topk_share == pytest.approx(1.0)
    assert retrain_consistency(a, r, forget, top_k=0).forget_topk_share is None
    k_all = retrain_consistency(a, r, forget, variance=1.0).k
    assert k_all == r.shape[1]
    assert retrain_consistency(a, r, forget, variance=0.5).k < k_all


def test_minibatches_equal_one_shot(rng: np.random.Generator) -> None:
    r, forget = _retrain(rng, n=900)
    a = np.tanh(r @ rng.normal(size=(6, 8))) + 50.0  # nonlinear, offset: a partial fit
    fit_rows = np.flatnonzero(~forget)[:400]
    scored = np.setdiff1d(np.arange(r.shape[0]), fit_rows)
    one = RetrainConsistency().fit(a[fit_rows], r[fit_rows]).score(a[scored], r[scored], forget[scored])
    metric = RetrainConsistency()
    for chunk in np.array_split(fit_rows, 7):
        metric.partial_fit(a[chunk], r[chunk])
    for chunk in np.array_split(scored, 5):
        metric.update(a[chunk], r[chunk], forget[chunk])
    many = metric.compute()
    assert 0.0 < one.retain_residual < 1.0  # type: ignore[operator]
    for key, value in one.to_dict().items():
        if isinstance(value, float):
            assert many.to_dict()[key] == pytest.approx(value, rel=1e-8), key
        else:
            assert many.to_dict()[key] == value, key
    with pytest.raises(ValueError, match="frozen"):
        metric.partial_fit(a[:3], r[:3])
    assert metric.n_samples == scored.size
    metric.reset()
    assert metric.n_samples == metric.n_fit == 0
    with pytest.raises(ValueError, match="before any update"):
        metric.compute()
    with pytest.raises(ValueError, match="at least 2"):  # the fit went with the reset
        metric.update(a[scored], r[scored], forget[scored])


def test_constant_and_collinear_features_do_not_break_the_fit(rng: np.random.Generator) -> None:
    r, forget = _retrain(rng)
    a = np.concatenate([r, r[:, :2], np.ones((r.shape[0], 1))], axis=1)
    res = retrain_consistency(a, r, forget, ridge=0.0)
    assert res.forget_residual is not None and res.forget_residual < 1e-8


def test_input_errors(rng: np.random.Generator) -> None:
    r, forget = _retrain(rng, n=50)
    with pytest.raises(ValueError, match="same number of rows"):
        retrain_consistency(r[:-1], r, forget)
    with pytest.raises(ValueError, match="is_forget"):
        retrain_consistency(r, r, forget[:-1])
    with pytest.raises(ValueError, match="0/1"):
        retrain_consistency(r, r, np.full(50, 2))
    with pytest.raises(ValueError, match="retained rows"):
        retrain_consistency(r, r, np.r_[np.ones(47, bool), np.zeros(3, bool)])
    metric = RetrainConsistency().fit(r, r)
    with pytest.raises(ValueError, match="features"):
        metric.score(r[:, :3], r, forget)
