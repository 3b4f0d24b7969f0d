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
"""

from __future__ import annotations

from typing import Any

import numpy as np

from audits._arrays import feature_matrix

__all__ = ["linear_cka", "LinearCKA"]

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


def linear_cka(x: Any, y: Any, *, centered: bool = True) -> float:
    """Linear CKA between two representations of the same samples (Kornblith et al., 2019).

    .. math::

        \\mathrm{CKA}(X, Y) = \\frac{\\lVert Y_c^\\top X_c \\rVert_F^2}
                                   {\\lVert X_c^\\top X_c \\rVert_F \\, \\lVert Y_c^\\top Y_c \\rVert_F}

    with ``X_c = X - 1 mean(X)`` and ``Y_c = Y - 1 mean(Y)`` (column means). This equals the
    HSIC form ``tr(K H L H) / sqrt(tr(K H K H) tr(L H L H))`` with ``K = X X^T``,
    ``L = Y Y^T`` and ``H = I - 1 1^T / n``, but costs ``O(n (p^2 + q^2 + p q))`` time and
    ``O(p^2 + q^2 + p q)`` memory instead of ``O(n^2)``.

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
        value toward 1 for almost any pair of representations.

    Returns
    -------
    float
        Similarity in ``[0, 1]``; 1 for representations equal up to rotation and isotropic
        scaling. 0.0 when the denominator is zero, i.e. when either representation is
        constant across samples (centered) or all zero (uncentered), or when ``n < 2`` and
        ``centered`` is true. A feature whose centered sum of squares is below about
        ``1.4e-14`` of its raw sum of squares (a spread under ~1e-7 of its mean, below
        float32 resolution) counts as constant, so rounding residue of the centering
        cannot masquerade as signal.

    Raises
    ------
    ValueError
        If ``x`` or ``y`` is not 2-D, has no features or no samples, or the row counts differ.
    """
    xa = _as_matrix(x, "x")
    ya = _as_matrix(y, "y")
    _check_pair(xa, ya)
    if xa.shape[0] == 0:
        raise ValueError("linear_cka needs at least one sample, got 0 rows")
    raw_x = np.sum(np.square(xa), axis=0)
    raw_y = np.sum(np.square(ya), axis=0)
    if centered:
        # Centering the data directly (rather than correcting raw Grams) is the most
        # accurate route when the whole matrix is at hand.
        xa = xa - xa.mean(axis=0)
        ya = ya - ya.mean(axis=0)
    return _cka_from_grams(xa.T @ xa, ya.T @ ya, xa.T @ ya, raw_x, raw_y)


class LinearCKA:
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

    Parameters
    ----------
    centered : bool
        As in :func:`linear_cka`.
    """

    def __init__(self, *, centered: bool = True) -> None:
        self.centered = bool(centered)
        self.reset()

    def reset(self) -> None:
        """Drop all accumulated statistics."""
        self.n = 0
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
        assert self._raw_x is not None and self._raw_y is not None
        self._raw_x += np.sum(np.square(xa), axis=0)
        self._raw_y += np.sum(np.square(ya), axis=0)
        xs = xa - self._shift_x
        ys = ya - self._shift_y
        self.n += xa.shape[0]
        self._sum_x += xs.sum(axis=0)
        self._sum_y += ys.sum(axis=0)
        self._xtx += xs.T @ xs
        self._yty += ys.T @ ys
        self._xty += xs.T @ ys
        return self

    def compute(self) -> float:
        """Linear CKA of all rows seen since the last ``reset``."""
        if self.n == 0:
            raise ValueError("LinearCKA.compute() called before any update() with samples")
        assert self._xtx is not None and self._yty is not None and self._xty is not None
        assert self._sum_x is not None and self._sum_y is not None
        assert self._raw_x is not None and self._raw_y is not None
        sxx, syy, sxy = self._xtx, self._yty, self._xty
        if self.centered:
            mx = self._sum_x / self.n
            my = self._sum_y / self.n
            sxx = sxx - self.n * np.outer(mx, mx)
            syy = syy - self.n * np.outer(my, my)
            sxy = sxy - self.n * np.outer(mx, my)
        return _cka_from_grams(sxx, syy, sxy, self._raw_x, self._raw_y)
