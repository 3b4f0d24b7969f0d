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
minibatches (``update`` / ``compute`` / ``reset``, :class:`~vfl_sim.audits.metric.Metric`) and
gives the same result on the concatenated data. :func:`probe_many` probes several
representations of the same samples (fused and per-party embeddings of several models) under
one shared split. ``solver="batch"`` fits all probes of a call in one batched Newton solver
(:mod:`vfl_sim.audits.probe_batch`): the same objective as scikit-learn's, solved to its
optimum; faster only for narrow embeddings where lbfgs needs many iterations (see
``benchmarks/probe_fits.py``).

Beyond the reference protocol (which reports one split without uncertainty), each in its own
module:

* :mod:`vfl_sim.audits.probe_ci`: percentile intervals over repeated stratified splits (or a
  stratified bootstrap of the eval part), :func:`~vfl_sim.audits.probe_ci.probe_many_ci`;
* :mod:`vfl_sim.audits.probe_gap`: the gap to the retrained model computed *paired*, split by
  split, so that variation both models share cancels, :func:`~vfl_sim.audits.probe_gap.paired_gap`;
* :mod:`vfl_sim.audits.class_recovery`: the forgotten classes read back with a multinomial probe
  and a nearest-class-mean rule, next to the model's own output accuracy ("An Illusion of
  Unlearning?", arXiv:2604.08271).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from vfl_sim.audits._arrays import feature_matrix, to_numpy
from vfl_sim.audits.metric import Metric
from vfl_sim.audits.probe_batch import batch_decision_scores, binary_scores

__all__ = [
    "LinearProbeRecovery",
    "ProbeResult",
    "Solver",
    "linear_probe_recovery",
    "probe_many",
    "stratified_split",
]

#: ``"sklearn"``: one :class:`~sklearn.linear_model.LogisticRegression` per probe (the Mirage
#: reference); ``"batch"``: all probes in one batched Newton solver
#: (:mod:`vfl_sim.audits.probe_batch`), same objective solved to its optimum; AUROC agrees to about
#: 1e-3, balanced accuracy up to single flipped eval predictions near the threshold.
Solver = Literal["sklearn", "batch"]

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


def check_is_forget(is_forget: Any) -> np.ndarray:
    """``is_forget`` as a 1-D int array of 0/1, or a ValueError saying what is wrong."""
    y = to_numpy(is_forget)
    if y.ndim != 1:
        raise ValueError(f"is_forget must be 1-D (n_samples,), got shape {y.shape}")
    if y.dtype != bool and not (y.dtype.kind in "iuf" and np.all(np.isin(y, (0, 1)))):
        raise ValueError("is_forget must hold only 0/1 or False/True values")
    return y.astype(np.int64)


def check_embeddings(embeddings: Any, n: int, *, name: str = "embeddings") -> np.ndarray:
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
    y = check_is_forget(is_forget)
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


def check_solver(solver: str) -> None:
    """A ValueError unless ``solver`` is a :data:`Solver`."""
    if solver not in ("sklearn", "batch"):
        raise ValueError(f"solver must be 'sklearn' or 'batch', got {solver!r}")


def check_hyper(C: float, max_iter: int) -> None:
    """A ValueError unless the probe's ``C`` is positive and ``max_iter`` at least 1."""
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
    check_hyper(C, max_iter)
    y = check_is_forget(is_forget)
    x = check_embeddings(embeddings, y.size)
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
    check_hyper(C, max_iter)
    check_solver(solver)
    y = check_is_forget(is_forget)
    # Validate every representation before fitting any, so a bad entry fails fast.
    xs = [check_embeddings(e, y.size, name=f"embeddings_list[{k}]") for k, e in enumerate(embeddings_list)]
    fit_idx, eval_idx = stratified_split(y, eval_fraction=eval_fraction, seed=seed)
    if solver == "sklearn" or not xs:
        return [_fit_and_score(x, y, fit_idx, eval_idx, C=C, max_iter=int(max_iter)) for x in xs]
    scores = batch_decision_scores(xs, y, [(fit_idx, eval_idx)], C=C, max_iter=int(max_iter))[:, 0, :]
    ba, auc = binary_scores(scores, y[eval_idx][None, :])
    return [
        ProbeResult(balanced_accuracy=float(b), auroc=float(a), n_fit=int(fit_idx.size), n_eval=int(eval_idx.size))
        for b, a in zip(ba, auc, strict=True)
    ]


class LinearProbeRecovery(Metric[ProbeResult]):
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
        check_hyper(C, max_iter)
        self.eval_fraction = float(eval_fraction)
        self.C = float(C)
        self.seed = seed
        self.max_iter = int(max_iter)
        super().__init__(columns=("embeddings", "is_forget"))

    def update(self, embeddings: Any, is_forget: Any) -> LinearProbeRecovery:
        """Add one batch of embeddings ``(b, d)`` and their labels ``(b,)``; returns ``self``."""
        y = check_is_forget(is_forget)
        self._append(check_embeddings(embeddings, y.size), y)
        return self

    def _compute(self) -> ProbeResult:
        return linear_probe_recovery(
            self._rows.column("embeddings"),
            self._rows.column("is_forget"),
            eval_fraction=self.eval_fraction,
            C=self.C,
            seed=self.seed,
            max_iter=self.max_iter,
        )
