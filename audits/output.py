"""Output-level audit: accuracy on retained and forgotten samples, train and test."""

from __future__ import annotations

from typing import Any

import numpy as np

from audits.base import AuditData, Auditor, register_auditor
from audits.membership import membership_inference


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float | None:
    """Fraction of ``argmax(logits) == labels``; ``None`` for an empty set."""
    if labels.size == 0:
        return None
    return float(np.mean(np.asarray(logits).argmax(1) == labels))


def output_metrics(logits: np.ndarray, labels: np.ndarray, split: np.ndarray, forget: np.ndarray) -> dict[str, Any]:
    """Accuracies on the four groups of audit samples.

    ``retain_test_acc`` and ``forget_test_acc`` split the test samples by the forget mask
    (for sample requests no test sample is forgotten, so ``forget_test_acc`` is ``None``);
    ``retain_train_acc`` and ``forget_train_acc`` use the retained and forgotten training
    samples. All are fractions in [0, 1].
    """
    test = split == "test"
    return {
        "retain_test_acc": accuracy(logits[test & ~forget], labels[test & ~forget]),
        "forget_test_acc": accuracy(logits[test & forget], labels[test & forget]),
        "retain_train_acc": accuracy(logits[split == "retain_train"], labels[split == "retain_train"]),
        "forget_train_acc": accuracy(logits[split == "forget_train"], labels[split == "forget_train"]),
    }


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
    unseen = (data.split == "test") & (data.forget if data.kind == "class" else True)
    return np.where(member, "member", np.where(unseen, "nonmember", "other"))


@register_auditor("output")
class OutputAuditor(Auditor):
    """Output-level forgetting: what the model predicts (suppression, not removal).

    Besides the accuracies, ``membership`` is a loss-threshold membership attack (Yeom et al.,
    CSF 2018) of forgotten training samples against unseen test samples, with a bootstrap
    interval, and its difficulty-calibrated variant against ``retrain``'s losses (Watson et al.,
    ICLR 2022; see :mod:`audits.membership`): an AUC near 0.5 means the forgotten samples look
    unseen. ``None`` when there are no forgotten samples (party and feature requests).

    Party requests: ``party_dependence`` (:func:`party_dependence`) from
    ``data.meta["shuffled_party_logits"]`` (``{model: logits}`` with the departed party's
    embedding rows permuted), when the run provides it.
    """

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = seed

    def audit(self, data: AuditData) -> dict[str, dict[str, Any]]:
        groups = membership_groups(data)
        has_groups = bool((groups == "member").any() and (groups == "nonmember").any())
        reference = data.models["retrain"].logits if "retrain" in data.models else None
        shuffled = data.meta.get("shuffled_party_logits", {})
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
        return out
