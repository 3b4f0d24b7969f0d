"""Tests of audits.separability: Fisher ratio, silhouette and kNN purity of a forgotten class."""

from __future__ import annotations

import numpy as np
import pytest

from vfl_sim.audits.separability import (
    DistanceMetric,
    FisherRatio,
    ForgetSilhouette,
    KNNPurity,
    PurityResult,
    fisher_ratio,
    forget_silhouette,
    knn_purity,
)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(2024)


def _orthogonal(rng: np.random.Generator, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def _labels(n: int, n_forget: int) -> np.ndarray:
    y = np.zeros(n, dtype=bool)
    y[:n_forget] = True
    return y


def _two_gaussians(
    rng: np.random.Generator, n_forget: int, n_retain: int, d: int, delta: float
) -> tuple[np.ndarray, np.ndarray]:
    """Isotropic unit-variance classes whose means are ``delta`` apart along feature 0."""
    x = rng.normal(size=(n_forget + n_retain, d))
    x[:n_forget, 0] += delta
    return x, _labels(n_forget + n_retain, n_forget)


def _collapsed(
    rng: np.random.Generator, n_forget: int = 40, n_retain: int = 200, d: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Retained samples ~ N(0, I); every forgotten sample mapped to one point 6 units away."""
    x = rng.normal(size=(n_forget + n_retain, d))
    point = np.zeros(d)
    point[0] = 6.0
    x[:n_forget] = point
    return x, _labels(n_forget + n_retain, n_forget)


# ---------------------------------------------------------------------------- Fisher ratio


def test_fisher_hand_computed() -> None:
    # F = {(0,0), (2,0)}: mean (1,0), tr S_F = 2 + 0.   R = {(10,0),(10,2),(12,0),(12,2)}:
    # mean (11,1), tr S_R = 4/3 + 4/3.   ||m_F - m_R||^2 = 101.
    # J = (101 - 2/2 - (8/3)/4) / (2 + 8/3) = (298/3) / (14/3) = 149/7.
    x = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 0.0], [10.0, 2.0], [12.0, 0.0], [12.0, 2.0]])
    y = np.array([1, 1, 0, 0, 0, 0])
    assert fisher_ratio(x, y) == pytest.approx(149.0 / 7.0, rel=1e-12)


def test_fisher_estimates_population_value(rng: np.random.Generator) -> None:
    # J = delta^2 / (tr Sigma_F + tr Sigma_R) = 4 / (2 * 4) = 0.5, for either class proportion.
    for n_forget, n_retain in [(1000, 9000), (5000, 5000)]:
        x, y = _two_gaussians(rng, n_forget, n_retain, d=4, delta=2.0)
        assert fisher_ratio(x, y) == pytest.approx(0.5, abs=0.03)


def test_fisher_shuffled_labels_near_zero_even_when_n_below_d(rng: np.random.Generator) -> None:
    # 30 samples in 200 dimensions: defined (no inversion), and near 0 under shuffled labels,
    # where the uncorrected ratio ||m_F - m_R||^2 / (tr S_F + tr S_R) sits at about
    # (1/n_F + 1/n_R) / 2 = 0.075.
    x = rng.normal(size=(30, 200))
    y = _labels(30, 10)
    corrected, naive = [], []
    for _ in range(40):
        yp = rng.permutation(y)
        corrected.append(fisher_ratio(x, yp))
        mf, mr = x[yp].mean(axis=0), x[~yp].mean(axis=0)
        tr = x[yp].var(axis=0, ddof=1).sum() + x[~yp].var(axis=0, ddof=1).sum()
        naive.append(float(np.sum((mf - mr) ** 2) / tr))
    assert all(np.isfinite(corrected))
    assert abs(float(np.mean(corrected))) < 0.01
    assert float(np.mean(naive)) > 0.06
    # Lower bound of the estimate: -1 / min(n_F, n_R).
    assert min(corrected) >= -1.0 / 10


def test_fisher_separated_class_when_n_below_d(rng: np.random.Generator) -> None:
    x, y = _two_gaussians(rng, 10, 20, d=200, delta=30.0)  # J = 900 / 400 = 2.25
    assert fisher_ratio(x, y) == pytest.approx(2.25, rel=0.35)


def test_fisher_invariances(rng: np.random.Generator) -> None:
    x, y = _two_gaussians(rng, 50, 150, d=12, delta=1.5)
    x = x @ rng.normal(size=(12, 12))  # anisotropic, correlated features
    base = fisher_ratio(x, y)
    assert base > 0.01
    assert fisher_ratio(x @ _orthogonal(rng, 12), y) == pytest.approx(base, rel=1e-10)
    assert fisher_ratio(1e-4 * x, y) == pytest.approx(base, rel=1e-10)
    assert fisher_ratio(1e5 * x, y) == pytest.approx(base, rel=1e-10)
    assert fisher_ratio(x + rng.normal(size=12) * 1e3, y) == pytest.approx(base, rel=1e-8)
    # Row order does not matter.
    perm = rng.permutation(y.size)
    assert fisher_ratio(x[perm], y[perm]) == pytest.approx(base, rel=1e-10)
    # Documented non-invariance: rescaling single features changes it.
    assert abs(fisher_ratio(x * np.linspace(0.1, 10.0, 12), y) - base) > 1e-3


def test_fisher_collapsed_class_is_high(rng: np.random.Generator) -> None:
    x, y = _collapsed(rng)
    # ||delta||^2 ~ 36 (+ noise of the retained mean) over tr S_R ~ 16.
    assert fisher_ratio(x, y) > 2.0
    # Both classes single points: infinitely separated, unless they coincide.
    pts = np.array([[1.0, 2.0]] * 3 + [[1.0, 5.0]] * 4)
    assert fisher_ratio(pts, _labels(7, 3)) == float("inf")
    assert fisher_ratio(np.ones((7, 2)), _labels(7, 3)) == 0.0


def test_fisher_minibatch_equals_full_batch(rng: np.random.Generator) -> None:
    x, y = _two_gaussians(rng, 300, 700, d=9, delta=1.0)
    x = x + 1e4  # large means stress the sufficient statistics
    perm = rng.permutation(y.size)
    x, y = x[perm], y[perm]
    metric = FisherRatio()
    edges = [0, 1, 2, 50, 51, 400, 1000]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        assert metric.update(x[lo:hi], y[lo:hi]) is metric
    assert metric.n_samples == 1000
    full = fisher_ratio(x, y)
    assert full > 0.01
    assert metric.compute() == pytest.approx(full, rel=1e-10)
    metric.reset()
    assert metric.n_samples == 0
    metric.update(x[:300, :4], y[:300])  # new width accepted after reset
    assert metric.compute() == pytest.approx(fisher_ratio(x[:300, :4], y[:300]), rel=1e-10)


def test_fisher_errors(rng: np.random.Generator) -> None:
    x = rng.normal(size=(10, 3))
    with pytest.raises(ValueError, match="at least 2 forget and 2 retained"):
        fisher_ratio(x, _labels(10, 1))
    with pytest.raises(ValueError, match="at least 2 forget and 2 retained"):
        fisher_ratio(x, _labels(10, 9))
    with pytest.raises(ValueError, match=r"FisherRatio.compute\(\) called before any update\(\)"):
        FisherRatio().compute()
    with pytest.raises(ValueError, match="at least 2 forget"):
        FisherRatio().update(x[:0], _labels(0, 0)).compute()
    with pytest.raises(ValueError, match="width changed"):
        FisherRatio().update(x, _labels(10, 5)).update(x[:, :2], _labels(10, 5))
    with pytest.raises(ValueError, match="0/1"):
        fisher_ratio(x, np.arange(10))
    with pytest.raises(ValueError, match="rows"):
        fisher_ratio(x, _labels(9, 3))


# ------------------------------------------------------------------------------ silhouette


def _silhouette_reference(x: np.ndarray, y: np.ndarray, metric: str) -> float:
    if metric == "cosine":
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        dist = 1.0 - u @ u.T
    else:
        dist = np.sqrt(np.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=-1))
    f = np.flatnonzero(y)
    a = dist[np.ix_(f, f)].sum(axis=1) / (f.size - 1)
    b = dist[np.ix_(f, np.flatnonzero(~y))].mean(axis=1)
    return float(np.mean((b - a) / np.maximum(a, b)))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_silhouette_matches_definition(rng: np.random.Generator, metric: DistanceMetric) -> None:
    x, y = _two_gaussians(rng, 15, 25, d=5, delta=1.0)
    x = x + 0.5
    assert forget_silhouette(x, y, metric=metric) == pytest.approx(_silhouette_reference(x, y, metric), rel=1e-9)


def test_silhouette_collapsed_is_one_and_shuffled_near_zero(rng: np.random.Generator) -> None:
    x, y = _collapsed(rng)
    assert forget_silhouette(x, y) == pytest.approx(1.0, abs=1e-12)
    z = rng.normal(size=(600, 16))
    assert abs(forget_silhouette(z, _labels(600, 100))) < 0.03


def test_silhouette_grows_with_separation(rng: np.random.Generator) -> None:
    values = [forget_silhouette(*_two_gaussians(rng, 60, 240, d=8, delta=delta)) for delta in (0.0, 2.0, 6.0)]
    assert values[0] < values[1] < values[2]
    assert values[2] > 0.3


def test_silhouette_invariances(rng: np.random.Generator) -> None:
    x, y = _two_gaussians(rng, 30, 90, d=6, delta=2.0)
    base = forget_silhouette(x, y)
    q = _orthogonal(rng, 6)
    assert forget_silhouette(3.0 * x @ q + 7.0, y) == pytest.approx(base, rel=1e-9)
    cos = forget_silhouette(x, y, metric="cosine")
    scales = rng.uniform(0.1, 10.0, size=(x.shape[0], 1))  # per-sample rescaling
    assert forget_silhouette(scales * x @ q, y, metric="cosine") == pytest.approx(cos, rel=1e-9)


def test_silhouette_class_and_errors(rng: np.random.Generator) -> None:
    x, y = _two_gaussians(rng, 30, 90, d=6, delta=2.0)
    metric = ForgetSilhouette(metric="cosine")
    for lo in range(0, 120, 25):
        metric.update(x[lo : lo + 25], y[lo : lo + 25])
    assert metric.n_samples == 120
    assert metric.compute() == pytest.approx(forget_silhouette(x, y, metric="cosine"), rel=1e-12)
    metric.reset()
    with pytest.raises(ValueError, match="before any update"):
        metric.compute()
    with pytest.raises(ValueError, match="at least 2 forget and 1 retained"):
        forget_silhouette(x, _labels(120, 1))
    with pytest.raises(ValueError, match="at least 2 forget and 1 retained"):
        forget_silhouette(x, _labels(120, 120))
    with pytest.raises(ValueError, match="metric must be one of"):
        forget_silhouette(x, y, metric="manhattan")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ kNN purity


def test_knn_purity_hand_computed() -> None:
    # 1-D points. F = {0, 1, 5}, R = {4, 6, 20}, k = 2:
    #   0 -> {1 (F), 4 (R)} = 1/2;  1 -> {0 (F), 4 (R)} = 1/2;  5 -> {4 (R), 6 (R)} = 0.
    x = np.array([0.0, 1.0, 5.0, 4.0, 6.0, 20.0])[:, None]
    y = np.array([1, 1, 1, 0, 0, 0])
    result = knn_purity(x, y, k=2)
    assert isinstance(result, PurityResult)
    assert result.purity == pytest.approx(1.0 / 3.0, rel=1e-12)
    assert result.chance == pytest.approx(2.0 / 5.0, rel=1e-12)
    assert (result.k, result.n_forget, result.n) == (2, 3, 6)
    assert result.to_dict() == {"purity": result.purity, "chance": result.chance, "k": 2, "n_forget": 3, "n": 6}


def test_knn_purity_collapsed_is_one(rng: np.random.Generator) -> None:
    # 40 exact duplicates: more than k + 1 ties at distance 0, the query itself may be hidden.
    x, y = _collapsed(rng)
    result = knn_purity(x, y)
    assert result.purity == 1.0
    assert result.chance == pytest.approx(39 / 239)


def test_knn_purity_shuffled_labels_at_chance(rng: np.random.Generator) -> None:
    x = rng.normal(size=(1000, 8))
    y = rng.permutation(_labels(1000, 200))
    result = knn_purity(x, y, k=10)
    assert result.chance == pytest.approx(199 / 999)
    assert result.purity == pytest.approx(result.chance, abs=0.04)


def test_knn_purity_cosine_sees_direction_collapse(rng: np.random.Generator) -> None:
    # Forgotten samples: 12 points 1 apart on one ray (collapsed in angle, spread in norm),
    # inside a dense cloud of retained samples (about 11 within distance 1 of any point).
    # Cosine neighbours are the other points of the ray (distance 0); Euclidean ones are not.
    direction = np.array([0.6, 0.8])
    forget = np.arange(1.0, 13.0)[:, None] * direction
    retain = rng.uniform(-12.0, 12.0, size=(2000, 2))
    x = np.vstack([forget, retain])
    y = _labels(2012, 12)
    assert knn_purity(x, y, k=5, metric="cosine").purity == 1.0
    assert knn_purity(x, y, k=5).purity < 0.3


def test_knn_purity_class_and_errors(rng: np.random.Generator) -> None:
    x, y = _two_gaussians(rng, 30, 90, d=6, delta=2.0)
    metric = KNNPurity(k=7)
    for lo in range(0, 120, 50):
        metric.update(x[lo : lo + 50], y[lo : lo + 50])
    assert metric.n_samples == 120
    assert metric.compute() == knn_purity(x, y, k=7)
    metric.reset()
    with pytest.raises(ValueError, match="before any update"):
        metric.compute()
    with pytest.raises(ValueError, match="at least one forget"):
        knn_purity(x, np.zeros(120, dtype=bool))
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, n - 1\]"):
        knn_purity(x[:5], y[:5], k=5)
    with pytest.raises(ValueError, match="k must be"):
        knn_purity(x, y, k=0)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        KNNPurity(k=0)
    with pytest.raises(ValueError, match="width changed"):
        KNNPurity().update(x, y).update(x[:, :3], y)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_knn_purity_matches_scikit_learn_neighbours(metric: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from sklearn.neighbors import NearestNeighbors

    import vfl_sim.audits.separability as sep

    rng = np.random.default_rng(7)
    x = rng.normal(size=(300, 6))
    y = rng.random(300) < 0.2
    x[y] += 0.8
    nn = NearestNeighbors(n_neighbors=6, metric=metric, algorithm="brute").fit(x)
    idx = nn.kneighbors(x[y], return_distance=False)[:, 1:]  # continuous data: the first is the query
    expected = float(np.mean(y[idx]))
    assert knn_purity(x, y, k=5, metric=metric).purity == pytest.approx(expected)  # type: ignore[arg-type]
    monkeypatch.setattr(sep, "_DISTANCE_BLOCK", 7)  # blocks do not change the answer
    assert knn_purity(x, y, k=5, metric=metric).purity == pytest.approx(expected)  # type: ignore[arg-type]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_forget_silhouette_matches_scikit_learn(metric: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from sklearn.metrics import silhouette_samples

    import vfl_sim.audits.separability as sep

    rng = np.random.default_rng(3)
    x = rng.normal(size=(250, 5))
    y = rng.random(250) < 0.3
    x[y] += 0.5
    x[0] = 0.0  # an all-zero row: cosine distance 1 to everything
    expected = float(np.mean(silhouette_samples(x, y.astype(int), metric=metric)[y]))
    assert forget_silhouette(x, y, metric=metric) == pytest.approx(expected, abs=1e-9)  # type: ignore[arg-type]
    monkeypatch.setattr(sep, "_DISTANCE_BLOCK", 11)
    assert forget_silhouette(x, y, metric=metric) == pytest.approx(expected, abs=1e-9)  # type: ignore[arg-type]
