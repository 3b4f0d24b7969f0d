"""Output-level audit: accuracy on retained and forgotten samples, train and test.

Per model (:class:`OutputAuditor`): ``retain_test_acc``, ``forget_test_acc``,
``retain_train_acc``, ``forget_train_acc`` (:func:`output_metrics`), ``membership``
(:mod:`vfl_sim.audits.membership`), ``party_dependence`` for party requests, and, when ``retrain`` is
among the models, ``vs_retrain``: for each of those statistics that is computed, its paired
difference to the retrained model on the same samples, ``{"diff", "interval", "n"}``:

* accuracies: ``d_i = correct_model_i - correct_retrain_i`` over the group's ``n`` samples,
  ``diff = acc(model) - acc(retrain)``, ``interval = diff -/+ 1.96 sd(d) / sqrt(n)``
  (``ddof=1``; ``[diff, diff]`` when ``sd(d) = 0`` or ``n = 1``), clipped to ``[-1, 1]``
  (:func:`paired_accuracy_difference`);
* ``membership_auc``: ``diff = AUC(model) - AUC(retrain)``, percentile 95 % interval of the
  paired bootstrap differences ``AUC_b(model) - AUC_b(retrain)`` over the resamples of
  ``membership.auc_ci`` (:func:`vfl_sim.audits.membership.paired_auc_difference`).

Retrain against itself gets ``diff = 0`` and ``[0, 0]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from vfl_sim.audits.base import SHUFFLED_PARTY_LOGITS, AuditData, Auditor, register_auditor
from vfl_sim.audits.membership import membership_inference, membership_scores, paired_auc_difference
from vfl_sim.config import AuditConfig
from vfl_sim.forget import RETRAIN, ForgetKind


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float | None:
    """Fraction of ``argmax(logits) == labels``; ``None`` for an empty set."""
    if labels.size == 0:
        return None
    return float(np.mean(np.asarray(logits).argmax(1) == labels))


def accuracy_groups(split: np.ndarray, forget: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks of the four groups of audit samples, keyed by their accuracy's name."""
    test = split == "test"
    return {
        "retain_test_acc": test & ~forget,
        "forget_test_acc": test & forget,
        "retain_train_acc": split == "retain_train",
        "forget_train_acc": split == "forget_train",
    }


def output_metrics(logits: np.ndarray, labels: np.ndarray, split: np.ndarray, forget: np.ndarray) -> dict[str, Any]:
    """Accuracies on the four groups of audit samples.

    ``retain_test_acc`` and ``forget_test_acc`` split the test samples by the forget mask
    (for sample requests no test sample is forgotten, so ``forget_test_acc`` is ``None``);
    ``retain_train_acc`` and ``forget_train_acc`` use the retained and forgotten training
    samples. All are fractions in [0, 1].
    """
    return {key: accuracy(logits[mask], labels[mask]) for key, mask in accuracy_groups(split, forget).items()}


def paired_accuracy_difference(correct: Any, reference_correct: Any, *, z: float = 1.96) -> dict[str, Any]:
    """Accuracy difference of two models on the same samples, with a paired normal interval.

    With ``c_i`` and ``r_i`` (0/1) whether the model and the reference classify sample ``i``
    correctly, ``d_i = c_i - r_i`` and ``n`` samples::

        diff     = mean(c) - mean(r)                    (= mean(d))
        interval = diff -/+ z * sd(d) / sqrt(n),  clipped to [-1, 1]

    with ``sd`` the sample standard deviation (``ddof=1``); ``[diff, diff]`` when ``sd = 0``
    (every sample agrees, e.g. the reference against itself) or ``n = 1``.

    Parameters
    ----------
    correct, reference_correct : array-like of shape (n,), n >= 1
        Per-sample correctness (booleans or 0/1) of the model and the reference.
    z : float
        Normal quantile, default 1.96 (95 %).

    Returns
    -------
    dict
        ``{"diff": float, "interval": [low, high], "n": int}``.
    """
    c = np.asarray(correct, dtype=np.float64).ravel()
    r = np.asarray(reference_correct, dtype=np.float64).ravel()
    if c.size == 0 or c.shape != r.shape:
        raise ValueError(f"paired accuracies need the same non-empty samples, got {c.size} and {r.size}")
    diff = float(np.mean(c)) - float(np.mean(r))
    n = int(c.size)
    sd = float(np.std(c - r, ddof=1)) if n > 1 else 0.0
    half = z * sd / np.sqrt(n)
    low, high = (diff, diff) if half == 0.0 else (max(-1.0, diff - half), min(1.0, diff + half))
    return {"diff": diff, "interval": [float(low), float(high)], "n": n}


def _correct(logits: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.asarray(np.asarray(logits)[mask].argmax(1) == labels[mask])


def party_dependence(logits: np.ndarray, shuffled_logits: np.ndarray) -> float:
    """Share of samples whose predicted class changes when the departed party's embedding is
    permuted across samples (``shuffled_logits``): 0 for a model that no longer reads the
    party, well above 0 for one that still does (the original)."""
    if logits.shape != shuffled_logits.shape:
        raise ValueError(f"logits {logits.shape} and shuffled logits {shuffled_logits.shape} differ in shape")
    return float(np.mean(logits.argmax(1) != shuffled_logits.argmax(1)))


def membership_groups(data: AuditData) -> np.ndarray:
    """``member`` for forgotten training samples, ``nonmember`` for unseen test samples they
    should look like (class requests: test samples of the forgotten classes; sample requests:
    every test sample), ``other`` for the rest."""
    member = data.split == "forget_train"
    unseen = (data.split == "test") & (data.forget if data.kind == ForgetKind.CLASS else True)
    return np.where(member, "member", np.where(unseen, "nonmember", "other"))


@register_auditor("output")
class OutputAuditor(Auditor):
    """Output-level forgetting: what the model predicts (suppression, not removal).

    Besides the accuracies, ``membership`` is a loss-threshold membership attack (Yeom et al.,
    CSF 2018) of forgotten training samples against unseen test samples, with a bootstrap
    interval, and its difficulty-calibrated variant against ``retrain``'s losses (Watson et al.,
    ICLR 2022; see :mod:`vfl_sim.audits.membership`): an AUC near 0.5 means the forgotten samples look
    unseen. ``None`` when there are no forgotten samples (party and feature requests).

    Party requests: ``party_dependence`` (:func:`party_dependence`) from
    ``data.shuffled_party_logits`` (``{model: logits}`` with the departed party's embedding
    rows permuted), when the run provides it.

    ``vs_retrain`` (only when ``retrain`` is among the models, for every model, ``retrain``
    included): paired differences to the retrained model, on exactly the samples of the
    statistic they compare::

        {"retain_test_acc": {"diff", "interval", "n"}, "forget_test_acc": ...,
         "retain_train_acc": ..., "forget_train_acc": ...,      # those that are not None
         "membership_auc": {"diff", "interval", "n"}}            # where membership is computed

    Accuracies (:func:`paired_accuracy_difference`): ``d_i = c_i - r_i`` with ``c_i``, ``r_i``
    whether the model and retrain classify sample ``i`` of the group correctly,
    ``diff = acc(model) - acc(retrain)`` and ``interval = diff -/+ 1.96 sd(d) / sqrt(n)``
    (``ddof=1``), clipped to ``[-1, 1]``, ``[diff, diff]`` when ``sd(d) = 0`` or ``n = 1``.
    ``membership_auc`` (:func:`vfl_sim.audits.membership.paired_auc_difference`):
    ``diff = AUC(model) - AUC(retrain)`` of the raw loss attack, and the percentile 95 %
    interval of ``AUC_b(model) - AUC_b(retrain)`` over the resamples ``b`` behind
    ``membership.auc_ci`` (same seed, 1000 resamples); ``n`` counts members and non-members.
    Retrain against itself gets ``diff = 0`` and ``[0, 0]`` throughout.
    """

    needs = frozenset({SHUFFLED_PARTY_LOGITS})

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = seed

    @classmethod
    def from_config(cls, audit: AuditConfig, seed: Callable[[str], int]) -> OutputAuditor:
        return cls(seed=seed("membership"))

    def audit(self, data: AuditData) -> dict[str, dict[str, Any]]:
        groups = membership_groups(data)
        has_groups = bool((groups == "member").any() and (groups == "nonmember").any())
        reference = data.models[RETRAIN].logits if RETRAIN in data.models else None
        shuffled = data.shuffled_party_logits
        masks = accuracy_groups(data.split, data.forget)
        keep = (groups == "member") | (groups == "nonmember")
        is_member = (groups == "member")[keep]
        ref_scores = membership_scores(reference, data.labels)[keep] if reference is not None and has_groups else None
        out: dict[str, dict[str, Any]] = {}
        for name, m in data.models.items():
            out[name] = output_metrics(m.logits, data.labels, data.split, data.forget)
            if name in shuffled:
                out[name]["party_dependence"] = party_dependence(m.logits, shuffled[name])
            out[name]["membership"] = (
                membership_inference(
                    m.logits,
                    data.labels,
                    groups,
                    reference_logits=reference,
                    member="member",
                    nonmember="nonmember",
                    seed=self.seed,
                ).to_dict()
                if has_groups
                else None
            )
            if reference is not None:
                vs: dict[str, Any] = {
                    key: paired_accuracy_difference(
                        _correct(m.logits, data.labels, mask), _correct(reference, data.labels, mask)
                    )
                    for key, mask in masks.items()
                    if out[name][key] is not None
                }
                if ref_scores is not None:
                    vs["membership_auc"] = paired_auc_difference(
                        membership_scores(m.logits, data.labels)[keep], ref_scores, is_member, seed=self.seed
                    ).to_dict()
                out[name]["vs_retrain"] = vs
        return out
