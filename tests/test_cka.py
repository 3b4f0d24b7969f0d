"""Tests of audits.cka: linear CKA (Kornblith et al., ICML 2019) and its minibatch form."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from vfl_sim.audits.cka import LinearCKA, linear_cka


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def _orthogonal(rng: np.random.Generator, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    # Sign fix makes Q Haar-distributed; any orthogonal matrix would do for the test.
    return q * np.sign(np.diag(r))


def _pair(rng: np.random.Generator, n: int = 300, p: int = 12, q: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Two related but different representations of the same samples."""
    x = rng.normal(size=(n, p))
    y = np.tanh(x @ rng.normal(size=(p, q))) + 0.5 * rng.normal(size=(n, q))
    return x, y


def _hsic_nxn(x: np.ndarray, y: np.ndarray, *, centered: bool = True) -> float:
    """CKA through the n x n kernel form, written independently of the module."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n if centered else np.eye(n)
    k, l_ = x @ x.T, y @ y.T

    def hsic(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.trace(a @ h @ b @ h))

    return hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))


@pytest.mark.parametrize("centered", [True, False])
def test_self_similarity_is_one(rng: np.random.Generator, centered: bool) -> None:
    x = rng.normal(size=(200, 9))
    assert linear_cka(x, x, centered=centered) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("centered", [True, False])
def test_orthogonal_and_isotropic_scale_invariance(rng: np.random.Generator, centered: bool) -> None:
    x, y = _pair(rng)
    base = linear_cka(x, y, centered=centered)
    q = _orthogonal(rng, x.shape[1])
    assert linear_cka(x @ q, y, centered=centered) == pytest.approx(base, rel=1e-10)
    assert linear_cka(x, y @ _orthogonal(rng, y.shape[1]), centered=centered) == pytest.approx(base, rel=1e-10)
    assert linear_cka(3.7 * x, 0.01 * y, centered=centered) == pytest.approx(base, rel=1e-10)


def test_offset_invariance_only_when_centered(rng: np.random.Generator) -> None:
    x, y = _pair(rng)
    offset = rng.normal(size=x.shape[1]) * 5.0
    assert linear_cka(x + offset, y) == pytest.approx(linear_cka(x, y), rel=1e-10)
    uncentered = linear_cka(x, y, centered=False)
    assert abs(linear_cka(x + offset, y, centered=False) - uncentered) > 1e-3


def test_uncentered_is_pushed_up_by_nonnegative_features(rng: np.random.Generator) -> None:
    # Independent post-ReLU-like features: centered CKA sees no relation, uncentered sees
    # the shared mean direction.
    x = np.maximum(rng.normal(size=(2000, 10)), 0.0)
    y = np.maximum(rng.normal(size=(2000, 10)), 0.0)
    assert linear_cka(x, y) < 0.05
    assert linear_cka(x, y, centered=False) > 0.5


def test_not_invariant_to_anisotropic_scaling(rng: np.random.Generator) -> None:
    x, y = _pair(rng)
    d = np.diag(np.linspace(0.1, 10.0, x.shape[1]))
    assert abs(linear_cka(x @ d, y) - linear_cka(x, y)) > 1e-3


@pytest.mark.parametrize("centered", [True, False])
def test_symmetric(rng: np.random.Generator, centered: bool) -> None:
    x, y = _pair(rng)
    assert linear_cka(x, y, centered=centered) == pytest.approx(linear_cka(y, x, centered=centered), rel=1e-12)


def test_independent_representations_are_dissimilar(rng: np.random.Generator) -> None:
    # For independent Gaussians E[CKA] is about sqrt(p q) / n, here 0.002.
    x = rng.normal(size=(5000, 10))
    y = rng.normal(size=(5000, 10))
    assert linear_cka(x, y) < 0.02


def test_value_in_unit_interval(rng: np.random.Generator) -> None:
    for _ in range(5):
        x, y = _pair(rng, n=50)
        assert 0.0 <= linear_cka(x, y) <= 1.0
        assert 0.0 <= linear_cka(x, y, centered=False) <= 1.0


@pytest.mark.parametrize("centered", [True, False])
def test_matches_hand_computed_hsic_form_on_4x2(centered: bool) -> None:
    x = np.array([[1.0, 2.0], [0.0, -1.0], [3.0, 0.5], [-2.0, 1.0]])
    y = np.array([[0.5, 1.0], [2.0, 0.0], [-1.0, 1.5], [1.0, -0.5]])
    expected = _hsic_nxn(x, y, centered=centered)
    assert linear_cka(x, y, centered=centered) == pytest.approx(expected, rel=1e-12)


def test_hand_computed_4x2_by_arithmetic() -> None:
    # Columns already have zero mean, so centering changes nothing. With Y = first column of X:
    # Y^T X = [2, 0] -> ||.||_F^2 = 4;  X^T X = 2 I -> ||.||_F = sqrt(8);  Y^T Y = [2] -> 2.
    x = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    y = x[:, :1]
    expected = 4.0 / (np.sqrt(8.0) * 2.0)  # = 1 / sqrt(2)
    assert linear_cka(x, y) == pytest.approx(expected, rel=1e-12)
    assert linear_cka(x, y, centered=False) == pytest.approx(expected, rel=1e-12)
    assert _hsic_nxn(x, y) == pytest.approx(expected, rel=1e-12)


def test_matches_hsic_form_on_random_data_with_different_widths(rng: np.random.Generator) -> None:
    x, y = _pair(rng, n=60, p=13, q=4)
    for centered in (True, False):
        assert linear_cka(x, y, centered=centered) == pytest.approx(_hsic_nxn(x, y, centered=centered), rel=1e-10)


@pytest.mark.parametrize("centered", [True, False])
def test_minibatch_class_equals_functional(rng: np.random.Generator, centered: bool) -> None:
    x, y = _pair(rng, n=1000, p=16, q=5)
    # Large, unequal means stress the sufficient-statistic centering.
    x = x + rng.normal(size=16) * 50.0
    y = y + 100.0
    metric = LinearCKA(centered=centered)
    edges = [0, 3, 100, 101, 457, 900, 1000]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        assert metric.update(x[lo:hi], y[lo:hi]) is metric
    assert metric.n_samples == 1000
    assert metric.compute() == pytest.approx(linear_cka(x, y, centered=centered), rel=1e-10)


def test_class_reset_and_reuse(rng: np.random.Generator) -> None:
    x, y = _pair(rng)
    metric = LinearCKA()
    metric.update(rng.normal(size=(50, 3)), rng.normal(size=(50, 2)))
    metric.reset()
    # After reset, new widths are accepted and old samples are gone.
    metric.update(x, y)
    assert metric.compute() == pytest.approx(linear_cka(x, y), rel=1e-10)
    with pytest.raises(ValueError, match="before any update"):
        LinearCKA().compute()


def test_class_rejects_width_change(rng: np.random.Generator) -> None:
    metric = LinearCKA().update(rng.normal(size=(10, 3)), rng.normal(size=(10, 2)))
    with pytest.raises(ValueError, match="widths changed"):
        metric.update(rng.normal(size=(10, 4)), rng.normal(size=(10, 2)))


def test_empty_batch_is_a_no_op(rng: np.random.Generator) -> None:
    x, y = _pair(rng)
    metric = LinearCKA().update(np.zeros((0, x.shape[1])), np.zeros((0, y.shape[1])))
    metric.update(x, y)
    assert metric.compute() == pytest.approx(linear_cka(x, y), rel=1e-10)


def test_zero_denominator_returns_zero(rng: np.random.Generator) -> None:
    y = rng.normal(size=(40, 3))
    const = np.full((40, 4), 0.1)  # 0.1 is inexact in binary, so centering leaves residue
    assert linear_cka(const, y) == 0.0
    assert linear_cka(y, const) == 0.0
    assert linear_cka(np.zeros((40, 4)), y, centered=False) == 0.0
    assert linear_cka(y[:1], y[:1]) == 0.0  # one sample: nothing left after centering
    metric = LinearCKA()
    for lo in range(0, 40, 7):
        metric.update(const[lo : lo + 7], y[lo : lo + 7])
    assert metric.compute() == 0.0


def test_huge_constant_feature_does_not_mask_others(rng: np.random.Generator) -> None:
    x, y = _pair(rng)
    with_const = np.column_stack([x, np.full(x.shape[0], 1e8)])
    assert linear_cka(with_const, y) == pytest.approx(linear_cka(x, y), rel=1e-9)
    metric = LinearCKA()
    for lo in range(0, x.shape[0], 64):
        metric.update(with_const[lo : lo + 64], y[lo : lo + 64])
    assert metric.compute() == pytest.approx(linear_cka(x, y), rel=1e-9)


def test_non_finite_values_become_zero(rng: np.random.Generator) -> None:
    x, y = _pair(rng, n=100)
    bad = x.copy()
    bad[3, 1] = np.nan
    bad[7, 0] = np.inf
    clean = x.copy()
    clean[3, 1] = 0.0
    clean[7, 0] = 0.0
    value = linear_cka(bad, y)
    assert np.isfinite(value)
    assert value == pytest.approx(linear_cka(clean, y), rel=1e-12)
    assert LinearCKA().update(bad, y).compute() == pytest.approx(value, rel=1e-10)


def test_accepts_torch_tensors(rng: np.random.Generator) -> None:
    torch = pytest.importorskip("torch")
    x, y = _pair(rng, n=100)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.tensor(y, dtype=torch.float32)
    assert linear_cka(tx, ty) == pytest.approx(linear_cka(x, y.astype(np.float32)), rel=1e-10)
    assert LinearCKA().update(tx, ty).compute() == pytest.approx(linear_cka(tx, ty), rel=1e-10)


def test_bad_input_raises(rng: np.random.Generator) -> None:
    x = rng.normal(size=(10, 3))
    with pytest.raises(ValueError, match="same number of rows"):
        linear_cka(x, x[:9])
    with pytest.raises(ValueError, match="2-D"):
        linear_cka(x[:, 0], x)
    with pytest.raises(ValueError, match="2-D"):
        linear_cka(x, x.reshape(10, 3, 1))
    with pytest.raises(ValueError, match="no features"):
        linear_cka(x, np.zeros((10, 0)))
    with pytest.raises(ValueError, match="at least one sample"):
        linear_cka(np.zeros((0, 3)), np.zeros((0, 2)))
    with pytest.raises(ValueError, match="same number of rows"):
        LinearCKA().update(x, x[:9])


# --------------------------------------------------------------------------------------------
# Unbiased CKA: HSIC_1 of Song, Smola, Gretton, Bedo and Borgwardt (JMLR 13, 2012), as used
# for CKA by Nguyen, Raghu and Kornblith (ICLR 2021).


def _hsic1_nxn(k: np.ndarray, l_: np.ndarray) -> float:
    """HSIC_1 straight from its definition on the n x n kernels, O(n^2) memory."""
    n = k.shape[0]
    kt = k - np.diag(np.diag(k))
    lt = l_ - np.diag(np.diag(l_))
    one = np.ones(n)
    return float(
        (
            np.trace(kt @ lt)
            + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * one @ kt @ lt @ one
        )
        / (n * (n - 3))
    )


def _unbiased_cka_nxn(x: np.ndarray, y: np.ndarray) -> float:
    k, l_ = x @ x.T, y @ y.T
    return _hsic1_nxn(k, l_) / np.sqrt(_hsic1_nxn(k, k) * _hsic1_nxn(l_, l_))


def _u_centered(k: np.ndarray) -> np.ndarray:
    """U-centering of Szekely and Rizzo (2014): <K^, L^> / (n (n - 3)) is HSIC_1."""
    n = k.shape[0]
    kt = k - np.diag(np.diag(k))
    r = kt.sum(axis=1)
    u = kt - r[:, None] / (n - 2) - r[None, :] / (n - 2) + kt.sum() / ((n - 1) * (n - 2))
    return u - np.diag(np.diag(u))


def test_unbiased_matches_direct_hsic1_on_small_data(rng: np.random.Generator) -> None:
    for n, p, q in [(4, 2, 3), (5, 3, 1), (9, 6, 4), (60, 13, 4)]:
        x, y = _pair(rng, n=n, p=p, q=q)
        expected = _unbiased_cka_nxn(x, y)
        assert linear_cka(x, y, estimator="unbiased") == pytest.approx(expected, rel=1e-10, abs=1e-13)
        assert LinearCKA(estimator="unbiased").update(x, y).compute() == pytest.approx(expected, rel=1e-10, abs=1e-13)


def test_direct_hsic1_agrees_with_u_centering(rng: np.random.Generator) -> None:
    # Cross-checks the reference itself against a second, independent form.
    x, y = _pair(rng, n=12, p=5, q=3)
    k, l_ = x @ x.T, y @ y.T
    n = x.shape[0]
    assert _hsic1_nxn(k, l_) == pytest.approx(np.sum(_u_centered(k) * _u_centered(l_)) / (n * (n - 3)), rel=1e-10)


def test_unbiased_minibatch_equals_full_batch(rng: np.random.Generator) -> None:
    x, y = _pair(rng, n=1000, p=16, q=5)
    x = x + rng.normal(size=16) * 50.0
    y = y + 100.0
    metric = LinearCKA(estimator="unbiased")
    edges = [0, 1, 3, 100, 101, 457, 900, 1000]  # a one-row first batch fixes the shift
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        assert metric.update(x[lo:hi], y[lo:hi]) is metric
    full = linear_cka(x, y, estimator="unbiased")
    assert 0.05 < full < 0.95  # a value that relative error can be judged on
    assert metric.compute() == pytest.approx(full, rel=1e-10)
    metric.reset()
    metric.update(x[:500], y[:500])
    assert metric.compute() == pytest.approx(linear_cka(x[:500], y[:500], estimator="unbiased"), rel=1e-10)


@pytest.mark.parametrize(
    "kwargs", [{}, {"centered": False}, {"estimator": "unbiased"}], ids=["biased", "uncentered", "unbiased"]
)
def test_identical_rotated_scaled_give_one_for_every_variant(rng: np.random.Generator, kwargs: dict[str, Any]) -> None:
    x = rng.normal(size=(30, 8)) + 2.0
    q = _orthogonal(rng, 8)
    assert linear_cka(x, x, **kwargs) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x @ q, **kwargs) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 1e-3 * x, **kwargs) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x @ q, 250.0 * x, **kwargs) == pytest.approx(1.0, abs=1e-12)


def test_unbiased_invariances_and_symmetry(rng: np.random.Generator) -> None:
    x, y = _pair(rng, n=80)
    base = linear_cka(x, y, estimator="unbiased")
    assert linear_cka(y, x, estimator="unbiased") == pytest.approx(base, rel=1e-12)
    assert linear_cka(x @ _orthogonal(rng, x.shape[1]), y, estimator="unbiased") == pytest.approx(base, rel=1e-10)
    assert linear_cka(0.02 * x, 7.0 * y, estimator="unbiased") == pytest.approx(base, rel=1e-10)
    offset = rng.normal(size=x.shape[1]) * 5.0
    assert linear_cka(x + offset, y, estimator="unbiased") == pytest.approx(base, rel=1e-10)
    d = np.diag(np.linspace(0.1, 10.0, x.shape[1]))
    assert abs(linear_cka(x @ d, y, estimator="unbiased") - base) > 1e-3


def test_unbiased_near_zero_where_biased_is_large(rng: np.random.Generator) -> None:
    # n = 20 samples of two independent 500-d representations: the biased estimator is
    # inflated toward 1 (p, q >> n), the unbiased
    # one is centered on 0 (single-draw spread about 0.07 at this size).
    biased, unbiased = [], []
    for _ in range(20):
        x = rng.normal(size=(20, 500))
        y = rng.normal(size=(20, 500))
        biased.append(linear_cka(x, y))
        unbiased.append(linear_cka(x, y, estimator="unbiased"))
    assert min(biased) > 0.9
    assert abs(float(np.mean(unbiased))) < 0.05
    assert max(abs(u) for u in unbiased) < 0.35


def test_unbiased_can_be_negative_and_stays_in_range(rng: np.random.Generator) -> None:
    values = [linear_cka(rng.normal(size=(6, 3)), rng.normal(size=(6, 3)), estimator="unbiased") for _ in range(50)]
    assert min(values) < 0.0
    assert all(-1.0 <= v <= 1.0 for v in values)


def test_unbiased_and_biased_agree_at_large_n(rng: np.random.Generator) -> None:
    x, y = _pair(rng, n=20000, p=6, q=3)
    assert linear_cka(x, y, estimator="unbiased") == pytest.approx(linear_cka(x, y), abs=2e-3)


def test_unbiased_degenerate_inputs(rng: np.random.Generator) -> None:
    y = rng.normal(size=(40, 3))
    const = np.full((40, 4), 0.1)
    assert linear_cka(const, y, estimator="unbiased") == 0.0
    assert linear_cka(y, const, estimator="unbiased") == 0.0
    metric = LinearCKA(estimator="unbiased")
    for lo in range(0, 40, 7):
        metric.update(const[lo : lo + 7], y[lo : lo + 7])
    assert metric.compute() == 0.0
    x, y = _pair(rng)
    with_const = np.column_stack([x, np.full(x.shape[0], 1e8)])
    expected = linear_cka(x, y, estimator="unbiased")
    assert linear_cka(with_const, y, estimator="unbiased") == pytest.approx(expected, rel=1e-9)
    metric = LinearCKA(estimator="unbiased")
    for lo in range(0, x.shape[0], 64):
        metric.update(with_const[lo : lo + 64], y[lo : lo + 64])
    assert metric.compute() == pytest.approx(expected, rel=1e-9)


def test_unbiased_huge_values_do_not_overflow(rng: np.random.Generator) -> None:
    # sum ||x_i||^4 would overflow float64 beyond about 1e77 without the power-of-two rescaling.
    x, y = _pair(rng, n=50)
    expected = linear_cka(x, y, estimator="unbiased")
    assert linear_cka(1e150 * x, 1e-150 * y, estimator="unbiased") == pytest.approx(expected, rel=1e-10)
    assert LinearCKA(estimator="unbiased").update(1e150 * x, y).compute() == pytest.approx(expected, rel=1e-10)


def test_unbiased_argument_errors(rng: np.random.Generator) -> None:
    x = rng.normal(size=(3, 2))
    with pytest.raises(ValueError, match="at least 4 samples"):
        linear_cka(x, x, estimator="unbiased")
    with pytest.raises(ValueError, match="at least 4 samples"):
        LinearCKA(estimator="unbiased").update(x, x).compute()
    with pytest.raises(ValueError, match="always centered"):
        linear_cka(x, x, centered=False, estimator="unbiased")
    with pytest.raises(ValueError, match="always centered"):
        LinearCKA(centered=False, estimator="unbiased")
    with pytest.raises(ValueError, match="estimator must be one of"):
        linear_cka(x, x, estimator="debiased")  # type: ignore[arg-type]
