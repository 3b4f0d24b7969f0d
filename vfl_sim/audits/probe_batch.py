"""Batched L2-logistic probes: many linear probe fits on the same rows in one solver.

An unlearning audit fits one probe per model x party x layer x split repeat, all on the same
samples (Mirage, arXiv:2605.20282, fits them one by one with scikit-learn). Each fit is small
(a few thousand rows, tens of features). This module fits a whole batch of such problems at
once, to the exact optimum, with a batched, damped Newton method (speed against a loop of
``LogisticRegression(C, solver="lbfgs")``: see ``benchmarks/probe_fits.py``; it wins at narrow
widths where lbfgs needs many iterations, and loses at large widths, as Newton costs ``n d^2``):

For problem ``k`` with standardized fit rows ``x_i`` (``i = 1..n``), targets ``t_i in {0, 1}``,
augmented rows ``a_i = (x_i, 1)`` and parameters ``theta = (w, b)``, minimise the objective that
:class:`sklearn.linear_model.LogisticRegression` minimises with its default L2 penalty (the
intercept ``b`` is not penalized)::

    f(theta) = 1/2 ||w||^2 + C * sum_i [ log(1 + exp(z_i)) - t_i z_i ],   z_i = a_i . theta

    grad f = R theta + C * A^T (p - t),             p_i = sigma(z_i) = 1 / (1 + exp(-z_i))
    hess f = R + C * A^T diag(p_i (1 - p_i)) A,     R = diag(1, ..., 1, 0)

and step ``theta <- theta - alpha * hess^-1 grad`` with a backtracking (Armijo) line search,
``alpha in {1, 1/2, 1/4, ...}``. ``f`` is strictly convex in ``w`` (and in ``b`` whenever both
targets occur), so the minimiser is unique and Newton converges to it, quadratically near the
end, in about 5 to 15 steps. All problems of a batch share the row count and the width (the
stratified splits of one label vector all have the same sizes; representations of other widths
go in other batches), so objective, gradient and line search are batched array operations, the
Hessian of each problem is one symmetric rank-k update (BLAS ``dsyrk``: half the flops of a matrix
product, and much faster than numpy's stacked ``matmul`` on these shapes) and each step one
Cholesky solve (LAPACK ``dposv``).

The solution is the exact optimum up to ``tol``; scikit-learn's lbfgs stops at a looser
gradient tolerance (``tol=1e-4`` on its averaged objective), so decision scores agree to about
``1e-4`` and balanced accuracy and AUROC agree except for eval samples whose score is within
that distance of the threshold or of another sample's score.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.linalg.blas import dsyrk
from scipy.linalg.lapack import dposv
from scipy.special import expit
from scipy.stats import rankdata

__all__ = [
    "fit_logistic_batch",
    "standardize_split",
    "binary_scores",
    "batch_decision_scores",
]

# Elements (problems x rows x width) per batch: a few arrays of this many float64 (8 MB each)
# per Newton step. Small batches stay in cache; measured faster than 8e6 on 2000 x 64 inputs.
_BATCH_ELEMENTS = 1_000_000


def fit_logistic_batch(
    x: np.ndarray,
    t: np.ndarray,
    *,
    C: float = 1.0,
    max_iter: int = 100,
    tol: float = 1e-8,
    init: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit ``B`` L2-regularized binary logistic regressions at once (batched Newton).

    Minimises, for each problem ``k`` independently,
    ``f_k(w, b) = 1/2 ||w||^2 + C * sum_i [log(1 + exp(z_ki)) - t_ki z_ki]`` with
    ``z_ki = x_ki . w + b``: the objective of ``LogisticRegression(C=C)`` (L2, unpenalized
    intercept).

    Parameters
    ----------
    x : ndarray of shape (B, n, d)
        Features of each problem's fit rows (standardize them first for the Mirage protocol).
    t : ndarray of shape (B, n)
        0/1 targets.
    C : float
        Inverse regularization strength, as in scikit-learn.
    max_iter : int
        Newton step cap per problem.
    tol : float
        A problem stops when ``max_j |grad f_j| <= tol * (1 + C n)``.
    init : (w0, b0), optional
        Warm start, shapes ``(B, d)`` and ``(B,)``; zeros by default. Only the number of
        Newton steps depends on it, not the optimum.

    Returns
    -------
    w : ndarray of shape (B, d)
    b : ndarray of shape (B,)
    """
    if x.ndim != 3 or t.shape != x.shape[:2]:
        raise ValueError(f"x must be (B, n, d) and t (B, n); got {x.shape} and {t.shape}")
    n_problems, n, d = x.shape
    a = np.concatenate([np.asarray(x, dtype=np.float64), np.ones((n_problems, n, 1))], axis=2)
    tt = np.asarray(t, dtype=np.float64)
    reg = np.ones(d + 1)
    reg[-1] = 0.0
    # A tiny ridge on the intercept keeps the Hessian invertible if every p_i saturates.
    ridge = reg + 1e-10
    diag = np.arange(d + 1)
    theta = np.zeros((n_problems, d + 1))
    if init is not None:
        theta[:, :d], theta[:, d] = init
    gtol = tol * (1.0 + C * n)

    def objective(a_: np.ndarray, t_: np.ndarray, th: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = np.einsum("bnd,bd->bn", a_, th)
        loss = np.logaddexp(0.0, z) - t_ * z
        return 0.5 * np.sum(reg * th * th, axis=1) + C * loss.sum(axis=1), z

    active = np.arange(n_problems)
    a_act, t_act = a, tt
    for _ in range(int(max_iter)):
        th = theta[active]
        f, z = objective(a_act, t_act, th)
        p = expit(z)
        grad = reg * th + C * np.einsum("bn,bnd->bd", p - t_act, a_act)
        done = np.max(np.abs(grad), axis=1) <= gtol
        if done.any():
            keep = ~done
            active, th, f, p, grad = active[keep], th[keep], f[keep], p[keep], grad[keep]
            a_act, t_act = a_act[keep], t_act[keep]
            if active.size == 0:
                break
        # Per problem: H = R + (sqrt(s) A)^T (sqrt(s) A) by a symmetric rank-k update (dsyrk,
        # upper triangle, half the flops of a GEMM), then solve H step = -grad by Cholesky (dposv).
        root = np.sqrt(C * p * (1.0 - p))[:, :, None] * a_act
        step = np.empty_like(grad)
        for j in range(active.size):
            hess = dsyrk(1.0, root[j].T, trans=0)  # the transposed view is Fortran-ordered: no copy
            hess[diag, diag] += ridge
            _, sol, info = dposv(hess, -grad[j])
            if info != 0:  # not numerically positive definite: fall back to least squares
                full = np.triu(hess) + np.triu(hess, 1).T
                sol = np.linalg.lstsq(full, -grad[j], rcond=None)[0]
            step[j] = sol
        slope = np.sum(grad * step, axis=1)  # < 0: the Hessian is positive definite
        alpha = np.ones(active.size)
        for _ in range(60):
            f_new, _ = objective(a_act, t_act, th + alpha[:, None] * step)
            ok = f_new <= f + 1e-4 * alpha * slope
            if ok.all():
                break
            alpha = np.where(ok, alpha, 0.5 * alpha)
        theta[active] = th + alpha[:, None] * step
    return theta[:, :d], theta[:, d]


def standardize_split(x: np.ndarray, fit_idx: np.ndarray, eval_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x[fit_idx]`` and ``x[eval_idx]`` standardized with the fit rows' mean and std.

    As :class:`sklearn.preprocessing.StandardScaler`: ``z = (x - mean_fit) / std_fit`` with
    the population std (``ddof=0``), and scale 1 for (near-)constant columns.
    """
    x_fit = x[fit_idx]
    mean = x_fit.mean(axis=0)
    std = x_fit.std(axis=0)
    std = np.where(std < 10 * np.finfo(np.float64).eps * np.maximum(1.0, np.abs(mean)), 1.0, std)
    return (x_fit - mean) / std, (x[eval_idx] - mean) / std


def binary_scores(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Balanced accuracy of ``scores > 0`` and AUROC of ``scores``, along the last axis.

    ``BA = 1/2 (TP / P + TN / N)``; ``AUROC = (sum of the positives' mid-ranks - P (P+1) / 2) /
    (P N)`` (Mann-Whitney), which equals ``P(s+ > s-) + 1/2 P(s+ = s-)``. Both match
    :func:`sklearn.metrics.balanced_accuracy_score` and :func:`~sklearn.metrics.roc_auc_score`.

    Parameters
    ----------
    scores : ndarray of shape (..., m)
        Decision scores; the probe predicts 1 where the score is positive.
    y : ndarray of shape (..., m)
        0/1 targets, broadcastable against ``scores``; each row holds both classes.
    """
    pos = np.broadcast_to(np.asarray(y) == 1, scores.shape)
    n_pos = pos.sum(axis=-1)
    n_neg = pos.shape[-1] - n_pos
    pred = scores > 0
    tpr = (pred & pos).sum(axis=-1) / n_pos
    tnr = (~pred & ~pos).sum(axis=-1) / n_neg
    ranks = rankdata(scores, axis=-1)
    auroc = (np.where(pos, ranks, 0.0).sum(axis=-1) - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return 0.5 * (tpr + tnr), auroc


def batch_decision_scores(
    xs: Sequence[np.ndarray],
    y: np.ndarray,
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    C: float = 1.0,
    max_iter: int = 100,
) -> np.ndarray:
    """Eval-part decision scores of a probe for every representation and split.

    For representation ``k`` and split ``r``: standardize with the fit part's statistics
    (:func:`standardize_split`), fit the L2 logistic probe (:func:`fit_logistic_batch`), and
    return ``s = z_eval . w + b`` on the eval part. Representations of equal width are fit in
    shared batches; identical representations (same bytes) are fit once.

    Parameters
    ----------
    xs : sequence of ndarray, each of shape (n, d_k)
        Float64 representations of the same ``n`` samples.
    y : ndarray of shape (n,)
        0/1 targets.
    splits : sequence of (fit_idx, eval_idx)
        All with the same fit size and the same eval size.

    Returns
    -------
    ndarray of shape (len(xs), len(splits), n_eval)
    """
    if not splits:
        raise ValueError("batch_decision_scores needs at least one split")
    n_fit, n_eval = splits[0][0].size, splits[0][1].size
    if any(f.size != n_fit or e.size != n_eval for f, e in splits):
        raise ValueError("every split must have the same fit and eval sizes")
    out = np.empty((len(xs), len(splits), n_eval))
    # Deduplicate: an unchanged party model gives byte-identical embeddings for two models.
    first: dict[tuple[tuple[int, ...], bytes], int] = {}
    unique: list[int] = []
    alias: list[int] = []
    for k, x in enumerate(xs):
        key = (x.shape, np.ascontiguousarray(x).tobytes())
        if key not in first:
            first[key] = k
            unique.append(k)
        alias.append(first[key])
    by_width: dict[int, list[int]] = {}
    for k in unique:
        by_width.setdefault(xs[k].shape[1], []).append(k)
    for d, members in by_width.items():
        per_batch = max(1, _BATCH_ELEMENTS // (n_fit * (d + 1)))
        # Split 0 of every representation first, from zero; the other splits of a representation
        # then start from its split-0 solution (the optimum moves little between splits), which
        # saves about half of the Newton steps.
        warm: dict[int, tuple[np.ndarray, float]] = {}
        for stage in (range(1), range(1, len(splits))):
            jobs = [(k, r) for k in members for r in stage]
            for lo in range(0, len(jobs), per_batch):
                chunk = jobs[lo : lo + per_batch]
                fit_x = np.empty((len(chunk), n_fit, d))
                eval_x = np.empty((len(chunk), n_eval, d))
                fit_t = np.empty((len(chunk), n_fit))
                for j, (k, r) in enumerate(chunk):
                    fit_idx, eval_idx = splits[r]
                    fit_x[j], eval_x[j] = standardize_split(xs[k], fit_idx, eval_idx)
                    fit_t[j] = y[fit_idx]
                init = None
                if stage.start > 0:
                    init = (np.stack([warm[k][0] for k, _ in chunk]), np.array([warm[k][1] for k, _ in chunk]))
                w, b = fit_logistic_batch(fit_x, fit_t, C=C, max_iter=max_iter, init=init)
                scores = np.matmul(eval_x, w[:, :, None])[:, :, 0] + b[:, None]
                for j, (k, r) in enumerate(chunk):
                    out[k, r] = scores[j]
                    if r == 0:
                        warm[k] = (w[j], float(b[j]))
    for k, src in enumerate(alias):
        if src != k:
            out[k] = out[src]
    return out
