"""Reference-free unlearning audit: does the model behave on the forget set like a provably ignorant one?

After Ye, Zhu, Huang, Fu, Li, Liu, Huo and Zhou, "Auditing Machine Unlearning: A Systematic
Research on Whether Models Truly Forget", arXiv:2606.16110 (2026), whose framework is built
on a *proof of ignorance*: a model that never trained on the unlearning set ``D_u`` cannot
know anything about it beyond what the remaining data ``D_r`` implies. Such models are
cheap to obtain without retraining the audited model: *verification models* trained on a
small subset (15% by default) of ``D_r`` are ignorant of ``D_u`` by construction. The audit
compares the audited model with them on ``D_u``; no retrained-from-scratch model, no shadow
models and no change to the original training are needed.

What is computed
----------------
Let ``x_1 .. x_n`` be the forget samples, ``o_i`` the audited model's outputs (logits or
probabilities, ``C`` columns; only their argmax is used), and ``p_1 .. p_K`` the K
verification models, each trained on its own seeded subset ``S_k`` of the retained data
(``S_k`` never contains a forget sample: only ``x_retain`` is ever fitted). ``p_k(x)`` is a
probability vector over the ``C`` label columns; classes absent from the retained data get
probability 0 in every verification model. The verification models are combined by
averaging their probabilities, as in the authors' released evaluation code
(github.com/AISecurityNPrivacy/UnlearningVerification)::

    P(x)      = 1/K     sum_k        p_k(x)          (ensemble)
    P_-j(x)   = 1/(K-1) sum_{k != j} p_k(x)          (ensemble without model j)

1. **Audited agreement** (the statistic of the paper: the top-1 agreement rate between the
   audited model and the verification models on the unlearning set)::

       A = 1/n sum_i 1[argmax o_i == argmax P(x_i)]

2. **Ignorant reference level**: what an ignorant model shows, measured on the same forget
   samples by holding each verification model out against the others::

       a_j = 1/n sum_i 1[argmax p_j(x_i) == argmax P_-j(x_i)],   j = 1 .. K
       r   = mean_j a_j,   s = std_j a_j (ddof 1)

   ``min_j a_j`` and ``max_j a_j`` are reported as the spread across verification models.

3. **Decision**: one-sided, the audited model passes (is consistent with ignorance) when its
   agreement is not significantly *below* the ignorant level::

       q   = clip(r, 1/(2n), 1 - 1/(2n))
       se  = sqrt(s^2 + q (1 - q) / n)
       tau = r - z_{1-alpha} se                    (alpha = 0.05: z = 1.645)
       passed  = A >= tau
       p_value = Phi((A - r) / se)                 (normal approximation)

   With ``threshold=`` given, ``tau`` is that fixed number instead (the authors' validation
   code compares agreement with a fixed, dataset-specific threshold) and ``p_value`` is
   still reported against the calibrated reference.

Why agreement must be *high* to pass: where the ignorant verification models err on a forget
sample, a model that still remembers the sample predicts its training label and so
disagrees with them; a de-optimised model (gradient ascent) is pushed away from the labels
the ignorant models mostly predict and disagrees even more. This matches the paper's
findings: retraining- and fine-tuning-based unlearning pass, while de-optimisation (gradient
ascent) and Fisher/Hessian methods, which damage the model or leave the information in
place, fail.
For **class requests** the forget samples belong to classes no verification model has seen:
they can never predict those labels (probability 0), so every forget sample the audited
model still assigns to a forgotten class counts as a disagreement, while an ignorant model
maps such samples to retained classes the way the verification models do. The same
statistic therefore serves sample and class requests; the result records which one it saw
when labels are given. Agreement is computed over the full ``C`` label columns of the
audited model, so the labels must be integer column indices.

Choices made here (the full paper text was not available; its abstract, a public summary
and the authors' released evaluation code were)
--------------------------------------------------------------------------------------------
* The **reference level and threshold** are this module's: the authors' validation code
  uses a fixed agreement threshold per dataset, read off populations of models trained with
  and without ``D_u``, which is not reference-free. Here the ignorant level comes from the verification
  models themselves (leave-one-out), and the margin combines their spread with the binomial
  noise of ``n`` forget samples; the binomial term is a floor that errs towards passing.
  Verification models see 15% of the data and are weaker than the audited model; an
  ignorant model of the same family trained on all retained data typically agrees with
  their ensemble at least as well as one of them does with the others, so the reference is
  a lenient lower bound for ignorance (an assumption, checked in the tests, not a theorem).
* **Verification model family**: the paper trains verification models of the audited
  model's own architecture. Here they are scikit-learn classifiers on the raw flattened
  features: standardisation plus L2 logistic regression (``estimator="logistic"``, default),
  a one-hidden-layer MLP (``"mlp"``), or any factory ``seed -> classifier`` with
  ``fit``/``predict_proba``/``classes_``. The family matters: an ignorant audited model of
  another family can agree less with them than they agree with each other (on noisy
  synthetic data, an ignorant MLP audited against logistic verification models failed about
  half the time), and high-variance verification models (an MLP on 15% of noisy data)
  disagree so much among themselves that the reference drops and memorisation passes too.
  :func:`ignorance_test` accepts the outputs of verification models trained elsewhere (the
  audited architecture on 15% of the retained data, as in the paper).
* **Subsets** are stratified by class (every verification model sees every retained class,
  otherwise a missing class would count as disagreement) and, while they fit, disjoint:
  class ``c`` with ``n_c`` retained samples contributes ``m_c = ceil(fraction * n_c)``
  samples to each model, taken as consecutive blocks of one seeded permutation, wrapping
  around when ``K * m_c > n_c``.
* The paper's optional "adaptive" choice of one verification model by its accuracy on
  ``D_u``, and its KL-divergence fidelity score, are not implemented.

Limits
------
When the audited model generalises to the forget samples as well as it fits them (easy
data, a large random sample request), remembering and forgetting give the same predictions
and no output-based audit can tell them apart; this one then passes both. The test has
power where the forget samples carry information the retained data do not imply: hard or
mislabelled samples, and forgotten classes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from vfl_sim.audits._arrays import feature_matrix, to_numpy
from vfl_sim.audits.base import INPUTS, AuditData, Auditor, register_auditor
from vfl_sim.audits.metric import Metric
from vfl_sim.config import AuditConfig
from vfl_sim.forget import ForgetKind

__all__ = [
    "ReferenceFreeAudit",
    "ReferenceFreeResult",
    "ignorance_test",
    "reference_free_audit",
]

#: ``"logistic"``, ``"mlp"``, or a factory ``seed -> unfitted classifier``.
Estimator = Literal["logistic", "mlp"] | Callable[[int], Any]
Request = Literal["sample", "class", "mixed"]

# A class needs two retained samples so that verification models trained on different
# subsets can differ on it; with one, every model would hold the same single example.
_MIN_RETAINED_PER_CLASS = 2
# Probability rows are recognised by summing to 1 within this tolerance.
_PROB_ATOL = 1e-6


@dataclass(frozen=True)
class ReferenceFreeResult:
    """Outcome of the reference-free audit (see the module docstring for the formulas).

    Attributes
    ----------
    agreement : float
        ``A``: fraction of forget samples on which the audited model's top-1 prediction equals
        the verification ensemble's.
    reference_agreement : float
        ``r``: mean leave-one-out agreement of the verification models (the ignorant level).
    reference_std : float
        ``s``: its standard deviation across verification models (ddof 1).
    reference_low, reference_high : float
        Smallest and largest leave-one-out agreement.
    reference_values : tuple of float
        ``a_j`` for each verification model, in fitting order.
    standard_error : float
        ``se``: spread plus binomial noise used for the threshold and the p-value.
    threshold : float
        ``tau``: the audited agreement needed to pass.
    threshold_source : str
        ``"calibrated"`` (``r - z se``) or ``"fixed"`` (given by the caller).
    passed : bool
        ``agreement >= threshold``: the audited model behaves on the forget set like a model
        that never saw it.
    p_value : float
        One-sided ``Phi((A - r) / se)``: how likely an agreement this low is for an ignorant
        model. Small values are evidence that the forget set was not forgotten.
    alpha : float
        Level of the calibrated threshold.
    n_forget : int
        Forget samples audited.
    n_models : int
        Verification models ``K``.
    n_fit : tuple of int
        Training samples of each verification model.
    request : str or None
        ``"class"`` when no forget label is a retained class, ``"sample"`` when all are,
        ``"mixed"`` otherwise; ``None`` without forget labels or retained classes.
    forget_accuracy : float or None
        Audited model's accuracy on the forget labels; ``None`` without labels.
    verifier_accuracy : float or None
        Verification ensemble's accuracy on the forget labels; ``None`` without labels.
    n_forget_seen : int or None
        Forget rows identical to a row some verification model was trained on (duplicates in
        the data); ``None`` when unknown (:func:`ignorance_test`).
    """

    agreement: float
    reference_agreement: float
    reference_std: float
    reference_low: float
    reference_high: float
    reference_values: tuple[float, ...]
    standard_error: float
    threshold: float
    threshold_source: str
    passed: bool
    p_value: float
    alpha: float
    n_forget: int
    n_models: int
    n_fit: tuple[int, ...] | None = None
    request: str | None = None
    forget_accuracy: float | None = None
    verifier_accuracy: float | None = None
    n_forget_seen: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` of JSON types (tuples as lists)."""
        return {
            "agreement": self.agreement,
            "reference_agreement": self.reference_agreement,
            "reference_std": self.reference_std,
            "reference_low": self.reference_low,
            "reference_high": self.reference_high,
            "reference_values": list(self.reference_values),
            "standard_error": self.standard_error,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "passed": self.passed,
            "p_value": self.p_value,
            "alpha": self.alpha,
            "n_forget": self.n_forget,
            "n_models": self.n_models,
            "n_fit": None if self.n_fit is None else list(self.n_fit),
            "request": self.request,
            "forget_accuracy": self.forget_accuracy,
            "verifier_accuracy": self.verifier_accuracy,
            "n_forget_seen": self.n_forget_seen,
        }


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _check_settings(alpha: float, threshold: float | None) -> None:
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1] (an agreement rate), got {threshold}")


def _check_class_labels(labels: Any, name: str, n: int | None = None) -> np.ndarray:
    y = to_numpy(labels)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D (n_samples,), got shape {y.shape}")
    if n is not None and y.size != n:
        raise ValueError(f"{name} has {y.size} entries but there are {n} samples")
    if y.size and not (y.dtype.kind in "iub" or (y.dtype.kind == "f" and np.all(y == np.round(y)))):
        raise ValueError(f"{name} must be integer class indices (the audited model's output columns)")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise ValueError(f"{name} must be non-negative class indices, got {int(y.min())}")
    return y


def _check_outputs(outputs: Any, name: str = "outputs") -> np.ndarray:
    o = feature_matrix(outputs, name)
    if o.shape[0] == 0:
        raise ValueError(f"{name} is empty: the forget set needs at least one sample")
    return o


def _as_probabilities(m: np.ndarray) -> np.ndarray:
    """Rows of ``m`` as probabilities: kept if they already are, softmax of logits otherwise."""
    if np.all(m >= 0.0) and np.allclose(m.sum(axis=1), 1.0, atol=_PROB_ATOL):
        return m
    z = m - m.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _request_kind(y_forget: np.ndarray, retained: np.ndarray) -> Request:
    known = np.isin(y_forget, retained)
    if known.all():
        return "sample"
    if not known.any():
        return "class"
    return "mixed"


# --------------------------------------------------------------------------------------------
# The statistic and the decision
# --------------------------------------------------------------------------------------------


def _agreements(outputs: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-sample audited agreement, leave-one-out ``a_j``, and the ensemble prediction."""
    k = probs.shape[0]
    total = probs.sum(axis=0)
    ensemble_pred = total.argmax(axis=1)
    audited = outputs.argmax(axis=1) == ensemble_pred
    loo = np.empty(k, dtype=np.float64)
    for j in range(k):
        # Summed afresh rather than ``total - probs[j]``: rounding in the subtraction could break
        # exact ties differently from the ensemble it stands for.
        others = np.delete(probs, j, axis=0).sum(axis=0).argmax(axis=1)
        loo[j] = float(np.mean(probs[j].argmax(axis=1) == others))
    return audited, loo, ensemble_pred


def _decide(
    outputs: np.ndarray,
    probs: np.ndarray,
    *,
    alpha: float,
    threshold: float | None,
    y_forget: np.ndarray | None,
    retained_classes: np.ndarray | None,
    n_fit: tuple[int, ...] | None,
    n_forget_seen: int | None,
) -> ReferenceFreeResult:
    n = outputs.shape[0]
    audited, loo, ensemble_pred = _agreements(outputs, probs)
    a = float(audited.mean())
    r = float(loo.mean())
    s = float(loo.std(ddof=1))
    # The binomial term keeps se positive when every verification model agrees perfectly.
    q = min(max(r, 0.5 / n), 1.0 - 0.5 / n)
    se = math.sqrt(s * s + q * (1.0 - q) / n)
    z = NormalDist().inv_cdf(1.0 - float(alpha))
    tau = r - z * se if threshold is None else float(threshold)
    request = None
    forget_acc = verifier_acc = None
    if y_forget is not None:
        forget_acc = float(np.mean(outputs.argmax(axis=1) == y_forget))
        verifier_acc = float(np.mean(ensemble_pred == y_forget))
        if retained_classes is not None:
            request = _request_kind(y_forget, retained_classes)
    return ReferenceFreeResult(
        agreement=a,
        reference_agreement=r,
        reference_std=s,
        reference_low=float(loo.min()),
        reference_high=float(loo.max()),
        reference_values=tuple(float(v) for v in loo),
        standard_error=float(se),
        threshold=float(tau),
        threshold_source="calibrated" if threshold is None else "fixed",
        passed=bool(a >= tau),
        p_value=float(NormalDist().cdf((a - r) / se)),
        alpha=float(alpha),
        n_forget=int(n),
        n_models=int(probs.shape[0]),
        n_fit=n_fit,
        request=request,
        forget_accuracy=forget_acc,
        verifier_accuracy=verifier_acc,
        n_forget_seen=n_forget_seen,
    )


def ignorance_test(
    outputs: Any,
    verifier_outputs: Any,
    y_forget: Any | None = None,
    *,
    alpha: float = 0.05,
    threshold: float | None = None,
    retained_classes: Any | None = None,
) -> ReferenceFreeResult:
    """The agreement test on outputs of verification models trained elsewhere.

    Use this when the verification models should share the audited model's architecture (as
    in the paper): train K of them on seeded subsets of the retained data, evaluate them on
    the forget samples, and pass their outputs here.

    Parameters
    ----------
    outputs : array-like of shape (n, C)
        Audited model's logits or probabilities on the forget samples.
    verifier_outputs : array-like of shape (K, n, C)
        Each verification model's logits or probabilities on the same samples, K >= 2. A
        model's rows are used as probabilities when they are non-negative and sum to 1,
        otherwise softmax is applied.
    y_forget : array-like of shape (n,), optional
        Forget labels, for the accuracies in the result.
    alpha : float
        Level of the calibrated threshold, default 0.05.
    threshold : float, optional
        Fixed agreement threshold in ``[0, 1]`` instead of the calibrated one.
    retained_classes : array-like, optional
        Labels present in the retained data, to classify the request (with ``y_forget``).

    Returns
    -------
    ReferenceFreeResult
        ``n_fit`` and ``n_forget_seen`` are ``None``.

    Raises
    ------
    ValueError
        On empty or mismatched inputs, fewer than two verification models, or bad settings.
    """
    _check_settings(alpha, threshold)
    o = _check_outputs(outputs)
    v = to_numpy(verifier_outputs)
    if v.ndim != 3:
        raise ValueError(f"verifier_outputs must be 3-D (n_models, n_samples, n_classes), got shape {v.shape}")
    if v.shape[0] < 2:
        raise ValueError(f"the reference level needs at least 2 verification models, got {v.shape[0]}")
    if v.shape[1:] != o.shape:
        raise ValueError(f"verifier_outputs has per-model shape {v.shape[1:]} but outputs has shape {o.shape}")
    probs = np.stack([_as_probabilities(feature_matrix(v[k], f"verifier_outputs[{k}]")) for k in range(v.shape[0])])
    y = None if y_forget is None else _check_class_labels(y_forget, "y_forget", o.shape[0])
    retained = (
        None if retained_classes is None else np.unique(_check_class_labels(retained_classes, "retained_classes"))
    )
    return _decide(
        o,
        probs,
        alpha=alpha,
        threshold=threshold,
        y_forget=y,
        retained_classes=retained,
        n_fit=None,
        n_forget_seen=None,
    )


# --------------------------------------------------------------------------------------------
# Verification models
# --------------------------------------------------------------------------------------------


def _make_estimator(estimator: Estimator, seed: int) -> Any:
    if callable(estimator):
        return estimator(seed)
    if estimator == "logistic":
        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, solver="lbfgs", max_iter=1000))
    if estimator == "mlp":
        return make_pipeline(
            StandardScaler(),
            MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-3, max_iter=300, random_state=seed),
        )
    raise ValueError(f"estimator must be 'logistic', 'mlp' or a callable seed -> classifier, got {estimator!r}")


def _subsets(y: np.ndarray, n_models: int, fraction: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Stratified subsets of ``range(len(y))``, disjoint per class while the class allows it."""
    parts: list[list[np.ndarray]] = [[] for _ in range(n_models)]
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        perm = rng.permutation(idx)
        m = math.ceil(fraction * idx.size)
        for k in range(n_models):
            parts[k].append(perm[(k * m + np.arange(m)) % idx.size])
    return [np.sort(np.concatenate(p)) for p in parts]


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, elementwise: a bijection on uint64 that spreads every input bit."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _row_hashes(x: np.ndarray) -> np.ndarray:
    """64-bit hash of each row's float64 values, to find exact duplicates without storing rows."""
    # Adding 0.0 turns -0.0 into 0.0 so that equal values hash equally.
    bits = np.ascontiguousarray(x + 0.0, dtype=np.float64).view(np.uint64)
    # Small integers as float64 have all-zero low mantissa bits, so a plain weighted sum would keep
    # only a few bits per entry; mixing each entry (salted by its column) first avoids that.
    salt = _mix64(np.arange(1, x.shape[1] + 1, dtype=np.uint64))
    # uint64 arithmetic wraps modulo 2**64.
    return _mix64(bits ^ salt).sum(axis=1, dtype=np.uint64)


class ReferenceFreeAudit(Metric[ReferenceFreeResult]):
    """Verification models on the retained data, then the agreement test on forget samples.

    ``fit`` trains ``n_models`` verification models, each on its own seeded, class-stratified
    subset of ``fraction`` of the retained data. The audited model's outputs on the forget
    samples then follow the life cycle of every metric
    (:class:`~vfl_sim.audits.metric.Metric`): ``update(outputs, x_forget, y_forget)`` per batch,
    ``compute()`` for the test on every batch since the last ``reset``. One fit serves any
    number of audited models (e.g. every unlearning method of an experiment) on the same
    request: ``reset`` forgets the batches, not the verification models, and :meth:`score`
    audits one model's outputs at once without touching the batches.

    Parameters
    ----------
    n_models : int
        Verification models ``K``, at least 2 (the reference level holds each out against the
        others); default 5.
    fraction : float
        Share of each retained class each verification model trains on, in ``(0, 1]``;
        default 0.15 as in the paper. Near 1 the subsets coincide and, for a deterministic
        estimator, so do the models, which makes the reference level meaningless.
    seed : int
        Seed of the subsets and of the estimators' own randomness; default 0.
    estimator : {"logistic", "mlp"} or callable
        Family of the verification models (see the module docstring); a callable gets an int
        seed and returns an unfitted classifier with ``fit``, ``predict_proba`` and
        ``classes_``.
    alpha : float
        Level of the calibrated threshold, default 0.05.
    threshold : float, optional
        Fixed agreement threshold instead of the calibrated one.

    Attributes
    ----------
    models_ : list
        Fitted verification models (after ``fit``).
    subset_indices_ : list of ndarray
        Row indices into ``x_retain`` each model was trained on.
    classes_ : ndarray
        Labels of the retained data.

    Examples
    --------
    >>> audit = ReferenceFreeAudit(seed=0).fit(x_retain, y_retain)  # doctest: +SKIP
    >>> audit.update(unlearned_logits, x_forget, y_forget).compute().passed  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        n_models: int = 5,
        fraction: float = 0.15,
        seed: int = 0,
        estimator: Estimator = "logistic",
        alpha: float = 0.05,
        threshold: float | None = None,
    ) -> None:
        if int(n_models) < 2:
            raise ValueError(f"n_models must be at least 2 (the reference level needs two), got {n_models}")
        if not 0.0 < float(fraction) <= 1.0:
            raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
        if not callable(estimator) and estimator not in ("logistic", "mlp"):
            raise ValueError(f"estimator must be 'logistic', 'mlp' or a callable seed -> classifier, got {estimator!r}")
        _check_settings(alpha, threshold)
        self.n_models = int(n_models)
        self.fraction = float(fraction)
        self.seed = int(seed)
        self.estimator = estimator
        self.alpha = float(alpha)
        self.threshold = None if threshold is None else float(threshold)
        self.models_: list[Any] = []
        self.subset_indices_: list[np.ndarray] = []
        self.classes_: np.ndarray = np.empty(0, dtype=np.int64)
        self._n_features = 0
        self._seen_hashes: np.ndarray = np.empty(0, dtype=np.uint64)
        super().__init__(columns=("outputs", "x_forget", "y_forget"))

    @property
    def is_fitted(self) -> bool:
        """Whether ``fit`` has run since construction."""
        return bool(self.models_)

    def fit(self, x_retain: Any, y_retain: Any) -> ReferenceFreeAudit:
        """Train the verification models on subsets of the retained data; returns ``self``.

        Batches given to ``update`` before are dropped: they were checked against the
        previous fit.

        Parameters
        ----------
        x_retain : array-like of shape (n, d)
            Raw (flattened) features of the retained samples. Never pass forget samples here:
            the verification models stand in for models that provably never saw them.
        y_retain : array-like of shape (n,)
            Their labels, as output-column indices of the audited model.

        Raises
        ------
        ValueError
            On empty or mismatched inputs, fewer than two retained classes, or a class with
            fewer than two retained samples.
        """
        x = feature_matrix(x_retain, "x_retain")
        y = _check_class_labels(y_retain, "y_retain", x.shape[0])
        if y.size == 0:
            raise ValueError("x_retain is empty: the verification models need retained samples")
        classes, counts = np.unique(y, return_counts=True)
        if classes.size < 2:
            raise ValueError(f"y_retain holds a single class ({int(classes[0])}); a classifier needs at least two")
        few = classes[counts < _MIN_RETAINED_PER_CLASS]
        if few.size:
            detail = ", ".join(f"class {int(c)}: {int(counts[classes == c][0])}" for c in few)
            raise ValueError(
                f"too few retained samples per class ({detail}); each retained class needs at least "
                f"{_MIN_RETAINED_PER_CLASS} so that verification models on different subsets can differ"
            )
        rng = np.random.default_rng(self.seed)
        subsets = _subsets(y, self.n_models, self.fraction, rng)
        model_seeds = rng.integers(0, 2**31 - 1, size=self.n_models)
        models = []
        # Tiny fits gain nothing from BLAS threads, and on shared cores oversubscription made
        # them about ten times slower.
        with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
            # Capped iterations on a small subset are part of the design, not a failure.
            warnings.simplefilter("ignore", ConvergenceWarning)
            for idx, model_seed in zip(subsets, model_seeds, strict=True):
                model = _make_estimator(self.estimator, int(model_seed))
                model.fit(x[idx], y[idx])
                models.append(model)
        self.reset()
        self.models_ = models
        self.subset_indices_ = subsets
        self.classes_ = classes
        self._n_features = x.shape[1]
        self._seen_hashes = np.unique(_row_hashes(x[np.unique(np.concatenate(subsets))]))
        return self

    def verifier_probabilities(self, x: Any, n_classes: int | None = None) -> np.ndarray:
        """Each verification model's probabilities on ``x``, shape ``(K, n, n_classes)``.

        Column ``c`` holds label ``c``; labels a model never saw get probability 0.
        ``n_classes`` defaults to ``max(classes_) + 1``.
        """
        self._check_fitted()
        xf = feature_matrix(x, "x_forget")
        if xf.shape[1] != self._n_features:
            raise ValueError(f"x_forget has {xf.shape[1]} features but x_retain had {self._n_features}")
        c = int(self.classes_.max()) + 1 if n_classes is None else int(n_classes)
        probs = np.zeros((len(self.models_), xf.shape[0], c), dtype=np.float64)
        if int(self.classes_.max()) >= c:
            raise ValueError(
                f"{c} output columns cannot hold retained label {int(self.classes_.max())}; "
                "labels must be the audited model's output-column indices"
            )
        with threadpool_limits(limits=1, user_api="blas"):
            for k, model in enumerate(self.models_):
                probs[k][:, _model_classes(model)] = model.predict_proba(xf)
        return probs

    def update(self, outputs: Any, x_forget: Any, y_forget: Any | None = None) -> ReferenceFreeAudit:
        """Add one batch of forget samples of the audited model; returns ``self``.

        Parameters
        ----------
        outputs : array-like of shape (b, C)
            Audited model's logits or probabilities on the forget samples (only the argmax is
            used); ``C`` must cover every retained label.
        x_forget : array-like of shape (b, d)
            Raw features of the same forget samples, as in ``fit``.
        y_forget : array-like of shape (b,), optional
            Their labels: adds the accuracies and the request kind to the result; given with
            every batch or with none.

        Raises
        ------
        ValueError
            Before ``fit``, on empty or mismatched inputs.
        """
        self._append(*self._check_batch(outputs, x_forget, y_forget))
        return self

    def _compute(self) -> ReferenceFreeResult:
        rows = self._rows
        return self._audit(rows.column("outputs"), rows.column("x_forget"), rows.optional("y_forget"), stacklevel=4)

    def score(self, outputs: Any, x_forget: Any, y_forget: Any | None = None) -> ReferenceFreeResult:
        """The test on these forget samples alone; the batches of ``update`` are left as they were.

        Equal to ``update(outputs, x_forget, y_forget).compute()`` on a freshly reset audit
        with the same fit. Arguments as in :meth:`update`.
        """
        return self._audit(*self._check_batch(outputs, x_forget, y_forget), stacklevel=3)

    def _check_batch(
        self, outputs: Any, x_forget: Any, y_forget: Any | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        self._check_fitted()
        o = _check_outputs(outputs)
        xf = feature_matrix(x_forget, "x_forget")
        if xf.shape[0] != o.shape[0]:
            raise ValueError(f"x_forget has {xf.shape[0]} rows but outputs has {o.shape[0]}")
        y = None if y_forget is None else _check_class_labels(y_forget, "y_forget", o.shape[0])
        if xf.shape[1] != self._n_features:
            raise ValueError(f"x_forget has {xf.shape[1]} features but x_retain had {self._n_features}")
        if int(self.classes_.max()) >= o.shape[1]:
            raise ValueError(
                f"{o.shape[1]} output columns cannot hold retained label {int(self.classes_.max())}; "
                "labels must be the audited model's output-column indices"
            )
        return o, xf, y

    def _audit(self, o: np.ndarray, xf: np.ndarray, y: np.ndarray | None, *, stacklevel: int) -> ReferenceFreeResult:
        probs = self.verifier_probabilities(xf, n_classes=o.shape[1])
        seen = int(np.isin(_row_hashes(xf), self._seen_hashes).sum())
        if seen:
            warnings.warn(
                f"{seen} forget sample(s) have an exact duplicate among the verification models' training "
                "rows; they are not ignorant of those feature vectors",
                UserWarning,
                stacklevel=stacklevel,
            )
        return _decide(
            o,
            probs,
            alpha=self.alpha,
            threshold=self.threshold,
            y_forget=y,
            retained_classes=self.classes_,
            n_fit=tuple(int(i.size) for i in self.subset_indices_),
            n_forget_seen=seen,
        )

    def _check_fitted(self) -> None:
        if not self.models_:
            raise ValueError("ReferenceFreeAudit is not fitted: call fit(x_retain, y_retain) first")


def _model_classes(model: Any) -> np.ndarray:
    classes = model[-1].classes_ if isinstance(model, Pipeline) else model.classes_
    return np.asarray(classes, dtype=np.int64)


def reference_free_audit(
    outputs: Any,
    x_forget: Any,
    x_retain: Any,
    y_retain: Any,
    y_forget: Any | None = None,
    *,
    n_models: int = 5,
    fraction: float = 0.15,
    seed: int = 0,
    estimator: Estimator = "logistic",
    alpha: float = 0.05,
    threshold: float | None = None,
) -> ReferenceFreeResult:
    """Reference-free unlearning audit in one call (Ye et al., arXiv:2606.16110).

    Equal to ``ReferenceFreeAudit(...).fit(x_retain, y_retain).update(outputs, x_forget,
    y_forget).compute()``; see the module docstring for what is computed.

    Parameters
    ----------
    outputs : array-like of shape (n, C)
        Audited model's logits or probabilities on the forget samples.
    x_forget : array-like of shape (n, d)
        Raw features of the forget samples.
    x_retain : array-like of shape (m, d)
        Raw features of the retained samples (never the forget samples).
    y_retain : array-like of shape (m,)
        Retained labels, as output-column indices.
    y_forget : array-like of shape (n,), optional
        Forget labels, for accuracies and the request kind.
    n_models, fraction, seed, estimator, alpha, threshold
        As in :class:`ReferenceFreeAudit`.

    Returns
    -------
    ReferenceFreeResult
    """
    audit = ReferenceFreeAudit(
        n_models=n_models, fraction=fraction, seed=seed, estimator=estimator, alpha=alpha, threshold=threshold
    )
    return audit.fit(x_retain, y_retain).score(outputs, x_forget, y_forget)


@register_auditor("reference_free")
class ReferenceFreeAuditor(Auditor):
    """The reference-free audit of every model of a run (class and sample requests).

    Verification models are fit on the raw inputs of the retained training audit samples
    (``split == "retain_train"``; ``fraction`` of them each), and every model's logits on the
    forgotten training samples are tested against them (:class:`ReferenceFreeAudit`). The raw
    inputs come from ``data.inputs``: ``(n, d)`` flattened features aligned with the
    audit samples (the simulator holds all the data; no role of the protocol sees them).
    ``None`` for every model when the request forgets no samples, or when fewer than two classes
    remain (nothing to train a verification classifier on).
    """

    kinds = frozenset({ForgetKind.CLASS, ForgetKind.SAMPLES})
    needs = frozenset({INPUTS})

    def __init__(self, *, n_models: int = 5, fraction: float = 0.15, seed: int = 0) -> None:
        self.n_models = n_models
        self.fraction = fraction
        self.seed = seed

    @classmethod
    def from_config(cls, audit: AuditConfig, seed: Callable[[str], int]) -> ReferenceFreeAuditor | None:
        r = audit.reference_free
        return cls(n_models=r.models, fraction=r.fraction, seed=seed("reference_free")) if r.enabled else None

    def audit(self, data: AuditData) -> dict[str, Any]:
        inputs = data.inputs
        if inputs is None:
            raise ValueError("the reference-free audit needs data.inputs (raw features of the audit samples)")
        x = np.asarray(inputs).reshape(len(data.labels), -1)
        retain, forget = data.mask("retain_train"), data.mask("forget_train")
        if not forget.any() or np.unique(data.labels[retain]).size < 2:
            # Nothing forgotten, or a single retained class (a binary task with one class
            # forgotten): a verification classifier cannot be trained, so there is no audit.
            return {name: None for name in data.models}
        audit = ReferenceFreeAudit(n_models=self.n_models, fraction=self.fraction, seed=self.seed)
        audit.fit(x[retain], data.labels[retain])
        return {
            name: audit.score(m.logits[forget], x[forget], data.labels[forget]).to_dict()
            for name, m in data.models.items()
        }
