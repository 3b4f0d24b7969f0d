"""Linear centered kernel alignment (CKA) between two representations of the same samples.

Kornblith, Norouzi, Lee and Hinton, "Similarity of Neural Network Representations
Revisited", ICML 2019, define linear CKA for representations ``X`` (n x p) and ``Y``
(n x q) of the same ``n`` samples as a normalised Hilbert-Schmidt independence criterion
(HSIC, Gretton et al., ALT 2005) with linear kernels ``K = X X^T`` and ``L = Y Y^T``::

    H       = I_n - 1 1^T / n                               (centering matrix)
    HSIC    = tr(K H L H) / (n - 1)^2
    CKA     = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))

Because ``H`` is symmetric and idempotent, ``tr(K H L H) = ||Y^T H X||_F^2``, and with
column-centered ``X_c = H X``, ``Y_c = H Y`` (the ``(n - 1)^2`` factors cancel)::

    CKA(X, Y) = ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F * ||Y_c^T Y_c||_F)

This module only ever forms the feature-space Gram matrices (p x p, q x q and p x q), never
the n x n kernels, so memory does not grow with the number of samples, and
:class:`LinearCKA` can accumulate them over minibatches. Everything is computed in float64.

CKA lies in ``[0, 1]``; it is invariant to orthogonal transforms and isotropic scaling of
either representation (and, when centered, to adding a constant offset), but not to
arbitrary invertible linear maps such as per-feature rescaling.

The HSIC above is the biased (V-statistic) estimator: for independent representations its
expectation is positive (about ``sqrt(p q) / n`` in CKA while that is small, near 1 when
``p, q >> n``), so with few samples and wide embeddings unrelated representations look
similar. ``estimator="unbiased"`` replaces
it by the unbiased estimator ``HSIC_1`` of Song, Smola, Gretton, Bedo and Borgwardt,
"Feature Selection via Dependence Maximization", JMLR 13:1393-1434, 2012, as used for
CKA by Nguyen, Raghu and Kornblith, "Do Wide and Deep Networks Learn the Same Things?",
ICLR 2021. With ``K~`` and ``L~`` the kernels with their diagonals set to zero::

    HSIC_1(K, L) = [ tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n - 1)(n - 2))
                     - 2 / (n - 2) * 1^T K~ L~ 1 ] / (n (n - 3))

needs ``n >= 4``, and for linear kernels reduces to the sufficient statistics listed in
:func:`linear_cka`; unbiased CKA lies in ``[-1, 1]`` and is near 0 for independent data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from vfl_sim.audits._arrays import feature_matrix
from vfl_sim.audits.metric import Metric

__all__ = ["linear_cka", "LinearCKA", "Estimator"]

Estimator = Literal["biased", "unbiased"]
_ESTIMATORS = ("biased", "unbiased")

# A feature whose centered sum of squares is this small a fraction of its raw sum of
# squares is treated as constant: rounding in the centering (x - mean) leaves residues of
# order eps relative to the raw values, and normalising by such residues would turn noise
# into an arbitrary similarity. The test is per feature, because one huge constant feature
# must not mask the variance of the others.
_DEGENERATE_RTOL = 64 * np.finfo(np.float64).eps


def _as_matrix(a: Any, name: str) -> np.ndarray:
    return feature_matrix(a, name)


def _check_pair(x: np.ndarray, y: np.ndarray) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same number of rows (samples), got {x.shape[0]} and {y.shape[0]}")


def _cka_from_grams(sxx: np.ndarray, syy: np.ndarray, sxy: np.ndarray, raw_x: np.ndarray, raw_y: np.ndarray) -> float:
    """CKA from (centered or not) feature Grams ``X^T X``, ``Y^T Y``, ``X^T Y``.

    ``raw_x`` and ``raw_y`` are the per-feature uncentered sums of squares, the scale
    against which a near-zero Gram diagonal is judged to be rounding residue.
    """
    dead_x = np.diag(sxx) <= _DEGENERATE_RTOL * raw_x
    dead_y = np.diag(syy) <= _DEGENERATE_RTOL * raw_y
    if dead_x.any() or dead_y.any():
        # Constant features contribute exactly nothing to centered CKA; drop their residues.
        sxx, syy, sxy = sxx.copy(), syy.copy(), sxy.copy()
        sxx[dead_x, :] = 0.0
        sxx[:, dead_x] = 0.0
        syy[dead_y, :] = 0.0
        syy[:, dead_y] = 0.0
        sxy[dead_x, :] = 0.0
        sxy[:, dead_y] = 0.0
    tx = float(np.trace(sxx))
    ty = float(np.trace(syy))
    # Zero denominator: one representation is constant (or all zero), so it carries no
    # information and shares none with the other; 0 is returned instead of NaN.
    if not (tx > 0.0 and ty > 0.0):
        return 0.0
    # CKA is scale invariant, so normalise by the traces first: every entry then lies in
    # [-1, 1] (Cauchy-Schwarz), and squaring cannot overflow for huge activations.
    num = float(np.sum(np.square(sxy / np.sqrt(tx * ty))))
    den = float(np.sqrt(np.sum(np.square(sxx / tx))) * np.sqrt(np.sum(np.square(syy / ty))))
    if not (den > 0.0 and np.isfinite(num) and np.isfinite(den)):
        return 0.0
    # Mathematically in [0, 1]; clip the last-ulp excursions so CKA(X, X) never reads 1 + 1e-16.
    return float(min(max(num / den, 0.0), 1.0))


def _check_estimator(estimator: str, centered: bool) -> None:
    if estimator not in _ESTIMATORS:
        raise ValueError(f"estimator must be one of {_ESTIMATORS}, got {estimator!r}")
    if estimator == "unbiased" and not centered:
        raise ValueError(
            "estimator='unbiased' is always centered (HSIC_1 is invariant to constant offsets); "
            "centered=False exists only for the biased estimator"
        )


def _pow2_scale(a: np.ndarray) -> float:
    """A power of two near ``1 / max|a|`` (1.0 for an all-zero ``a``).

    Multiplying by a power of two is exact in floating point, so it changes no digit of the
    result; it only keeps the fourth-order statistics (``sum ||x_i||^4``) far from overflow.
    """
    peak = float(np.max(np.abs(a))) if a.size else 0.0
    if not (peak > 0.0 and np.isfinite(peak)):
        return 1.0
    return float(np.ldexp(1.0, -int(np.frexp(peak)[1])))


@dataclass
class _UnbiasedStats:
    """Sums over samples ``i`` of the statistics that HSIC_1 needs for linear kernels.

    With ``k_i = ||x_i||^2`` and ``l_i = ||y_i||^2`` (rows as already shifted and scaled by
    the caller): ``kx = sum k_i``, ``kxkx = sum k_i^2``, ``kxky = sum k_i l_i``,
    ``x_kx = X^T k``, ``x_ky = X^T l``, ``y_kx = Y^T k``, ``y_ky = Y^T l`` and the ones the
    biased estimator also keeps: ``n``, ``sx = X^T 1``, ``sy = Y^T 1``, ``X^T X``, ``Y^T Y``
    and ``X^T Y``.

    A value, not a metric: sums of one batch that add up (``add``), shared by
    :func:`linear_cka` (one batch) and :class:`LinearCKA` (the
    :class:`~vfl_sim.audits.metric.Metric` that holds the running total). It keeps no rows,
    so the row buffer has no part in it.
    """

    n: int
    sx: np.ndarray
    sy: np.ndarray
    xtx: np.ndarray
    yty: np.ndarray
    xty: np.ndarray
    kx: float
    ky: float
    kxkx: float
    kyky: float
    kxky: float
    x_kx: np.ndarray
    x_ky: np.ndarray
    y_kx: np.ndarray
    y_ky: np.ndarray

    @classmethod
    def of(cls, xs: np.ndarray, ys: np.ndarray) -> _UnbiasedStats:
        k = np.sum(np.square(xs), axis=1)
        l_ = np.sum(np.square(ys), axis=1)
        return cls(
            n=xs.shape[0],
            sx=xs.sum(axis=0),
            sy=ys.sum(axis=0),
            xtx=xs.T @ xs,
            yty=ys.T @ ys,
            xty=xs.T @ ys,
            kx=float(k.sum()),
            ky=float(l_.sum()),
            kxkx=float(k @ k),
            kyky=float(l_ @ l_),
            kxky=float(k @ l_),
            x_kx=xs.T @ k,
            x_ky=xs.T @ l_,
            y_kx=ys.T @ k,
            y_ky=ys.T @ l_,
        )

    def add(self, other: _UnbiasedStats) -> None:
        self.n += other.n
        for name in ("sx", "sy", "xtx", "yty", "xty", "x_kx", "x_ky", "y_kx", "y_ky"):
            getattr(self, name).__iadd__(getattr(other, name))
        self.kx += other.kx
        self.ky += other.ky
        self.kxkx += other.kxkx
        self.kyky += other.kyky
        self.kxky += other.kxky

    def cka(self) -> float:
        n = self.n
        hkl = _hsic1(n, self.sx, self.sy, self.xty, self.kx, self.ky, self.kxky, self.x_ky, self.y_kx)
        hkk = _hsic1(n, self.sx, self.sx, self.xtx, self.kx, self.kx, self.kxkx, self.x_kx, self.x_kx)
        hll = _hsic1(n, self.sy, self.sy, self.yty, self.ky, self.ky, self.kyky, self.y_ky, self.y_ky)
        # HSIC_1(K, K) is a squared norm (of the U-centered kernel), so >= 0 up to rounding;
        # zero means a representation constant across samples: 0 instead of NaN.
        if not (hkk > 0.0 and hll > 0.0 and np.isfinite(hkl * hkk * hll)):
            return 0.0
        # Cauchy-Schwarz bounds it by 1 in absolute value; clip last-ulp excursions.
        return float(min(max(hkl / np.sqrt(hkk * hll), -1.0), 1.0))


def _hsic1(
    n: int,
    sa: np.ndarray,
    sb: np.ndarray,
    atb: np.ndarray,
    ka: float,
    kb: float,
    kakb: float,
    a_kb: np.ndarray,
    b_ka: np.ndarray,
) -> float:
    """HSIC_1 of linear kernels ``K = A A^T`` and ``L = B B^T`` from sufficient statistics.

    ``sa = A^T 1``, ``sb = B^T 1``, ``atb = A^T B``, ``ka = sum k_i``, ``kb = sum l_i``,
    ``kakb = sum k_i l_i``, ``a_kb = A^T l``, ``b_ka = B^T k`` with ``k = diag(K)``,
    ``l = diag(L)``. The three terms of Song et al.'s HSIC_1, with ``K~ = K - diag(k)``::

        tr(K~ L~)   = ||A^T B||_F^2 - k^T l
        1^T K~ 1    = ||sa||^2 - sum k_i
        1^T K~ L~ 1 = (A sa - k)^T (B sb - l)
                    = sa^T (A^T B) sb - sa^T (A^T l) - sb^T (B^T k) + k^T l
    """
    tr_kl = float(np.sum(np.square(atb))) - kakb
    sum_k = float(sa @ sa) - ka
    sum_l = float(sb @ sb) - kb
    one_kl_one = float(sa @ atb @ sb) - float(sa @ a_kb) - float(sb @ b_ka) + kakb
    return (tr_kl + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 * one_kl_one / (n - 2)) / (n * (n - 3))


def _unbiased_needs_four(n: int) -> ValueError:
    return ValueError(f"unbiased CKA (HSIC_1) needs at least 4 samples, got {n}")


def linear_cka(x: Any, y: Any, *, centered: bool = True, estimator: Estimator = "biased") -> float:
    """Linear CKA between two representations of the same samples (Kornblith et al., 2019).

    .. math::

        \\mathrm{CKA}(X, Y) = \\frac{\\lVert Y_c^\\top X_c \\rVert_F^2}
                                   {\\lVert X_c^\\top X_c \\rVert_F \\, \\lVert Y_c^\\top Y_c \\rVert_F}

    with ``X_c = X - 1 mean(X)`` and ``Y_c = Y - 1 mean(Y)`` (column means). This equals the
    HSIC form ``tr(K H L H) / sqrt(tr(K H K H) tr(L H L H))`` with ``K = X X^T``,
    ``L = Y Y^T`` and ``H = I - 1 1^T / n``, but costs ``O(n (p^2 + q^2 + p q))`` time and
    ``O(p^2 + q^2 + p q)`` memory instead of ``O(n^2)``.

    With ``estimator="unbiased"`` each HSIC is the unbiased estimator of Song et al. (JMLR
    2012), as in the CKA of Nguyen, Raghu and Kornblith (ICLR 2021):

    .. math::

        \\mathrm{HSIC}_1(K, L) = \\frac{1}{n(n-3)} \\Big[ \\operatorname{tr}(\\tilde K \\tilde L)
            + \\frac{\\mathbf 1^\\top \\tilde K \\mathbf 1 \\; \\mathbf 1^\\top \\tilde L \\mathbf 1}{(n-1)(n-2)}
            - \\frac{2}{n-2} \\mathbf 1^\\top \\tilde K \\tilde L \\mathbf 1 \\Big],
        \\qquad
        \\mathrm{CKA}_u = \\frac{\\mathrm{HSIC}_1(K, L)}{\\sqrt{\\mathrm{HSIC}_1(K, K)\\,\\mathrm{HSIC}_1(L, L)}}

    where ``K~ = K - diag(k)``, ``L~ = L - diag(l)``, ``k_i = ||x_i||^2``, ``l_i = ||y_i||^2``.
    For linear kernels every term is a feature-space statistic (``s_x = X^T 1``,
    ``s_y = Y^T 1``):

    .. math::

        \\operatorname{tr}(\\tilde K \\tilde L) &= \\lVert X^\\top Y \\rVert_F^2 - \\textstyle\\sum_i k_i l_i \\\\
        \\mathbf 1^\\top \\tilde K \\mathbf 1 &= \\lVert s_x \\rVert^2 - \\textstyle\\sum_i k_i \\\\
        \\mathbf 1^\\top \\tilde K \\tilde L \\mathbf 1 &= s_x^\\top (X^\\top Y) s_y
            - s_x^\\top \\textstyle\\sum_i l_i x_i - s_y^\\top \\sum_i k_i y_i + \\sum_i k_i l_i

    and likewise for ``(K, K)`` and ``(L, L)`` with ``X^T X``, ``sum k_i^2``, ``sum k_i x_i``
    and ``Y^T Y``, ``sum l_i^2``, ``sum l_i y_i``. HSIC_1 is invariant to adding a constant
    vector to every row, so the rows are centered first (only for accuracy). Because
    ``HSIC_1(K, L)`` equals ``<K^, L^>_F / (n (n - 3))`` for the U-centered kernels ``K^``,
    ``L^`` (Szekely and Rizzo, Ann. Statist. 2014), ``HSIC_1(K, K) >= 0`` and ``CKA_u`` lies
    in ``[-1, 1]``; it is unbiased in each HSIC (not in the ratio), and near 0 for
    independent representations at any ``n`` and width, where the biased value is inflated
    (about ``sqrt(p q) / n`` while small, near 1 when ``p, q >> n``).

    Parameters
    ----------
    x : array-like of shape (n, p)
        First representation (numpy array or torch tensor). Non-finite values become 0.
    y : array-like of shape (n, q)
        Second representation of the same ``n`` samples, in the same row order; ``q`` may
        differ from ``p``.
    centered : bool
        Center the columns first (default, the CKA of Kornblith et al.). ``False`` gives the
        uncentered alignment ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)``, the variant the
        Mirage reference code computes (arXiv:2605.20282). Beware that uncentered alignment
        is dominated by the feature means: for non-negative features (post-ReLU
        activations) both Grams share a large rank-one mean component, which pushes the
        value toward 1 for almost any pair of representations. Must be true for the
        unbiased estimator.
    estimator : {"biased", "unbiased"}
        ``"biased"`` (default): the HSIC of Kornblith et al., as above. ``"unbiased"``:
        HSIC_1 of Song et al. (needs ``n >= 4``).

    Returns
    -------
    float
        Similarity in ``[0, 1]`` (biased) or ``[-1, 1]`` (unbiased); 1 for representations
        equal up to rotation and isotropic scaling. 0.0 when the denominator is zero, i.e. when either representation is
        constant across samples (centered) or all zero (uncentered), or when ``n < 2`` and
        ``centered`` is true. A feature whose centered sum of squares is below about
        ``1.4e-14`` of its raw sum of squares (a spread under ~1e-7 of its mean, below
        float32 resolution) counts as constant, so rounding residue of the centering
        cannot masquerade as signal.

    Raises
    ------
    ValueError
        If ``x`` or ``y`` is not 2-D, has no features or no samples, or the row counts
        differ; if ``estimator`` is unknown, or ``"unbiased"`` with ``centered=False`` or
        fewer than 4 samples.
    """
    _check_estimator(estimator, centered)
    xa = _as_matrix(x, "x")
    ya = _as_matrix(y, "y")
    _check_pair(xa, ya)
    if xa.shape[0] == 0:
        raise ValueError("linear_cka needs at least one sample, got 0 rows")
    raw_x = np.sum(np.square(xa), axis=0)
    raw_y = np.sum(np.square(ya), axis=0)
    if estimator == "unbiased":
        if xa.shape[0] < 4:
            raise _unbiased_needs_four(xa.shape[0])
        sx, sy = _pow2_scale(xa), _pow2_scale(ya)
        xa = xa - xa.mean(axis=0)
        ya = ya - ya.mean(axis=0)
        # Constant features contribute exactly nothing to HSIC_1; drop their rounding residue.
        xa[:, np.sum(np.square(xa), axis=0) <= _DEGENERATE_RTOL * raw_x] = 0.0
        ya[:, np.sum(np.square(ya), axis=0) <= _DEGENERATE_RTOL * raw_y] = 0.0
        return _UnbiasedStats.of(xa * sx, ya * sy).cka()
    if centered:
        # Centering the data directly (rather than correcting raw Grams) is the most
        # accurate route when the whole matrix is at hand.
        xa = xa - xa.mean(axis=0)
        ya = ya - ya.mean(axis=0)
    return _cka_from_grams(xa.T @ xa, ya.T @ ya, xa.T @ ya, raw_x, raw_y)


class LinearCKA(Metric[float]):
    """Minibatch linear CKA, from accumulated sufficient statistics.

    Each ``update(x, y)`` adds a batch of rows of the two representations. The state is
    ``n``, the column sums ``sum_x``, ``sum_y`` and the Grams ``X^T X`` (p x p), ``Y^T Y``
    (q x q) and ``X^T Y`` (p x q), so memory is independent of ``n``. ``compute()`` forms
    the centered Grams as

    .. math::

        X_c^\\top Y_c = X^\\top Y - n \\, \\bar x \\bar y^\\top, \\qquad
        X_c^\\top X_c = X^\\top X - n \\, \\bar x \\bar x^\\top, \\qquad
        Y_c^\\top Y_c = Y^\\top Y - n \\, \\bar y \\bar y^\\top

    and returns the same value as :func:`linear_cka` on the concatenated batches (to about
    1e-10 relative or better).

    That subtraction cancels catastrophically when the features' means are large next to
    their spread (post-ReLU activations, pixel values). When centering, the statistics are
    therefore kept for ``x - s_x`` and ``y - s_y``, with shifts ``s`` fixed to the column
    means of the first non-empty batch; centering is unaffected by any constant shift, and
    what remains to cancel is only the small gap between the first batch's means and the
    overall ones. Per-feature raw sums of squares are kept as well, to tell constant
    features from rounding residue (see :func:`linear_cka`).

    With ``estimator="unbiased"`` the state also holds, for the shifted rows ``x_i``,
    ``y_i`` with ``k_i = ||x_i||^2`` and ``l_i = ||y_i||^2``, the scalars ``sum k_i``,
    ``sum l_i``, ``sum k_i^2``, ``sum l_i^2``, ``sum k_i l_i`` and the vectors
    ``sum k_i x_i``, ``sum l_i x_i`` (p), ``sum k_i y_i``, ``sum l_i y_i`` (q): with the
    Grams and column sums these give every term of HSIC_1 (formulas in :func:`linear_cka`),
    still in memory independent of ``n``. HSIC_1 is invariant to the shift, so no
    correction is needed, and the rows are also multiplied by a power of two fixed by the
    first batch (exact in floating point) to keep ``sum k_i^2`` far from overflow. The
    result equals :func:`linear_cka` with ``estimator="unbiased"`` on the concatenated
    batches to about 1e-10 relative; a representation whose features are all constant
    gives 0.0.

    Parameters
    ----------
    centered : bool
        As in :func:`linear_cka`.
    estimator : {"biased", "unbiased"}
        As in :func:`linear_cka`.
    """

    def __init__(self, *, centered: bool = True, estimator: Estimator = "biased") -> None:
        _check_estimator(estimator, centered)
        self.centered = bool(centered)
        self.estimator: Estimator = estimator
        super().__init__()

    def _clear(self) -> None:
        self._p: int | None = None
        self._q: int | None = None
        self._shift_x: np.ndarray | None = None
        self._shift_y: np.ndarray | None = None
        self._sum_x: np.ndarray | None = None
        self._sum_y: np.ndarray | None = None
        self._xtx: np.ndarray | None = None
        self._yty: np.ndarray | None = None
        self._xty: np.ndarray | None = None
        self._raw_x: np.ndarray | None = None
        self._raw_y: np.ndarray | None = None
        self._scale_x = 1.0
        self._scale_y = 1.0
        self._ustats: _UnbiasedStats | None = None

    def update(self, x: Any, y: Any) -> LinearCKA:
        """Add a batch: ``x`` of shape (b, p) and ``y`` of shape (b, q), rows paired; returns ``self``."""
        xa = _as_matrix(x, "x")
        ya = _as_matrix(y, "y")
        _check_pair(xa, ya)
        if self._p is None:
            self._p, self._q = xa.shape[1], ya.shape[1]
        elif (xa.shape[1], ya.shape[1]) != (self._p, self._q):
            raise ValueError(
                f"feature widths changed between batches: (p, q) was ({self._p}, {self._q}), "
                f"got ({xa.shape[1]}, {ya.shape[1]})"
            )
        self._count(xa.shape[0])
        if xa.shape[0] == 0:
            return self
        p, q = xa.shape[1], ya.shape[1]
        if self._shift_x is None:
            if self.centered:
                self._shift_x, self._shift_y = xa.mean(axis=0), ya.mean(axis=0)
            else:
                # Uncentered CKA needs the raw Grams themselves; nothing to shift.
                self._shift_x, self._shift_y = np.zeros(p), np.zeros(q)
            self._sum_x, self._sum_y = np.zeros(p), np.zeros(q)
            self._xtx = np.zeros((p, p))
            self._yty = np.zeros((q, q))
            self._xty = np.zeros((p, q))
            self._raw_x, self._raw_y = np.zeros(p), np.zeros(q)
            self._scale_x, self._scale_y = _pow2_scale(xa), _pow2_scale(ya)
        assert self._raw_x is not None and self._raw_y is not None
        self._raw_x += np.sum(np.square(xa), axis=0)
        self._raw_y += np.sum(np.square(ya), axis=0)
        xs = xa - self._shift_x
        ys = ya - self._shift_y
        self._sum_x += xs.sum(axis=0)
        self._sum_y += ys.sum(axis=0)
        self._xtx += xs.T @ xs
        self._yty += ys.T @ ys
        self._xty += xs.T @ ys
        if self.estimator == "unbiased":
            batch = _UnbiasedStats.of(xs * self._scale_x, ys * self._scale_y)
            if self._ustats is None:
                self._ustats = batch
            else:
                self._ustats.add(batch)
        return self

    def _compute(self) -> float:
        if self.n_samples == 0:
            raise ValueError("LinearCKA.compute() needs samples; every update() so far was empty")
        if self.estimator == "unbiased":
            return self._compute_unbiased()
        assert self._xtx is not None and self._yty is not None and self._xty is not None
        assert self._sum_x is not None and self._sum_y is not None
        assert self._raw_x is not None and self._raw_y is not None
        sxx, syy, sxy = self._xtx, self._yty, self._xty
        if self.centered:
            mx = self._sum_x / self.n_samples
            my = self._sum_y / self.n_samples
            sxx = sxx - self.n_samples * np.outer(mx, mx)
            syy = syy - self.n_samples * np.outer(my, my)
            sxy = sxy - self.n_samples * np.outer(mx, my)
        return _cka_from_grams(sxx, syy, sxy, self._raw_x, self._raw_y)

    def _compute_unbiased(self) -> float:
        if self.n_samples < 4:
            raise _unbiased_needs_four(self.n_samples)
        assert self._ustats is not None and self._xtx is not None and self._yty is not None
        assert self._sum_x is not None and self._sum_y is not None
        assert self._raw_x is not None and self._raw_y is not None
        # Centered per-feature sums of squares, judged against the raw ones as in the biased
        # path; if every feature of one side is constant, what is left is rounding residue.
        var_x = np.diag(self._xtx) - np.square(self._sum_x) / self.n_samples
        var_y = np.diag(self._yty) - np.square(self._sum_y) / self.n_samples
        if np.all(var_x <= _DEGENERATE_RTOL * self._raw_x) or np.all(var_y <= _DEGENERATE_RTOL * self._raw_y):
            return 0.0
        return self._ustats.cka()
