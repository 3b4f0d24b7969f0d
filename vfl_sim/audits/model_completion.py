"""Model completion by a passive party: what a party can still predict with its own bottom model.

Fu et al. ("Label Inference Attacks Against Vertical Federated Learning", USENIX Security 2022)
show that a passive party completes its bottom model into a classifier with a handful of
labeled samples: it fits a small head on its own embeddings of them (their *passive model
completion* attack; 40 labels on CIFAR-10 in their setup). After unlearning, every party keeps
its bottom model, so this is the per-party threat a removal claim has to cover: if a party's
completed model still recognises the forgotten classes better than with retrain's bottom
model (a model that never saw them), the information is still at that party.

**The attack.** For party ``k`` of model ``M`` with embeddings ``e_i = f_k^M(x_i)``:

1. draw ``L`` labeled training samples (``labeled``, default 40), class-balanced: ``L // C``
   of each of the ``C`` classes in the pool, the remainder one each to randomly chosen classes
   (all of a class where it has fewer); draw ``r`` uses seed ``seed + r``;
2. standardize the embeddings with the labeled samples' mean and std, and fit a multinomial
   L2 logistic regression head, ``min_W,b 1/2 ||W||^2 + C_reg sum_i CE(W e_i + b, y_i)``
   (scikit-learn's ``LogisticRegression(C=C_reg)`` objective), solved for every model, party
   and draw at once (:func:`fit_softmax_batch`);
3. score the completed model ``argmax(W e + b)``:

   * class requests (``statistic = "forget_test_acc"``): its accuracy on the forgotten
     classes' test samples (labeled samples come from every training sample, the forgotten
     classes included: the attacker knows a few labels of every class);
   * sample requests (``statistic = "membership_auc"``): the loss-threshold membership AUC
     (Yeom et al., CSF 2018) of the completed model, forgotten training samples against unseen
     test samples (labeled samples come from the retained training samples only).

**Against retrain.** Every model and party uses the same draws, so draw ``r`` of two models is
paired: ``gap_r = s_r(M, k) - s_r(retrain, k)``; the audit reports the mean over the ``draws``
and the 95 % percentile interval (:class:`~vfl_sim.audits.interval.Interval`) of the
statistic and of the gap. The certificate fails removal when a party's gap exceeds its
tolerance (:mod:`vfl_sim.audits.certificate`, check ``model_completion.<party>``).

**A party that did not do its part.** ``kept_original_bottom`` says whether a party's
embeddings of every audit sample equal the original's, bit for bit: the party kept its
pre-unlearning bottom model (``parties.<id>.behaviour: ignore_unlearning``), or the method never
touched it. Under ``retrain``, which re-initializes every bottom model, that can only mean the
party did not retrain, and retrain is no reference for it; the certificate refuses removal
(check ``bottom_retrained.<party>``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax, logsumexp, softmax

from vfl_sim.audits._arrays import feature_matrix, to_numpy
from vfl_sim.audits.base import AuditData, Auditor, register_auditor
from vfl_sim.audits.interval import Interval
from vfl_sim.audits.membership import auc_by_ranks
from vfl_sim.audits.metric import Metric
from vfl_sim.audits.probe_batch import standardize_split
from vfl_sim.config import AuditConfig
from vfl_sim.forget import ORIGINAL, RETRAIN, ForgetKind

__all__ = [
    "STATISTICS",
    "CompletionResult",
    "ModelCompletion",
    "ModelCompletionAuditor",
    "completion_gap",
    "fit_softmax_batch",
    "labeled_draws",
    "model_completion",
    "model_completion_many",
]

STATISTICS = ("forget_test_acc", "membership_auc")
"""What the completed model is scored by: accuracy on the target rows (class requests) or the
membership AUC of the target rows against the other scored rows (sample requests)."""

# Problems x rows x width x classes per solver call: keeps one call's arrays at a few MB.
_BATCH_ELEMENTS = 4_000_000


def fit_softmax_batch(
    x: np.ndarray, y: np.ndarray, n_classes: int, *, C: float = 1.0, max_iter: int = 1000, tol: float = 1e-7
) -> tuple[np.ndarray, np.ndarray]:
    """Fit ``B`` multinomial L2 logistic regressions at once.

    Minimises ``sum_k [1/2 ||W_k||^2 + C sum_i CE(x_ki W_k + b_k, y_ki)]`` (the objective of
    scikit-learn's ``LogisticRegression(C=C)`` for each problem; unpenalized intercepts) with
    L-BFGS on all problems together; the objective is a sum of independent strictly convex
    terms, so its minimiser is every problem's own.

    Parameters
    ----------
    x : ndarray of shape (B, n, d)
    y : ndarray of shape (B, n)
        Integer labels in ``[0, n_classes)``; classes absent from a problem get low logits.
    n_classes : int
    C, max_iter, tol
        Inverse regularization strength; L-BFGS iteration cap and projected-gradient tolerance.

    Returns
    -------
    W : ndarray of shape (B, d, n_classes)
    b : ndarray of shape (B, n_classes)
    """
    if x.ndim != 3 or y.shape != x.shape[:2]:
        raise ValueError(f"x must be (B, n, d) and y (B, n); got {x.shape} and {y.shape}")
    n_problems, n, d = x.shape
    k = int(n_classes)
    xx = np.asarray(x, dtype=np.float64)
    onehot = np.zeros((n_problems, n, k))
    np.put_along_axis(onehot, np.asarray(y, dtype=np.int64)[:, :, None], 1.0, axis=2)
    split = n_problems * d * k

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w = theta[:split].reshape(n_problems, d, k)
        b = theta[split:].reshape(n_problems, k)
        z = np.einsum("bnd,bdk->bnk", xx, w) + b[:, None, :]
        lse = logsumexp(z, axis=2)
        loss = C * float(np.sum(lse - np.sum(z * onehot, axis=2))) + 0.5 * float(np.sum(w * w))
        g = C * (softmax(z, axis=2) - onehot)
        grad_w = np.einsum("bnd,bnk->bdk", xx, g) + w
        return loss, np.concatenate([grad_w.ravel(), g.sum(axis=1).ravel()])

    theta0 = np.zeros(split + n_problems * k)
    res = minimize(objective, theta0, jac=True, method="L-BFGS-B", options={"maxiter": max_iter, "gtol": tol})
    return res.x[:split].reshape(n_problems, d, k), res.x[split:].reshape(n_problems, k)


def labeled_draws(labels: np.ndarray, pool: np.ndarray, n_labeled: int, draws: int, seed: int) -> list[np.ndarray]:
    """``draws`` class-balanced sets of ``n_labeled`` row indices from ``pool`` (indices into
    ``labels``): ``n_labeled // C`` of each of the pool's ``C`` classes and the remainder one
    each to random classes, all of a class that has fewer; draw ``r`` uses seed ``seed + r``."""
    pool = np.asarray(pool, dtype=np.int64)
    if pool.size == 0:
        raise ValueError("the labeled pool is empty")
    classes = np.unique(labels[pool])
    by_class = {int(c): pool[labels[pool] == c] for c in classes}
    per, extra = divmod(int(n_labeled), classes.size)
    out = []
    for r in range(int(draws)):
        rng = np.random.default_rng(seed + r)
        want = dict.fromkeys(by_class, per)
        for c in rng.choice(classes, extra, replace=False) if extra else ():
            want[int(c)] += 1
        chosen = [rng.choice(rows, min(want[c], rows.size), replace=False) for c, rows in by_class.items()]
        out.append(np.sort(np.concatenate(chosen)))
    return out


@dataclass(frozen=True)
class CompletionResult:
    """What one completed model (a party's bottom model plus the fitted head) achieves.

    Attributes
    ----------
    statistic : str
        ``forget_test_acc`` or ``membership_auc`` (:data:`STATISTICS`).
    value : Interval
        The statistic per labeled draw: accuracy on the target rows, or the membership AUC of
        the target rows against the other scored rows.
    other_accuracy : Interval or None
        Accuracy on the scored rows that are not targets (the retained classes' test samples;
        for sample requests the unseen test samples): how good the completed model is at all.
    n_labeled : int
        Labeled samples per draw.
    n_target, n_other : int
        Scored target and other rows.
    """

    statistic: str
    value: Interval
    other_accuracy: Interval | None
    n_labeled: int
    n_target: int
    n_other: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "statistic": self.statistic,
            "value": self.value.to_dict(),
            "other_accuracy": None if self.other_accuracy is None else self.other_accuracy.to_dict(),
            "n_labeled": self.n_labeled,
            "n_target": self.n_target,
            "n_other": self.n_other,
        }


def completion_gap(result: CompletionResult, reference: CompletionResult, level: float = 0.95) -> Interval:
    """``value_r(result) - value_r(reference)`` draw by draw (both from one
    :func:`model_completion_many` call, so draw ``r`` used the same labeled samples)."""
    a, b = np.asarray(result.value.values), np.asarray(reference.value.values)
    if a.shape != b.shape:
        raise ValueError(f"the results have {a.size} and {b.size} draws; pair results of one call")
    return Interval.from_values(a - b, level)


def _check(statistic: str, n_labeled: int, draws: int, C: float) -> None:
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
    if int(n_labeled) < 2:
        raise ValueError(f"n_labeled must be at least 2, got {n_labeled}")
    if int(draws) < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    if not C > 0:
        raise ValueError(f"C must be positive, got {C}")


def model_completion_many(
    embeddings: Sequence[Any],
    labels: Any,
    labeled_pool: Any,
    scored: Any,
    target: Any,
    *,
    statistic: str = "forget_test_acc",
    n_labeled: int = 40,
    draws: int = 10,
    seed: int = 0,
    C: float = 1.0,
    n_classes: int | None = None,
    level: float = 0.95,
) -> list[CompletionResult]:
    """The model-completion attack (module docstring) on several representations of the same
    samples, all with the same labeled draws (so results pair draw by draw).

    Parameters
    ----------
    embeddings : sequence of array-like, each of shape (n, d_k)
        One party's embeddings of the ``n`` samples under each model.
    labels : array-like of shape (n,)
        Integer class labels.
    labeled_pool : array-like of bool, shape (n,)
        Rows the attacker's labeled samples are drawn from.
    scored : array-like of bool, shape (n,)
        Rows the completed model is scored on (disjoint from the pool).
    target : array-like of bool, shape (n,)
        Among the scored rows: the forgotten classes' samples (``forget_test_acc``) or the
        forgotten training samples (``membership_auc``, against the other scored rows).
    statistic, n_labeled, draws, seed, C
        What is scored, labeled samples per draw, number of draws (draw ``r`` uses seed
        ``seed + r``), the head's inverse L2 strength.
    n_classes : int, optional
        Number of classes (default: the largest label plus one).
    level : float
        Level of the percentile intervals over the draws.
    """
    _check(statistic, n_labeled, draws, C)
    y = to_numpy(labels).astype(np.int64)
    n = y.size
    pool, scored_m, target_m = (np.asarray(to_numpy(a), dtype=bool) for a in (labeled_pool, scored, target))
    for name, m in (("labeled_pool", pool), ("scored", scored_m), ("target", target_m)):
        if m.shape != (n,):
            raise ValueError(f"{name} must have one entry per label ({n}), got shape {m.shape}")
    if (pool & scored_m).any():
        raise ValueError("the labeled pool and the scored rows overlap")
    if (target_m & ~scored_m).any():
        raise ValueError("every target row must be a scored row")
    eval_rows = np.flatnonzero(scored_m)
    is_target = target_m[eval_rows]
    if not is_target.any():
        raise ValueError("no scored row is a target")
    if statistic == "membership_auc" and is_target.all():
        raise ValueError("the membership AUC needs scored rows that are not targets")
    k = int(n_classes) if n_classes is not None else int(y.max()) + 1
    xs = [feature_matrix(e, f"embeddings[{i}]", n) for i, e in enumerate(embeddings)]
    fits = labeled_draws(y, np.flatnonzero(pool), n_labeled, draws, seed)
    logits = _completion_logits(xs, y, fits, eval_rows, k, C)
    y_eval = y[eval_rows]
    out = []
    for z in logits:  # (draws, n_eval, k)
        hits = z.argmax(axis=2) == y_eval[None, :]
        if statistic == "forget_test_acc":
            values = hits[:, is_target].mean(axis=1)
        else:
            scores = np.take_along_axis(log_softmax(z, axis=2), y_eval[None, :, None], axis=2)[:, :, 0]
            values = np.array([auc_by_ranks(s, is_target) for s in scores])
        other = hits[:, ~is_target].mean(axis=1) if (~is_target).any() else None
        out.append(
            CompletionResult(
                statistic=statistic,
                value=Interval.from_values(values, level),
                other_accuracy=None if other is None else Interval.from_values(other, level),
                n_labeled=int(fits[0].size),
                n_target=int(is_target.sum()),
                n_other=int((~is_target).sum()),
            )
        )
    return out


def _completion_logits(
    xs: list[np.ndarray], y: np.ndarray, fits: list[np.ndarray], eval_rows: np.ndarray, k: int, C: float
) -> np.ndarray:
    """Logits ``(len(xs), len(fits), n_eval, k)`` of the head fitted on each labeled draw of
    each representation; identical representations (same bytes) are fitted once."""
    out = np.empty((len(xs), len(fits), eval_rows.size, k))
    first: dict[tuple[tuple[int, ...], bytes], int] = {}
    alias = []
    for i, x in enumerate(xs):
        alias.append(first.setdefault((x.shape, np.ascontiguousarray(x).tobytes()), i))
    unique = sorted(set(alias))
    # Problems of equal width and labeled count share solver calls.
    jobs = [(i, r) for i in unique for r in range(len(fits))]
    by_shape: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for i, r in jobs:
        by_shape.setdefault((xs[i].shape[1], fits[r].size), []).append((i, r))
    for (d, n_fit), members in by_shape.items():
        per_call = max(1, _BATCH_ELEMENTS // max(1, n_fit * d * k))
        for lo in range(0, len(members), per_call):
            chunk = members[lo : lo + per_call]
            fit_x = np.empty((len(chunk), n_fit, d))
            eval_x = np.empty((len(chunk), eval_rows.size, d))
            fit_y = np.empty((len(chunk), n_fit), dtype=np.int64)
            for j, (i, r) in enumerate(chunk):
                fit_x[j], eval_x[j] = standardize_split(xs[i], fits[r], eval_rows)
                fit_y[j] = y[fits[r]]
            w, b = fit_softmax_batch(fit_x, fit_y, k, C=C)
            z = np.einsum("bnd,bdk->bnk", eval_x, w) + b[:, None, :]
            for j, (i, r) in enumerate(chunk):
                out[i, r] = z[j]
    for i, src in enumerate(alias):
        if src != i:
            out[i] = out[src]
    return out


def model_completion(
    embeddings: Any, labels: Any, labeled_pool: Any, scored: Any, target: Any, **kwargs: Any
) -> CompletionResult:
    """:func:`model_completion_many` of one representation."""
    return model_completion_many([embeddings], labels, labeled_pool, scored, target, **kwargs)[0]


class ModelCompletion(Metric[CompletionResult]):
    """:func:`model_completion` fed in batches: ``update(embeddings, labels, labeled_pool,
    scored, target)`` with one row per sample; ``compute`` runs the attack on every row so far.

    Parameters
    ----------
    **kwargs
        The keyword arguments of :func:`model_completion` (``statistic``, ``n_labeled``,
        ``draws``, ``seed``, ``C``, ``n_classes``, ``level``).
    """

    def __init__(self, **kwargs: Any) -> None:
        _check(
            kwargs.get("statistic", "forget_test_acc"),
            kwargs.get("n_labeled", 40),
            kwargs.get("draws", 10),
            kwargs.get("C", 1.0),
        )
        self.kwargs = kwargs
        super().__init__(columns=("embeddings", "labels", "labeled_pool", "scored", "target"))

    def update(self, embeddings: Any, labels: Any, labeled_pool: Any, scored: Any, target: Any) -> Self:
        y = to_numpy(labels)
        x = feature_matrix(embeddings, "embeddings", y.shape[0] if y.ndim else None)
        masks = [np.asarray(to_numpy(m), dtype=bool) for m in (labeled_pool, scored, target)]
        self._append(x, y, *masks)
        return self

    def _compute(self) -> CompletionResult:
        c = self._rows.column
        return model_completion(
            c("embeddings"), c("labels"), c("labeled_pool"), c("scored"), c("target"), **self.kwargs
        )


def completion_rows(data: AuditData) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """The statistic and the labeled pool, scored and target rows of the audit samples for the
    request's kind (module docstring)."""
    test = data.mask("test")
    if data.kind == ForgetKind.CLASS:
        pool = data.mask("forget_train") | data.mask("retain_train")
        return "forget_test_acc", pool, test, test & data.forget
    member = data.mask("forget_train")
    return "membership_auc", data.mask("retain_train"), member | test, member


@register_auditor("model_completion")
class ModelCompletionAuditor(Auditor):
    """Model completion by every passive party (Fu et al., "Label Inference Attacks Against
    Vertical Federated Learning", USENIX Security 2022), per model, against ``retrain``.

    ``models.<model>.model_completion``: ``statistic`` (``forget_test_acc`` or
    ``membership_auc``), ``labeled``, ``draws`` and per party ``parties.<party>``:
    ``completion`` (mean over the draws) and ``completion_interval``, ``other_accuracy`` (the
    completed model's accuracy on the other scored samples), ``completion_gap`` (mean of the
    paired per-draw differences to retrain's) and ``completion_gap_interval`` (``None``
    without retrain, and where retrain is no reference for the party),
    ``kept_original_bottom`` (the party's embeddings are the original's, bit for bit; ``None``
    for the original) and ``retrain_kept_original_bottom`` (the same of retrain's: retrain is
    then no reference for this party); and ``kept_original_bottom``, the list of the parties
    whose bottom model is the original's. See the module docstring.
    """

    kinds = frozenset({ForgetKind.CLASS, ForgetKind.SAMPLES})

    def __init__(self, *, labeled: int = 40, draws: int = 10, C: float = 1.0, seed: int = 0) -> None:
        _check("forget_test_acc", labeled, draws, C)
        self.labeled = labeled
        self.draws = draws
        self.C = C
        self.seed = seed

    @classmethod
    def from_config(cls, audit: AuditConfig, seed: Callable[[str], int]) -> ModelCompletionAuditor | None:
        mc = audit.model_completion
        if not mc.enabled:
            return None
        return cls(labeled=mc.labeled, draws=mc.draws, C=mc.C, seed=seed("model-completion"))

    def audit(self, data: AuditData) -> dict[str, dict[str, Any]]:
        statistic, pool, scored, target = completion_rows(data)
        names = list(data.models)
        keys = [(n, pid) for n in names for pid in data.models[n].parties]
        results = dict(
            zip(
                keys,
                model_completion_many(
                    [data.models[n].parties[pid] for n, pid in keys],
                    data.labels,
                    pool,
                    scored,
                    target,
                    statistic=statistic,
                    n_labeled=self.labeled,
                    draws=self.draws,
                    seed=self.seed,
                    C=self.C,
                    n_classes=int(data.labels.max()) + 1,
                ),
                strict=True,
            )
        )
        original = data.models.get(ORIGINAL)

        def kept(name: str, pid: str) -> bool | None:
            if name == ORIGINAL or original is None or pid not in original.parties:
                return None
            return bool(np.array_equal(data.models[name].parties[pid], original.parties[pid]))

        out: dict[str, dict[str, Any]] = {}
        for name in names:
            parties: dict[str, Any] = {}
            for pid in data.models[name].parties:
                r = results[(name, pid)]
                ref = results.get((RETRAIN, pid))
                retrain_kept = kept(RETRAIN, pid) if RETRAIN in data.models else None
                # A party that kept its original bottom under retrain leaves no reference for it.
                gap = None if ref is None or retrain_kept else completion_gap(r, ref)
                parties[pid] = {
                    "completion": r.value.mean,
                    "completion_interval": [r.value.low, r.value.high],
                    "other_accuracy": None if r.other_accuracy is None else r.other_accuracy.mean,
                    "completion_gap": None if gap is None else gap.mean,
                    "completion_gap_interval": None if gap is None else [gap.low, gap.high],
                    "kept_original_bottom": kept(name, pid),
                    "retrain_kept_original_bottom": retrain_kept,
                    "n_target": r.n_target,
                }
            out[name] = {
                "statistic": statistic,
                "labeled": self.labeled,
                "draws": self.draws,
                "parties": parties,
                # Named: the parties whose bottom model here is the original's, bit for bit.
                "kept_original_bottom": sorted(pid for pid, v in parties.items() if v["kept_original_bottom"]),
            }
        return out
