"""Tests of audits.class_recovery: forgotten classes read back from embeddings vs the output."""

from __future__ import annotations

import numpy as np
import pytest

from vfl_sim.audits.class_recovery import forgotten_class_recovery


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(2024)


def _suppressed_class_data(rng: np.random.Generator):
    """4 well-separated classes; the model's logits never predict class 2 (the forgotten one)."""
    centers = 6.0 * np.eye(4, 8)
    y_tr = np.repeat(np.arange(4), 100)
    y_te = np.repeat(np.arange(4), 40)
    x_tr = centers[y_tr] + rng.normal(size=(y_tr.size, 8))
    x_te = centers[y_te] + rng.normal(size=(y_te.size, 8))
    logits = np.eye(4)[y_te] * 5.0
    logits[:, 2] = -10.0  # output suppressed for the forgotten class
    return x_tr, y_tr, x_te, y_te, logits


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_forgotten_class_encoded_but_output_suppressed(rng: np.random.Generator, metric: str) -> None:
    x_tr, y_tr, x_te, y_te, logits = _suppressed_class_data(rng)
    res = forgotten_class_recovery(x_tr, y_tr, x_te, y_te, [2], test_logits=logits, ncm_metric=metric)
    assert res.output_accuracy == 0.0
    assert res.probe_accuracy >= 0.95
    assert res.ncm_accuracy >= 0.95
    assert res.retain_probe_accuracy >= 0.95
    assert res.n_forget_test == 40
    assert res.to_dict()["ncm_metric"] == metric


def test_forgotten_class_removed_from_representation(rng: np.random.Generator) -> None:
    # Class 2's train and test embeddings are drawn like class 0's: nothing tells them apart,
    # so neither the probe nor the class means can do much better than a coin between 0 and 2.
    x_tr, y_tr, x_te, y_te, _ = _suppressed_class_data(rng)
    centers = 6.0 * np.eye(4, 8)
    x_tr[y_tr == 2] = centers[0] + rng.normal(size=(100, 8))
    x_te[y_te == 2] = centers[0] + rng.normal(size=(40, 8))
    res = forgotten_class_recovery(x_tr, y_tr, x_te, y_te, [2])
    assert res.output_accuracy is None
    assert res.probe_accuracy < 0.8
    assert res.ncm_accuracy < 0.8


def test_forgotten_class_recovery_bad_input(rng: np.random.Generator) -> None:
    x_tr, y_tr, x_te, y_te, logits = _suppressed_class_data(rng)
    with pytest.raises(ValueError, match="no train samples"):
        forgotten_class_recovery(x_tr[y_tr != 2], y_tr[y_tr != 2], x_te, y_te, [2])
    with pytest.raises(ValueError, match="no test sample"):
        forgotten_class_recovery(x_tr, y_tr, x_te[y_te != 2], y_te[y_te != 2], [2])
    with pytest.raises(ValueError, match="width"):
        forgotten_class_recovery(x_tr, y_tr, x_te[:, :4], y_te, [2])
    with pytest.raises(ValueError, match="ncm_metric"):
        forgotten_class_recovery(x_tr, y_tr, x_te, y_te, [2], ncm_metric="manhattan")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="columns"):
        forgotten_class_recovery(x_tr, y_tr, x_te, y_te, [2], test_logits=logits[:, :3])
