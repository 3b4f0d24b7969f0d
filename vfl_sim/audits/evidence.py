"""What the certificate reads of a model's audit results, as typed records.

The auditors write plain JSON-able sections (``report.json``'s ``models.<name>.<section>``),
so a saved report can be certified again. :class:`ModelEvidence` reads those sections once,
into the few numbers each check of :mod:`vfl_sim.audits.certificate` compares: a check reads a
field, never a string key, and a section an auditor renamed fails here, by name, rather than
as a missing check.

Conventions: a *gap* is a model's statistic minus ``retrain``'s, with its interval where the
audit gives one (``<key>_mean`` over repeated splits where present, else ``<key>``); a
*paired interval* is the interval of a ``vs_retrain`` difference (model minus retrain), which
a check adds to the reference value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Interval = tuple[float, float]


def _interval(value: Sequence[float] | None) -> Interval | None:
    return None if value is None else (value[0], value[1])


def _float_interval(value: Sequence[float] | None) -> Interval | None:
    return None if value is None else (float(value[0]), float(value[1]))


def _paired_intervals(section: Mapping[str, Any] | None) -> dict[str, Interval]:
    """``{key: (lo, hi)}`` of the ``vs_retrain`` differences of ``section`` that have one."""
    out: dict[str, Interval] = {}
    for key, entry in ((section or {}).get("vs_retrain") or {}).items():
        if isinstance(entry, Mapping) and entry.get("interval") is not None:
            out[key] = (float(entry["interval"][0]), float(entry["interval"][1]))
    return out


@dataclass(frozen=True)
class Gap:
    """A gap to retrain and its interval (None: a point estimate)."""

    value: float
    interval: Interval | None = None

    @classmethod
    def read(cls, result: Mapping[str, Any] | None, key: str) -> Gap | None:
        """``result[key + "_mean"]`` (or ``result[key]``) with ``result[key + "_interval"]``;
        None when the result or the gap is absent."""
        if result is None:
            return None
        value = result.get(f"{key}_mean", result.get(key))
        if value is None:
            return None
        return cls(value, _interval(result.get(f"{key}_interval")))


@dataclass(frozen=True)
class OutputEvidence:
    """The ``output`` section: accuracies, the membership attack, the party dependence."""

    retain_test_acc: float | None = None
    forget_test_acc: float | None = None
    forget_train_acc: float | None = None
    party_dependence: float | None = None
    membership_auc: float | None = None
    membership_auc_ci: Interval | None = None
    paired: dict[str, Interval] = field(default_factory=dict)

    @classmethod
    def read(cls, section: Mapping[str, Any]) -> OutputEvidence:
        mia = section.get("membership")
        return cls(
            retain_test_acc=section.get("retain_test_acc"),
            forget_test_acc=section.get("forget_test_acc"),
            forget_train_acc=section.get("forget_train_acc"),
            party_dependence=section.get("party_dependence"),
            membership_auc=None if mia is None else mia["auc"],
            membership_auc_ci=None if mia is None else _float_interval(mia.get("auc_ci")),
            paired=_paired_intervals(section),
        )

    def accuracy(self, key: str) -> float | None:
        """``forget_test_acc``, ``forget_train_acc`` or ``retain_test_acc`` by name."""
        value: float | None = {
            "retain_test_acc": self.retain_test_acc,
            "forget_test_acc": self.forget_test_acc,
            "forget_train_acc": self.forget_train_acc,
        }[key]
        return value

    def paired_interval(self, key: str, reference: float) -> Interval | None:
        """The interval of this model's ``key``: ``reference`` plus its paired difference's."""
        if key not in self.paired:
            return None
        lo, hi = self.paired[key]
        return (reference + lo, reference + hi)


@dataclass(frozen=True)
class RepresentationEvidence:
    """The ``representation`` section: LPR gaps of every view and layer, CKA, class recovery."""

    fused: Gap | None
    parties: dict[str, Gap | None]
    layers: dict[str, dict[str, Gap | None]]
    cka_original: float | None = None
    cka_retrain: float | None = None
    class_recovery: float | None = None
    """Multi-class probe accuracy on the forgotten classes (None without class recovery)."""
    class_recovery_paired: dict[str, Interval] = field(default_factory=dict)

    @classmethod
    def read(cls, section: Mapping[str, Any]) -> RepresentationEvidence:
        fused = section["fused"]
        recovery = section.get("class_recovery")
        return cls(
            fused=Gap.read(fused, "lpr_gap"),
            parties={pid: Gap.read(r, "lpr_gap") for pid, r in section.get("parties", {}).items()},
            layers={
                pid: {layer: Gap.read(r, "lpr_gap") for layer, r in layers.items()}
                for pid, layers in section.get("layers", {}).items()
            },
            cka_original=fused.get("cka_original"),
            cka_retrain=fused.get("cka_retrain"),
            class_recovery=None if recovery is None else recovery.get("probe_accuracy"),
            class_recovery_paired=_paired_intervals(recovery),
        )

    def views(self) -> dict[str, Gap | None]:
        """``{"fused": ..., party: ...}``: the LPR gap of every view, fused first."""
        return {"fused": self.fused, **self.parties}


@dataclass(frozen=True)
class CompletionEvidence:
    """One party's model-completion result (``model_completion.parties.<party>``)."""

    statistic: str
    """``forget_test_acc`` (class requests) or ``membership_auc`` (sample requests)."""
    value: float
    gap: Gap | None
    labeled: int

    @classmethod
    def read(cls, section: Mapping[str, Any]) -> dict[str, CompletionEvidence]:
        """``{party: evidence}`` of a ``model_completion`` section."""
        return {
            pid: cls(
                section["statistic"], float(r["completion"]), Gap.read(r, "completion_gap"), int(section["labeled"])
            )
            for pid, r in section.get("parties", {}).items()
        }


def _kept_original_bottom(results: Mapping[str, Any]) -> dict[str, bool]:
    """``{party: True}`` for every party whose embeddings some audit found equal to the
    original's bit for bit (``representation.parties.<party>.same_as_original``,
    ``model_completion.parties.<party>.kept_original_bottom``)."""
    found: dict[str, bool] = {}
    rep = (results.get("representation") or {}).get("parties", {})
    mc = (results.get("model_completion") or {}).get("parties", {})
    for pid, r in rep.items():
        if r.get("same_as_original") is not None:
            found[pid] = bool(r["same_as_original"])
    for pid, r in mc.items():
        if r.get("kept_original_bottom") is not None:
            found[pid] = found.get(pid, False) or bool(r["kept_original_bottom"])
    return found


@dataclass(frozen=True)
class ModelEvidence:
    """Everything the certificate reads of one model's audit results.

    Attributes
    ----------
    output
        The output audit.
    representation
        The representation audit (class and sample requests), None where it did not run.
    feature_recovery
        ``{view: gap}`` of the feature-recovery audit (party and feature requests): ``fused``,
        each party, ``output``, in that order.
    reference_free
        ``(agreement, threshold)`` of the reference-free audit, None where it did not run.
    relearning
        ``{phase: area_gap}`` of the relearning attack's phases that have one.
    completion
        ``{party: CompletionEvidence}`` of the model-completion audit, where it ran.
    kept_original_bottom
        ``{party: bool}``: whether the party's embeddings equal the original's bit for bit
        (absent for the original and where no audit compared them).
    diverged
        Why the model cannot be audited, or None.
    """

    output: OutputEvidence
    representation: RepresentationEvidence | None = None
    feature_recovery: dict[str, Gap | None] = field(default_factory=dict)
    reference_free: tuple[float, float] | None = None
    relearning: dict[str, float] = field(default_factory=dict)
    completion: dict[str, CompletionEvidence] = field(default_factory=dict)
    kept_original_bottom: dict[str, bool] = field(default_factory=dict)
    diverged: str | None = None

    @classmethod
    def read(cls, results: Mapping[str, Any]) -> ModelEvidence:
        """From a model's sections of ``report.json`` (``models.<name>``)."""
        rep = results.get("representation")
        rec = results.get("feature_recovery") or {}
        rf = results.get("reference_free")
        mc = results.get("model_completion")
        recovery = {"fused": rec.get("fused"), **rec.get("parties", {}), "output": rec.get("output")}
        return cls(
            output=OutputEvidence.read(results["output"]),
            representation=None if rep is None else RepresentationEvidence.read(rep),
            feature_recovery={view: Gap.read(r, "recovery_gap") for view, r in recovery.items()},
            reference_free=None if rf is None else (rf["agreement"], rf["threshold"]),
            relearning={
                phase: r["area_gap"]
                for phase, r in (results.get("relearning") or {}).items()
                if phase != "attack" and r.get("area_gap") is not None
            },
            completion={} if mc is None else CompletionEvidence.read(mc),
            kept_original_bottom=_kept_original_bottom(results),
            diverged=str(results["diverged"]) if results.get("diverged") else None,
        )
