"""Output-level audit: accuracy on retained and forgotten samples, train and test."""

from __future__ import annotations

from typing import Any

import numpy as np

from audits.base import AuditData, Auditor, register_auditor


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


@register_auditor("output")
class OutputAuditor(Auditor):
    """Output-level forgetting: what the model predicts (suppression, not removal)."""

    def audit(self, data: AuditData) -> dict[str, dict[str, Any]]:
        return {name: output_metrics(m.logits, data.labels, data.split, data.forget) for name, m in data.models.items()}
