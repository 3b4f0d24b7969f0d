"""Multi-class recovery of forgotten classes from frozen embeddings, next to the model's output.

"An Illusion of Unlearning?" (arXiv:2604.08271) finds that after class unlearning the hidden
features often still separate the forgotten class while the classifier head no longer
predicts it (feature-classifier misalignment). :func:`forgotten_class_recovery` measures that
with a multinomial linear probe and a nearest-class-mean rule, beside the output accuracy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from vfl_sim.audits._arrays import feature_matrix, to_numpy
from vfl_sim.audits.probe import check_hyper

__all__ = ["ClassRecoveryResult", "forgotten_class_recovery"]


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
    check_hyper(C, max_iter)
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
