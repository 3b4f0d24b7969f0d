"""Retraining consistency: does the audited model map onto retrain as well on forget samples?

Yong, Ong and Chan, "Erased, but Not Gone: Output Forgetting Is Not True Forgetting"
(arXiv:2606.25001), take the model retrained from scratch without the forget data as the
operational reference of correct forgetting, and report that unlearned models which look
forgotten at the output still show a *structured* mismatch with retraining in representation
space: an asymmetry between forget and retain samples, and residual discrepancy concentrated
along retraining-related directions rather than spread out. This module measures both with
a linear alignment; the exact estimator below is this project's, not the paper's code.

Let ``A`` (n x p) be the audited model's representation and ``R`` (n x q) the retrained
model's representation of the same samples. On retained samples only (rows ``S``), fit the
affine map with the smallest ridge-regularised squared error::

    f(a)   = (a - mean_S(A)) W + mean_S(R)
    W      = (A_c^T A_c + lambda I_p)^{-1} A_c^T R_c          (A_c, R_c: rows S, centered)
    lambda = ridge * tr(A_c^T A_c) / p                        (relative, so scale-free)

and score a group ``G`` of samples (the forget samples, or held-out retained samples) by the
relative residual, one minus the coefficient of determination of ``f`` on ``G``::

    rho_G = ||R_G - f(A_G)||_F^2 / ||R_G - 1 mean_G(R)||_F^2

and by the share of the residual energy that lies in retrain's top-``k`` principal
directions ``U_k`` (eigenvectors of ``R_c^T R_c`` on the fit rows, largest first)::

    share_G = ||(R_G - f(A_G)) U_k||_F^2 / ||R_G - f(A_G)||_F^2

``k`` defaults to the smallest number of directions holding ``variance`` (90 %) of retrain's
variance on the fit rows. A residual spread evenly over all ``q`` directions would give a
share of about ``k / q`` (reported as ``topk_dim_fraction``); a share well above it means
the mismatch sits where retrain keeps its signal.

Reading: a model that truly forgot is (up to a linear map) what retraining gives, so
``rho_forget`` is as small as ``rho_retain``; a model that kept the forgotten structure
cannot be mapped onto retrain on the forget samples by a map fit on retained ones, which
leaves ``rho_forget`` well above ``rho_retain``. ``rho`` may exceed 1 when the map does worse
than predicting the group's own mean. Retained rows are scored on held-out rows, so a map
with many parameters cannot look good by fitting its own training rows.

:func:`retrain_consistency` splits the retained rows itself; :class:`RetrainConsistency`
takes explicit fit rows and accumulates both the fit and the scores as sufficient
statistics (``A^T A``, ``A^T R``, ``R^T R``, column sums), so memory is independent of
``n`` and the results equal the one-shot ones up to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vfl_sim.audits._arrays import feature_matrix, to_numpy
from vfl_sim.audits.metric import Metric

__all__ = ["ConsistencyResult", "RetrainConsistency", "retrain_consistency"]

# A group whose residual energy is this small a fraction of its variance has no residual to
# speak of (rounding and the ridge's shrinkage only), so its top-k share is undefined rather
# than the direction of that noise.
_ZERO_RESIDUAL_RTOL = 1e-10
# Eigenvalues of the fit Gram below this fraction of the largest are rounding residue.
_EIG_RTOL = 1e-12


@dataclass(frozen=True)
class ConsistencyResult:
    """Retraining consistency of one representation.

    Attributes
    ----------
    forget_residual, retain_residual : float or None
        Relative residual ``rho_G`` on forget samples and on held-out retained samples
        (0 = perfectly linearly predictable from the audited model; about 1 = no better
        than the group mean). ``None`` when the group is empty, has fewer than two rows, or
        retrain is constant on it.
    forget_topk_share, retain_topk_share : float or None
        Fraction in ``[0, 1]`` of the group's residual energy inside retrain's top-``k``
        principal directions; ``None`` when ``k = 0`` or the residual is negligible
        (``rho_G`` below ``1e-10``: rounding and ridge shrinkage only).
    k : int
        Number of principal directions used.
    topk_dim_fraction : float
        ``k / q``, the share an isotropic residual would have.
    n_fit, n_forget, n_retain : int
        Rows the map was fit on, and forget and retained rows scored.
    """

    forget_residual: float | None
    retain_residual: float | None
    forget_topk_share: float | None
    retain_topk_share: float | None
    k: int
    topk_dim_fraction: float
    n_fit: int
    n_forget: int
    n_retain: int

    @property
    def residual_gap(self) -> float | None:
        """``forget_residual - retain_residual`` (positive: forget samples map worse)."""
        if self.forget_residual is None or self.retain_residual is None:
            return None
        return self.forget_residual - self.retain_residual

    def to_dict(self) -> dict[str, float | int | None]:
        """Plain ``dict`` of the fields and ``residual_gap``, ready for JSON."""
        return {
            "forget_residual": self.forget_residual,
            "retain_residual": self.retain_residual,
            "residual_gap": self.residual_gap,
            "forget_topk_share": self.forget_topk_share,
            "retain_topk_share": self.retain_topk_share,
            "k": self.k,
            "topk_dim_fraction": self.topk_dim_fraction,
            "n_fit": self.n_fit,
            "n_forget": self.n_forget,
            "n_retain": self.n_retain,
        }


def _check_mask(is_forget: Any, n: int) -> np.ndarray:
    m = to_numpy(is_forget)
    if m.ndim != 1:
        raise ValueError(f"is_forget must be 1-D (n_samples,), got shape {m.shape}")
    if m.size != n:
        raise ValueError(f"is_forget has {m.size} labels but the representations have {n} rows")
    if m.dtype != bool and not (m.dtype.kind in "iuf" and np.all(np.isin(m, (0, 1)))):
        raise ValueError("is_forget must hold only 0/1 or False/True values")
    return m.astype(bool)


def _check_pair(a: Any, r: Any) -> tuple[np.ndarray, np.ndarray]:
    am = feature_matrix(a, "A")
    rm = feature_matrix(r, "R")
    if am.shape[0] != rm.shape[0]:
        raise ValueError(f"A and R must have the same number of rows (samples), got {am.shape[0]} and {rm.shape[0]}")
    return am, rm


class _GroupStats:
    """Additive scoring statistics of one group, with a shift for accurate centering."""

    def __init__(self) -> None:
        self.n = 0
        self.shift: np.ndarray | None = None
        self.sum_r: np.ndarray | None = None
        self.sq_r = 0.0
        self.res = 0.0
        self.res_topk = 0.0

    def add(self, r: np.ndarray, e: np.ndarray, e_topk: np.ndarray) -> None:
        if r.shape[0] == 0:
            return
        if self.shift is None:
            # Centering by the group's own first-batch mean avoids cancellation when the
            # group sits far from the origin (a class offset, post-ReLU features).
            self.shift = r.mean(axis=0)
            self.sum_r = np.zeros(r.shape[1])
        assert self.sum_r is not None
        rs = r - self.shift
        self.n += r.shape[0]
        self.sum_r += rs.sum(axis=0)
        self.sq_r += float(np.sum(np.square(rs)))
        self.res += float(np.sum(np.square(e)))
        self.res_topk += float(np.sum(np.square(e_topk)))

    def residual(self) -> float | None:
        if self.n < 2 or self.sum_r is None:
            return None
        total = self.sq_r - float(np.sum(np.square(self.sum_r))) / self.n
        if not total > 0.0:
            return None
        return self.res / total

    def share(self, k: int) -> float | None:
        if self.n == 0 or k == 0 or self.sum_r is None:
            return None
        total = self.sq_r - float(np.sum(np.square(self.sum_r))) / self.n
        if not self.res > _ZERO_RESIDUAL_RTOL * max(total, 0.0) or not self.res > 0.0:
            return None
        return float(min(max(self.res_topk / self.res, 0.0), 1.0))


class RetrainConsistency(Metric[ConsistencyResult]):
    """Linear retraining consistency from sufficient statistics (see the module docstring).

    Life cycle:

    1. ``fit(A_retain, R_retain)`` (or ``reset()`` then ``partial_fit`` per batch) gives the
       retained rows the map and the principal directions are estimated from. The state is
       ``n``, column sums and the Grams ``A^T A`` (p x p), ``A^T R`` (p x q) and ``R^T R``
       (q x q), kept for ``A - s_A`` and ``R - s_R`` with shifts ``s`` fixed to the first
       batch's means, so centering does not cancel catastrophically.
    2. ``update(A, R, is_forget)`` per batch of scored rows (forget rows, and retained rows
       *not* used in the fit), then ``compute()``. The first ``update`` freezes the map;
       ``partial_fit`` afterwards raises until ``reset()``.
    3. ``score(A, R, is_forget)`` scores one set of rows without touching the accumulated
       scores.

    Parameters
    ----------
    ridge : float
        Relative ridge ``lambda / (tr(A_c^T A_c) / p)``, default ``1e-8``: a direction of ``A``
        with variance ``s`` is shrunk by the factor ``s / (s + lambda)``, so only directions
        far below the mean variance are touched; exactly collinear or constant features get
        weight 0 through the pseudo-inverse either way. When ``p`` approaches the number of
        fit rows the least-squares map overfits them, which the held-out retained rows then
        show as a large ``retain_residual``; raise ``ridge`` (e.g. to ``1e-2``) there.
    top_k : int or None
        Number of retrain principal directions for the energy share; ``None`` (default)
        picks the smallest ``k`` reaching ``variance``.
    variance : float
        Fraction of retrain's variance on the fit rows that the default ``k`` must hold, in
        ``(0, 1]``; default 0.9.
    """

    def __init__(self, *, ridge: float = 1e-8, top_k: int | None = None, variance: float = 0.9) -> None:
        if not ridge >= 0.0:
            raise ValueError(f"ridge must be non-negative, got {ridge}")
        if top_k is not None and int(top_k) < 0:
            raise ValueError(f"top_k must be non-negative, got {top_k}")
        if not 0.0 < variance <= 1.0:
            raise ValueError(f"variance must lie in (0, 1], got {variance}")
        self.ridge = float(ridge)
        self.top_k = None if top_k is None else int(top_k)
        self.variance = float(variance)
        super().__init__()

    # -- fit ---------------------------------------------------------------------------
    def _clear(self) -> None:
        # ``reset`` drops the fit statistics and the fitted map too, not only the scores.
        self.n_fit = 0
        self._widths: tuple[int, int] | None = None
        self._shift_a: np.ndarray | None = None
        self._shift_r: np.ndarray | None = None
        self._sum_a: np.ndarray | None = None
        self._sum_r: np.ndarray | None = None
        self._ata: np.ndarray | None = None
        self._atr: np.ndarray | None = None
        self._rtr: np.ndarray | None = None
        self._map: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._k = 0
        self._forget = _GroupStats()
        self._retain = _GroupStats()

    def fit(self, A_retain: Any, R_retain: Any) -> RetrainConsistency:
        """Fit the map and retrain's principal directions on retained rows; returns ``self``."""
        self.reset()
        return self.partial_fit(A_retain, R_retain)

    def partial_fit(self, A_retain: Any, R_retain: Any) -> RetrainConsistency:
        """Add a batch of retained fit rows, ``A`` (b, p) and ``R`` (b, q); returns ``self``."""
        if self._map is not None:
            raise ValueError("the map is frozen once scoring started; call reset() to fit again")
        a, r = _check_pair(A_retain, R_retain)
        if self._widths is None:
            self._widths = (a.shape[1], r.shape[1])
        elif (a.shape[1], r.shape[1]) != self._widths:
            raise ValueError(
                f"feature widths changed between fit batches: (p, q) was {self._widths}, "
                f"got ({a.shape[1]}, {r.shape[1]})"
            )
        if a.shape[0] == 0:
            return self
        if self._shift_a is None:
            p, q = a.shape[1], r.shape[1]
            self._shift_a, self._shift_r = a.mean(axis=0), r.mean(axis=0)
            self._sum_a, self._sum_r = np.zeros(p), np.zeros(q)
            self._ata, self._atr, self._rtr = np.zeros((p, p)), np.zeros((p, q)), np.zeros((q, q))
        assert self._shift_r is not None and self._sum_a is not None and self._sum_r is not None
        assert self._ata is not None and self._atr is not None and self._rtr is not None
        a_s = a - self._shift_a
        r_s = r - self._shift_r
        self.n_fit += a.shape[0]
        self._sum_a += a_s.sum(axis=0)
        self._sum_r += r_s.sum(axis=0)
        self._ata += a_s.T @ a_s
        self._atr += a_s.T @ r_s
        self._rtr += r_s.T @ r_s
        return self

    def _solve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(W, a_mean, r_mean, U_k)``; fitted once, on first use."""
        if self._map is not None:
            return self._map
        if self.n_fit < 2:
            raise ValueError(f"the map needs at least 2 retained fit rows, got {self.n_fit}; call fit() first")
        assert self._shift_a is not None and self._shift_r is not None
        assert self._sum_a is not None and self._sum_r is not None
        assert self._ata is not None and self._atr is not None and self._rtr is not None
        n = self.n_fit
        ma, mr = self._sum_a / n, self._sum_r / n
        saa = self._ata - n * np.outer(ma, ma)
        sar = self._atr - n * np.outer(ma, mr)
        srr = self._rtr - n * np.outer(mr, mr)
        p = saa.shape[0]
        lam = self.ridge * max(float(np.trace(saa)), 0.0) / p
        # Symmetric eigen-solve: a pseudo-inverse that also survives lambda = 0 with
        # constant or collinear features (their directions get weight 0).
        ev, vec = np.linalg.eigh((saa + saa.T) / 2.0 + lam * np.eye(p))
        keep = ev > _EIG_RTOL * max(float(ev[-1]), 0.0)
        inv = np.zeros_like(ev)
        inv[keep] = 1.0 / ev[keep]
        w = (vec * inv) @ (vec.T @ sar)
        # Principal directions of retrain on the fit rows, largest variance first.
        rv, rvec = np.linalg.eigh((srr + srr.T) / 2.0)
        rv, rvec = np.clip(rv[::-1], 0.0, None), rvec[:, ::-1]
        total = float(rv.sum())
        if self.top_k is not None:
            k = min(self.top_k, rv.size)
        elif total > 0.0:
            k = int(np.searchsorted(np.cumsum(rv) / total, self.variance * (1 - 1e-12)) + 1)
            k = min(k, rv.size)
        else:
            k = 0
        self._k = k
        self._map = (w, ma + self._shift_a, mr + self._shift_r, rvec[:, :k])
        return self._map

    @property
    def k(self) -> int:
        """Number of retrain principal directions used (fits the map if needed)."""
        self._solve()
        return self._k

    def predict(self, A: Any) -> np.ndarray:
        """``f(A)``: the audited representation mapped into retrain's space, (n, q)."""
        w, ma, mr, _ = self._solve()
        a = feature_matrix(A, "A")
        if a.shape[1] != w.shape[0]:
            raise ValueError(f"A has {a.shape[1]} features, the map was fit on {w.shape[0]}")
        return np.asarray((a - ma) @ w + mr)

    # -- score -------------------------------------------------------------------------
    def _add(self, forget: _GroupStats, retain: _GroupStats, A: Any, R: Any, is_forget: Any) -> int:
        """Score rows into ``forget`` and ``retain``; returns how many."""
        a, r = _check_pair(A, R)
        mask = _check_mask(is_forget, a.shape[0])
        w, _, _, u = self._solve()
        if r.shape[1] != w.shape[1]:
            raise ValueError(f"R has {r.shape[1]} features, the map was fit on {w.shape[1]}")
        e = r - self.predict(a)
        e_topk = e @ u
        forget.add(r[mask], e[mask], e_topk[mask])
        retain.add(r[~mask], e[~mask], e_topk[~mask])
        return int(r.shape[0])

    def _result(self, forget: _GroupStats, retain: _GroupStats) -> ConsistencyResult:
        w, _, _, _ = self._solve()
        q = w.shape[1]
        return ConsistencyResult(
            forget_residual=forget.residual(),
            retain_residual=retain.residual(),
            forget_topk_share=forget.share(self._k),
            retain_topk_share=retain.share(self._k),
            k=self._k,
            topk_dim_fraction=self._k / q,
            n_fit=self.n_fit,
            n_forget=forget.n,
            n_retain=retain.n,
        )

    def update(self, A: Any, R: Any, is_forget: Any) -> RetrainConsistency:
        """Add scored rows (forget rows and held-out retained rows); returns ``self``."""
        self._count(self._add(self._forget, self._retain, A, R, is_forget))
        return self

    def _compute(self) -> ConsistencyResult:
        return self._result(self._forget, self._retain)

    def score(self, A: Any, R: Any, is_forget: Any) -> ConsistencyResult:
        """Scores of these rows alone; the accumulated ``update`` state is left as it was."""
        forget, retain = _GroupStats(), _GroupStats()
        self._add(forget, retain, A, R, is_forget)
        return self._result(forget, retain)


def retrain_consistency(
    A: Any,
    R: Any,
    is_forget: Any,
    *,
    holdout: float = 0.3,
    seed: int = 0,
    ridge: float = 1e-8,
    top_k: int | None = None,
    variance: float = 0.9,
) -> ConsistencyResult:
    """Retraining consistency of representation ``A`` against retrain's ``R`` (arXiv:2606.25001).

    The retained rows are split at random (seeded) into a fit part and a held-out part of
    ``ceil(holdout * n_retain)`` rows. The affine ridge map ``f`` and retrain's principal
    directions are fit on the fit part; the forget rows and the held-out retained rows are
    scored with

    .. math::

        \\rho_G = \\frac{\\lVert R_G - f(A_G) \\rVert_F^2}{\\lVert R_G - \\mathbf{1}\\bar r_G^\\top \\rVert_F^2},
        \\qquad
        \\mathrm{share}_G = \\frac{\\lVert (R_G - f(A_G)) U_k \\rVert_F^2}{\\lVert R_G - f(A_G) \\rVert_F^2}.

    Parameters
    ----------
    A : array-like of shape (n, p)
        The audited model's representation (numpy array or torch tensor); non-finite
        values become 0.
    R : array-like of shape (n, q)
        The retrained model's representation of the same samples, rows paired with ``A``.
    is_forget : array-like of shape (n,)
        1 (or True) for forget samples; the others are retained samples.
    holdout : float
        Fraction of the retained rows held out for scoring, in ``(0, 1)``; default 0.3.
    seed : int
        Seed of the split.
    ridge, top_k, variance
        As in :class:`RetrainConsistency`.

    Returns
    -------
    ConsistencyResult

    Raises
    ------
    ValueError
        On mismatched shapes, a non-binary mask, or fewer than two retained rows on either
        side of the split.
    """
    a, r = _check_pair(A, R)
    mask = _check_mask(is_forget, a.shape[0])
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must lie in (0, 1), got {holdout}")
    retained = np.flatnonzero(~mask)
    n_eval = int(np.ceil(holdout * retained.size))
    if n_eval < 2 or retained.size - n_eval < 2:
        raise ValueError(
            f"retrain_consistency needs at least 2 retained rows to fit and 2 to score; "
            f"{retained.size} retained rows with holdout={holdout} give {retained.size - n_eval} and {n_eval}"
        )
    perm = np.random.default_rng(seed).permutation(retained)
    fit_idx, eval_idx = perm[n_eval:], perm[:n_eval]
    metric = RetrainConsistency(ridge=ridge, top_k=top_k, variance=variance).fit(a[fit_idx], r[fit_idx])
    scored = np.concatenate([np.flatnonzero(mask), eval_idx])
    return metric.score(a[scored], r[scored], mask[scored])
