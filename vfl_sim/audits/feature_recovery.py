"""Feature recovery: after a party or some of its columns are unlearned, can the removed
columns still be read linearly from the remaining representations?

Vertical federated unlearning has request kinds that remove a *party's data* rather than
samples: a whole passive party leaves, or some feature columns of one party are withdrawn
(e.g. VFU-KD, Varshney et al., arXiv:2501.13683; REMISVFU, arXiv:2512.10348). Sample-oriented
audits such as linear probe recovery have no forgotten samples to look for there; what should
be gone is the *information in the removed columns*. This module measures how much of it a
linear readout still finds in an embedding:

1. **Target.** The removed columns' raw values ``V`` (n x m). Each column is standardized
   (``(v - mean) / std`` over the given samples; a constant column stays 0) so that no column
   dominates by its unit, and, when ``n_components = k < m``, projected onto its top ``k``
   principal components: ``T = V_std P_k`` with ``P_k`` the leading eigenvectors of
   ``V_std^T V_std`` (the leading right singular vectors of the centered ``V_std``). An image
   party has hundreds of pixel columns; the leading components keep their shared structure
   and drop per-pixel noise. The reduction is fit once on all given samples; it uses no
   embedding, so it is identical for every model and split.
2. **Splits.** ``R = repeats`` random fit/eval splits with seeds ``seed, ..., seed + R - 1``
   (``eval_fraction`` held out, :func:`sklearn.model_selection.train_test_split`), the same
   for every representation of one call, as in :func:`vfl_sim.audits.probe_ci.probe_many_ci`.
3. **Readout.** The predictors ``X`` (an embedding, n x d) are standardized with the fit
   part's mean and std (constant columns get scale 1), and a ridge regression with intercept
   is fit on the fit part, in closed form::

       W = (Xs_f^T Xs_f + alpha I_d)^{-1} Xs_f^T (T_f - 1 tbar_f^T)
       T_hat_e = Xs_e W + 1 tbar_f^T

   (the same estimator as :class:`sklearn.linear_model.Ridge` with ``fit_intercept=True``,
   intercept unpenalized, ``alpha`` not scaled by ``n``). When ``d > n_fit`` the equivalent
   dual form ``W = Xs_f^T (Xs_f Xs_f^T + alpha I_n)^{-1} (T_f - 1 tbar_f^T)`` is solved instead.
4. **Score.** On the eval part, the variance-weighted coefficient of determination over the
   ``k`` target components::

       R^2 = 1 - sum_j sum_{i in E} (T_ij - T_hat_ij)^2 / sum_j sum_{i in E} (T_ij - tbar_E,j)^2

   with ``tbar_E`` the eval part's own mean (scikit-learn's ``r2_score(...,
   multioutput="variance_weighted")``). It is the fraction of the target's total eval variance
   the readout explains: 1 for a perfect readout, about 0 (slightly below, since the fit
   part's mean is not the eval part's) for an uninformative one, and unbounded below. As a
   ratio of sums it is invariant to any orthogonal rotation of the target, so with ``k = m``
   the PCA step changes nothing.

**Criterion.** Absolute R^2 is not informative on its own: a model retrained without the
removed columns still predicts them through their correlation with the kept columns. As for
linear probe recovery in Mirage (arXiv:2605.20282), the criterion is the gap to the retrained
model, ``gap_r = R^2_r(model) - R^2_r(retrain)``, computed split by split on identical
splits (:func:`paired_recovery_gap`), so that the variation both models share cancels. A
clearly positive gap means the audited representation holds more of the removed columns
than a model that never saw them.

Intervals are percentile intervals over the splits (:class:`vfl_sim.audits.interval.Interval`): they
describe the spread of a single-split value, not a confidence interval for the mean (the
splits share samples; Nadeau and Bengio, 2003).

:func:`feature_recovery` is the functional form, :func:`feature_recovery_many` reads several
representations on shared splits (batched: every model of one width is solved in one
stacked linear solve per split), :class:`FeatureRecovery` and :class:`FeatureRecoveryGap`
accumulate minibatches (``update`` / ``compute`` / ``reset``,
:class:`~vfl_sim.audits.metric.Metric`), and
:class:`FeatureRecoveryAuditor` runs it on :class:`~vfl_sim.audits.base.AuditData`: per model the
views ``fused`` and ``parties.<pid>`` (embeddings) and ``output`` (the model's logits, i.e.
whether the top model still carries the removed columns), each
``{"r2", "r2_interval", "recovery_gap", "recovery_gap_interval"}`` with
``recovery_gap = mean_r gap_r`` and ``recovery_gap_interval`` the percentile interval of the
``gap_r`` over the same splits.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from sklearn.model_selection import train_test_split

from vfl_sim.audits._arrays import feature_matrix, to_numpy
from vfl_sim.audits.base import REMOVED_FEATURES, AuditData, Auditor, ModelEmbeddings, register_auditor
from vfl_sim.audits.interval import Interval
from vfl_sim.audits.metric import Metric
from vfl_sim.config import AuditConfig
from vfl_sim.forget import ORIGINAL, RETRAIN, ForgetKind

__all__ = [
    "TargetComponents",
    "RecoveryResult",
    "RecoveryGap",
    "target_components",
    "feature_recovery",
    "feature_recovery_many",
    "paired_recovery_gap",
    "recovery_gap_ci",
    "FeatureRecovery",
    "FeatureRecoveryGap",
    "FeatureRecoveryAuditor",
]


# Both parts of a split need two samples: the eval part's R^2 divides by its variance around
# its own mean, which one sample does not have, and one fit sample leaves nothing to regress.
_MIN_PER_PART = 2
# A column whose std is this small a fraction of its largest magnitude is constant up to
# rounding: the mean of identical floats need not equal them exactly, and dividing that
# residue by its own tiny std would turn it into a unit-variance noise feature.
_CONSTANT_RTOL = 64 * np.finfo(np.float64).eps
# Upper bound on the stacked predictors of one batched solve, so memory stays bounded for
# many wide models; several batches give exactly the same numbers as one.
_BATCH_BYTES = 1 << 27


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def _check_targets(targets: Any, n: int | None = None) -> np.ndarray:
    """Targets as a finite float64 (n, m) array; a 1-D array is one column."""
    t = to_numpy(targets)
    if t.ndim == 1:
        t = t.reshape(-1, 1)
    if t.ndim != 2:
        raise ValueError(f"targets must be 2-D (n_samples, n_removed_columns), got shape {t.shape}")
    if n is not None and t.shape[0] != n:
        raise ValueError(f"targets have {t.shape[0]} rows but the embeddings have {n}")
    if t.shape[1] == 0:
        raise ValueError(f"targets have no columns (shape {t.shape})")
    if t.dtype.kind not in "biuf":
        raise ValueError(f"targets must be numeric, got dtype {t.dtype}")
    t = np.asarray(t, dtype=np.float64)
    # Unlike embeddings (where NaN is a dead unit and becomes 0), a NaN target is a missing
    # raw value: imputing it would invent the very information whose recovery is measured.
    bad = ~np.isfinite(t)
    if bad.any():
        rows, cols = np.nonzero(bad)
        raise ValueError(
            f"targets hold {int(bad.sum())} non-finite values (first at row {int(rows[0])}, column {int(cols[0])}); "
            "impute or drop those samples before the audit"
        )
    return t


def _check_embeddings(embeddings: Any, n: int, name: str) -> np.ndarray:
    m = to_numpy(embeddings)
    if m.ndim == 2 and m.shape[0] != n:
        raise ValueError(f"{name} has {m.shape[0]} rows but targets have {n}")
    # Non-finite entries become 0, as in every audit (see audits._arrays.feature_matrix).
    return feature_matrix(m, name)


def _check_settings(eval_fraction: float, alpha: float, repeats: int, level: float) -> None:
    if not 0.0 < float(eval_fraction) < 1.0:
        raise ValueError(f"eval_fraction must lie in (0, 1), got {eval_fraction}")
    if not float(alpha) > 0.0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    if int(repeats) < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")


def _check_n_components(n_components: int | float | None) -> int | float | None:
    """``n_components`` as a Python int, float or None (numpy scalars accepted), or a ValueError."""
    if n_components is None:
        return None
    if isinstance(n_components, bool) or not isinstance(n_components, numbers.Real):
        raise ValueError(f"n_components must be None, an int >= 1 or a float in (0, 1], got {n_components!r}")
    if isinstance(n_components, numbers.Integral):
        if int(n_components) < 1:
            raise ValueError(f"n_components must be at least 1, got {n_components}")
        return int(n_components)
    if not 0.0 < float(n_components) <= 1.0:
        raise ValueError(f"a float n_components is a fraction of variance in (0, 1], got {n_components}")
    return float(n_components)


def _standardize_columns(a: np.ndarray, mean: np.ndarray, std: np.ndarray, scale_ref: np.ndarray) -> np.ndarray:
    """``(a - mean) / std`` with scale 1 for columns that are constant up to rounding."""
    std = np.where(std <= _CONSTANT_RTOL * scale_ref, 1.0, std)
    return (a - mean) / std


# --------------------------------------------------------------------------------------------
# Target reduction
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetComponents:
    """The regression target built from the removed columns (see :func:`target_components`).

    Attributes
    ----------
    values : ndarray of shape (n, k)
        Standardized columns (``k = m``) or their top ``k`` principal component scores.
    columns : int
        ``m``, the number of removed columns.
    components : int
        ``k``.
    explained_variance : float
        Share of the (standardized) columns' total variance the ``k`` components hold, in
        ``[0, 1]``; 1.0 when no reduction was made.
    """

    values: np.ndarray
    columns: int
    components: int
    explained_variance: float

    def to_dict(self) -> dict[str, Any]:
        """``columns``, ``components`` and ``explained_variance``, ready for JSON."""
        return {
            "columns": self.columns,
            "components": self.components,
            "explained_variance": self.explained_variance,
        }


def target_components(
    targets: Any, *, n_components: int | float | None = None, standardize: bool = True
) -> TargetComponents:
    """Standardize the removed columns and keep their top principal components.

    With ``V`` the (n, m) raw values, ``Z = (V - mean) / std`` per column (if ``standardize``;
    otherwise only centered), and the SVD ``Z = U S P^T``, the target is ``T = Z P_k`` (the
    first ``k`` columns of ``P``) and ``explained_variance = sum_{j<k} s_j^2 / sum_j s_j^2``.

    Parameters
    ----------
    targets : array-like of shape (n, m) or (n,)
        Raw values of the removed columns; must be finite.
    n_components : int, float or None
        ``None``: all ``m`` columns, no reduction (R^2 is rotation invariant, so this equals
        keeping all components). ``int k``: ``min(k, m)`` components. ``float f`` in
        ``(0, 1]``: the fewest components holding a fraction ``f`` of the variance.
    standardize : bool
        Scale each column to unit variance first (default), so columns in large units do not
        dominate; turn off for columns on one common scale (pixels) to weight them by variance.

    Returns
    -------
    TargetComponents
    """
    n_components = _check_n_components(n_components)
    v = _check_targets(targets)
    if v.shape[0] < 2:
        raise ValueError(f"targets need at least 2 samples, got {v.shape[0]}")
    mean, std = v.mean(axis=0), v.std(axis=0)
    ref = np.max(np.abs(v), axis=0)
    z = _standardize_columns(v, mean, std, ref) if standardize else v - mean
    # Columns constant up to rounding carry no information; zero them so their residue does
    # not count as variance.
    z[:, std <= _CONSTANT_RTOL * ref] = 0.0
    total = float(np.sum(np.square(z)))
    if total == 0.0:
        raise ValueError(f"every one of the {v.shape[1]} removed columns is constant; there is nothing to recover")
    m = v.shape[1]
    if n_components is None or (isinstance(n_components, int) and n_components >= m):
        return TargetComponents(values=z, columns=m, components=m, explained_variance=1.0)
    # Eigendecomposition of the smaller of the two Grams instead of an SVD of z: the leading
    # components are all that is needed, and eigh of an m x m (or n x n) matrix is several
    # times faster than the SVD for image-wide targets.
    feature_side = m <= v.shape[0]
    evals, evecs = np.linalg.eigh(z.T @ z if feature_side else z @ z.T)
    evals, evecs = np.clip(evals[::-1], 0.0, None), evecs[:, ::-1]  # eigh sorts ascending
    share = np.cumsum(evals) / total
    if isinstance(n_components, int):
        k = n_components
    else:
        # The small tolerance keeps f = 1.0 from asking for more components than exist.
        k = int(np.searchsorted(share, float(n_components) - 1e-12) + 1)
    k = max(1, min(k, evals.size))
    # Scores z p_j; from the sample-side Gram they are u_j s_j with s_j = sqrt(eigenvalue).
    scores = z @ evecs[:, :k] if feature_side else evecs[:, :k] * np.sqrt(evals[:k])
    return TargetComponents(values=scores, columns=m, components=k, explained_variance=float(min(share[k - 1], 1.0)))


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecoveryResult:
    """Held-out R^2 of a ridge readout of the removed columns from one representation.

    Attributes
    ----------
    r2 : Interval
        ``values[r]`` is the eval R^2 of split ``r`` (seed ``seed + r``); ``mean`` the point
        estimate, ``low``/``high`` the percentile interval at ``level``.
    n_fit, n_eval : int
        Samples in the fit and eval part of every split.
    target : TargetComponents
        What was regressed on (shared by every result of one call); its ``values`` are not
        serialized.
    alpha, eval_fraction, level : float
    seed : int
    split_digest : str
        Fingerprint of the splits and the target; results can be paired
        (:func:`paired_recovery_gap`) only when it matches.
    """

    r2: Interval
    n_fit: int
    n_eval: int
    target: TargetComponents
    alpha: float
    eval_fraction: float
    level: float
    seed: int
    split_digest: str

    def to_dict(self) -> dict[str, Any]:
        """Plain nested ``dict``, ready for JSON."""
        return {
            "r2": self.r2.to_dict(),
            "n_fit": self.n_fit,
            "n_eval": self.n_eval,
            "target": self.target.to_dict(),
            "alpha": self.alpha,
            "eval_fraction": self.eval_fraction,
            "level": self.level,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class RecoveryGap:
    """Paired gap ``R^2(audited) - R^2(retrain)`` (see :func:`paired_recovery_gap`).

    Attributes
    ----------
    audited, retrain : RecoveryResult
    gap : Interval
        Of the per-split differences ``gap_r = R^2_r(audited) - R^2_r(retrain)``.
    """

    audited: RecoveryResult
    retrain: RecoveryResult
    gap: Interval

    def to_dict(self) -> dict[str, Any]:
        """Plain nested ``dict``, ready for JSON."""
        return {"audited": self.audited.to_dict(), "retrain": self.retrain.to_dict(), "gap": self.gap.to_dict()}


# --------------------------------------------------------------------------------------------
# Batched ridge
# --------------------------------------------------------------------------------------------


def _splits(n: int, eval_fraction: float, seed: int, repeats: int) -> list[tuple[np.ndarray, np.ndarray]]:
    n_eval = math.ceil(eval_fraction * n)
    if n_eval < _MIN_PER_PART or n - n_eval < _MIN_PER_PART:
        raise ValueError(
            f"feature recovery needs at least {_MIN_PER_PART} samples in both the fit and the eval part of the "
            f"{1 - eval_fraction:.0%}/{eval_fraction:.0%} split; {n} samples give {n - n_eval} and {n_eval}"
        )
    out = []
    for r in range(int(repeats)):
        fit_idx, eval_idx = train_test_split(np.arange(n), test_size=eval_fraction, random_state=seed + r, shuffle=True)
        out.append((np.asarray(fit_idx), np.asarray(eval_idx)))
    return out


def _digest(splits: Sequence[tuple[np.ndarray, np.ndarray]], t: np.ndarray, alpha: float) -> str:
    h = hashlib.sha1(usedforsecurity=False)
    for fit_idx, eval_idx in splits:
        h.update(np.ascontiguousarray(fit_idx, dtype=np.int64).tobytes())
        h.update(b"|")
        h.update(np.ascontiguousarray(eval_idx, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(t).tobytes())
    h.update(np.float64(alpha).tobytes())
    return h.hexdigest()[:16]


def _ridge_r2_batch(
    x: np.ndarray, t: np.ndarray, splits: Sequence[tuple[np.ndarray, np.ndarray]], alpha: float
) -> np.ndarray:
    """Eval R^2 of every stacked representation ``x`` (B, n, d) on every split: (B, R)."""
    b, _, d = x.shape
    out = np.empty((b, len(splits)))
    for r, (fit_idx, eval_idx) in enumerate(splits):
        xf, xe = x[:, fit_idx], x[:, eval_idx]
        mu = xf.mean(axis=1, keepdims=True)
        sd = xf.std(axis=1, keepdims=True)
        ref = np.max(np.abs(xf), axis=1, keepdims=True)
        xf = _standardize_columns(xf, mu, sd, ref)
        xe = _standardize_columns(xe, mu, sd, ref)
        tf, te = t[fit_idx], t[eval_idx]
        t_mean = tf.mean(axis=0)
        tc = tf - t_mean
        n_fit = fit_idx.size
        if d <= n_fit:
            gram = np.matmul(xf.transpose(0, 2, 1), xf)  # (B, d, d)
            gram[:, np.arange(d), np.arange(d)] += alpha
            w = np.linalg.solve(gram, np.matmul(xf.transpose(0, 2, 1), tc))  # (B, d, k)
            pred = np.matmul(xe, w)
        else:
            # Wider than the fit part: the n_fit x n_fit kernel system is the smaller one.
            kern = np.matmul(xf, xf.transpose(0, 2, 1))  # (B, n_fit, n_fit)
            kern[:, np.arange(n_fit), np.arange(n_fit)] += alpha
            dual = np.linalg.solve(kern, np.broadcast_to(tc, (b, *tc.shape)))
            pred = np.matmul(np.matmul(xe, xf.transpose(0, 2, 1)), dual)
        pred += t_mean
        sst = float(np.sum(np.square(te - te.mean(axis=0))))
        if sst == 0.0:
            raise ValueError(f"the eval part of split {r} has constant targets, so R^2 is undefined; use more samples")
        out[:, r] = 1.0 - np.sum(np.square(pred - te), axis=(1, 2)) / sst
    return out


def _r2_values(
    xs: Sequence[np.ndarray], t: np.ndarray, splits: Sequence[tuple[np.ndarray, np.ndarray]], alpha: float
) -> np.ndarray:
    """(K, R) eval R^2; representations of equal width share one stacked solve."""
    out = np.empty((len(xs), len(splits)))
    by_width: dict[int, list[int]] = {}
    for k, x in enumerate(xs):
        by_width.setdefault(x.shape[1], []).append(k)
    n = t.shape[0]
    for d, members in by_width.items():
        per_batch = max(1, _BATCH_BYTES // (8 * n * d))
        for start in range(0, len(members), per_batch):
            chunk = members[start : start + per_batch]
            out[chunk] = _ridge_r2_batch(np.stack([xs[k] for k in chunk]), t, splits, float(alpha))
    return out


# --------------------------------------------------------------------------------------------
# Functional API
# --------------------------------------------------------------------------------------------


def feature_recovery_many(
    embeddings_list: Sequence[Any],
    targets: Any,
    *,
    eval_fraction: float = 0.3,
    alpha: float = 1.0,
    n_components: int | float | None = None,
    standardize_targets: bool = True,
    repeats: int = 5,
    level: float = 0.95,
    seed: int = 0,
) -> list[RecoveryResult]:
    """Held-out ridge R^2 of the removed columns from several representations, on shared splits.

    Every representation is read on the same ``repeats`` splits and against the same target
    (:func:`target_components`), so index ``r`` of two results is the same split and
    :func:`paired_recovery_gap` can pair them. The protocol and the R^2 formula are in the
    module docstring. Representations of one width are solved together: per split, one
    stacked ``(B, d, d)`` (or ``(B, n_fit, n_fit)`` when ``d > n_fit``) linear solve.

    Parameters
    ----------
    embeddings_list : sequence of array-like, each of shape (n, d_k)
        Representations of the same samples (numpy arrays or torch tensors; widths may differ).
        Non-finite entries become 0 (a dead unit), as in every audit.
    targets : array-like of shape (n, m) or (n,)
        Raw values of the removed columns of the same samples; must be finite.
    eval_fraction : float
        Held-out fraction of every split, default 0.3 (``ceil(eval_fraction * n)`` samples).
    alpha : float
        Ridge penalty on the standardized predictors, default 1.0 (not scaled by ``n``).
    n_components, standardize_targets
        Target reduction, see :func:`target_components`.
    repeats : int
        Number of splits, seeds ``seed .. seed + repeats - 1`` (default 5).
    level : float
        Coverage of the percentile interval over splits, default 0.95.
    seed : int
        Seed of the first split.

    Returns
    -------
    list of RecoveryResult
        One per representation, in order.

    Raises
    ------
    ValueError
        On non-2-D or empty inputs, mismatched numbers of rows, non-finite or constant
        targets, bad settings, or too few samples for two in each part of a split.
    """
    _check_settings(eval_fraction, alpha, repeats, level)
    _check_n_components(n_components)
    v = _check_targets(targets)
    n = v.shape[0]
    # Validate every representation before fitting any, so a bad entry fails fast.
    xs = [_check_embeddings(e, n, f"embeddings_list[{k}]") for k, e in enumerate(embeddings_list)]
    splits = _splits(n, float(eval_fraction), int(seed), int(repeats))
    target = target_components(v, n_components=n_components, standardize=standardize_targets)
    if not xs:
        return []
    values = _r2_values(xs, target.values, splits, float(alpha))
    digest = _digest(splits, target.values, float(alpha))
    return [
        RecoveryResult(
            r2=Interval.from_values(values[k], level),
            n_fit=int(splits[0][0].size),
            n_eval=int(splits[0][1].size),
            target=target,
            alpha=float(alpha),
            eval_fraction=float(eval_fraction),
            level=float(level),
            seed=int(seed),
            split_digest=digest,
        )
        for k in range(len(xs))
    ]


def feature_recovery(embeddings: Any, targets: Any, **kwargs: Any) -> RecoveryResult:
    """Held-out ridge R^2 of the removed columns from one representation, over repeated splits.

    ``feature_recovery(x, v, **kw) == feature_recovery_many([x], v, **kw)[0]``; keyword
    arguments (``eval_fraction=0.3, alpha=1.0, n_components=None, standardize_targets=True,
    repeats=5, level=0.95, seed=0``) as there.
    """
    return feature_recovery_many([embeddings], targets, **kwargs)[0]


def paired_recovery_gap(audited: RecoveryResult, retrain: RecoveryResult) -> RecoveryGap:
    """Gap ``R^2(audited) - R^2(retrain)`` split by split, with a percentile interval.

    ``gap_r = R^2_r(audited) - R^2_r(retrain)`` on the same split ``r``; the interval is that
    of the ``gap_r`` at ``audited.level``. Pairing removes what both models share (which
    samples are fit and scored), so two identical representations give ``gap_r = 0`` for
    every ``r``. The gap to retrain, not absolute R^2, is the criterion (after Mirage,
    arXiv:2605.20282): the retrained model still predicts the removed columns through their
    correlation with the kept ones.

    Both results must come from one :func:`feature_recovery_many` call, or calls with the same
    targets and settings (checked through ``split_digest``).
    """
    for name in ("n_fit", "n_eval", "seed", "level", "alpha", "split_digest"):
        a, r = getattr(audited, name), getattr(retrain, name)
        if a != r:
            raise ValueError(f"paired gap needs readouts on the same splits and target: {name} is {a!r} vs {r!r}")
    a_v, r_v = np.asarray(audited.r2.values), np.asarray(retrain.r2.values)
    return RecoveryGap(audited=audited, retrain=retrain, gap=Interval.from_values(a_v - r_v, audited.level))


def recovery_gap_ci(audited: Any, retrain: Any, targets: Any, **kwargs: Any) -> RecoveryGap:
    """:func:`paired_recovery_gap` of two representations read on shared splits.

    Keyword arguments as in :func:`feature_recovery_many`.
    """
    a, r = feature_recovery_many([audited, retrain], targets, **kwargs)
    return paired_recovery_gap(a, r)


# --------------------------------------------------------------------------------------------
# Minibatch forms
# --------------------------------------------------------------------------------------------


def _check_kwargs(kwargs: dict[str, Any]) -> None:
    allowed = {"eval_fraction", "alpha", "n_components", "standardize_targets", "repeats", "level", "seed"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(unknown)}")
    _check_settings(
        kwargs.get("eval_fraction", 0.3), kwargs.get("alpha", 1.0), kwargs.get("repeats", 5), kwargs.get("level", 0.95)
    )
    _check_n_components(kwargs.get("n_components"))


class FeatureRecovery(Metric[RecoveryResult]):
    """Minibatch form of :func:`feature_recovery`: ``update`` / ``compute`` / ``reset``.

    ``compute`` equals ``feature_recovery(concat(embeddings), concat(targets), **kwargs)``
    with the constructor's keyword arguments. The readout needs every sample at once (the
    splits and the target's principal components are global), so batches are stored.

    Examples
    --------
    >>> metric = FeatureRecovery(n_components=16)
    >>> for emb, removed in batches:  # doctest: +SKIP
    ...     metric.update(emb, removed)
    >>> metric.compute().r2.mean  # doctest: +SKIP
    """

    def __init__(self, **kwargs: Any) -> None:
        _check_kwargs(kwargs)  # fail on a bad argument now rather than at compute()
        self.kwargs = dict(kwargs)
        super().__init__(columns=("targets", "embeddings"))

    def update(self, embeddings: Any, targets: Any) -> FeatureRecovery:
        """Add one batch: embeddings ``(b, d)`` and the removed columns ``(b, m)``; returns ``self``."""
        t = _check_targets(targets)
        self._append(t, _check_embeddings(embeddings, t.shape[0], "embeddings"))
        return self

    def _compute(self) -> RecoveryResult:
        return feature_recovery(self._rows.column("embeddings"), self._rows.column("targets"), **self.kwargs)


class FeatureRecoveryGap(Metric[RecoveryGap]):
    """Minibatch form of :func:`recovery_gap_ci`: ``update(audited, retrain, targets)``.

    ``compute`` equals ``recovery_gap_ci(concat(audited), concat(retrain), concat(targets),
    **kwargs)`` with the constructor's keyword arguments.
    """

    def __init__(self, **kwargs: Any) -> None:
        _check_kwargs(kwargs)
        self.kwargs = dict(kwargs)
        super().__init__(columns=("targets", "audited", "retrain"))

    def update(self, audited: Any, retrain: Any, targets: Any) -> FeatureRecoveryGap:
        """Add one batch: both models' embeddings of the same ``b`` samples and their removed columns."""
        t = _check_targets(targets)
        a = _check_embeddings(audited, t.shape[0], "audited")
        r = _check_embeddings(retrain, t.shape[0], "retrain")
        self._append(t, a, r)
        return self

    def _compute(self) -> RecoveryGap:
        rows = self._rows
        return recovery_gap_ci(rows.column("audited"), rows.column("retrain"), rows.column("targets"), **self.kwargs)


# --------------------------------------------------------------------------------------------
# Auditor
# --------------------------------------------------------------------------------------------

Rows = Literal["train", "all"]
_TRAIN_SPLITS = ("retain_train", "forget_train")


@register_auditor("feature_recovery")
class FeatureRecoveryAuditor(Auditor):
    """Feature recovery of party and feature requests, per model, fused and per party.

    For every model, a ridge readout of the removed columns (see the module docstring) from

    * ``fused``: the remaining representation the top model reads, the concatenation (in
      party order) of the embeddings of every party except the departed one for kind
      ``party``, of every party for kind ``features``;
    * ``parties.<pid>``: each party's own embedding (for kind ``party`` the departed party is
      skipped).

    For kind ``party`` the departed party is excluded from *every* model, the original
    included, although the original still has its embedding: after unlearning it sends
    none (the top model reads zeros), so only the remaining parties' embeddings are comparable
    across models, and including it would measure the trivial fact that the original model
    reads the party's data. What is measured is whether the *remaining* bottom models (and,
    for ``features``, the owning party's own) still encode the removed columns beyond what a
    retrained model's do.

    What it reads of :class:`AuditData` besides the models:

    * ``removed_features``: ``(n, m)`` float array (1-D for one column), the raw values of the
      removed columns (kind ``party``: every column of the departed party, e.g. all pixels of
      its image strip; kind ``features``: the withdrawn columns), row ``i`` for audit sample
      ``i``, ``n = len(data.labels)``. Must be finite for the rows used.
    * ``removed_party``: the id of the party that left (kind ``party``) or whose columns were
      removed (kind ``features``); must be one of the reference model's parties (``original``
      if present, else the first model).

    Rows: ``samples="train"`` (default) uses the training audit samples (split
    ``retain_train``, and ``forget_train`` should a request have any; for party and feature
    requests every training sample is retained). Those are the samples whose removed data the
    request is about, and a bottom model that memorized them would show it only there (on
    test samples a remaining party's embedding can carry the removed columns only through
    their correlation with its own). ``samples="all"`` adds the test samples.

    * ``output``: the model's logits (``ModelEmbeddings.logits``, the top model's output):
      does the top model still carry the removed columns' information? Read on the same
      splits and against the same target as the other views, so its gap to retrain is paired
      the same way. For kind ``party`` the original model's logits were computed with the
      departed party's embedding, so they are expected to carry it; what matters is the
      unlearned models' gap to retrain. Left out for a model without ``(n, C)`` logits.

    Output per model::

        {"fused": {"r2", "r2_interval", "recovery_gap", "recovery_gap_interval"},
         "parties": {pid: {...same keys...}},
         "output": {...same keys...},
         "target": {"columns": m, "components": k, "explained_variance": ...},
         "samples": {"rows", "fit", "eval", "splits"},
         "excluded_party": pid or None}

    ``r2`` is the mean eval R^2 over the splits and ``r2_interval`` its percentile interval;
    ``recovery_gap = mean_r(R^2_r(model) - R^2_r(retrain))``, paired split by split, and
    ``recovery_gap_interval`` the percentile interval of those per-split gaps (``None``
    without a ``retrain`` model; 0 and ``[0, 0]`` for ``retrain`` itself).

    Parameters
    ----------
    eval_fraction, alpha, n_components, standardize_targets, repeats, level, seed
        As in :func:`feature_recovery_many`; ``n_components`` defaults to 16 here (fewer
        removed columns than that are kept as they are).
    samples : {"train", "all"}
        Which audit samples to read (see above).
    """

    kinds = frozenset(ForgetKind.OF_A_PARTY)
    needs = frozenset({REMOVED_FEATURES})

    def __init__(
        self,
        *,
        eval_fraction: float = 0.3,
        alpha: float = 1.0,
        n_components: int | float | None = 16,
        standardize_targets: bool = True,
        repeats: int = 5,
        level: float = 0.95,
        seed: int = 0,
        samples: Rows = "train",
    ) -> None:
        _check_settings(eval_fraction, alpha, repeats, level)
        _check_n_components(n_components)
        if samples not in ("train", "all"):
            raise ValueError(f"samples must be 'train' or 'all', got {samples!r}")
        self.eval_fraction = eval_fraction
        self.alpha = alpha
        self.n_components = n_components
        self.standardize_targets = standardize_targets
        self.repeats = repeats
        self.level = level
        self.seed = seed
        self.samples: Rows = samples

    @classmethod
    def from_config(cls, audit: AuditConfig, seed: Callable[[str], int]) -> FeatureRecoveryAuditor:
        return cls(eval_fraction=audit.probe_eval_fraction, seed=seed("feature_recovery"), repeats=audit.probe_repeats)

    def _inputs(self, data: AuditData) -> tuple[np.ndarray, np.ndarray, str]:
        """Row mask, the removed columns of those rows, and the removed party."""
        if data.kind not in ForgetKind.OF_A_PARTY:
            raise ValueError(
                f"feature_recovery audits party and feature requests (kind 'party' or 'features'), not '{data.kind}'"
            )
        if data.removed_features is None or data.removed_party is None:
            missing = "removed_features" if data.removed_features is None else "removed_party"
            raise ValueError(
                f"feature_recovery needs data.{missing}: removed_features is the (n, m) raw values "
                "of the removed columns of the audit samples, removed_party the id of the party they belong to"
            )
        n = len(data.labels)
        removed = to_numpy(data.removed_features)
        if removed.ndim not in (1, 2) or removed.shape[0] != n:
            raise ValueError(
                f"data.removed_features must be (n, m) with n = {n} audit samples, got shape {removed.shape}"
            )
        if self.samples == "train":
            rows = np.isin(data.split, _TRAIN_SPLITS)
            if not rows.any():
                raise ValueError("feature_recovery found no training audit samples (split 'retain_train')")
        else:
            rows = np.ones(n, dtype=bool)
        return rows, removed[rows], str(data.removed_party)

    def audit(self, data: AuditData) -> dict[str, dict[str, Any]]:
        rows, removed, party = self._inputs(data)
        if not data.models:
            return {}
        names = list(data.models)
        reference = data.models[ORIGINAL] if ORIGINAL in data.models else data.models[names[0]]
        if party not in reference.parties:
            raise ValueError(
                f"data.removed_party is {party!r}, not a party of the models ({', '.join(reference.parties)})"
            )
        excluded = party if data.kind == ForgetKind.PARTY else None
        kept = [pid for pid in reference.parties if pid != excluded]
        views = {name: self._views(name, m, kept, rows) for name, m in data.models.items()}
        keys = ["fused", *kept]
        # One call: every (model, view) pair is read on identical splits against one target.
        flat = [views[n][k] for n in names for k in keys]
        results = iter(
            feature_recovery_many(
                flat,
                removed,
                eval_fraction=self.eval_fraction,
                alpha=self.alpha,
                n_components=self.n_components,
                standardize_targets=self.standardize_targets,
                repeats=self.repeats,
                level=self.level,
                seed=self.seed,
            )
        )
        res = {n: {k: next(results) for k in keys} for n in names}
        output = self._output(data, names, rows, removed)
        first = res[names[0]]["fused"]
        out: dict[str, dict[str, Any]] = {}
        for n in names:
            per_view = {k: self._view(res[n][k], res[RETRAIN][k] if RETRAIN in res else None) for k in keys}
            out[n] = {
                "fused": per_view["fused"],
                "parties": {k: per_view[k] for k in kept},
                "target": first.target.to_dict(),
                "samples": {"rows": self.samples, "fit": first.n_fit, "eval": first.n_eval, "splits": self.repeats},
                "excluded_party": excluded,
            }
            if n in output:
                out[n]["output"] = self._view(output[n], output.get(RETRAIN))
        return out

    def _output(
        self, data: AuditData, names: list[str], rows: np.ndarray, removed: np.ndarray
    ) -> dict[str, RecoveryResult]:
        """The same readout from each model's logits (the top model's output), on the same
        splits and target as the embedding views (a separate call, so those stay as they are).
        Models without logits of the audit samples are left out."""
        n = len(data.labels)
        with_logits = [
            name
            for name in names
            if data.models[name].logits is not None
            and np.ndim(data.models[name].logits) == 2
            and np.shape(data.models[name].logits)[0] == n
        ]
        if not with_logits:
            return {}
        results = feature_recovery_many(
            [np.asarray(data.models[name].logits)[rows] for name in with_logits],
            removed,
            eval_fraction=self.eval_fraction,
            alpha=self.alpha,
            n_components=self.n_components,
            standardize_targets=self.standardize_targets,
            repeats=self.repeats,
            level=self.level,
            seed=self.seed,
        )
        return dict(zip(with_logits, results, strict=True))

    @staticmethod
    def _views(name: str, model: ModelEmbeddings, kept: list[str], rows: np.ndarray) -> dict[str, np.ndarray]:
        absent = [pid for pid in kept if pid not in model.parties]
        if absent:
            raise ValueError(f"model {name!r} has no embedding of party {absent[0]!r}")
        per_party = {pid: np.asarray(model.parties[pid])[rows] for pid in kept}
        return {"fused": np.concatenate(list(per_party.values()), axis=1), **per_party}

    @staticmethod
    def _view(result: RecoveryResult, retrain: RecoveryResult | None) -> dict[str, Any]:
        gap = None if retrain is None else paired_recovery_gap(result, retrain).gap
        return {
            "r2": result.r2.mean,
            "r2_interval": [result.r2.low, result.r2.high],
            "recovery_gap": None if gap is None else gap.mean,
            "recovery_gap_interval": None if gap is None else [gap.low, gap.high],
        }
