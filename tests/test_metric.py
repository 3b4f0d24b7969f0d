"""Tests of audits.metric: the life cycle every stateful audit metric shares, and its row buffer."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pytest

import vfl_sim.audits as audits
from vfl_sim.audits.metric import Metric, RowBuffer


class ColumnMeans(Metric[np.ndarray]):
    """A row metric: the column means of every row seen."""

    def __init__(self) -> None:
        super().__init__(columns=("x",))

    def update(self, x: Any) -> ColumnMeans:
        self._append(np.asarray(x, dtype=np.float64))
        return self

    def _compute(self) -> np.ndarray:
        return np.asarray(self._rows.column("x").mean(axis=0))


class RunningSum(Metric[float]):
    """A metric of sufficient statistics: the sum of every value seen."""

    def update(self, values: Any) -> RunningSum:
        v = np.asarray(values, dtype=np.float64)
        self._total += float(v.sum())
        self._count(v.size)
        return self

    def _clear(self) -> None:
        self._total = 0.0

    def _compute(self) -> float:
        return self._total


@pytest.mark.parametrize("metric", [ColumnMeans(), RunningSum()], ids=["rows", "statistics"])
def test_compute_before_any_update_is_refused(metric: Metric[Any]) -> None:
    name = type(metric).__name__
    with pytest.raises(ValueError, match=rf"^{name}\.compute\(\) called before any update\(\)$"):
        metric.compute()


def test_row_metric_counts_resets_and_continues_after_compute() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 3))
    metric = ColumnMeans()
    assert metric.n_samples == 0
    assert metric.update(x[:4]) is metric
    assert metric.n_samples == 4
    np.testing.assert_array_equal(metric.compute(), x[:4].mean(axis=0))
    # compute leaves the state as it was: later batches extend the same stream.
    metric.update(x[4:])
    assert metric.n_samples == 10
    np.testing.assert_array_equal(metric.compute(), x.mean(axis=0))
    metric.reset()
    assert metric.n_samples == 0
    with pytest.raises(ValueError, match="before any update"):
        metric.compute()
    metric.update(x[:2, :1])  # a new width is accepted after reset
    np.testing.assert_array_equal(metric.compute(), x[:2, :1].mean(axis=0))


def test_statistics_metric_counts_resets_and_continues_after_compute() -> None:
    metric = RunningSum().update([1.0, 2.0])
    assert (metric.n_samples, metric.compute()) == (2, 3.0)
    metric.update([4.0])
    assert (metric.n_samples, metric.compute()) == (3, 7.0)
    metric.reset()
    assert metric.n_samples == 0
    with pytest.raises(ValueError, match="before any update"):
        metric.compute()
    # An empty batch is an update: compute then answers (here 0), it is not refused.
    assert metric.update([]).compute() == 0.0


def test_row_buffer_keeps_batches_aligned_and_widths_fixed() -> None:
    buf = RowBuffer("x", "y")
    assert buf.append(np.ones((3, 2)), np.zeros(3)) == 3
    assert buf.append(np.ones((1, 2)), np.ones(1)) == 1
    assert buf.n_rows == 4
    np.testing.assert_array_equal(buf.column("y"), [0.0, 0.0, 0.0, 1.0])
    assert buf.column("x").shape == (4, 2)
    with pytest.raises(ValueError, match="x width changed between batches: 2 then 3"):
        buf.append(np.ones((1, 3)), np.ones(1))
    with pytest.raises(ValueError, match="y has 2 rows but x has 1"):
        buf.append(np.ones((1, 2)), np.ones(2))
    with pytest.raises(ValueError, match="a batch needs 2 arrays"):
        buf.append(np.ones((1, 2)))
    assert buf.n_rows == 4  # refused batches are not stored
    buf.clear()
    assert buf.n_rows == 0 and buf.optional("x") is None


def test_row_buffer_optional_column_is_given_with_every_batch_or_none() -> None:
    buf = RowBuffer("x", "ref")
    buf.append(np.ones((2, 1)), None)
    assert buf.optional("ref") is None
    with pytest.raises(ValueError, match="no rows of ref"):
        buf.column("ref")
    with pytest.raises(ValueError, match="ref must be given with every batch or with none"):
        buf.append(np.ones((2, 1)), np.ones(2))
    buf.clear()
    buf.append(np.ones((2, 1)), np.ones(2))
    with pytest.raises(ValueError, match="ref must be given with every batch or with none"):
        buf.append(np.ones((2, 1)), None)


STATEFUL = [
    "FeatureRecovery",
    "FeatureRecoveryGap",
    "FisherRatio",
    "ForgetSilhouette",
    "KNNPurity",
    "LinearCKA",
    "LinearProbeGap",
    "LinearProbeRecovery",
    "LinearProbeRecoveryCI",
    "MembershipInference",
    "ModelCompletion",
    "ReferenceFreeAudit",
    "RetrainConsistency",
]


def test_every_exported_class_with_update_is_a_metric() -> None:
    with_update = sorted(
        name
        for name in audits.__all__
        if inspect.isclass(cls := getattr(audits, name)) and hasattr(cls, "update") and cls is not Metric
    )
    assert with_update == STATEFUL
    for name in with_update:
        cls = getattr(audits, name)
        assert issubclass(cls, Metric), name
        assert not {"compute", "reset", "n_samples"} & set(vars(cls)), f"{name} redefines the life cycle"
