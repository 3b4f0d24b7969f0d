"""Linear probe recovery (LPR): is a forgotten class still linearly readable from embeddings?

An unlearning method can push a model's *outputs* away from a forgotten class while the
class stays perfectly separable in the representation the outputs are computed from. The
Mirage audit (arXiv:2605.20282) measures this with a linear probe: a logistic regression
trained to tell forget samples from the rest, using nothing but the embeddings. If the probe
still separates them, the information was hidden rather than removed.

Protocol (the Mirage defaults, all exposed as keyword arguments):

1. The binary target is ``is_forget``: 1 when a sample belongs to a forgotten class.
2. The given (held-out) samples are split 70/30, stratified on ``is_forget``, with a
   seeded RNG, so every representation of one model, and every model, sees the same split.
3. A :class:`~sklearn.preprocessing.StandardScaler` is fit on the 70 % only, so no
   statistic of the scored samples leaks into the probe.
4. An L2 logistic regression ``LogisticRegression(C=1.0, solver="lbfgs", max_iter=1000)``
   is fit on the scaled 70 %.
5. The 30 % is scored with

   * balanced accuracy, a fraction in ``[0, 1]``:
     ``BA = (TPR + TNR) / 2 = 1/2 * (TP / (TP + FN) + TN / (TN + FP))``, which stays at
     0.5 for a probe that ignores its input, however rare the forget class is;
   * AUROC, the probability that a random forget sample gets a higher score than a random
     retained one, ``AUROC = P(s(x+) > s(x-)) + 1/2 P(s(x+) = s(x-))``.

``linear_probe_recovery`` is the functional form; :class:`LinearProbeRecovery` accumulates
minibatches (``update`` / ``compute`` / ``reset``) and gives the same result on the
concatenated data. :func:`probe_many` probes several representations of the same samples
(fused and per-party embeddings of several models) under one shared split.

Beyond the reference protocol (which reports one split without uncertainty):

* :func:`probe_ci` / :func:`probe_many_ci` / :class:`LinearProbeRecoveryCI` give percentile
  intervals over repeated stratified splits (or a stratified bootstrap of the eval part), and
  :func:`probe_gap_ci` / :func:`paired_gap` / :class:`LinearProbeGap` the gap to the retrained
  model computed *paired*, split by split, so that variation both models share cancels.
* :func:`forgotten_class_recovery` reads the forgotten classes back with a multinomial probe
  and a nearest-class-mean rule, next to the model's own output accuracy ("An Illusion of
  Unlearning?", arXiv:2604.08271).
* ``solver="batch"`` fits all probes of a call in one batched Newton solver
  (:mod:`vfl_sim.audits.probe_batch`): the same objective as scikit-learn's, solved to its optimum;
  faster only for narrow embeddings where lbfgs needs many iterations (see
  ``benchmarks/probe_fits.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from vfl_sim.audits._arrays import feature_matrix, to_numpy
from vfl_sim.audits.probe_batch import batch_decision_scores, binary_scores

__all__ = [
    "ProbeResult",
    "linear_probe_recovery",
    "probe_many",
    "stratified_split",
    "LinearProbeRecovery",
    "Interval",
    "ProbeCI",
    "ProbeGapCI",
    "probe_ci",
    "probe_many_ci",
    "probe_gap_ci",
    "paired_gap",
    "LinearProbeRecoveryCI",
    "LinearProbeGap",
    "ClassRecoveryResult",
    "forgotten_class_recovery",
]

#: ``"sklearn"``: one :class:`~sklearn.linear_model.LogisticRegression` per probe (the Mirage
#: reference); ``"batch"``: all probes in one batched Newton solver
#: (:mod:`vfl_sim.audits.probe_batch`), same objective solved to its optimum; AUROC agrees to about
#: 1e-3, balanced accuracy up to single flipped eval predictions near the threshold.
Solver = Literal["sklearn", "batch"]
#: ``"splits"``: repeated stratified 70/30 splits; ``"bootstrap"``: one split, stratified
#: bootstrap of its eval part.
IntervalMethod = Literal["splits", "bootstrap"]

# A class needs at least this many samples on *each* side of the split: one sample cannot
# be both fit and scored, and AUROC/balanced accuracy need both classes in the scored part.
_MIN_PER_CLASS_PER_SPLIT = 2


@dataclass(frozen=True)
class ProbeResult:
    """Scores of one linear probe on the held-out part of the split.

    Attributes
    ----------
    balanced_accuracy : float
        ``(TPR + TNR) / 2`` of the probe's hard predictions, in ``[0, 1]``; 0.5 is chance.
    auroc : float
        Area under the ROC curve of the probe's decision scores, in ``[0, 1]``; 0.5 is chance.
    n_fit : int
        Number of samples the scaler and the probe were fit on.
    n_eval : int
        Number of samples the scores were computed on.
    """

    balanced_accuracy: float
    auroc: float
    n_fit: int
    n_eval: int

    def to_dict(self) -> dict[str, float | int]:
        """Plain ``dict`` of the four fields, ready for JSON."""
        return {
            "balanced_accuracy": float(self.balanced_accuracy),
            "auroc": float(self.auroc),
            "n_fit": int(self.n_fit),
            "n_eval": int(self.n_eval),
        }


def _check_labels(is_forget: Any) -> np.ndarray:
    """``is_forget`` as a 1-D int array of 0/1, or a ValueError saying what is wrong."""
    y = to_numpy(is_forget)
    if y.ndim != 1:
        raise ValueError(f"is_forget must be 1-D (n_samples,), got shape {y.shape}")
    if y.dtype != bool and not (y.dtype.kind in "iuf" and np.all(np.isin(y, (0, 1)))):
        raise ValueError("is_forget must hold only 0/1 or False/True values")
    return y.astype(np.int64)


def _check_embeddings(embeddings: Any, n: int, *, name: str = "embeddings") -> np.ndarray:
    """Embeddings as a finite float64 (n, d) array, or a ValueError."""
    return feature_matrix(embeddings, name, n)


def _split_error(y: np.ndarray, eval_fraction: float, detail: str) -> ValueError:
    n_forget = int(y.sum())
    return ValueError(
        f"linear probe needs at least {_MIN_PER_CLASS_PER_SPLIT} forget and "
        f"{_MIN_PER_CLASS_PER_SPLIT} retained samples on each side of the "
        f"{1 - eval_fraction:.0%}/{eval_fraction:.0%} split; got {n_forget} forget and "
        f"{y.size - n_forget} retained samples in total ({detail})"
    )


def stratified_split(is_forget: Any, *, eval_fraction: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of sample indices into a fit part and an eval part.

    The eval part holds ``ceil(eval_fraction * n)`` samples, and each class contributes
    about ``eval_fraction`` of its own samples (``round(eval_fraction * n_class)``, give or
    take one from the rounding), as done by
    :func:`sklearn.model_selection.train_test_split` with ``stratify``. The same labels and
    seed always give the same indices.

    Parameters
    ----------
    is_forget : array-like of shape (n,)
        1 (or True) for samples of a forgotten class.
    eval_fraction : float
        Fraction of samples held out for scoring, in ``(0, 1)``.
    seed : int
        Seed of the split's RNG.

    Returns
    -------
    fit_idx, eval_idx : ndarray of int
        Disjoint indices covering ``range(n)``.

    Raises
    ------
    ValueError
        If only one class is present, or either class would have fewer than two samples in
        either part.
    """
    y = _check_labels(is_forget)
    if not 0.0 < float(eval_fraction) < 1.0:
        raise ValueError(f"eval_fraction must lie in (0, 1), got {eval_fraction}")
    n_forget = int(y.sum())
    if n_forget == 0 or n_forget == y.size:
        raise ValueError(
            f"is_forget holds only one class ({n_forget} forget samples out of {y.size}); "
            "the probe needs both forget and retained samples"
        )
    try:
        fit_idx, eval_idx = train_test_split(
            np.arange(y.size), test_size=eval_fraction, stratify=y, random_state=seed, shuffle=True
        )
    except ValueError as err:  # too few samples for scikit-learn to stratify at all
        raise _split_error(y, eval_fraction, str(err)) from err
    for part, idx in (("fit", fit_idx), ("eval", eval_idx)):
        n_f = int(y[idx].sum())
        n_r = idx.size - n_f
        if min(n_f, n_r) < _MIN_PER_CLASS_PER_SPLIT:
            raise _split_error(y, eval_fraction, f"the {part} part got {n_f} forget and {n_r} retained")
    return np.asarray(fit_idx), np.asarray(eval_idx)


def _fit_and_score(
    x: np.ndarray,
    y: np.ndarray,
    fit_idx: np.ndarray,
    eval_idx: np.ndarray,
    *,
    C: float,
    max_iter: int,
) -> ProbeResult:
    # Scaler statistics come from the fit part only; the eval part is transformed with them.
    # Zero-variance features get scale 1 in StandardScaler, so constant columns are harmless.
    scaler = StandardScaler().fit(x[fit_idx])
    x_fit = scaler.transform(x[fit_idx])
    x_eval = scaler.transform(x[eval_idx])
    # L2 is LogisticRegression's default penalty; it is not passed explicitly because recent
    # scikit-learn deprecates the ``penalty`` argument.
    clf = LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter)
    clf.fit(x_fit, y[fit_idx])
    y_eval = y[eval_idx]
    ba = balanced_accuracy_score(y_eval, clf.predict(x_eval))
    # The decision function ranks samples exactly as predict_proba does, but does not
    # saturate to 1.0 for well-separated samples, which would create spurious ties.
    auroc = roc_auc_score(y_eval, clf.decision_function(x_eval))
    return ProbeResult(
        balanced_accuracy=float(ba), auroc=float(auroc), n_fit=int(fit_idx.size), n_eval=int(eval_idx.size)
    )


def _check_solver(solver: str) -> None:
    if solver not in ("sklearn", "batch"):
        raise ValueError(f"solver must be 'sklearn' or 'batch', got {solver!r}")


def _check_hyper(C: float, max_iter: int) -> None:
    if not C > 0:
        raise ValueError(f"C must be positive, got {C}")
    if int(max_iter) < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")


def linear_probe_recovery(
    embeddings: Any,
    is_forget: Any,
    *,
    eval_fraction: float = 0.3,
    C: float = 1.0,
    seed: int = 0,
    max_iter: int = 1000,
) -> ProbeResult:
    """Linear probe recovery of the forget class from embeddings (Mirage, arXiv:2605.20282).

    Splits the samples with :func:`stratified_split`, standardises features with statistics
    of the fit part, fits ``LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter)``
    (L2 penalty, i.e. minimises ``1/2 ||w||^2 + C * sum_i log(1 + exp(-t_i (w.x_i + b)))``
    with ``t_i = ±1``), and scores the eval part:

    ``balanced_accuracy = 1/2 * (TP / (TP + FN) + TN / (TN + FP))`` on hard predictions,
    ``auroc = P(s(x+) > s(x-)) + 1/2 P(s(x+) = s(x-))`` on decision scores ``s``.

    Both are 0.5 when the forget class is not linearly recoverable, and 1.0 when it is
    perfectly so.

    Parameters
    ----------
    embeddings : array-like of shape (n, d)
        One representation of the samples (numpy array or torch tensor). Non-finite values
        are replaced by 0.
    is_forget : array-like of shape (n,)
        1 (or True) for samples of a forgotten class.
    eval_fraction : float
        Fraction held out for scoring, default 0.3.
    C : float
        Inverse L2 regularisation strength, default 1.0.
    seed : int
        Seed of the split, default 0.
    max_iter : int
        L-BFGS iteration cap, default 1000.

    Returns
    -------
    ProbeResult

    Raises
    ------
    ValueError
        On mismatched lengths, non-2-D embeddings, non-binary labels, a single class, or too
        few samples of a class to have two on each side of the split.
    """
    _check_hyper(C, max_iter)
    y = _check_labels(is_forget)
    x = _check_embeddings(embeddings, y.size)
    fit_idx, eval_idx = stratified_split(y, eval_fraction=eval_fraction, seed=seed)
    return _fit_and_score(x, y, fit_idx, eval_idx, C=C, max_iter=int(max_iter))


def probe_many(
    embeddings_list: Sequence[Any],
    is_forget: Any,
    *,
    eval_fraction: float = 0.3,
    C: float = 1.0,
    seed: int = 0,
    max_iter: int = 1000,
    solver: Solver = "sklearn",
) -> list[ProbeResult]:
    """Probe several representations of the *same* samples under one shared split.

    Comparing the fused embedding with each party's embedding, or one model with another,
    is only fair when every probe is fit and scored on the same samples; the split is
    therefore computed once from ``is_forget`` and ``seed`` and reused. Each entry gives
    exactly what :func:`linear_probe_recovery` would give for it alone.

    Parameters
    ----------
    embeddings_list : sequence of array-like, each of shape (n, d_k)
        The representations; widths may differ, row ``i`` must be sample ``i`` in all.
    is_forget : array-like of shape (n,)
        1 (or True) for samples of a forgotten class.
    eval_fraction, C, seed, max_iter
        As in :func:`linear_probe_recovery`.
    solver : {"sklearn", "batch"}
        ``"sklearn"`` (default) fits one scikit-learn probe each, exactly as
        :func:`linear_probe_recovery`; ``"batch"`` fits all of them in one batched Newton solver
        (:func:`vfl_sim.audits.probe_batch.fit_logistic_batch`): the same objective solved to a tighter
        tolerance, so scores agree to about 1e-3 (see :data:`Solver`).

    Returns
    -------
    list of ProbeResult
        One per representation, in order.
    """
    _check_hyper(C, max_iter)
    _check_solver(solver)
    y = _check_labels(is_forget)
    # Validate every representation before fitting any, so a bad entry fails fast.
    xs = [_check_embeddings(e, y.size, name=f"embeddings_list[{k}]") for k, e in enumerate(embeddings_list)]
    fit_idx, eval_idx = stratified_split(y, eval_fraction=eval_fraction, seed=seed)
    if solver == "sklearn" or not xs:
        return [_fit_and_score(x, y, fit_idx, eval_idx, C=C, max_iter=int(max_iter)) for x in xs]
    scores = batch_decision_scores(xs, y, [(fit_idx, eval_idx)], C=C, max_iter=int(max_iter))[:, 0, :]
    ba, auc = binary_scores(scores, y[eval_idx][None, :])
    return [
        ProbeResult(balanced_accuracy=float(b), auroc=float(a), n_fit=int(fit_idx.size), n_eval=int(eval_idx.size))
        for b, a in zip(ba, auc, strict=True)
    ]


class LinearProbeRecovery:
    """Minibatch form of :func:`linear_probe_recovery`.

    ``update`` stores each batch; ``compute`` concatenates them and runs the functional
    probe, so the result equals ``linear_probe_recovery(concat(embeddings), concat(labels))``
    with the same keyword arguments. The probe needs all samples at once (the split and the
    logistic regression are global), so memory grows with the number of samples.

    Parameters
    ----------
    eval_fraction, C, seed, max_iter
        As in :func:`linear_probe_recovery`.

    Examples
    --------
    >>> metric = LinearProbeRecovery(seed=0)
    >>> for emb, forget in batches:  # doctest: +SKIP
    ...     metric.update(emb, forget)
    >>> metric.compute().auroc  # doctest: +SKIP
    """

    def __init__(self, *, eval_fraction: float = 0.3, C: float = 1.0, seed: int = 0, max_iter: int = 1000) -> None:
        if not 0.0 < float(eval_fraction) < 1.0:
            raise ValueError(f"eval_fraction must lie in (0, 1), got {eval_fraction}")
        _check_hyper(C, max_iter)
        self.eval_fraction = float(eval_fraction)
        self.C = float(C)
        self.seed = seed
        self.max_iter = int(max_iter)
        self._embeddings: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def update(self, embeddings: Any, is_forget: Any) -> LinearProbeRecovery:
        """Add one batch of embeddings ``(b, d)`` and their labels ``(b,)``; returns ``self``."""
        y = _check_labels(is_forget)
        x = _check_embeddings(embeddings, y.size)
        if self._embeddings and x.shape[1] != self._embeddings[0].shape[1]:
            raise ValueError(
                f"embeddings width changed between batches: {self._embeddings[0].shape[1]} then {x.shape[1]}"
            )
        self._embeddings.append(x)
        self._labels.append(y)
        return self

    def compute(self) -> ProbeResult:
        """Probe all samples seen since the last ``reset``."""
        if not self._embeddings:
            raise ValueError("LinearProbeRecovery.compute() called before any update()")
        return linear_probe_recovery(
            np.concatenate(self._embeddings, axis=0),
            np.concatenate(self._labels, axis=0),
            eval_fraction=self.eval_fraction,
            C=self.C,
            seed=self.seed,
            max_iter=self.max_iter,
        )

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self._embeddings.clear()
        self._labels.clear()

    @property
    def n_samples(self) -> int:
        """Number of samples accumulated since the last ``reset``."""
        return int(sum(y.size for y in self._labels))


# --------------------------------------------------------------------------------------------
# Uncertainty: intervals over repeated splits or an eval-set bootstrap, and the paired gap
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile interval and the values it was computed from.

    Attributes
    ----------
    mean : float
        Mean of ``values``.
    low, high : float
        The ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles of ``values`` (linear
        interpolation between order statistics, :func:`numpy.percentile`'s default).
    values : tuple of float
        One value per split repeat or bootstrap resample, in order: repeat ``r`` used split
        seed ``seed + r``; index ``r`` of two intervals from one call is the same split or
        resample (which is what makes a paired gap possible).
    """

    mean: float
    low: float
    high: float
    values: tuple[float, ...]

    @classmethod
    def from_values(cls, values: Any, level: float = 0.95) -> Interval:
        """Mean and percentile interval of ``values`` at ``level`` (e.g. 0.95)."""
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size == 0:
            raise ValueError("an interval needs at least one value")
        _check_level(level)
        low, high = np.percentile(v, [50.0 - 50.0 * level, 50.0 + 50.0 * level])
        return cls(mean=float(v.mean()), low=float(low), high=float(high), values=tuple(float(x) for x in v))

    def covers(self, value: float) -> bool:
        """Whether ``low <= value <= high``."""
        return self.low <= value <= self.high

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` (``values`` as a list), ready for JSON."""
        return {"mean": self.mean, "low": self.low, "high": self.high, "values": list(self.values)}


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


@dataclass(frozen=True)
class ProbeGapCI:
    """Paired gap ``LPR(audited) - LPR(retrain)`` with intervals (see :func:`probe_gap_ci`).

    Attributes
    ----------
    audited, retrain : ProbeCI
        The two models' probes, on the same splits (or resamples).
    balanced_accuracy_gap, auroc_gap : Interval
        Of the per-split differences ``v_r = LPR_r(audited) - LPR_r(retrain)``.
    """

    audited: ProbeCI
    retrain: ProbeCI
    balanced_accuracy_gap: Interval
    auroc_gap: Interval

    def to_dict(self) -> dict[str, Any]:
        """Plain nested ``dict``, ready for JSON."""
        return {
            "audited": self.audited.to_dict(),
            "retrain": self.retrain.to_dict(),
            "balanced_accuracy_gap": self.balanced_accuracy_gap.to_dict(),
            "auroc_gap": self.auroc_gap.to_dict(),
        }


def _check_level(level: float) -> None:
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")


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
    _check_solver(solver)
    _check_hyper(C, max_iter)
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
    _check_level(level)
    y = _check_labels(is_forget)
    xs = [_check_embeddings(e, y.size, name=f"embeddings_list[{k}]") for k, e in enumerate(embeddings_list)]
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


def paired_gap(audited: ProbeCI, retrain: ProbeCI) -> ProbeGapCI:
    """Gap ``audited - retrain`` per split (or resample), with a percentile interval.

    With ``v_r = LPR_r(audited) - LPR_r(retrain)`` computed on the *same* split ``r``, the
    interval is that of the ``v_r`` (at ``audited.level``). Pairing removes the variation both
    models share (which samples are fit and scored), so the gap's interval is much narrower
    than the difference of the two marginal intervals; two identical representations give
    ``v_r = 0`` for every ``r`` and the interval ``[0, 0]``. The gap to retrain, not absolute
    LPR, is the Mirage criterion (arXiv:2605.20282): a model retrained without a class may
    still separate it.

    Both arguments must come from one :func:`probe_many_ci` call (or calls with the same
    labels, method, seed, repeats and eval fraction); this function checks what it can.
    """
    for field in ("n_fit", "n_eval", "method", "level", "seed"):
        if getattr(audited, field) != getattr(retrain, field):
            raise ValueError(
                f"paired gap needs probes on the same splits: {field} is "
                f"{getattr(audited, field)!r} vs {getattr(retrain, field)!r}"
            )
    if len(audited.balanced_accuracy.values) != len(retrain.balanced_accuracy.values):
        raise ValueError("paired gap needs the same number of repeats or resamples on both sides")
    gaps = []
    for name in ("balanced_accuracy", "auroc"):
        a = np.asarray(getattr(audited, name).values)
        r = np.asarray(getattr(retrain, name).values)
        gaps.append(Interval.from_values(a - r, audited.level))
    return ProbeGapCI(audited=audited, retrain=retrain, balanced_accuracy_gap=gaps[0], auroc_gap=gaps[1])


def probe_gap_ci(audited: Any, retrain: Any, is_forget: Any, **kwargs: Any) -> ProbeGapCI:
    """Paired LPR gap of an audited model to the retrained reference, with intervals.

    Probes both representations of the same samples on the same splits (or the same eval
    resamples) with :func:`probe_many_ci` and returns :func:`paired_gap` of the two;
    ``gap_r = LPR_r(audited) - LPR_r(retrain)``. Keyword arguments as in :func:`probe_many_ci`.
    """
    a, r = probe_many_ci([audited, retrain], is_forget, **kwargs)
    return paired_gap(a, r)


class _Batches:
    """Stores minibatches of several aligned arrays (same rows) and concatenates them."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self._names = names
        self._parts: list[list[np.ndarray]] = [[] for _ in names]
        self._labels: list[np.ndarray] = []

    def add(self, arrays: Sequence[Any], is_forget: Any) -> None:
        y = _check_labels(is_forget)
        xs = [_check_embeddings(a, y.size, name=n) for a, n in zip(arrays, self._names, strict=True)]
        for part, x, n in zip(self._parts, xs, self._names, strict=True):
            if part and x.shape[1] != part[0].shape[1]:
                raise ValueError(f"{n} width changed between batches: {part[0].shape[1]} then {x.shape[1]}")
        for part, x in zip(self._parts, xs, strict=True):
            part.append(x)
        self._labels.append(y)

    def get(self, owner: str) -> tuple[list[np.ndarray], np.ndarray]:
        if not self._labels:
            raise ValueError(f"{owner}.compute() called before any update()")
        return [np.concatenate(p, axis=0) for p in self._parts], np.concatenate(self._labels)

    def clear(self) -> None:
        for p in self._parts:
            p.clear()
        self._labels.clear()

    @property
    def n_samples(self) -> int:
        return int(sum(y.size for y in self._labels))


class LinearProbeRecoveryCI:
    """Minibatch form of :func:`probe_ci`: ``update`` / ``compute`` / ``reset``.

    ``compute`` equals ``probe_ci(concat(embeddings), concat(labels), **kwargs)`` with the
    constructor's keyword arguments (those of :func:`probe_many_ci`).
    """

    def __init__(self, **kwargs: Any) -> None:
        # Fail on a bad argument now rather than at compute().
        _check_level(kwargs.get("level", 0.95))
        _check_solver(kwargs.get("solver", "sklearn"))
        _check_hyper(kwargs.get("C", 1.0), kwargs.get("max_iter", 1000))
        self.kwargs = dict(kwargs)
        self._batches = _Batches(("embeddings",))

    def update(self, embeddings: Any, is_forget: Any) -> LinearProbeRecoveryCI:
        """Add one batch of embeddings ``(b, d)`` and labels ``(b,)``; returns ``self``."""
        self._batches.add([embeddings], is_forget)
        return self

    def compute(self) -> ProbeCI:
        """Probe all samples seen since the last ``reset``."""
        (x,), y = self._batches.get("LinearProbeRecoveryCI")
        return probe_ci(x, y, **self.kwargs)

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self._batches.clear()

    @property
    def n_samples(self) -> int:
        """Number of samples accumulated since the last ``reset``."""
        return self._batches.n_samples


class LinearProbeGap:
    """Minibatch form of :func:`probe_gap_ci`: ``update(audited, retrain, is_forget)``.

    ``compute`` equals ``probe_gap_ci(concat(audited), concat(retrain), concat(labels),
    **kwargs)`` with the constructor's keyword arguments (those of :func:`probe_many_ci`).
    """

    def __init__(self, **kwargs: Any) -> None:
        _check_level(kwargs.get("level", 0.95))
        _check_solver(kwargs.get("solver", "sklearn"))
        _check_hyper(kwargs.get("C", 1.0), kwargs.get("max_iter", 1000))
        self.kwargs = dict(kwargs)
        self._batches = _Batches(("audited", "retrain"))

    def update(self, audited: Any, retrain: Any, is_forget: Any) -> LinearProbeGap:
        """Add one batch: both models' embeddings of the same ``b`` samples and their labels."""
        self._batches.add([audited, retrain], is_forget)
        return self

    def compute(self) -> ProbeGapCI:
        """Paired gap over all samples seen since the last ``reset``."""
        (a, r), y = self._batches.get("LinearProbeGap")
        return probe_gap_ci(a, r, y, **self.kwargs)

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self._batches.clear()

    @property
    def n_samples(self) -> int:
        """Number of samples accumulated since the last ``reset``."""
        return self._batches.n_samples


# --------------------------------------------------------------------------------------------
# Multi-class recovery of the forgotten classes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassRecoveryResult:
    """How well the forgotten classes are read from embeddings vs from the model's output.

    All accuracies are fractions in ``[0, 1]`` over the forgotten-class *test* samples, with
    all classes as candidates (chance is about ``1 / n_classes``).

    Attributes
    ----------
    probe_accuracy : float
        Multinomial linear probe trained on train embeddings of every class.
    output_accuracy : float or None
        The model's own prediction, ``argmax`` of its logits; ``None`` without logits.
    ncm_accuracy : float
        Nearest class mean (means of the train embeddings).
    retain_probe_accuracy : float
        The probe's accuracy on the retained-class test samples (is the probe any good?).
    n_forget_test : int
        Number of forgotten-class test samples scored.
    ncm_metric : str
        ``"cosine"`` or ``"euclidean"``.
    probe_hits : ndarray of bool, shape (n_forget_test,), or None
        Whether the probe classifies each forgotten-class test sample correctly, in test
        order (``probe_accuracy`` is their mean), for pairing with another model's probe on
        the same samples; not serialized by :meth:`to_dict`.
    """

    probe_accuracy: float
    output_accuracy: float | None
    ncm_accuracy: float
    retain_probe_accuracy: float
    n_forget_test: int
    ncm_metric: str
    probe_hits: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict``, ready for JSON."""
        return {
            "probe_accuracy": self.probe_accuracy,
            "output_accuracy": self.output_accuracy,
            "ncm_accuracy": self.ncm_accuracy,
            "retain_probe_accuracy": self.retain_probe_accuracy,
            "n_forget_test": self.n_forget_test,
            "ncm_metric": self.ncm_metric,
        }


def _class_labels(labels: Any, name: str) -> np.ndarray:
    y = to_numpy(labels)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D (n_samples,), got shape {y.shape}")
    if y.size and not (y.dtype.kind in "iu" or (y.dtype.kind == "f" and np.all(y == np.round(y)))):
        raise ValueError(f"{name} must hold integer class labels")
    return y.astype(np.int64)


def forgotten_class_recovery(
    train_embeddings: Any,
    train_labels: Any,
    test_embeddings: Any,
    test_labels: Any,
    forget_classes: Sequence[int],
    *,
    test_logits: Any = None,
    C: float = 1.0,
    max_iter: int = 1000,
    ncm_metric: Literal["cosine", "euclidean"] = "cosine",
) -> ClassRecoveryResult:
    """Multi-class probe recovery of forgotten classes, next to the output and a class-mean rule.

    "An Illusion of Unlearning?" (arXiv:2604.08271) finds that after class unlearning the
    hidden features often still separate the forgotten class, and a linear probe recovers
    near-original accuracy, while the classifier head no longer predicts it
    (feature-classifier misalignment). This function measures that on frozen embeddings:

    1. **Probe.** Standardize with the train embeddings' mean and std, fit a multinomial L2
       logistic regression ``LogisticRegression(C=C, solver="lbfgs")`` (softmax over all
       classes, forgotten ones included) on the train embeddings and labels, and report
       ``acc_probe = 1/|F| sum_{i in F} [argmax_c (W z_i + b)_c = y_i]`` over the set ``F`` of
       forgotten-class test samples.
    2. **Output.** ``acc_out = 1/|F| sum_{i in F} [argmax_c logit_ic = y_i]`` from the model's
       own logits (column ``c`` = class ``c``).
    3. **Nearest class mean.** Class means ``mu_c`` of the raw train embeddings; a sample goes
       to ``argmax_c cos(x_i, mu_c) = x_i . mu_c / (||x_i|| ||mu_c||)`` (``"cosine"``, the
       default: invariant to the overall feature scale, which unlearning updates often change)
       or ``argmin_c ||x_i - mu_c||`` (``"euclidean"``). No parameters are fit beyond the
       means, so it shows class structure that needs no trained readout, the class-mean view
       of the paper's neural-collapse argument.

    A class the output suppresses but the representation still encodes has ``acc_out`` near 0
    and ``acc_probe`` (and often ``acc_ncm``) high. Retrain without the class for a reference:
    its train embeddings must still contain the forgotten class's samples for the probe.

    Parameters
    ----------
    train_embeddings : array-like of shape (n_train, d)
        Frozen embeddings of the train samples of all classes, forgotten ones included.
    train_labels : array-like of shape (n_train,)
        Integer class labels.
    test_embeddings : array-like of shape (n_test, d)
    test_labels : array-like of shape (n_test,)
    forget_classes : sequence of int
        The forgotten classes; each must occur in the train and the test labels.
    test_logits : array-like of shape (n_test, n_classes), optional
        The model's outputs on the test samples.
    C, max_iter
        Probe regularization and L-BFGS cap.
    ncm_metric : {"cosine", "euclidean"}

    Returns
    -------
    ClassRecoveryResult
    """
    _check_hyper(C, max_iter)
    if ncm_metric not in ("cosine", "euclidean"):
        raise ValueError(f"ncm_metric must be 'cosine' or 'euclidean', got {ncm_metric!r}")
    y_tr = _class_labels(train_labels, "train_labels")
    y_te = _class_labels(test_labels, "test_labels")
    x_tr = feature_matrix(train_embeddings, "train_embeddings", y_tr.size)
    x_te = feature_matrix(test_embeddings, "test_embeddings", y_te.size)
    if x_tr.shape[1] != x_te.shape[1]:
        raise ValueError(f"train and test embeddings differ in width: {x_tr.shape[1]} vs {x_te.shape[1]}")
    classes = np.unique(y_tr)
    if classes.size < 2:
        raise ValueError("train_labels must hold at least two classes")
    forget = np.asarray(sorted({int(c) for c in forget_classes}), dtype=np.int64)
    if forget.size == 0:
        raise ValueError("forget_classes is empty")
    for c in forget:
        if c not in classes:
            raise ValueError(f"forgotten class {c} has no train samples; the probe cannot learn it")
    is_f = np.isin(y_te, forget)
    if not is_f.any():
        raise ValueError("no test sample belongs to a forgotten class")

    scaler = StandardScaler().fit(x_tr)
    clf = LogisticRegression(C=C, solver="lbfgs", max_iter=int(max_iter)).fit(scaler.transform(x_tr), y_tr)
    pred = clf.predict(scaler.transform(x_te))
    hits = np.asarray(pred[is_f] == y_te[is_f])
    probe_acc = float(np.mean(hits))
    retain_acc = float(np.mean(pred[~is_f] == y_te[~is_f])) if (~is_f).any() else float("nan")

    means = np.stack([x_tr[y_tr == c].mean(axis=0) for c in classes])
    if ncm_metric == "cosine":
        eps = np.finfo(np.float64).tiny
        mu = means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), eps)
        xf = x_te[is_f] / np.maximum(np.linalg.norm(x_te[is_f], axis=1, keepdims=True), eps)
        ncm_pred = classes[np.argmax(xf @ mu.T, axis=1)]
    else:
        d2 = ((x_te[is_f][:, None, :] - means[None, :, :]) ** 2).sum(axis=2)
        ncm_pred = classes[np.argmin(d2, axis=1)]
    ncm_acc = float(np.mean(ncm_pred == y_te[is_f]))

    out_acc: float | None = None
    if test_logits is not None:
        logits = feature_matrix(test_logits, "test_logits", y_te.size)
        if int(y_te.max()) >= logits.shape[1]:
            raise ValueError(f"test_logits has {logits.shape[1]} columns but labels go up to {int(y_te.max())}")
        out_acc = float(np.mean(np.argmax(logits[is_f], axis=1) == y_te[is_f]))
    return ClassRecoveryResult(
        probe_accuracy=probe_acc,
        output_accuracy=out_acc,
        ncm_accuracy=ncm_acc,
        retain_probe_accuracy=retain_acc,
        n_forget_test=int(is_f.sum()),
        ncm_metric=ncm_metric,
        probe_hits=hits,
    )
