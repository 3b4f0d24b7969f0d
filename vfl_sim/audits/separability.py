"""Feature separability of a forgotten class: is it still a distinct group in the embeddings?

Three geometric views of the same question, all on plain arrays ``embeddings`` (n, d) and
``is_forget`` (n,), with no classifier to train:

* :func:`fisher_ratio`: squared distance between the class means over the within-class
  variance (a trace-form Fisher criterion), with both parts estimated without bias, so that
  it reads about 0 when the class is not separated, whatever ``n``, ``d`` and the class
  proportions. Minibatch form :class:`FisherRatio` from ``O(d)`` sufficient statistics.
* :func:`forget_silhouette`: mean silhouette of the forgotten samples (Rousseeuw, 1987)
  against the retained ones; 1 for a tight, distant cluster, about 0 for no structure.
* :func:`knn_purity`: fraction of each forgotten sample's ``k`` nearest neighbours that are
  forgotten too, reported next to the chance level ``(n_F - 1) / (n - 1)``.

The silhouette and the kNN purity need all pairwise distances between forgotten samples
and all samples (``O(n_F n d)`` time); their classes accumulate rows and compute on
demand, so memory grows with ``n``. All three classes share the life cycle of
:class:`~vfl_sim.audits.metric.Metric` (``update`` / ``compute`` / ``reset`` / ``n_samples``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from vfl_sim.audits._arrays import feature_matrix, to_numpy
from vfl_sim.audits.metric import Metric

_DISTANCE_BLOCK = 1024  # forgotten samples per block of distances (memory: block x n floats)

__all__ = [
    "DistanceMetric",
    "FisherRatio",
    "ForgetSilhouette",
    "KNNPurity",
    "PurityResult",
    "fisher_ratio",
    "forget_silhouette",
    "knn_purity",
]

DistanceMetric = Literal["euclidean", "cosine"]
_METRICS = ("euclidean", "cosine")

# A within-class variance this small a fraction of the mean squared norm is rounding
# residue of a class collapsed to a point (see audits.cka for the same rule).
_DEGENERATE_RTOL = 64 * np.finfo(np.float64).eps


def _check_labels(is_forget: Any) -> np.ndarray:
    """``is_forget`` as a 1-D bool array, or a ValueError saying what is wrong."""
    y = to_numpy(is_forget)
    if y.ndim != 1:
        raise ValueError(f"is_forget must be 1-D (n_samples,), got shape {y.shape}")
    if y.dtype != bool and not (y.dtype.kind in "iuf" and np.all(np.isin(y, (0, 1)))):
        raise ValueError("is_forget must hold only 0/1 or False/True values")
    return y.astype(bool)


def _check_inputs(embeddings: Any, is_forget: Any) -> tuple[np.ndarray, np.ndarray]:
    y = _check_labels(is_forget)
    return feature_matrix(embeddings, "embeddings", y.size), y


def _check_metric(metric: str) -> None:
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")


# --------------------------------------------------------------------------- Fisher ratio


def fisher_ratio(embeddings: Any, is_forget: Any) -> float:
    """Trace-form Fisher ratio of the forgotten class against the rest, estimated without bias.

    With ``F`` the forgotten samples (``n_F`` of them) and ``R`` the retained ones
    (``n_R``), class means ``m_F``, ``m_R`` and unbiased class covariances ``S_F``, ``S_R``
    (divisor ``n_g - 1``), the population quantity is

    .. math::

        J = \\frac{\\lVert \\mu_F - \\mu_R \\rVert^2}{\\operatorname{tr}\\Sigma_F + \\operatorname{tr}\\Sigma_R},

    the multivariate (trace) form of Fisher's two-class ratio
    ``(mu_1 - mu_0)^2 / (sigma_1^2 + sigma_0^2)``: squared distance between the class means
    in units of the classes' total variance. It is estimated as

    .. math::

        \\hat J = \\frac{\\lVert m_F - m_R \\rVert^2 - \\operatorname{tr} S_F / n_F
                         - \\operatorname{tr} S_R / n_R}
                        {\\operatorname{tr} S_F + \\operatorname{tr} S_R}.

    The numerator is an unbiased estimate of ``||mu_F - mu_R||^2`` (the plain squared
    distance of sample means is inflated by ``tr Sigma_F / n_F + tr Sigma_R / n_R``, which
    grows with ``d`` and shrinks with ``n``), and the denominator is unbiased for
    ``tr Sigma_F + tr Sigma_R``; no equal-covariance assumption is made.

    Why this one, comparable across datasets and party counts:

    * one formula for every ``n`` and ``d``: no matrix is inverted, so ``n < d`` needs no
      fallback (the LDA criterion ``Delta^T S_W^{-1} Delta`` does, and with shrinkage its
      value under no separation still grows like ``d / n``);
    * about 0 when the labels carry no geometric signal (shuffled labels), for any ``n``,
      ``d`` and class proportions, because both parts are unbiased;
    * unit-free and invariant to rotations and reflections, isotropic scaling and
      translation of the embedding, the transforms under which two models' embeddings
      are equivalent (the same group as CKA's invariances);
    * does not depend on the class proportions (each class's variance counts once).

    It is *not* invariant to rescaling single features (standardize first if features
    have arbitrary units), and because the denominator is the variance in all directions,
    appending features that carry no class signal dilutes it: it measures how much of the
    embedding's spread is class separation. For two classes with isotropic within-class
    variance ``sigma^2`` per feature and means ``delta`` apart, ``J = delta^2 / (2 d sigma^2)``.

    Parameters
    ----------
    embeddings : array-like of shape (n, d)
        One row per audit sample (numpy array or torch tensor); non-finite values become 0.
    is_forget : array-like of shape (n,)
        1 (or True) for samples of the forgotten class (or request).

    Returns
    -------
    float
        The estimate. Population range ``[0, inf)``; the estimate can dip below 0 by
        noise, but never below ``-1 / min(n_F, n_R)`` (>= -0.5). ``inf`` when both classes
        are collapsed to two distinct points (zero within-class variance), 0.0 when all
        samples coincide.

    Raises
    ------
    ValueError
        If a class has fewer than 2 samples (a class variance needs two), or the inputs
        are malformed.
    """
    return FisherRatio().update(embeddings, is_forget).compute()


class FisherRatio(Metric[float]):
    """Minibatch :func:`fisher_ratio` from sufficient statistics.

    Per class ``g`` the state is the count ``n_g``, the column sum ``sum_i x_i`` (d) and the
    scalar ``sum_i ||x_i||^2``, of the rows shifted by ``c_g``, the class mean of the first
    batch that holds that class (centering is unaffected by the shift, and it avoids the
    cancellation of ``sum ||x||^2 - ||sum x||^2 / n`` when the mean is large next to the
    spread). Then, with ``s_g`` and ``q_g`` those sums,

    .. math::

        m_g = c_g + s_g / n_g, \\qquad
        \\operatorname{tr} S_g = \\frac{q_g - \\lVert s_g \\rVert^2 / n_g}{n_g - 1},

    so memory is ``O(d)`` and the result equals :func:`fisher_ratio` on the concatenated
    batches to rounding.
    """

    def _clear(self) -> None:
        self._d: int | None = None
        self._class_counts = np.zeros(2, dtype=np.int64)
        self._shift: list[np.ndarray | None] = [None, None]
        self._sum: list[np.ndarray | None] = [None, None]
        self._sq = np.zeros(2)
        self._raw_sq = 0.0

    def update(self, embeddings: Any, is_forget: Any) -> FisherRatio:
        """Add a batch: embeddings ``(b, d)`` and labels ``(b,)``; returns ``self``."""
        x, y = _check_inputs(embeddings, is_forget)
        if self._d is None:
            self._d = x.shape[1]
        elif x.shape[1] != self._d:
            raise ValueError(f"embeddings width changed between batches: {self._d} then {x.shape[1]}")
        self._raw_sq += float(np.sum(np.square(x)))
        for g, rows in ((1, x[y]), (0, x[~y])):
            if rows.shape[0] == 0:
                continue
            shift = self._shift[g]
            if shift is None:
                shift = rows.mean(axis=0)
                self._shift[g] = shift
                self._sum[g] = np.zeros(x.shape[1])
            acc = self._sum[g]
            assert acc is not None
            xs = rows - shift
            acc += xs.sum(axis=0)
            self._sq[g] += float(np.sum(np.square(xs)))
            self._class_counts[g] += rows.shape[0]
        self._count(x.shape[0])
        return self

    def _compute(self) -> float:
        n_r, n_f = int(self._class_counts[0]), int(self._class_counts[1])
        if min(n_f, n_r) < 2:
            raise ValueError(
                f"fisher_ratio needs at least 2 forget and 2 retained samples, got {n_f} forget and {n_r} retained"
            )
        means, traces = [], []
        for g, n_g in ((1, n_f), (0, n_r)):
            s, c = self._sum[g], self._shift[g]
            assert s is not None and c is not None
            means.append(c + s / n_g)
            # Clip rounding residue of a class collapsed to a point.
            traces.append(max((self._sq[g] - float(s @ s) / n_g) / (n_g - 1), 0.0))
        tr_f, tr_r = traces
        dist2 = float(np.sum(np.square(means[0] - means[1])))
        scale = self._raw_sq / (n_f + n_r)
        den = tr_f + tr_r
        if den <= _DEGENERATE_RTOL * scale:
            # Both classes are single points: perfectly separated unless they coincide.
            return float("inf") if dist2 > _DEGENERATE_RTOL * scale else 0.0
        return (dist2 - tr_f / n_f - tr_r / n_r) / den


# ----------------------------------------------------------------------------- silhouette


def forget_silhouette(embeddings: Any, is_forget: Any, *, metric: DistanceMetric = "euclidean") -> float:
    """Mean silhouette of the forgotten samples, with the retained samples as the other cluster.

    For each forgotten sample ``i`` (Rousseeuw, "Silhouettes: a graphical aid to the
    interpretation and validation of cluster analysis", J. Comput. Appl. Math. 20, 1987):

    .. math::

        a(i) = \\frac{1}{n_F - 1} \\sum_{j \\in F, j \\ne i} \\delta(x_i, x_j), \\quad
        b(i) = \\frac{1}{n_R} \\sum_{j \\in R} \\delta(x_i, x_j), \\quad
        s(i) = \\frac{b(i) - a(i)}{\\max(a(i), b(i))},

    and the result is the mean of ``s(i)`` over the forgotten samples (the retained samples
    are one cluster, so ``b`` is the distance to it). Only the distances from forgotten
    samples are computed (``n_F x n``, in blocks), not the full matrix
    :func:`sklearn.metrics.silhouette_samples` would build; the values are the same.

    Parameters
    ----------
    embeddings : array-like of shape (n, d)
        One row per audit sample; non-finite values become 0.
    is_forget : array-like of shape (n,)
        1 (or True) for forgotten samples.
    metric : {"euclidean", "cosine"}
        ``delta``: Euclidean distance (default; sensitive to the embedding's scale only
        through ratios, so invariant to rotation, isotropic scaling and translation), or
        cosine distance ``1 - cos(x_i, x_j)`` (invariant to rotation and to rescaling each
        sample, not to translation; an all-zero row is at distance 1 from every other row).

    Returns
    -------
    float
        In ``[-1, 1]``: 1 when the forgotten samples sit on one point away from the rest,
        about 0 when they are spread like the rest (shuffled labels), negative when they
        are closer to the retained samples than to each other. Chance level is about 0.

    Raises
    ------
    ValueError
        With fewer than 2 forgotten or no retained samples, or malformed inputs.
    """
    _check_metric(metric)
    x, y = _check_inputs(embeddings, is_forget)
    n_f = int(y.sum())
    if n_f < 2 or n_f == y.size:
        raise ValueError(
            f"forget_silhouette needs at least 2 forget and 1 retained sample, got {n_f} forget "
            f"and {y.size - n_f} retained"
        )
    total = 0.0
    for block, d in _forget_distances(x, y, metric):
        d[np.arange(block.size), block] = 0.0  # exactly: a sample is at distance 0 from itself
        a = d[:, y].sum(axis=1) / (n_f - 1)
        b = d[:, ~y].mean(axis=1)
        denom = np.maximum(a, b)
        total += float(np.sum(np.divide(b - a, denom, out=np.zeros_like(a), where=denom > 0)))
    return total / n_f


def _forget_distances(x: np.ndarray, y: np.ndarray, metric: DistanceMetric) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Distances ``(b, n)`` from blocks of the forgotten samples to every sample, with the
    block's row indices: the only part of the full ``n x n`` matrix the forget-class
    separability scores need, one BLAS product per block so memory stays bounded at any n."""
    queries = np.flatnonzero(y)
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1.0)
    sq = np.einsum("ij,ij->i", x, x)
    for start in range(0, queries.size, _DISTANCE_BLOCK):
        block = queries[start : start + _DISTANCE_BLOCK]
        dot = x[block] @ x.T
        if metric == "cosine":
            # 1 - cos on unit rows; an all-zero row stays at distance 1 from every other row.
            yield block, 1.0 - dot
        else:
            yield block, np.sqrt(np.maximum(sq[block, None] + sq[None, :] - 2.0 * dot, 0.0))


class ForgetSilhouette(Metric[float]):
    """Minibatch form of :func:`forget_silhouette`: stores the rows, computes on demand.

    Parameters
    ----------
    metric : {"euclidean", "cosine"}
        As in :func:`forget_silhouette`.
    """

    def __init__(self, *, metric: DistanceMetric = "euclidean") -> None:
        _check_metric(metric)
        self.metric: DistanceMetric = metric
        super().__init__(columns=("embeddings", "is_forget"))

    def update(self, embeddings: Any, is_forget: Any) -> ForgetSilhouette:
        """Add a batch: embeddings ``(b, d)`` and labels ``(b,)``; returns ``self``."""
        self._append(*_check_inputs(embeddings, is_forget))
        return self

    def _compute(self) -> float:
        return forget_silhouette(self._rows.column("embeddings"), self._rows.column("is_forget"), metric=self.metric)


# ----------------------------------------------------------------------------- kNN purity


@dataclass(frozen=True)
class PurityResult:
    """kNN purity of the forgotten samples and its chance level.

    Attributes
    ----------
    purity : float
        Mean over forgotten samples of the fraction of their ``k`` nearest neighbours
        (themselves excluded) that are forgotten too, in ``[0, 1]``.
    chance : float
        ``(n_forget - 1) / (n - 1)``: the expected purity when the labels are independent
        of the geometry (each other sample is a forgotten one with this probability).
    k : int
        Number of neighbours.
    n_forget : int
        Number of forgotten samples.
    n : int
        Number of samples.
    """

    purity: float
    chance: float
    k: int
    n_forget: int
    n: int

    def to_dict(self) -> dict[str, float | int]:
        """Plain ``dict`` of the fields, ready for JSON."""
        return {
            "purity": float(self.purity),
            "chance": float(self.chance),
            "k": int(self.k),
            "n_forget": int(self.n_forget),
            "n": int(self.n),
        }


def knn_purity(embeddings: Any, is_forget: Any, *, k: int = 10, metric: DistanceMetric = "euclidean") -> PurityResult:
    """kNN purity of the forgotten class, with its chance level.

    .. math::

        \\mathrm{purity} = \\frac{1}{n_F} \\sum_{i \\in F} \\frac{|N_k(i) \\cap F|}{k}, \\qquad
        \\mathrm{chance} = \\frac{n_F - 1}{n - 1},

    where ``N_k(i)`` are the ``k`` samples nearest to ``x_i`` other than ``i`` itself.
    Under randomly permuted labels the expected purity is exactly ``chance``, so purity
    above it means the forgotten samples still cluster. Ties at the ``k``-th distance
    are broken arbitrarily; a sample's exact duplicates count as neighbours.

    Parameters
    ----------
    embeddings : array-like of shape (n, d)
        One row per audit sample; non-finite values become 0.
    is_forget : array-like of shape (n,)
        1 (or True) for forgotten samples.
    k : int
        Number of neighbours (default 10), between 1 and ``n - 1``.
    metric : {"euclidean", "cosine"}
        As in :func:`forget_silhouette`.

    Returns
    -------
    PurityResult
        ``purity`` in ``[0, 1]`` (1: every neighbour of a forgotten sample is forgotten)
        and ``chance`` beside it.

    Raises
    ------
    ValueError
        Without forgotten samples, with ``k`` outside ``[1, n - 1]``, or malformed inputs.
    """
    _check_metric(metric)
    x, y = _check_inputs(embeddings, is_forget)
    n, n_f = y.size, int(y.sum())
    if n_f == 0:
        raise ValueError("knn_purity needs at least one forget sample, got none")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n - 1:
        raise ValueError(f"k must be an integer in [1, n - 1] = [1, {n - 1}], got {k!r}")
    k = int(k)
    hits = 0
    # Brute force over blocks of forgotten samples (scikit-learn's NearestNeighbors costs
    # ~10 ms of overhead per call at audit sizes).
    for block, d in _forget_distances(x, y, metric):
        d[np.arange(block.size), block] = np.inf  # a sample is not its own neighbour
        nearest = np.argpartition(d, k - 1, axis=1)[:, :k]
        hits += int(y[nearest].sum())
    purity = hits / (n_f * k)
    return PurityResult(purity=purity, chance=(n_f - 1) / (n - 1), k=k, n_forget=n_f, n=n)


class KNNPurity(Metric[PurityResult]):
    """Minibatch form of :func:`knn_purity`: stores the rows, computes on demand.

    Parameters
    ----------
    k, metric
        As in :func:`knn_purity`.
    """

    def __init__(self, *, k: int = 10, metric: DistanceMetric = "euclidean") -> None:
        _check_metric(metric)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        self.k = int(k)
        self.metric: DistanceMetric = metric
        super().__init__(columns=("embeddings", "is_forget"))

    def update(self, embeddings: Any, is_forget: Any) -> KNNPurity:
        """Add a batch: embeddings ``(b, d)`` and labels ``(b,)``; returns ``self``."""
        self._append(*_check_inputs(embeddings, is_forget))
        return self

    def _compute(self) -> PurityResult:
        rows = self._rows
        return knn_purity(rows.column("embeddings"), rows.column("is_forget"), k=self.k, metric=self.metric)
