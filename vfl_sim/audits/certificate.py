"""The forgetting certificate: three verdicts per model, backed by controls, calibrated
tolerances and intervals, and the model's place in the trilemma.

Removing information from a model and suppressing it at the output are different claims
(Cooper et al., "Machine Unlearning Doesn't Do What You Think", arXiv 2412.06966): a model can
answer as if it never saw a class while its representations still hold it (the "forgetting
gap" of Mirage, arXiv 2605.20282; the feature-classifier misalignment of "An Illusion of
Unlearning?", arXiv 2604.08271). So the certificate never adds them up into one score. Each
model gets three verdicts, each ``pass``, ``fail``, ``inconclusive`` or ``n/a``, with every
check behind it.

**Checks.** A check measures how far a statistic ``x`` of the audited model deviates from the
reference ``r`` (the retrained model's value), in one of three senses:

- ``upper`` (``d = x - r``: an LPR gap, recovery above retrain's),
- ``lower`` (``d = r - x``: utility below retrain's),
- ``two`` (``d = |x - r|``: forgotten accuracy and membership either side of retrain's; forgetting
  *more* than retrain also marks the forgotten samples).

Where the audit has an interval of ``x`` (paired with retrain on the same samples or splits:
LPR gaps over the probe splits, fused, per party and per layer; accuracy differences over the
same samples; the membership AUC difference over the same bootstrap resamples; feature
recovery over its splits), ``d_hi`` is the deviation at the interval's far end. With tolerance
``t`` the check

- **fails** when the point deviation ``d > t`` (a difference was seen; that needs no power),
- **passes** only when the whole interval is within tolerance, ``d_hi <= t``,
- is **inconclusive** otherwise (``d <= t < d_hi``: the run cannot tell).

A *supporting* check (the membership attack of a class request, where the forgotten-class
accuracy is the decisive output test and a few dozen samples leave the attack's interval wide)
fails its verdict like any check, but when undecided it leaves the verdict to the others
(the verdict's note names it).

Its *minimum detectable effect* is ``t`` plus the interval's half width: a true deviation
that large fails the check whatever the split noise.

**Tolerances.** With calibration retrains (:mod:`vfl_sim.methods.controls`, ``audit.calibration``),
the tolerance of a check is the ``quantile`` (``method="higher"``: with two retrains, the
larger) of the calibration retrains' ``d_hi``, that is of the spread of models that never saw
the data, never below the floor in ``audit.certificate``; without them the floors apply. The
report says for every check which tolerance it used and where it came from.

**Verdicts.** ``fail`` if a check fails; else ``inconclusive`` if one is; else ``pass``;
``n/a`` when nothing could be checked.

- **utility**: retained test accuracy, ``lower``, tolerance ``utility``.
- **output forgetting** (suppression): class requests, forgotten test and train accuracy;
  sample requests, forgotten train accuracy (``forget_accuracy``); both, the loss-threshold
  membership AUC of forgotten training samples against unseen ones (``membership_auc``).
  Without retrain the references are what a model that never saw the data gives by
  construction (accuracy 0 on a forgotten class, the model's test accuracy on forgotten
  samples, AUC 0.5), plus the reference-free audit (:mod:`vfl_sim.audits.reference_free`, arXiv
  2606.16110). A party request's output check is that at most ``party_dependence`` of the
  predictions change when the departed party's embedding is shuffled; a feature request has
  none (``n/a``).
- **representation forgetting** (removal), against ``retrain`` only (``n/a`` without it):
  mean LPR gap (over the probe splits) of the fused and of every party's embedding
  (``lpr_gap``) and at every bottom-model layer (``layer_lpr_gap``); class requests also
  ``CKA(model, original) - CKA(model, retrain) <= 0`` (structurally closer to the model that
  never saw the class; floor 0, calibrated: an independently seeded retrain lands about as
  close to the original as to ``retrain``, on either side), the multi-class probe's accuracy on forgotten-class
  test samples (``class_recovery``), and per relearning phase the mean forgotten accuracy over
  the attack above retrain's (``relearning_gap``; Golatkar et al., CVPR 2020); class and
  sample requests, per passive party: ``bottom_retrained.<party>`` fails every model when the
  party's bottom model under ``retrain`` is the original's, bit for bit (the party did not
  retrain, ``parties.<id>.behaviour: ignore_unlearning``: retrain is no reference for it), and,
  with ``audit.model_completion.enabled``, ``model_completion.<party>`` (supporting): the
  party's model-completion accuracy on the forgotten classes above retrain's (class requests)
  or its membership AUC on the forgotten samples either side of retrain's (sample requests),
  tolerance ``model_completion`` (Fu et al., USENIX Security 2022;
  :mod:`vfl_sim.audits.model_completion`); party and
  feature requests: the R^2 gap of the removed columns' recovery from the fused, every
  party's and the output view (``feature_recovery_gap``).

**Controls and power.** A pass is evidence only where the check could have failed. The
negative control (``original`` for the output verdict; for the representation verdict
``original`` for class and sample requests and ``cut_only`` for party and feature requests)
must fail a verdict, and for class requests the known-suppression control ``output_mask``
must fail representation forgetting. Where a control does not fail a verdict, that verdict has
no power on this run: every ``pass`` of it becomes ``inconclusive``, with the reason and what
would give power. Failures stay failures.

**Diverged models.** A model with a non-finite weight, embedding or output is never
certified: its verdicts are ``n/a`` and its region ``diverged``. A diverged ``retrain`` is no
reference; a diverged negative control shows no power.

**Trilemma** (Mirage: no published method reaches high utility, output forgetting and
representation forgetting at once), by the three verdicts:

========================  =========  ======  ==============  ======================================
region                    utility    output  representation  meaning
========================  =========  ======  ==============  ======================================
``removal``               pass       pass    pass            forgotten at the output and inside
``suppression``           pass       pass    fail            the forgetting gap: output only
``output_leak``           pass       fail    pass            representations clean, outputs not
``no_forgetting``         pass       fail    fail            useful, fails both forgetting tests
``destructive_removal``   fail       pass    pass            forgets by breaking the model
``destructive``           fail       pass    fail            suppresses by breaking the model
``failed``                fail       fail    any             neither useful nor forgetting
``unverified``            any        any     n/a             no removal claim can be made
``inconclusive``          any        either is inconclusive  the run cannot place the model
``structural_removal``    pass       pass    inconclusive    party/feature: the cut, nothing shown
``diverged``              -          -       -               non-finite weights, embeddings or outputs
========================  =========  ======  ==============  ======================================

For feature requests (no output check) the regions follow utility and representation alone;
for party and feature requests a representation verdict that the run cannot decide (the cut
alone passes it) is ``structural_removal``: the model no longer reads the data, and nothing
shows it removed more. Only ``removal`` and ``destructive_removal`` claim removal, and only
with a representation pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from vfl_sim.audits.evidence import Gap, ModelEvidence
from vfl_sim.config import CertificateThresholds
from vfl_sim.forget import ORIGINAL, RETRAIN, ForgetKind

__all__ = [
    "Certificate",
    "CertificateThresholds",
    "Certification",
    "Check",
    "Measurement",
    "Tolerance",
    "Verdict",
    "certify",
    "certify_run",
    "trilemma_region",
]

Status = Literal["pass", "fail", "inconclusive", "n/a"]
Sided = Literal["upper", "lower", "two"]
STATUSES: tuple[Status, ...] = ("pass", "fail", "inconclusive", "n/a")
KINDS = ForgetKind.ALL

CLAIMS = {
    "removal": "keeps utility and forgets at the output and in its representations",
    "suppression": "forgets at the output only: its representations keep what the retrained model's do not",
    "output_leak": "its representations match retrain's, but its outputs still reveal the forgotten data",
    "no_forgetting": "keeps utility but fails both output and representation forgetting",
    "destructive_removal": "forgets, at the cost of utility",
    "destructive": "suppresses the forgotten data at the output at the cost of utility; its representations keep it",
    "failed": "loses utility and does not forget",
    "unverified": "representation forgetting was not audited: no removal claim",
    "inconclusive": "the audits of this run cannot tell whether it forgot: no removal claim",
    "structural_removal": "no longer reads the removed data; the audits cannot show that it removed more than the cut",
    "diverged": "its weights, embeddings or outputs are not finite: not certified",
}

_ADVICE = {
    "class": "more test samples of the forgotten classes (data.test_fraction, audit.max_samples) "
    "or a longer-trained original (train.epochs)",
    "samples": "a larger forget request, more audit samples (audit.max_samples) or a longer-trained original "
    "(train.epochs), so that the original remembers its training samples measurably",
    "party": "a party whose columns the others do not already carry, or more audit samples",
    "features": "columns that the rest of the party does not already carry, or more audit samples",
}


@dataclass(frozen=True)
class Measurement:
    """One statistic of one model, before it is judged.

    Attributes
    ----------
    name
        The check, e.g. ``lpr_gap.fused``; the same name across models.
    what
        Readable description for the evidence line.
    value, reference
        The model's statistic and the reference's.
    sided
        ``upper`` (``d = value - reference``), ``lower`` (``reference - value``) or ``two``
        (``|value - reference|``).
    floor
        The configured tolerance (the floor under a calibrated one).
    interval
        95 % interval of ``value`` (paired with the reference where the audit pairs), or ``None``.
    pct
        Show the numbers as percentages.
    calibrate
        Whether the calibration retrains may widen the tolerance.
    supporting
        A supporting check can fail its verdict but, undecided, does not hold it back (module
        docstring).
    """

    name: str
    what: str
    value: float
    reference: float
    sided: Sided
    floor: float
    interval: tuple[float, float] | None = None
    pct: bool = False
    calibrate: bool = True
    supporting: bool = False

    def deviation(self) -> float:
        """``d`` at the point estimate."""
        return _deviation(self.sided, self.value, self.reference)

    def far_deviation(self) -> float:
        """``d_hi``: the deviation at the interval's far end (the point's without an interval)."""
        if self.interval is None:
            return self.deviation()
        return max(_deviation(self.sided, v, self.reference) for v in self.interval)

    def half_width(self) -> float:
        return 0.0 if self.interval is None else (self.interval[1] - self.interval[0]) / 2


def _deviation(sided: Sided, value: float, reference: float) -> float:
    if sided == "upper":
        return value - reference
    if sided == "lower":
        return reference - value
    return abs(value - reference)


def _as_status(value: Any) -> Status:
    for status in STATUSES:
        if value == status:
            return status
    raise ValueError(f"unknown verdict status {value!r}; expected one of {', '.join(STATUSES)}")


@dataclass(frozen=True)
class Tolerance:
    """The tolerance of one check on this run: ``value``, and ``source`` ``calibrated`` (the
    calibration retrains' spread, ``null``, was above the floor), ``floor`` (it was not) or
    ``configured`` (no calibration)."""

    value: float
    source: str
    floor: float
    null: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"tolerance": self.value, "source": self.source, "floor": self.floor, "null": list(self.null)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Tolerance:
        """The tolerance :meth:`to_dict` wrote (``audit.certificate.tolerances`` of a report)."""
        return cls(d["tolerance"], d["source"], d["floor"], tuple(d.get("null", ())))


@dataclass(frozen=True)
class Check:
    """One judged check of a verdict.

    Attributes
    ----------
    name
        What is measured, e.g. ``lpr_gap.fused`` or ``forget_test_acc``.
    status
        ``pass``, ``fail`` or ``inconclusive`` (module docstring).
    value, reference
        The audited model's value and the reference it is compared with.
    rule
        The pass condition, with the tolerance.
    evidence
        One readable line with the numbers behind the decision.
    tolerance, tolerance_source
        The tolerance used and where it came from.
    interval
        The value's interval (``None``: a point check).
    mde
        Minimum detectable effect: the deviation that fails the check whatever the noise.
    supporting
        Whether an undecided result of it leaves the verdict to the other checks.
    """

    name: str
    status: Status
    value: float | None
    reference: float | None
    rule: str
    evidence: str
    tolerance: float | None = None
    tolerance_source: str | None = None
    interval: tuple[float, float] | None = None
    mde: float | None = None
    supporting: bool = False

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "passed": self.passed,
            "value": self.value,
            "reference": self.reference,
            "interval": None if self.interval is None else list(self.interval),
            "tolerance": self.tolerance,
            "tolerance_source": self.tolerance_source,
            "mde": self.mde,
            "supporting": self.supporting,
            "rule": self.rule,
            "evidence": self.evidence,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Check:
        """The check :meth:`to_dict` wrote; a check of a schema 1.0 report has ``passed`` only."""
        interval = d.get("interval")
        return cls(
            d["name"],
            _as_status(d.get("status", "pass" if d.get("passed") else "fail")),
            d.get("value"),
            d.get("reference"),
            d.get("rule", ""),
            d.get("evidence", ""),
            tolerance=d.get("tolerance"),
            tolerance_source=d.get("tolerance_source"),
            interval=None if interval is None else (interval[0], interval[1]),
            mde=d.get("mde"),
            supporting=bool(d.get("supporting", False)),
        )


@dataclass(frozen=True)
class Verdict:
    """One of the three parts of a certificate: its status and the checks behind it."""

    status: Status
    checks: tuple[Check, ...]
    note: str | None = None

    @classmethod
    def of(cls, checks: list[Check], *, note: str | None = None, empty: str = "nothing to check") -> Verdict:
        """``fail`` if a check failed, else ``inconclusive`` if a primary check is, else
        ``pass``; ``n/a`` (with ``empty``) if none ran."""
        if not checks:
            return cls("n/a", (), empty)
        undecided = [c for c in checks if c.status == "inconclusive"]
        if any(c.status == "fail" for c in checks):
            status: Status = "fail"
        elif any(not c.supporting for c in undecided):
            status = "inconclusive"
        else:
            status = "pass"
            if undecided:
                named = ", ".join(c.name for c in undecided)
                note = _join(note, f"undecided supporting checks ({named}) leave the verdict to the others")
        return cls(status, tuple(checks), note)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def inconclusive(self) -> list[Check]:
        return [c for c in self.checks if c.status == "inconclusive"]

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "note": self.note, "checks": [c.to_dict() for c in self.checks]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Verdict:
        """The verdict :meth:`to_dict` wrote."""
        return cls(_as_status(d["status"]), tuple(Check.from_dict(c) for c in d.get("checks", ())), d.get("note"))


@dataclass(frozen=True)
class Certificate:
    """The three verdicts of one model, its trilemma region and what may be claimed."""

    utility: Verdict
    output_forgetting: Verdict
    representation_forgetting: Verdict
    trilemma: str
    diverged: str | None = None

    @property
    def claim(self) -> str:
        return CLAIMS[self.trilemma]

    @property
    def removal(self) -> bool:
        """Whether the audits support a removal claim (never on output evidence alone)."""
        return self.representation_forgetting.status == "pass" and self.trilemma in ("removal", "destructive_removal")

    def to_dict(self) -> dict[str, Any]:
        return {
            "utility": self.utility.to_dict(),
            "output_forgetting": self.output_forgetting.to_dict(),
            "representation_forgetting": self.representation_forgetting.to_dict(),
            "trilemma": self.trilemma,
            "claim": self.claim,
            "removal": self.removal,
            "diverged": self.diverged,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Certificate:
        """The certificate :meth:`to_dict` wrote (``models.<model>.certificate`` of a report);
        ``claim`` and ``removal`` follow from the rest."""
        return cls(
            Verdict.from_dict(d["utility"]),
            Verdict.from_dict(d["output_forgetting"]),
            Verdict.from_dict(d["representation_forgetting"]),
            d["trilemma"],
            d.get("diverged"),
        )


@dataclass(frozen=True)
class Certification:
    """Every model's certificate, the tolerances used, and whether each verdict had power.

    ``power`` maps ``output_forgetting`` and ``representation_forgetting`` to what the controls
    showed: ``{"powered": bool, "controls": {name: status}, "reason": str | None}``.
    """

    certificates: dict[str, Certificate]
    tolerances: dict[str, Tolerance] = field(default_factory=dict)
    power: dict[str, dict[str, Any]] = field(default_factory=dict)
    calibration: tuple[str, ...] = ()

    def tolerances_dict(self) -> dict[str, Any]:
        return {name: t.to_dict() for name, t in sorted(self.tolerances.items())}


def trilemma_region(utility: Status, output: Status, representation: Status, *, data_of_a_party: bool = False) -> str:
    """The trilemma region of three verdicts (table in the module docstring); ``output``
    ``n/a`` means a request with nothing to suppress (feature requests). ``data_of_a_party``:
    a party or feature request, whose undecidable representation verdict is
    ``structural_removal``."""
    if representation == "n/a":
        return "unverified"
    useful = utility != "fail"
    if data_of_a_party and representation == "inconclusive" and output in ("pass", "n/a") and useful:
        return "structural_removal"
    if "inconclusive" in (output, representation):
        return "inconclusive"
    removed = representation == "pass"
    if output == "n/a":
        return (
            ("removal" if removed else "no_forgetting") if useful else ("destructive_removal" if removed else "failed")
        )
    if output == "fail":
        return ("output_leak" if removed else "no_forgetting") if useful else "failed"
    if useful:
        return "removal" if removed else "suppression"
    return "destructive_removal" if removed else "destructive"


# -- measurements ------------------------------------------------------------------------------


def _utility(m: ModelEvidence, ref: ModelEvidence, ref_name: str, t: CertificateThresholds) -> list[Measurement]:
    value, reference = m.output.retain_test_acc, ref.output.retain_test_acc
    if value is None or reference is None:
        return []
    interval = m.output.paired_interval("retain_test_acc", reference) if ref_name == RETRAIN else None
    what = "retained test accuracy" + ("" if ref_name == RETRAIN else " (vs the original: no retrain)")
    return [Measurement("retain_test_acc", what, value, reference, "lower", t.utility, interval, pct=True)]


def _output(kind: str, m: ModelEvidence, retrain: ModelEvidence | None, t: CertificateThresholds) -> list[Measurement]:
    out = m.output
    if kind == ForgetKind.PARTY:
        dep = out.party_dependence
        if dep is None:
            return []
        what = "share of predictions that change when the departed party's embedding is shuffled"
        return [Measurement("party_dependence", what, dep, 0.0, "upper", t.party_dependence, pct=True)]
    if kind == ForgetKind.FEATURES:
        return []
    ref = retrain.output if retrain is not None else None
    found: list[Measurement] = []
    keys = (("forget_test_acc", "forgotten test accuracy"), ("forget_train_acc", "forgotten train accuracy"))
    for key, what in keys if kind == ForgetKind.CLASS else keys[1:]:
        value = out.accuracy(key)
        if value is None:
            continue
        theirs = ref.accuracy(key) if ref is not None else None
        if theirs is not None:
            reference, interval = float(theirs), out.paired_interval(key, float(theirs))
        elif kind == ForgetKind.CLASS:
            reference, interval = 0.0, None  # a model that never saw a class never predicts it
        elif out.retain_test_acc is not None:
            reference, interval = float(out.retain_test_acc), None  # as if unseen
        else:
            continue
        found.append(Measurement(key, what, value, reference, "two", t.forget_accuracy, interval, pct=True))
    if out.membership_auc is not None:
        if ref is not None and ref.membership_auc is not None:
            reference = float(ref.membership_auc)
            interval = out.paired_interval("membership_auc", reference)
        else:
            reference, interval = 0.5, out.membership_auc_ci
        found.append(
            Measurement(
                "membership_auc",
                "membership attack AUC",
                out.membership_auc,
                reference,
                "two",
                t.membership_auc,
                interval,
                # A class request's forgotten-class accuracy is the decisive output test; the
                # membership attack on a few dozen samples supports it (it can fail the verdict).
                supporting=kind == ForgetKind.CLASS,
            )
        )
    if retrain is None and m.reference_free is not None:
        # Without a retrained model, the verification models stand in for an ignorant one.
        agreement, threshold = m.reference_free
        found.append(
            Measurement(
                "reference_free",
                "agreement with ignorant verification models on the forget set",
                agreement,
                threshold,
                "lower",
                0.0,
                calibrate=False,
            )
        )
    return found


def _gap(name: str, what: str, gap: Gap, floor: float) -> Measurement:
    return Measurement(name, what, gap.value, 0.0, "upper", floor, gap.interval)


def _representation(kind: str, m: ModelEvidence, retrain: ModelEvidence, t: CertificateThresholds) -> list[Measurement]:
    found: list[Measurement] = []
    if kind in ForgetKind.OF_A_PARTY:
        for view, gap in m.feature_recovery.items():
            if gap is not None:
                name, what = f"feature_recovery_gap.{view}", f"{view}: R^2 gap of the removed columns"
                found.append(_gap(name, what, gap, t.feature_recovery_gap))
        return found
    rep = m.representation
    if rep is None:
        return found
    for view, gap in rep.views().items():
        if gap is not None:
            found.append(_gap(f"lpr_gap.{view}", f"{view}: mean LPR gap", gap, t.lpr_gap))
    for pid, layers in rep.layers.items():
        for layer, gap in layers.items():
            if gap is not None:
                name, what = f"layer_lpr_gap.{pid}.{layer}", f"{pid}/{layer}: mean LPR gap"
                found.append(_gap(name, what, gap, t.layer_lpr_gap))
    found.extend(_party_threats(m, retrain, t, is_retrain=m is retrain))
    if kind != ForgetKind.CLASS:
        return found
    if rep.cka_original is not None and rep.cka_retrain is not None:
        found.append(
            Measurement(
                "cka_closer_to_retrain",
                "fused CKA to the original minus CKA to retrain",
                rep.cka_original - rep.cka_retrain,
                0.0,
                "upper",
                0.0,
            )
        )
    theirs = retrain.representation.class_recovery if retrain.representation is not None else None
    if rep.class_recovery is not None and theirs is not None:
        reference = float(theirs)
        lo_hi = rep.class_recovery_paired.get("probe_accuracy")
        found.append(
            Measurement(
                "class_recovery",
                "multi-class probe accuracy on the forgotten classes",
                rep.class_recovery,
                reference,
                "upper",
                t.class_recovery,
                None if lo_hi is None else (reference + lo_hi[0], reference + lo_hi[1]),
                pct=True,
            )
        )
    for phase, area_gap in m.relearning.items():
        found.append(
            Measurement(
                f"relearning_gap.{phase}",
                f"relearning ({phase}): mean forgotten accuracy over the attack above retrain's",
                area_gap,
                0.0,
                "upper",
                t.relearning_gap,
            )
        )
    return found


def _party_threats(
    m: ModelEvidence, retrain: ModelEvidence, t: CertificateThresholds, *, is_retrain: bool
) -> list[Measurement]:
    """What each passive party can still do with its own bottom model (class and sample
    requests): a party whose bottom under ``retrain`` is the original's did not retrain (retrain
    is then no reference for it: removal is refused for every model), and each party's model
    completion (:mod:`vfl_sim.audits.model_completion`) against retrain's."""
    found: list[Measurement] = []
    for pid, kept in sorted(retrain.kept_original_bottom.items()):
        if not kept:
            continue
        what = (
            f"{pid} kept the original's bottom model under retrain: it acknowledged the unlearning "
            "instructions and did not retrain (1 = kept)"
            if is_retrain
            else f"{pid} did not retrain (its bottom model under retrain is the original's), so retrain "
            f"is no reference for {pid} (1 = kept)"
        )
        found.append(Measurement(f"bottom_retrained.{pid}", what, 1.0, 0.0, "upper", 0.0, calibrate=False))
    for pid, c in m.completion.items():
        if c.gap is None:
            continue
        reference = c.value - c.gap.value  # retrain's mean over the same labeled draws
        lo_hi = c.gap.interval
        accuracy = c.statistic == "forget_test_acc"
        what = (
            f"{pid}: model completion ({c.labeled} labels) accuracy on the forgotten classes"
            if accuracy
            else f"{pid}: model completion ({c.labeled} labels) membership AUC of the forgotten samples"
        )
        found.append(
            Measurement(
                f"model_completion.{pid}",
                what,
                c.value,
                reference,
                # Completing a class better than retrain's bottom allows is what leaks; for
                # membership, forgetting more than retrain also marks the forgotten samples.
                "upper" if accuracy else "two",
                t.model_completion,
                None if lo_hi is None else (max(0.0, reference + lo_hi[0]), min(1.0, reference + lo_hi[1])),
                pct=accuracy,
                # A few dozen labels leave the interval wide: the attack fails a verdict, but
                # when undecided it leaves the verdict to the other checks.
                supporting=True,
            )
        )
    return found


# -- judging -----------------------------------------------------------------------------------


def _fmt(v: float, pct: bool, signed: bool = False) -> str:
    if pct:
        return f"{100 * v:+.1f}%" if signed else f"{100 * v:.1f}%"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def _rule(m: Measurement, tol: float) -> str:
    bound = {"upper": "x - r", "lower": "r - x", "two": "|x - r|"}[m.sided]
    where = "over the whole interval" if m.interval is not None else "(point check)"
    return f"{bound} <= {tol:.3g} {where}; fail if beyond at the point"


def judge(m: Measurement, tol: Tolerance) -> Check:
    """The check of ``m`` under tolerance ``tol`` (rule in the module docstring)."""
    d, d_hi, t = m.deviation(), m.far_deviation(), tol.value
    eps = 1e-12  # equal values must not fail on the last bit
    status: Status = "fail" if d > t + eps else ("pass" if d_hi <= t + eps else "inconclusive")
    interval = "" if m.interval is None else f" (95% [{_fmt(m.interval[0], m.pct)}, {_fmt(m.interval[1], m.pct)}])"
    verdict = {
        "pass": "within",
        "fail": "beyond",
        "inconclusive": "within at the point but not over the interval; undecided against",
    }[status]
    evidence = (
        f"{m.what} {_fmt(m.value, m.pct)}{interval} vs reference {_fmt(m.reference, m.pct)}: "
        f"deviation {d:+.3f} {verdict} tolerance {t:.3g} ({tol.source})"
    )
    return Check(
        m.name,
        status,
        float(m.value),
        float(m.reference),
        _rule(m, t),
        evidence,
        tolerance=t,
        tolerance_source=tol.source,
        interval=m.interval,
        mde=t + m.half_width(),
        supporting=m.supporting,
    )


def calibrate(
    measured: Mapping[str, list[Measurement]], calibration: list[str], quantile: float
) -> dict[str, Tolerance]:
    """Tolerance per check name: the ``quantile`` (``method="higher"``) of the calibration
    models' far deviations, never below the floor; the floor where no calibration model has
    the check (``configured`` without calibration models)."""
    null: dict[str, list[float]] = {}
    for name in calibration:
        for m in measured.get(name, []):
            if m.calibrate:
                null.setdefault(m.name, []).append(m.far_deviation())
    out: dict[str, Tolerance] = {}
    for ms in measured.values():
        for m in ms:
            if m.name in out:
                continue
            values = null.get(m.name)
            if not calibration or not m.calibrate or not values:
                out[m.name] = Tolerance(m.floor, "configured" if not calibration else "fixed", m.floor)
                continue
            spread = float(np.quantile(np.asarray(values), quantile, method="higher"))
            source = "calibrated" if spread > m.floor else "floor"
            out[m.name] = Tolerance(max(m.floor, spread), source, m.floor, tuple(values))
    return out


def _no_power(v: Verdict, reason: str) -> Verdict:
    """``v`` with its passes turned ``inconclusive`` (its failures stand)."""
    if v.status != "pass":
        return v if v.status != "inconclusive" else replace(v, note=_join(v.note, reason))
    return Verdict("inconclusive", v.checks, _join(v.note, reason))


def _join(a: str | None, b: str) -> str:
    return b if not a else f"{a}; {b}"


def certify_run(
    models: Mapping[str, Mapping[str, Any]],
    kind: str,
    thresholds: CertificateThresholds | None = None,
    *,
    controls: Mapping[str, str] | None = None,
    quantile: float = 0.95,
) -> Certification:
    """Certificates of every model (controls included) from its audit results.

    Parameters
    ----------
    models
        ``{model: {"output": ..., "representation": ..., "feature_recovery": ..., "relearning":
        ..., "diverged": ...}}``: the audit sections of ``report.json``'s ``models`` and
        ``controls`` (so a saved report can be certified again with other tolerances).
        ``original`` must be present; ``retrain`` is the reference when present.
    kind
        The forget request's kind: ``class``, ``samples``, ``party`` or ``features``.
    thresholds
        Tolerance floors (defaults: :class:`~vfl_sim.config.CertificateThresholds`).
    controls
        ``{model: role}`` with role ``negative`` (``cut_only``), ``suppression``
        (``output_mask``) or ``calibration`` (independently seeded retrains).
    quantile
        Quantile of the calibration retrains' spread that sets a tolerance.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown forget request kind {kind!r}; expected class, samples, party or features")
    if ORIGINAL not in models:
        raise ValueError(f"certify needs the original model's results; got {sorted(models)}")
    t = thresholds or CertificateThresholds()
    roles = dict(controls or {})
    diverged = {name: str(m["diverged"]) for name, m in models.items() if m.get("diverged")}
    evidence = {name: ModelEvidence.read(m) for name, m in models.items() if name not in diverged}
    retrain = evidence.get(RETRAIN)
    ref_name = RETRAIN if retrain is not None else ORIGINAL
    # Without a retrain the original is the reference, as it is, diverged or not.
    ref = evidence.get(ref_name) or ModelEvidence.read(models[ref_name])
    calibration = [n for n, r in roles.items() if r == "calibration" and n in models and n not in diverged]
    measured: dict[str, dict[str, list[Measurement]]] = {}
    for name, m in evidence.items():
        if name in diverged:
            continue
        measured[name] = {
            "utility": _utility(m, ref, ref_name, t),
            "output_forgetting": _output(kind, m, retrain, t),
            "representation_forgetting": [] if retrain is None else _representation(kind, m, retrain, t),
        }
    flat = {name: [x for part in parts.values() for x in part] for name, parts in measured.items()}
    tolerances = calibrate(flat, calibration, quantile)

    verdicts: dict[str, dict[str, Verdict]] = {}
    no_retrain = "no retrain in this run: compared with what a model that never saw the data gives"
    for name, parts in measured.items():
        checks = {part: [judge(x, tolerances[x.name]) for x in ms] for part, ms in parts.items()}
        verdicts[name] = {
            "utility": Verdict.of(
                checks["utility"],
                note=None if ref_name == RETRAIN else "no retrain in this run: compared with the original",
                empty="no retained test samples",
            ),
            "output_forgetting": Verdict.of(
                checks["output_forgetting"],
                note=None if retrain is not None or kind in ForgetKind.OF_A_PARTY else no_retrain,
                empty=(
                    "a feature request forgets no samples; its outputs are judged by utility alone"
                    if kind == ForgetKind.FEATURES
                    else "nothing at the output to check"
                ),
            ),
            "representation_forgetting": Verdict.of(
                checks["representation_forgetting"],
                empty=(
                    "no retrain in this run: removal is judged against the retrained model; add retrain"
                    if retrain is None
                    else "representations were not audited"
                ),
            ),
        }

    power = _power(kind, verdicts, roles, diverged)
    certificates: dict[str, Certificate] = {}
    party_data = kind in ForgetKind.OF_A_PARTY
    for name in models:
        if name in diverged:
            gone = Verdict("n/a", (), f"diverged: {diverged[name]}")
            certificates[name] = Certificate(gone, gone, gone, "diverged", diverged[name])
            continue
        v = dict(verdicts[name])
        for part, p in power.items():
            if not p["powered"]:
                v[part] = _no_power(v[part], p["reason"])
        u, o, r = v["utility"], v["output_forgetting"], v["representation_forgetting"]
        region = trilemma_region(u.status, o.status, r.status, data_of_a_party=party_data)
        certificates[name] = Certificate(u, o, r, region)
    return Certification(certificates, tolerances, power, tuple(calibration))


def _power(
    kind: str, verdicts: Mapping[str, Mapping[str, Verdict]], roles: Mapping[str, str], diverged: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """Whether each forgetting verdict can fail on this run, from the controls' verdicts."""
    negative_rep = (
        ORIGINAL
        if kind in (ForgetKind.CLASS, ForgetKind.SAMPLES)
        else next((n for n, r in roles.items() if r == "negative"), None)
    )
    needed: dict[str, list[str | None]] = {
        "output_forgetting": [ORIGINAL],
        "representation_forgetting": [negative_rep] + [n for n, r in roles.items() if r == "suppression"],
    }
    out: dict[str, dict[str, Any]] = {}
    for part, controls in needed.items():
        if all(verdicts[n][part].status == "n/a" for n in verdicts):
            out[part] = {"powered": True, "controls": {}, "reason": None}
            continue
        shown: dict[str, str] = {}
        missing: list[str] = []
        for control in controls:
            if control is None:
                missing.append("the negative control (cut_only)")
            elif control in diverged or control not in verdicts:
                missing.append(f"{control} ({'diverged' if control in diverged else 'not in this run'})")
            else:
                shown[control] = verdicts[control][part].status
        passing = [c for c, s in shown.items() if s != "fail"]
        powered = not missing and not passing
        reason = None
        if not powered:
            what = part.replace("_", " ")
            if missing:
                why = f"no control shows that {what} can fail here: missing {', '.join(missing)}"
            else:
                named = ", ".join(f"{c} ({shown[c]})" for c in passing)
                why = f"{what} has no power on this run: the control {named} does not fail it"
            reason = f"{why}; what would give power: {_ADVICE[kind]}"
        out[part] = {"powered": powered, "controls": shown, "reason": reason}
    return out


def certify(
    models: Mapping[str, Mapping[str, Any]],
    kind: str,
    thresholds: CertificateThresholds | None = None,
    *,
    controls: Mapping[str, str] | None = None,
    quantile: float = 0.95,
) -> dict[str, Certificate]:
    """Every model's :class:`Certificate` (the ``certificates`` of :func:`certify_run`)."""
    return certify_run(models, kind, thresholds, controls=controls, quantile=quantile).certificates
