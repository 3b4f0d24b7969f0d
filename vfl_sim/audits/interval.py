"""Percentile intervals over repeated splits or resamples, the uncertainty every audit reports.

An audit value computed on one split of the samples (a probe's score, a readout's R^2)
moves with the split. The audits repeat the split (or resample the scored part) and report
:class:`Interval`: the mean of the per-split values and their percentile interval. Index
``r`` of two intervals from one call is the same split, so their difference, split by
split, gives a paired gap (:func:`vfl_sim.audits.probe_gap.paired_gap`,
:func:`vfl_sim.audits.feature_recovery.paired_recovery_gap`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Interval", "check_level"]


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile interval and the values it was computed from.

    Attributes
    ----------
    mean : float
        Mean of ``values``.
    low, high : float
        The ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles of ``values`` (linear
        interpolation between order statistics, :func:`numpy.percentile`'s default).
    values : tuple of float
        One value per split repeat or bootstrap resample, in order: repeat ``r`` used split
        seed ``seed + r``; index ``r`` of two intervals from one call is the same split or
        resample (which is what makes a paired gap possible).
    """

    mean: float
    low: float
    high: float
    values: tuple[float, ...]

    @classmethod
    def from_values(cls, values: Any, level: float = 0.95) -> Interval:
        """Mean and percentile interval of ``values`` at ``level`` (e.g. 0.95)."""
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size == 0:
            raise ValueError("an interval needs at least one value")
        check_level(level)
        low, high = np.percentile(v, [50.0 - 50.0 * level, 50.0 + 50.0 * level])
        return cls(mean=float(v.mean()), low=float(low), high=float(high), values=tuple(float(x) for x in v))

    def covers(self, value: float) -> bool:
        """Whether ``low <= value <= high``."""
        return self.low <= value <= self.high

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` (``values`` as a list), ready for JSON."""
        return {"mean": self.mean, "low": self.low, "high": self.high, "values": list(self.values)}


def check_level(level: float) -> None:
    """A ValueError unless ``level`` lies in ``(0, 1)``."""
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
