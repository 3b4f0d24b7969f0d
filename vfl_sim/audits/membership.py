"""Membership inference on forgotten samples: threshold attacks and difficulty calibration.

A membership inference attack (MIA) decides from a model's output whether a sample was in
its training set (Shokri, Stronati, Song and Shmatikov, "Membership Inference Attacks
Against Machine Learning Models", IEEE S&P 2017). For unlearning, the question is whether
the *forgotten* training samples (members of the original training set) still look like
members, or look like samples the model never saw. This module scores each sample with a
threshold signal computed from logits ``z`` and labels ``y`` (``p = softmax(z)``), oriented
so that a higher score means "more likely a member":

* ``loss``: ``s = -CE = log p_y`` (Yeom, Giacomelli, Fredrikson and Jha, "Privacy Risk in
  Machine Learning: Analyzing the Connection to Overfitting", IEEE CSF 2018: training
  samples have lower loss);
* ``entropy``: ``s = sum_i p_i log p_i`` (minus the prediction entropy; confident outputs
  suggest membership, the threshold attack of Salem et al., NDSS 2019, building on the
  confidence signal of Shokri et al.);
* ``mentropy``: minus the modified entropy of Song and Mittal ("Systematic Evaluation of
  Privacy Risks of Machine Learning Models", USENIX Security 2021), which uses the label::

      Mentr(p, y) = -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i)

Rather than fixing a threshold, the attack is summarised by its AUC over all thresholds,
members (default group ``forget_train``) against non-members (default ``test``): the
Mann-Whitney statistic with average ranks for ties, equal to scikit-learn's
``roc_auc_score``::

    AUC = (sum_{i in members} rank_i - n_m (n_m + 1) / 2) / (n_m n_u)
        = P(s_member > s_nonmember) + 1/2 P(s_member = s_nonmember)

0.5 means the forgotten samples are indistinguishable from unseen ones (what retraining
gives when the non-members come from the same distribution; for class requests, use test
samples of the forgotten classes); 1.0 means every forgotten sample still looks like a
member. A percentile bootstrap (members and non-members resampled separately) gives a
confidence interval.

**Difficulty calibration** (Watson, Guo, Cormode and Sablayrolles, "On the Importance of
Difficulty Calibration in Membership Inference Attacks", ICLR 2022): easy samples have low
loss whether or not they were trained on, so a raw threshold confounds membership with
difficulty. Subtracting the score a reference model that never trained on the sample gives
on the *same* sample removes that per-sample difficulty::

    s_cal(x) = s_target(x) - s_reference(x)       (for ``loss``: CE_ref(x) - CE_target(x))

No shadow models are needed when a natural reference exists: the retrained model never saw
the forget samples or the test samples, so its logits measure how hard each sample is.

**Paired difference to a reference** (:func:`paired_auc_difference`): to judge how far a
model's attack AUC is from the retrained model's, both AUCs are computed on every bootstrap
resample of the same samples (the resamples of ``auc_ci``)::

    diff    = AUC(model) - AUC(retrain)
    delta_b = AUC_b(model) - AUC_b(retrain),   b = 1..B
    interval = [q_{(1-c)/2}(delta), q_{(1+c)/2}(delta)]

so the variation both share cancels; the retrained model against itself gets exactly
``diff = 0`` and ``[0, 0]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.special import log_softmax
from scipy.stats import rankdata

from vfl_sim.audits._arrays import feature_matrix, to_numpy
from vfl_sim.audits.metric import Metric

__all__ = [
    "AucDifference",
    "MembershipInference",
    "MembershipResult",
    "auc_by_ranks",
    "bootstrap_auc_ci",
    "membership_inference",
    "membership_scores",
    "paired_auc_difference",
]

Signal = Literal["loss", "entropy", "mentropy"]
_SIGNALS: tuple[str, ...] = ("loss", "entropy", "mentropy")
# Bootstrap replicates are drawn in chunks so that the (chunk, n) count matrices stay small.
_BOOTSTRAP_CELLS = 4_000_000


@dataclass(frozen=True)
class MembershipResult:
    """AUCs of a threshold membership attack, members against non-members.

    Attributes
    ----------
    signal : str
        ``loss``, ``entropy`` or ``mentropy``.
    auc : float
        AUC of the raw score, in ``[0, 1]``; 0.5 is chance.
    auc_ci : tuple of float
        Percentile bootstrap interval ``(low, high)`` of ``auc`` at level ``confidence``.
    calibrated_auc : float or None
        AUC of the reference-calibrated score; ``None`` without reference logits.
    calibrated_auc_ci : tuple of float or None
        Its bootstrap interval (same resamples as ``auc_ci``).
    n_member, n_nonmember : int
        Samples in the two groups.
    confidence : float
        Level of the intervals.
    """

    signal: str
    auc: float
    auc_ci: tuple[float, float]
    calibrated_auc: float | None
    calibrated_auc_ci: tuple[float, float] | None
    n_member: int
    n_nonmember: int
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict``, ready for JSON (intervals as two-element lists)."""
        return {
            "signal": self.signal,
            "auc": self.auc,
            "auc_ci": list(self.auc_ci),
            "calibrated_auc": self.calibrated_auc,
            "calibrated_auc_ci": None if self.calibrated_auc_ci is None else list(self.calibrated_auc_ci),
            "n_member": self.n_member,
            "n_nonmember": self.n_nonmember,
            "confidence": self.confidence,
        }


def _check_signal(signal: str) -> None:
    if signal not in _SIGNALS:
        raise ValueError(f"signal must be one of {_SIGNALS}, got {signal!r}")


def _check_bootstrap(n_bootstrap: int, confidence: float) -> None:
    if int(n_bootstrap) < 1:
        raise ValueError(f"n_bootstrap must be at least 1, got {n_bootstrap}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")


def _check_labels(labels: Any, logits: np.ndarray) -> np.ndarray:
    y = to_numpy(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D (n_samples,), got shape {y.shape}")
    if y.size != logits.shape[0]:
        raise ValueError(f"labels has {y.size} entries but logits has {logits.shape[0]} rows")
    if y.size and (y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and np.all(y == np.round(y)))):
        raise ValueError("labels must be integer class indices")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= logits.shape[1]):
        raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got range [{y.min()}, {y.max()}]")
    return y


def membership_scores(logits: Any, labels: Any, signal: Signal = "loss") -> np.ndarray:
    """Per-sample membership score, higher = more likely a member.

    Parameters
    ----------
    logits : array-like of shape (n, C)
        Model outputs before the softmax; non-finite values become 0.
    labels : array-like of shape (n,)
        True class indices.
    signal : {"loss", "entropy", "mentropy"}
        ``loss``: ``log p_y`` (minus the cross-entropy, Yeom et al. 2018); ``entropy``:
        ``sum_i p_i log p_i`` (minus the Shannon entropy); ``mentropy``: minus Song and
        Mittal's modified entropy (see the module docstring).

    Returns
    -------
    ndarray of shape (n,), float64
    """
    _check_signal(signal)
    z = feature_matrix(logits, "logits")
    y = _check_labels(labels, z)
    logp = log_softmax(z, axis=1)
    rows = np.arange(z.shape[0])
    if signal == "loss":
        return np.asarray(logp[rows, y])
    p = np.exp(logp)
    if signal == "entropy":
        # log_softmax of finite logits is finite, so p * logp is 0 (not NaN) where p underflows.
        return np.asarray(np.sum(p * logp, axis=1))
    # log(1 - p_i) = log(-expm1(log p_i)), accurate for small p_i; clipped where p_i rounds to 1.
    log1m = np.log(np.maximum(-np.expm1(logp), np.finfo(np.float64).tiny))
    p_y, logp_y = p[rows, y], logp[rows, y]
    others = np.sum(p * log1m, axis=1) - p_y * log1m[rows, y]
    mentr = -(1.0 - p_y) * logp_y - others
    return np.asarray(-mentr)


def _split_groups(scores: np.ndarray, is_member: Any) -> tuple[np.ndarray, np.ndarray]:
    m = to_numpy(is_member)
    if m.ndim != 1 or m.size != scores.size:
        raise ValueError(f"is_member must be 1-D with {scores.size} entries, got shape {m.shape}")
    if m.dtype != bool and not (m.dtype.kind in "iuf" and np.all(np.isin(m, (0, 1)))):
        raise ValueError("is_member must hold only 0/1 or False/True values")
    m = m.astype(bool)
    if m.all() or not m.any():
        raise ValueError(f"AUC needs members and non-members; got {int(m.sum())} members out of {m.size}")
    return scores[m], scores[~m]


def auc_by_ranks(scores: Any, is_member: Any) -> float:
    """ROC AUC of ``scores`` for ``is_member`` via average ranks (Mann-Whitney U).

    .. math::

        \\mathrm{AUC} = \\frac{\\sum_{i:\\,\\mathrm{member}} \\mathrm{rank}_i - n_m (n_m + 1)/2}{n_m n_u}

    with ranks 1..n of the pooled scores and tied scores sharing their average rank, which
    counts a tie between a member and a non-member as one half; identical to
    :func:`sklearn.metrics.roc_auc_score`.
    """
    s = np.asarray(to_numpy(scores), dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {s.shape}")
    pos, neg = _split_groups(s, is_member)
    ranks = rankdata(np.concatenate([pos, neg]), method="average")
    n_m, n_u = pos.size, neg.size
    return float((ranks[:n_m].sum() - n_m * (n_m + 1) / 2.0) / (n_m * n_u))


def _group_sums(w: np.ndarray, inv: np.ndarray, u: int) -> np.ndarray:
    """``(B, U)`` sums of the columns of ``w`` (B, n) that share a distinct-value index ``inv``."""
    order = np.argsort(inv, kind="stable")
    inv_sorted = inv[order]
    starts = np.flatnonzero(np.r_[True, inv_sorted[1:] != inv_sorted[:-1]])
    out = np.zeros((w.shape[0], u))
    out[:, inv_sorted[starts]] = np.add.reduceat(w[:, order], starts, axis=1)
    return out


def _weighted_aucs(pos: np.ndarray, neg: np.ndarray, w_pos: np.ndarray, w_neg: np.ndarray) -> np.ndarray:
    """AUC under each row of sample weights ``w_pos`` (B, n_m) and ``w_neg`` (B, n_u).

    With integer weights (bootstrap multiplicities) this is exactly the rank AUC of the
    resampled data, ``sum_v W_m[v] (W_u[< v] + W_u[v] / 2) / (sum W_m * sum W_u)`` over the
    distinct score values ``v``, in ``O(B (n + U))`` without sorting each replicate.
    """
    values, inv = np.unique(np.concatenate([pos, neg]), return_inverse=True)
    inv = inv.ravel()
    wm = _group_sums(w_pos, inv[: pos.size], values.size)
    wn = _group_sums(w_neg, inv[pos.size :], values.size)
    below = np.cumsum(wn, axis=1) - wn
    num = np.sum(wm * (below + 0.5 * wn), axis=1)
    return np.asarray(num / (wm.sum(axis=1) * wn.sum(axis=1)))


def _bootstrap_replicates(
    vectors: Sequence[np.ndarray], is_member: np.ndarray, *, n_bootstrap: int, seed: int
) -> list[np.ndarray]:
    """Bootstrap AUCs ``(n_bootstrap,)`` of several score vectors of the same samples.

    Replicate ``b`` of every vector uses the same resample (the draws depend only on the group
    sizes, ``n_bootstrap`` and ``seed``), so replicates of two vectors are paired.
    """
    groups = [_split_groups(np.asarray(s, dtype=np.float64), is_member) for s in vectors]
    n_m, n_u = groups[0][0].size, groups[0][1].size
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CELLS // (n_m + n_u))
    aucs: list[list[np.ndarray]] = [[] for _ in groups]
    done = 0
    while done < n_bootstrap:
        b = min(chunk, n_bootstrap - done)
        # Multiplicities of a uniform resample with replacement, per group.
        w_pos = rng.multinomial(n_m, np.full(n_m, 1.0 / n_m), size=b).astype(np.float64)
        w_neg = rng.multinomial(n_u, np.full(n_u, 1.0 / n_u), size=b).astype(np.float64)
        for out, (pos, neg) in zip(aucs, groups):
            out.append(_weighted_aucs(pos, neg, w_pos, w_neg))
        done += b
    return [np.concatenate(out) for out in aucs]


def _percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(replicates, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _bootstrap_cis(
    vectors: Sequence[np.ndarray], is_member: np.ndarray, *, n_bootstrap: int, confidence: float, seed: int
) -> list[tuple[float, float]]:
    """Percentile intervals of several score vectors of the same samples, same resamples."""
    _check_bootstrap(n_bootstrap, confidence)
    replicates = _bootstrap_replicates(vectors, is_member, n_bootstrap=n_bootstrap, seed=seed)
    return [_percentile_interval(r, confidence) for r in replicates]


def bootstrap_auc_ci(
    scores: Any,
    is_member: Any,
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the rank AUC of ``scores``.

    Members and non-members are resampled with replacement separately (a stratified
    bootstrap, so every replicate keeps both group sizes); each replicate's AUC is the rank
    AUC (:func:`auc_by_ranks`) of the resampled scores, and the interval is the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the replicates.

    Parameters
    ----------
    scores : array-like of shape (n,)
    is_member : array-like of shape (n,)
        1 (or True) for members.
    n_bootstrap : int
        Number of replicates, default 1000.
    confidence : float
        Interval level in ``(0, 1)``, default 0.95.
    seed : int
        Seed of the resampling.

    Returns
    -------
    (low, high) : tuple of float
    """
    s = np.asarray(to_numpy(scores), dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {s.shape}")
    return _bootstrap_cis([s], to_numpy(is_member), n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)[0]


@dataclass(frozen=True)
class AucDifference:
    """Paired difference of two attack AUCs on the same samples (see :func:`paired_auc_difference`).

    Attributes
    ----------
    diff : float
        ``AUC(scores) - AUC(reference_scores)``, in ``[-1, 1]``.
    interval : tuple of float
        Percentile bootstrap interval ``(low, high)`` of the paired replicate differences.
    n : int
        Member and non-member samples behind both AUCs.
    """

    diff: float
    interval: tuple[float, float]
    n: int

    def to_dict(self) -> dict[str, Any]:
        """``{"diff", "interval", "n"}``, the interval as a two-element list."""
        return {"diff": self.diff, "interval": list(self.interval), "n": self.n}


def paired_auc_difference(
    scores: Any,
    reference_scores: Any,
    is_member: Any,
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> AucDifference:
    """AUC difference of two score vectors of the same samples, with a paired bootstrap interval.

    ``diff = AUC(scores) - AUC(reference_scores)`` (:func:`auc_by_ranks`). Each bootstrap
    replicate ``b`` resamples members and non-members exactly as :func:`bootstrap_auc_ci` does
    with the same ``seed`` and ``n_bootstrap`` (so its resamples are those behind
    ``MembershipResult.auc_ci``) and scores *both* vectors on it,
    ``delta_b = AUC_b(scores) - AUC_b(reference_scores)``; the interval is the percentile
    interval of the ``delta_b`` at ``confidence``. Pairing cancels the sampling variation both
    AUCs share: identical vectors give ``diff = 0`` and the interval ``[0, 0]``.

    Parameters
    ----------
    scores, reference_scores : array-like of shape (n,)
        Membership scores of the same samples (e.g. :func:`membership_scores` of an audited
        model and of the retrained one).
    is_member : array-like of shape (n,)
        1 (or True) for members.
    n_bootstrap, confidence, seed
        As in :func:`bootstrap_auc_ci`.

    Returns
    -------
    AucDifference
    """
    _check_bootstrap(n_bootstrap, confidence)
    s = np.asarray(to_numpy(scores), dtype=np.float64)
    r = np.asarray(to_numpy(reference_scores), dtype=np.float64)
    if s.ndim != 1 or s.shape != r.shape:
        raise ValueError(f"scores and reference_scores must be 1-D of one length, got {s.shape} and {r.shape}")
    m = to_numpy(is_member)
    a, b = _bootstrap_replicates([s, r], m, n_bootstrap=n_bootstrap, seed=seed)
    return AucDifference(
        diff=auc_by_ranks(s, m) - auc_by_ranks(r, m),
        interval=_percentile_interval(a - b, confidence),
        n=int(s.size),
    )


def _group_mask(group: Any, n: int, member: Any, nonmember: Any) -> tuple[np.ndarray, np.ndarray]:
    g = to_numpy(group)
    if g.ndim != 1 or g.size != n:
        raise ValueError(f"group must be 1-D with {n} entries, got shape {g.shape}")
    return g == member, g == nonmember


def _result(
    signal: str,
    raw: np.ndarray,
    cal: np.ndarray | None,
    is_member: np.ndarray,
    *,
    n_bootstrap: int,
    confidence: float,
    seed: int,
) -> MembershipResult:
    vectors = [raw] if cal is None else [raw, cal]
    cis = _bootstrap_cis(vectors, is_member, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    return MembershipResult(
        signal=signal,
        auc=auc_by_ranks(raw, is_member),
        auc_ci=cis[0],
        calibrated_auc=None if cal is None else auc_by_ranks(cal, is_member),
        calibrated_auc_ci=None if cal is None else cis[1],
        n_member=int(is_member.sum()),
        n_nonmember=int((~is_member).sum()),
        confidence=float(confidence),
    )


def membership_inference(
    logits: Any,
    labels: Any,
    group: Any,
    *,
    reference_logits: Any | None = None,
    signal: Signal = "loss",
    member: Any = "forget_train",
    nonmember: Any = "test",
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> MembershipResult:
    """Threshold membership attack AUC, raw and difficulty-calibrated, with bootstrap CIs.

    Scores every sample with :func:`membership_scores`, keeps the rows whose ``group`` is
    ``member`` or ``nonmember`` (others, e.g. ``retain_train``, are ignored), and reports
    :func:`auc_by_ranks` with :func:`bootstrap_auc_ci`. With ``reference_logits`` (e.g. the
    retrained model's), also the AUC of the calibrated score
    ``s_target(x) - s_reference(x)`` of Watson et al. (ICLR 2022).

    Parameters
    ----------
    logits : array-like of shape (n, C)
        The audited model's logits.
    labels : array-like of shape (n,)
        True class indices.
    group : array-like of shape (n,)
        Group of each sample, e.g. :attr:`AuditData.split`.
    reference_logits : array-like of shape (n, C), optional
        A reference model's logits on the same samples; it must not have trained on the
        member or non-member samples.
    signal : {"loss", "entropy", "mentropy"}
        Attack signal, default ``loss``.
    member, nonmember
        Group values of the members (default ``"forget_train"``) and non-members
        (default ``"test"``).
    n_bootstrap, confidence, seed
        As in :func:`bootstrap_auc_ci`.

    Returns
    -------
    MembershipResult

    Raises
    ------
    ValueError
        On mismatched shapes, labels out of range, or an empty member or non-member group.
    """
    raw = membership_scores(logits, labels, signal)
    cal = None
    if reference_logits is not None:
        ref = membership_scores(reference_logits, labels, signal)
        if ref.size != raw.size:
            raise ValueError(f"reference_logits has {ref.size} rows, logits has {raw.size}")
        cal = raw - ref
    is_m, is_u = _group_mask(group, raw.size, member, nonmember)
    keep = is_m | is_u
    return _result(
        signal,
        raw[keep],
        None if cal is None else cal[keep],
        is_m[keep],
        n_bootstrap=n_bootstrap,
        confidence=confidence,
        seed=seed,
    )


class MembershipInference(Metric[MembershipResult]):
    """Minibatch form of :func:`membership_inference`.

    ``update(logits, labels, group, reference_logits=None)`` scores a batch at once and keeps
    only the per-sample scores of member and non-member rows (two floats per sample, since
    the AUC needs every score); ``compute()`` gives the same result as the function on the
    concatenated batches. Either every batch or none comes with reference logits.

    Parameters
    ----------
    signal, member, nonmember, n_bootstrap, confidence, seed
        As in :func:`membership_inference`.
    """

    def __init__(
        self,
        *,
        signal: Signal = "loss",
        member: Any = "forget_train",
        nonmember: Any = "test",
        n_bootstrap: int = 1000,
        confidence: float = 0.95,
        seed: int = 0,
    ) -> None:
        _check_signal(signal)  # fail at construction, not at the first compute
        _check_bootstrap(n_bootstrap, confidence)
        self.signal: Signal = signal
        self.member = member
        self.nonmember = nonmember
        self.n_bootstrap = int(n_bootstrap)
        self.confidence = float(confidence)
        self.seed = seed
        # Scores, not logits: the calibrated column is ``raw - reference`` and is given with
        # every batch or with none.
        super().__init__(columns=("raw", "reference_logits", "is_member"))

    def update(self, logits: Any, labels: Any, group: Any, reference_logits: Any | None = None) -> MembershipInference:
        """Add a batch: logits ``(b, C)``, labels ``(b,)``, group ``(b,)``; returns ``self``."""
        raw = membership_scores(logits, labels, self.signal)
        is_m, is_u = _group_mask(group, raw.size, self.member, self.nonmember)
        keep = is_m | is_u
        cal = None
        if reference_logits is not None:
            ref = membership_scores(reference_logits, labels, self.signal)
            if ref.size != raw.size:
                raise ValueError(f"reference_logits has {ref.size} rows, logits has {raw.size}")
            cal = (raw - ref)[keep]
        self._append(raw[keep], cal, is_m[keep])
        return self

    def _compute(self) -> MembershipResult:
        return _result(
            self.signal,
            self._rows.column("raw"),
            self._rows.optional("reference_logits"),
            self._rows.column("is_member"),
            n_bootstrap=self.n_bootstrap,
            confidence=self.confidence,
            seed=self.seed,
        )
