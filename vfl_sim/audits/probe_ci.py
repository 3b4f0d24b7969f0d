"""Linear probe recovery with percentile intervals over repeated splits or an eval bootstrap.

The Mirage reference (arXiv:2605.20282) reports the probe of :mod:`vfl_sim.audits.probe` on one
70/30 split without uncertainty. :func:`probe_many_ci` repeats the whole protocol over
stratified splits (or resamples the eval part of one split) and reports each score as an
:class:`~vfl_sim.audits.interval.Interval`; every representation of one call sees the same
splits, so two results can be paired into a gap (:mod:`vfl_sim.audits.probe_gap`).
:func:`probe_ci` is the one-representation form and :class:`LinearProbeRecoveryCI` its
minibatch form (:class:`~vfl_sim.audits.metric.Metric`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from vfl_sim.audits.interval import Interval, check_level
from vfl_sim.audits.metric import Metric
from vfl_sim.audits.probe import (
    Solver,
    check_embeddings,
    check_hyper,
    check_is_forget,
    check_solver,
    stratified_split,
)
from vfl_sim.audits.probe_batch import batch_decision_scores, binary_scores

__all__ = ["IntervalMethod", "LinearProbeRecoveryCI", "ProbeCI", "probe_ci", "probe_many_ci"]

#: ``"splits"``: repeated stratified 70/30 splits; ``"bootstrap"``: one split, stratified
#: bootstrap of its eval part.
IntervalMethod = Literal["splits", "bootstrap"]


@dataclass(frozen=True)
class ProbeCI:
    """Linear probe recovery with intervals (see :func:`probe_ci`).

    Attributes
    ----------
    balanced_accuracy, auroc : Interval
        Over split repeats (``method="splits"``) or eval-set bootstrap resamples
        (``method="bootstrap"``).
    n_fit, n_eval : int
        Samples in the fit and eval part of every split.
    method : str
        ``"splits"`` or ``"bootstrap"``.
    level : float
        Nominal coverage of the intervals, e.g. 0.95.
    seed : int
        Seed of the first split (and of the bootstrap RNG).
    """

    balanced_accuracy: Interval
    auroc: Interval
    n_fit: int
    n_eval: int
    method: str
    level: float
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """Plain nested ``dict``, ready for JSON."""
        return {
            "balanced_accuracy": self.balanced_accuracy.to_dict(),
            "auroc": self.auroc.to_dict(),
            "n_fit": self.n_fit,
            "n_eval": self.n_eval,
            "method": self.method,
            "level": self.level,
            "seed": self.seed,
        }


def _sklearn_decision_scores(
    xs: Sequence[np.ndarray], y: np.ndarray, splits: Sequence[tuple[np.ndarray, np.ndarray]], *, C: float, max_iter: int
) -> np.ndarray:
    """As :func:`vfl_sim.audits.probe_batch.batch_decision_scores`, one scikit-learn probe at a time."""
    out = np.empty((len(xs), len(splits), splits[0][1].size))
    for k, x in enumerate(xs):
        for r, (fit_idx, eval_idx) in enumerate(splits):
            scaler = StandardScaler().fit(x[fit_idx])
            clf = LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter).fit(
                scaler.transform(x[fit_idx]), y[fit_idx]
            )
            out[k, r] = clf.decision_function(scaler.transform(x[eval_idx]))
    return out


def _interval_values(
    xs: Sequence[np.ndarray],
    y: np.ndarray,
    *,
    method: IntervalMethod,
    n_repeats: int,
    n_bootstrap: int,
    eval_fraction: float,
    C: float,
    seed: int,
    max_iter: int,
    solver: Solver,
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Balanced accuracy and AUROC of every representation per repeat/resample, ``(K, R)`` each."""
    if method not in ("splits", "bootstrap"):
        raise ValueError(f"method must be 'splits' or 'bootstrap', got {method!r}")
    check_solver(solver)
    check_hyper(C, max_iter)
    n_rep = int(n_repeats) if method == "splits" else 1
    if n_rep < 1 or int(n_bootstrap) < 1:
        raise ValueError(f"n_repeats and n_bootstrap must be at least 1, got {n_repeats} and {n_bootstrap}")
    splits = [stratified_split(y, eval_fraction=eval_fraction, seed=seed + r) for r in range(n_rep)]
    score_fn = batch_decision_scores if solver == "batch" else _sklearn_decision_scores
    scores = score_fn(xs, y, splits, C=C, max_iter=int(max_iter))  # (K, n_rep, n_eval)
    y_eval = np.stack([y[e] for _, e in splits])  # (n_rep, n_eval)
    n_fit, n_eval = splits[0][0].size, splits[0][1].size
    if method == "splits":
        ba, auc = binary_scores(scores, y_eval[None, :, :])
        return ba, auc, n_fit, n_eval
    # Stratified bootstrap of the one eval part: resample forget and retained samples separately
    # (each with replacement, keeping its count), so every resample holds both classes; the same
    # resamples serve every representation, which keeps gaps paired.
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y_eval[0] == 1), np.flatnonzero(y_eval[0] == 0)
    b = int(n_bootstrap)
    idx = np.concatenate([rng.choice(pos, size=(b, pos.size)), rng.choice(neg, size=(b, neg.size))], axis=1)
    y_boot = y_eval[0][idx]
    ba = np.empty((len(xs), b))
    auc = np.empty((len(xs), b))
    for k in range(len(xs)):  # one representation at a time bounds memory to (B, n_eval)
        ba[k], auc[k] = binary_scores(scores[k, 0][idx], y_boot)
    return ba, auc, n_fit, n_eval


def probe_many_ci(
    embeddings_list: Sequence[Any],
    is_forget: Any,
    *,
    method: IntervalMethod = "splits",
    n_repeats: int = 10,
    n_bootstrap: int = 1000,
    level: float = 0.95,
    eval_fraction: float = 0.3,
    C: float = 1.0,
    seed: int = 0,
    max_iter: int = 1000,
    solver: Solver = "sklearn",
) -> list[ProbeCI]:
    """Linear probe recovery with percentile intervals for several representations at once.

    The Mirage reference (arXiv:2605.20282) reports one 70/30 split without uncertainty. Two
    sources of variation are covered here:

    * ``method="splits"`` (default): ``R = n_repeats`` stratified splits with seeds
      ``seed, seed + 1, ..., seed + R - 1``; on each, the full protocol (standardize on the fit
      part, fit the probe, score the eval part) gives ``v_r``. It covers both the choice of
      fit samples (a different probe) and of eval samples, i.e. how much a single published
      split could have moved. Repeat 0 is exactly the single-split result of ``seed``.
    * ``method="bootstrap"``: one split (``seed``), one probe; the eval part is resampled
      ``B = n_bootstrap`` times with replacement, stratified (forget and retained samples each
      keep their count), and the fitted probe is rescored on each resample. It covers only the
      finite eval set (the probe is held fixed) and is cheap.

    The interval is the percentile interval ``[q_{(1-level)/2}, q_{(1+level)/2}]`` of the
    ``v_r``, 95 % by default, and the point estimate their mean. With 10 repeats the 95 %
    percentiles interpolate between the two smallest and the two largest values, so the
    interval is essentially the range; it describes the spread of a single-split LPR, which is
    what the reference reports. It is not a confidence interval for the mean over splits: the
    splits share samples, so their values are correlated and a ``t`` interval on the mean would
    be too narrow (Nadeau and Bengio, 2003).

    Every representation sees the same splits and resamples, so index ``r`` of two results is
    paired; :func:`paired_gap` turns two results into a gap interval.

    Parameters
    ----------
    embeddings_list : sequence of array-like, each of shape (n, d_k)
        Representations of the same samples.
    is_forget : array-like of shape (n,)
        1 (or True) for samples of a forgotten class.
    method : {"splits", "bootstrap"}
    n_repeats : int
        Number of splits for ``method="splits"`` (default 10).
    n_bootstrap : int
        Number of resamples for ``method="bootstrap"`` (default 1000).
    level : float
        Coverage of the percentile interval, default 0.95.
    eval_fraction, C, seed, max_iter
        As in :func:`linear_probe_recovery`.
    solver : {"sklearn", "batch"}
        ``"sklearn"`` (default) fits the probes one by one with scikit-learn, the reference;
        ``"batch"`` fits them in one batched Newton solver (exact optimum of the same
        objective). Measured on 2 CPU cores (``benchmarks/probe_fits.py``), the batch solver is
        about 1.8x faster when lbfgs needs many iterations (strong, dense class signal at width
        64), on par for easy problems, and slower at width 256 (Newton costs ``n d^2`` per
        step).

    Returns
    -------
    list of ProbeCI
        One per representation, in order.
    """
    check_level(level)
    y = check_is_forget(is_forget)
    xs = [check_embeddings(e, y.size, name=f"embeddings_list[{k}]") for k, e in enumerate(embeddings_list)]
    if not xs:
        return []
    ba, auc, n_fit, n_eval = _interval_values(
        xs,
        y,
        method=method,
        n_repeats=n_repeats,
        n_bootstrap=n_bootstrap,
        eval_fraction=eval_fraction,
        C=C,
        seed=seed,
        max_iter=max_iter,
        solver=solver,
    )
    return [
        ProbeCI(
            balanced_accuracy=Interval.from_values(ba[k], level),
            auroc=Interval.from_values(auc[k], level),
            n_fit=int(n_fit),
            n_eval=int(n_eval),
            method=method,
            level=float(level),
            seed=int(seed),
        )
        for k in range(len(xs))
    ]


def probe_ci(embeddings: Any, is_forget: Any, **kwargs: Any) -> ProbeCI:
    """Linear probe recovery of one representation with percentile intervals.

    ``probe_ci(x, y, **kw) == probe_many_ci([x], y, **kw)[0]``; see :func:`probe_many_ci` for
    the methods, the interval and the keyword arguments.
    """
    return probe_many_ci([embeddings], is_forget, **kwargs)[0]


class LinearProbeRecoveryCI(Metric[ProbeCI]):
    """Minibatch form of :func:`probe_ci`: ``update`` / ``compute`` / ``reset``.

    ``compute`` equals ``probe_ci(concat(embeddings), concat(labels), **kwargs)`` with the
    constructor's keyword arguments (those of :func:`probe_many_ci`).
    """

    def __init__(self, **kwargs: Any) -> None:
        # Fail on a bad argument now rather than at compute().
        check_level(kwargs.get("level", 0.95))
        check_solver(kwargs.get("solver", "sklearn"))
        check_hyper(kwargs.get("C", 1.0), kwargs.get("max_iter", 1000))
        self.kwargs = dict(kwargs)
        super().__init__(columns=("embeddings", "is_forget"))

    def update(self, embeddings: Any, is_forget: Any) -> LinearProbeRecoveryCI:
        """Add one batch of embeddings ``(b, d)`` and labels ``(b,)``; returns ``self``."""
        y = check_is_forget(is_forget)
        self._append(check_embeddings(embeddings, y.size), y)
        return self

    def _compute(self) -> ProbeCI:
        return probe_ci(self._rows.column("embeddings"), self._rows.column("is_forget"), **self.kwargs)
