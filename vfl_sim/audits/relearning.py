"""Relearning curves, summarized: how fast does forgotten-class accuracy come back?

A relearning curve is the accuracy of an attacked model on held-out samples of the forgotten
classes (and of the retained ones) after ``s_0 = 0 < s_1 < ... < s_T`` fine-tuning updates on a
few labeled samples (see :mod:`vfl_sim.server.relearning`). Relearn time is the readout of Golatkar,
Achille and Soatto ("Eternal Sunshine of the Spotless Net", CVPR 2020): knowledge that is
hidden rather than removed comes back faster than the model retrained without the data
learns it from scratch, so every number below is read against ``retrain``'s curve under the
same attack.

With ``a_i`` the forgotten-class accuracy after ``s_i`` updates and threshold ``tau``:

``steps_to_recover``
    ``min { s_i : a_i >= tau }``, or ``None`` when the curve stays below ``tau`` within the
    budget ``s_T``. ``0`` means the model was never below the threshold (nothing to recover).
``area``
    The area under the relearning curve after the attack starts, normalized by the budget::

        area = sum_{i=1..T} (s_i - s_{i-1}) * a_i / (s_T - s_0)

    each recorded accuracy held over the updates that led to it (a right Riemann sum). With
    the accuracy recorded after every update (``s_i = i``) this is the mean of ``a_1 .. a_T``.
    In ``[0, 1]``: 0 when the class never comes back, 1 when it is back after the first update.
    Step 0 is left out, so a model that starts unlearned and one that starts with the class
    are compared on what the attack does.
``area_gap``
    ``area(audited) - area(reference)``: positive when the audited model relearns faster than
    the reference (``retrain``), i.e. when the forgotten knowledge was still there.

Retained accuracy at the end of the attack (``final_retain_acc``) says what the recovery cost
the rest of the task: a curve that comes back while retained accuracy collapses learned to
predict the forgotten class everywhere, not to recognize it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from vfl_sim.audits._arrays import to_numpy

__all__ = [
    "RelearningCurveLike",
    "RelearningSummary",
    "compare_relearning",
    "relearning_area",
    "steps_to_recover",
    "summarize_relearning",
]

DEFAULT_THRESHOLD = 0.5


class RelearningCurveLike(Protocol):
    """Anything with a relearning curve's fields (:class:`vfl_sim.server.relearning.RelearningCurve`)."""

    @property
    def steps(self) -> Sequence[int]: ...

    @property
    def forget_acc(self) -> Sequence[float]: ...

    @property
    def retain_acc(self) -> Sequence[float]: ...


def _curve(acc: Any, name: str) -> np.ndarray:
    a = np.asarray(to_numpy(acc), dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of accuracies, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or a.min() < 0 or a.max() > 1:
        raise ValueError(f"{name} must hold accuracies in [0, 1]")
    return a


def _steps(steps: Any, n: int, name: str) -> np.ndarray:
    if steps is None:
        return np.arange(n, dtype=np.int64)
    s = np.asarray(to_numpy(steps))
    if s.ndim != 1 or s.size != n:
        raise ValueError(f"{name} has {s.size} entries but the curve has {n}")
    if s.size and (s[0] != 0 or np.any(np.diff(s) <= 0)):
        raise ValueError(f"{name} must start at 0 and increase strictly, got {s.tolist()}")
    return s.astype(np.int64)


def steps_to_recover(forget_acc: Any, *, threshold: float = DEFAULT_THRESHOLD, steps: Any = None) -> int | None:
    """The first step at which forgotten-class accuracy reaches ``threshold``.

    Parameters
    ----------
    forget_acc
        Forgotten-class accuracy after ``steps[i]`` updates.
    threshold
        Accuracy that counts as recovered.
    steps
        Update counts of the entries (default ``0, 1, ..., T``).

    Returns
    -------
    int or None
        ``min { s_i : a_i >= threshold }``; ``None`` when never reached within the curve.
    """
    a = _curve(forget_acc, "forget_acc")
    s = _steps(steps, a.size, "steps")
    hit = np.flatnonzero(a >= threshold)
    return int(s[hit[0]]) if hit.size else None


def relearning_area(forget_acc: Any, *, steps: Any = None) -> float | None:
    """Normalized area under the relearning curve after step 0 (see the module notes).

    ``sum_{i>=1} (s_i - s_{i-1}) a_i / s_T``; the mean of ``a_1 .. a_T`` for unit steps.
    ``None`` for a curve without updates (``T = 0``).
    """
    a = _curve(forget_acc, "forget_acc")
    s = _steps(steps, a.size, "steps")
    if a.size < 2:
        return None
    return float(np.sum(np.diff(s) * a[1:]) / (s[-1] - s[0]))


@dataclass(frozen=True)
class RelearningSummary:
    """One relearning curve, summarized, and (when given) against the reference curve.

    Attributes
    ----------
    steps_to_recover, reference_steps_to_recover : int or None
        First update count at which forgotten-class accuracy reaches ``threshold`` (``None``:
        not within ``budget``).
    area, reference_area : float or None
        Normalized area under the forgotten-class curve after step 0 (``None``: no updates).
    area_gap : float or None
        ``area - reference_area`` (positive: relearns faster than the reference).
    initial_forget_acc, final_forget_acc : float
        Forgotten-class accuracy before the attack and after its last update.
    final_retain_acc, reference_final_retain_acc : float or None
        Retained-class accuracy after the last update.
    threshold : float
        The recovery threshold.
    budget : int
        Updates in the attack (``s_T``).
    """

    steps_to_recover: int | None
    area: float | None
    initial_forget_acc: float
    final_forget_acc: float
    final_retain_acc: float | None
    threshold: float
    budget: int
    reference_steps_to_recover: int | None = None
    reference_area: float | None = None
    reference_final_retain_acc: float | None = None

    @property
    def area_gap(self) -> float | None:
        if self.area is None or self.reference_area is None:
            return None
        return self.area - self.reference_area

    def to_dict(self) -> dict[str, float | int | None]:
        """Plain ``dict`` of the fields and ``area_gap``, ready for JSON."""
        return {
            "steps_to_recover": self.steps_to_recover,
            "area": self.area,
            "initial_forget_acc": self.initial_forget_acc,
            "final_forget_acc": self.final_forget_acc,
            "final_retain_acc": self.final_retain_acc,
            "reference_steps_to_recover": self.reference_steps_to_recover,
            "reference_area": self.reference_area,
            "area_gap": self.area_gap,
            "reference_final_retain_acc": self.reference_final_retain_acc,
            "threshold": self.threshold,
            "budget": self.budget,
        }


def summarize_relearning(
    forget_acc: Any,
    retain_acc: Any = None,
    *,
    steps: Any = None,
    reference_forget_acc: Any = None,
    reference_retain_acc: Any = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> RelearningSummary:
    """Summarize a relearning curve, against a reference curve when one is given.

    Parameters
    ----------
    forget_acc, retain_acc
        Forgotten- and retained-class accuracy after ``steps[i]`` updates (``retain_acc``
        optional).
    steps
        Update counts of the entries (default ``0, 1, ..., T``); the reference curve must be
        recorded at the same steps.
    reference_forget_acc, reference_retain_acc
        The reference model's curve under the same attack (normally ``retrain``).
    threshold
        Forgotten-class accuracy that counts as recovered, in ``(0, 1]``.

    Raises
    ------
    ValueError
        Curves of different lengths, accuracies outside ``[0, 1]``, bad steps or threshold.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    a = _curve(forget_acc, "forget_acc")
    s = _steps(steps, a.size, "steps")

    def last_retain(acc: Any, name: str) -> float | None:
        if acc is None:
            return None
        r = _curve(acc, name)
        if r.size != a.size:
            raise ValueError(f"{name} has {r.size} entries but forget_acc has {a.size}")
        return float(r[-1])

    ref: dict[str, Any] = {}
    if reference_forget_acc is not None:
        b = _curve(reference_forget_acc, "reference_forget_acc")
        if b.size != a.size:
            raise ValueError(f"reference_forget_acc has {b.size} entries but forget_acc has {a.size}")
        ref = {
            "reference_steps_to_recover": steps_to_recover(b, threshold=threshold, steps=s),
            "reference_area": relearning_area(b, steps=s),
        }
    return RelearningSummary(
        steps_to_recover=steps_to_recover(a, threshold=threshold, steps=s),
        area=relearning_area(a, steps=s),
        initial_forget_acc=float(a[0]),
        final_forget_acc=float(a[-1]),
        final_retain_acc=last_retain(retain_acc, "retain_acc"),
        threshold=threshold,
        budget=int(s[-1]),
        reference_final_retain_acc=last_retain(reference_retain_acc, "reference_retain_acc"),
        **ref,
    )


def compare_relearning(
    audited: RelearningCurveLike,
    reference: RelearningCurveLike | None = None,
    *,
    threshold: float = DEFAULT_THRESHOLD,
) -> RelearningSummary:
    """:func:`summarize_relearning` of two curve objects (``audited`` against ``reference``)."""
    if reference is not None and list(reference.steps) != list(audited.steps):
        raise ValueError("the audited and reference curves were recorded at different steps")
    return summarize_relearning(
        audited.forget_acc,
        audited.retain_acc,
        steps=audited.steps,
        reference_forget_acc=reference.forget_acc if reference is not None else None,
        reference_retain_acc=reference.retain_acc if reference is not None else None,
        threshold=threshold,
    )
