"""The paired LPR gap of an audited model to the retrained reference, with intervals.

The gap to retrain, not absolute LPR, is the Mirage criterion (arXiv:2605.20282): a model
retrained without a class may still separate it. Both models are probed on the *same* splits
(:mod:`vfl_sim.audits.probe_ci`) and the gap is taken split by split, so that the variation both
share (which samples are fit and scored) cancels. :class:`LinearProbeGap` is the minibatch
form (:class:`~vfl_sim.audits.metric.Metric`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vfl_sim.audits.interval import Interval, check_level
from vfl_sim.audits.metric import Metric
from vfl_sim.audits.probe import check_embeddings, check_hyper, check_is_forget, check_solver
from vfl_sim.audits.probe_ci import ProbeCI, probe_many_ci

__all__ = ["LinearProbeGap", "ProbeGapCI", "paired_gap", "probe_gap_ci"]


@dataclass(frozen=True)
class ProbeGapCI:
    """Paired gap ``LPR(audited) - LPR(retrain)`` with intervals (see :func:`probe_gap_ci`).

    Attributes
    ----------
    audited, retrain : ProbeCI
        The two models' probes, on the same splits (or resamples).
    balanced_accuracy_gap, auroc_gap : Interval
        Of the per-split differences ``v_r = LPR_r(audited) - LPR_r(retrain)``.
    """

    audited: ProbeCI
    retrain: ProbeCI
    balanced_accuracy_gap: Interval
    auroc_gap: Interval

    def to_dict(self) -> dict[str, Any]:
        """Plain nested ``dict``, ready for JSON."""
        return {
            "audited": self.audited.to_dict(),
            "retrain": self.retrain.to_dict(),
            "balanced_accuracy_gap": self.balanced_accuracy_gap.to_dict(),
            "auroc_gap": self.auroc_gap.to_dict(),
        }


def paired_gap(audited: ProbeCI, retrain: ProbeCI) -> ProbeGapCI:
    """Gap ``audited - retrain`` per split (or resample), with a percentile interval.

    With ``v_r = LPR_r(audited) - LPR_r(retrain)`` computed on the *same* split ``r``, the
    interval is that of the ``v_r`` (at ``audited.level``). Pairing removes the variation both
    models share (which samples are fit and scored), so the gap's interval is much narrower
    than the difference of the two marginal intervals; two identical representations give
    ``v_r = 0`` for every ``r`` and the interval ``[0, 0]``. The gap to retrain, not absolute
    LPR, is the Mirage criterion (arXiv:2605.20282): a model retrained without a class may
    still separate it.

    Both arguments must come from one :func:`probe_many_ci` call (or calls with the same
    labels, method, seed, repeats and eval fraction); this function checks what it can.
    """
    for field in ("n_fit", "n_eval", "method", "level", "seed"):
        if getattr(audited, field) != getattr(retrain, field):
            raise ValueError(
                f"paired gap needs probes on the same splits: {field} is "
                f"{getattr(audited, field)!r} vs {getattr(retrain, field)!r}"
            )
    if len(audited.balanced_accuracy.values) != len(retrain.balanced_accuracy.values):
        raise ValueError("paired gap needs the same number of repeats or resamples on both sides")
    gaps = []
    for name in ("balanced_accuracy", "auroc"):
        a = np.asarray(getattr(audited, name).values)
        r = np.asarray(getattr(retrain, name).values)
        gaps.append(Interval.from_values(a - r, audited.level))
    return ProbeGapCI(audited=audited, retrain=retrain, balanced_accuracy_gap=gaps[0], auroc_gap=gaps[1])


def probe_gap_ci(audited: Any, retrain: Any, is_forget: Any, **kwargs: Any) -> ProbeGapCI:
    """Paired LPR gap of an audited model to the retrained reference, with intervals.

    Probes both representations of the same samples on the same splits (or the same eval
    resamples) with :func:`probe_many_ci` and returns :func:`paired_gap` of the two;
    ``gap_r = LPR_r(audited) - LPR_r(retrain)``. Keyword arguments as in :func:`probe_many_ci`.
    """
    a, r = probe_many_ci([audited, retrain], is_forget, **kwargs)
    return paired_gap(a, r)


class LinearProbeGap(Metric[ProbeGapCI]):
    """Minibatch form of :func:`probe_gap_ci`: ``update(audited, retrain, is_forget)``.

    ``compute`` equals ``probe_gap_ci(concat(audited), concat(retrain), concat(labels),
    **kwargs)`` with the constructor's keyword arguments (those of
    :func:`~vfl_sim.audits.probe_ci.probe_many_ci`).
    """

    def __init__(self, **kwargs: Any) -> None:
        check_level(kwargs.get("level", 0.95))
        check_solver(kwargs.get("solver", "sklearn"))
        check_hyper(kwargs.get("C", 1.0), kwargs.get("max_iter", 1000))
        self.kwargs = dict(kwargs)
        super().__init__(columns=("audited", "retrain", "is_forget"))

    def update(self, audited: Any, retrain: Any, is_forget: Any) -> LinearProbeGap:
        """Add one batch: both models' embeddings of the same ``b`` samples and their labels."""
        y = check_is_forget(is_forget)
        a = check_embeddings(audited, y.size, name="audited")
        r = check_embeddings(retrain, y.size, name="retrain")
        self._append(a, r, y)
        return self

    def _compute(self) -> ProbeGapCI:
        rows = self._rows
        return probe_gap_ci(rows.column("audited"), rows.column("retrain"), rows.column("is_forget"), **self.kwargs)
