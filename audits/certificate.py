"""The forgetting certificate: three independent verdicts per model, and its place in the trilemma.

Removing information from a model and suppressing it at the output are different claims
(Cooper et al., "Machine Unlearning Doesn't Do What You Think", arXiv 2412.06966): a model can
answer as if it never saw a class while its representations still hold it (the "forgetting
gap" of Mirage, arXiv 2605.20282; the feature-classifier misalignment of "An Illusion of
Unlearning?", arXiv 2604.08271). So the certificate never adds them up into one score. Each
model gets three verdicts, each ``pass``, ``fail`` or ``n/a`` with the checks behind it:

**utility**: retained test accuracy ``acc_r >= acc_r(retrain) - utility`` (one-sided: doing
better than retrain is not a fault). Without a retrained model the original is the reference.

**output forgetting** (suppression), each ``|x - x(retrain)| <= tolerance`` (two-sided:
forgetting *more* than retrain also marks the forgotten samples, the "Streisand effect"):

- class requests: forgotten test accuracy and forgotten train accuracy (``forget_accuracy``);
- sample requests: forgotten train accuracy (``forget_accuracy``);
- both: the loss-threshold membership AUC of forgotten training samples against unseen test
  samples (``membership_auc``); also passed when retrain's AUC lies inside the model's bootstrap
  interval (a few dozen unseen samples move the AUC by several points).

Without retrain the references are what a model that never saw the data gives by
construction: accuracy 0 on a forgotten class, the model's own test accuracy on forgotten
samples, and AUC 0.5; and the reference-free audit (:mod:`audits.reference_free`, arXiv
2606.16110) must pass: the model's predictions on the forget set agree with verification models
trained on retained data alone as much as an ignorant model's would.

A party request forgets no samples; its output check is that the model no longer reads the
party: at most ``party_dependence`` of the predictions may change when the departed party's
embedding is shuffled across samples. A feature request has no output check (``n/a``).

**representation forgetting** (removal), against ``retrain`` only (``n/a`` without it, since
absolute probe scores are not informative: a retrained model can still separate a class it
never saw):

- mean LPR gap over the probe splits, of the fused embedding and of every party's own
  embedding: ``mean_r(LPR_r(model) - LPR_r(retrain)) <= lpr_gap``;
- at every named layer of every party's bottom model: ``LPR gap <= layer_lpr_gap``;
- class requests: ``CKA(model, retrain) >= CKA(model, original)`` (centered linear CKA of the
  fused embedding: structurally closer to the model that never saw the class), and the
  multi-class probe's accuracy on forgotten-class test samples
  ``<= probe_accuracy(retrain) + class_recovery``; and, when the relearning attack ran, for each
  phase the mean forgotten accuracy over the attack at most ``relearning_gap`` above retrain's
  (information an attacker gets back in a few steps is still in the parameters: Golatkar et
  al., CVPR 2020);
- party and feature requests: the gap of the removed columns' linear recovery (R^2), fused and
  per party, ``<= feature_recovery_gap`` (:mod:`audits.feature_recovery`).

A verdict passes when all of its checks pass; a check whose value is missing is not run, and
a verdict with no check is ``n/a`` with the reason. The tolerances are
:class:`~vfl_sim.config.CertificateThresholds` (``audit.certificate`` in a config).

**Trilemma** (Mirage: no published method reaches high utility, output forgetting and
representation forgetting at once): each model is placed by its three verdicts:

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
========================  =========  ======  ==============  ======================================

For feature requests (no output check) the regions are ``removal``, ``no_forgetting``,
``destructive_removal`` and ``failed``, by utility and representation alone; a party request's
output check is its party dependence (the untouched original, which still reads the party, is
an ``output_leak`` when its remaining embeddings hold no more of the party's columns than
retrain's).
Only ``removal`` and ``destructive_removal`` claim removal, and only with a representation pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from vfl_sim.config import CertificateThresholds

__all__ = ["Certificate", "CertificateThresholds", "Check", "Verdict", "certify", "trilemma_region"]

Status = Literal["pass", "fail", "n/a"]
ORIGINAL, RETRAIN = "original", "retrain"

CLAIMS = {
    "removal": "keeps utility and forgets at the output and in its representations",
    "suppression": "forgets at the output only: its representations keep what the retrained model's do not",
    "output_leak": "its representations match retrain's, but its outputs still reveal the forgotten data",
    "no_forgetting": "keeps utility but fails both output and representation forgetting",
    "destructive_removal": "forgets, at the cost of utility",
    "destructive": "suppresses the forgotten data at the output at the cost of utility; its representations keep it",
    "failed": "loses utility and does not forget",
    "unverified": "representation forgetting was not audited: no removal claim",
}


@dataclass(frozen=True)
class Check:
    """One test of a verdict.

    Attributes
    ----------
    name
        What is measured, e.g. ``lpr_gap.fused`` or ``forget_test_acc``.
    passed
        Whether ``value`` meets ``rule``.
    value, reference
        The audited model's value and the reference it is compared with (``None``: none).
    rule
        The pass condition with its threshold, e.g. ``<= +0.050``.
    evidence
        One readable line with the numbers behind the decision.
    """

    name: str
    passed: bool
    value: float | None
    reference: float | None
    rule: str
    evidence: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "value": self.value,
            "reference": self.reference,
            "rule": self.rule,
            "evidence": self.evidence,
        }


@dataclass(frozen=True)
class Verdict:
    """One of the three parts of a certificate: its status and the checks behind it."""

    status: Status
    checks: tuple[Check, ...]
    note: str | None = None

    @classmethod
    def of(cls, checks: list[Check], *, note: str | None = None, empty: str = "nothing to check") -> Verdict:
        """``pass`` if every check passed, ``fail`` if one did, ``n/a`` (with ``empty``) if none ran."""
        if not checks:
            return cls("n/a", (), empty)
        return cls("pass" if all(c.passed for c in checks) else "fail", tuple(checks), note)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "note": self.note, "checks": [c.to_dict() for c in self.checks]}


@dataclass(frozen=True)
class Certificate:
    """The three verdicts of one model, its trilemma region and what may be claimed."""

    utility: Verdict
    output_forgetting: Verdict
    representation_forgetting: Verdict
    trilemma: str

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
        }


def trilemma_region(utility: Status, output: Status, representation: Status) -> str:
    """The trilemma region of three verdicts (table in the module docstring); ``output``
    ``n/a`` means a request with nothing to suppress (party and feature requests)."""
    if representation == "n/a":
        return "unverified"
    useful, removed = utility != "fail", representation == "pass"
    if output == "n/a":
        return (
            ("removal" if removed else "no_forgetting") if useful else ("destructive_removal" if removed else "failed")
        )
    if output == "fail":
        return ("output_leak" if removed else "no_forgetting") if useful else "failed"
    if useful:
        return "removal" if removed else "suppression"
    return "destructive_removal" if removed else "destructive"


# -- checks ------------------------------------------------------------------------------------


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _at_most(name: str, value: Any, reference: float, tol: float, what: str, *, pct: bool = False) -> Check | None:
    """``value <= reference + tol`` (``None`` when there is no value)."""
    if value is None:
        return None
    fmt = _pct if pct else (lambda v: f"{v:+.3f}")
    passed = bool(value <= reference + tol)
    rel = "<=" if passed else ">"
    return Check(
        name,
        passed,
        float(value),
        float(reference),
        f"<= {fmt(reference)} + {tol:g}",
        f"{what} {fmt(value)} {rel} {fmt(reference)} + {tol:g}",
    )


def _near(name: str, value: Any, reference: float, tol: float, what: str, *, pct: bool = True) -> Check | None:
    """``|value - reference| <= tol`` (``None`` when there is no value)."""
    if value is None:
        return None
    fmt = _pct if pct else (lambda v: f"{v:.3f}")
    passed = bool(abs(value - reference) <= tol)
    return Check(
        name,
        passed,
        float(value),
        float(reference),
        f"|x - {fmt(reference)}| <= {tol:g}",
        f"{what} {fmt(value)} vs reference {fmt(reference)}: off by {abs(value - reference):.3f} "
        f"({'within' if passed else 'beyond'} {tol:g})",
    )


def _membership(mia: Mapping[str, Any], reference: float, tol: float) -> Check:
    """``|AUC - reference| <= tol``, or ``reference`` inside the AUC's bootstrap interval: with a
    few dozen unseen samples the AUC alone moves by several points, and a difference the
    interval cannot tell from retrain's is no evidence of remembered membership."""
    auc, (low, high) = float(mia["auc"]), mia["auc_ci"]
    near, covered = abs(auc - reference) <= tol, low <= reference <= high
    passed = bool(near or covered)
    why = "within tolerance" if near else ("inside the 95% interval" if covered else "beyond both")
    return Check(
        "membership_auc",
        passed,
        auc,
        float(reference),
        f"|x - {reference:.3f}| <= {tol:g} or reference in the interval",
        f"membership attack AUC {auc:.3f} (95% [{low:.3f}, {high:.3f}]) vs reference {reference:.3f}: {why}",
    )


def _utility(m: Mapping[str, Any], ref: Mapping[str, Any], ref_name: str, t: CertificateThresholds) -> Verdict:
    value, reference = m["output"].get("retain_test_acc"), ref["output"].get("retain_test_acc")
    if value is None or reference is None:
        return Verdict.of([], empty="no retained test samples")
    passed = bool(value >= reference - t.utility)
    check = Check(
        "retain_test_acc",
        passed,
        float(value),
        float(reference),
        f">= {_pct(reference)} - {t.utility:g}",
        f"retained test accuracy {_pct(value)} {'>=' if passed else '<'} "
        f"{ref_name}'s {_pct(reference)} - {t.utility:g}",
    )
    return Verdict.of([check], note=None if ref_name == RETRAIN else "no retrain in this run: compared with original")


def _output(kind: str, m: Mapping[str, Any], retrain: Mapping[str, Any] | None, t: CertificateThresholds) -> Verdict:
    out = m["output"]
    if kind == "party":
        dep = out.get("party_dependence")
        if dep is None:
            return Verdict.of([], empty="the outputs' dependence on the departed party was not measured")
        passed = bool(dep <= t.party_dependence)
        check = Check(
            "party_dependence",
            passed,
            float(dep),
            0.0,
            f"<= {t.party_dependence:g}",
            f"{_pct(dep)} of predictions change when the departed party's embedding is shuffled "
            f"({'<=' if passed else '>'} {t.party_dependence:g})",
        )
        return Verdict.of([check])
    if kind == "features":
        return Verdict.of([], empty="a feature request forgets no samples; its outputs are judged by utility alone")
    ref = retrain["output"] if retrain is not None else None
    checks: list[Check | None] = []
    if kind == "class":
        for key, what in (
            ("forget_test_acc", "forgotten test accuracy"),
            ("forget_train_acc", "forgotten train accuracy"),
        ):
            # A model that never saw a class never predicts it: 0 is retrain's value by construction.
            reference = ref[key] if ref is not None and ref.get(key) is not None else 0.0
            checks.append(_near(key, out.get(key), reference, t.forget_accuracy, what))
    else:
        fallback = out.get("retain_test_acc")
        reference = ref["forget_train_acc"] if ref is not None else fallback
        if reference is not None:
            checks.append(
                _near(
                    "forget_train_acc",
                    out.get("forget_train_acc"),
                    reference,
                    t.forget_accuracy,
                    "forgotten train accuracy",
                )
            )
    mia = out.get("membership")
    if mia is not None:
        ref_mia = ref.get("membership") if ref is not None else None
        reference = ref_mia["auc"] if ref_mia is not None else 0.5
        checks.append(_membership(mia, reference, t.membership_auc))
    rf = m.get("reference_free")
    if retrain is None and rf is not None:
        # Without a retrained model, the verification models stand in for an ignorant one.
        checks.append(
            Check(
                "reference_free",
                bool(rf["passed"]),
                float(rf["agreement"]),
                float(rf["threshold"]),
                f">= {rf['threshold']:.3f}",
                f"agreement with ignorant verification models {rf['agreement']:.3f} "
                f"{'>=' if rf['passed'] else '<'} threshold {rf['threshold']:.3f} "
                f"(their own level {rf['reference_agreement']:.3f})",
            )
        )
    note = (
        None
        if retrain is not None
        else "no retrain in this run: compared with what a model that never saw the data gives"
    )
    return Verdict.of([c for c in checks if c is not None], note=note, empty="no forgotten samples to audit")


def _representation(
    kind: str, m: Mapping[str, Any], retrain: Mapping[str, Any] | None, t: CertificateThresholds
) -> Verdict:
    if retrain is None:
        return Verdict.of(
            [], empty="no retrain in this run: removal is judged against the retrained model; add retrain"
        )
    checks: list[Check | None] = []
    if kind in ("party", "features"):
        rec = m.get("feature_recovery")
        if rec is None:
            return Verdict.of([], empty="feature recovery was not audited")
        views = {"fused": rec.get("fused"), **{pid: v for pid, v in rec.get("parties", {}).items()}}
        for view, r in views.items():
            if r is None:
                continue
            gap = r.get("recovery_gap_mean", r.get("recovery_gap"))
            checks.append(
                _at_most(
                    f"feature_recovery_gap.{view}",
                    gap,
                    0.0,
                    t.feature_recovery_gap,
                    f"{view}: R^2 gap of the removed columns",
                )
            )
        return Verdict.of([c for c in checks if c is not None], empty="feature recovery was not audited")

    rep = m.get("representation")
    if rep is None:
        return Verdict.of([], empty="representations were not audited")
    views = {"fused": rep["fused"], **rep.get("parties", {})}
    for view, r in views.items():
        gap = r.get("lpr_gap_mean", r.get("lpr_gap"))
        interval = r.get("lpr_gap_interval")
        c = _at_most(f"lpr_gap.{view}", gap, 0.0, t.lpr_gap, f"{view}: mean LPR gap")
        if c is not None and interval is not None:
            c = Check(
                c.name,
                c.passed,
                c.value,
                c.reference,
                c.rule,
                f"{c.evidence} (95% [{interval[0]:+.3f}, {interval[1]:+.3f}])",
            )
        checks.append(c)
    for pid, layers in rep.get("layers", {}).items():
        for layer, r in layers.items():
            checks.append(
                _at_most(
                    f"layer_lpr_gap.{pid}.{layer}", r.get("lpr_gap"), 0.0, t.layer_lpr_gap, f"{pid}/{layer}: LPR gap"
                )
            )
    if kind == "class":
        fused = rep["fused"]
        to_orig, to_retrain = fused.get("cka_original"), fused.get("cka_retrain")
        if to_orig is not None and to_retrain is not None:
            closer = bool(to_retrain >= to_orig)
            checks.append(
                Check(
                    "cka_closer_to_retrain",
                    closer,
                    float(to_retrain),
                    float(to_orig),
                    "CKA(retrain) >= CKA(original)",
                    f"fused CKA to retrain {to_retrain:.3f} {'>=' if closer else '<'} CKA to original {to_orig:.3f}",
                )
            )
        for phase, r in (m.get("relearning") or {}).items():
            if phase == "attack" or r.get("area_gap") is None:
                continue
            checks.append(
                _at_most(
                    f"relearning_gap.{phase}",
                    r["area_gap"],
                    0.0,
                    t.relearning_gap,
                    f"relearning ({phase}): mean forgotten accuracy over the attack above retrain's",
                )
            )
        mine, theirs = rep.get("class_recovery"), retrain.get("representation", {}).get("class_recovery")
        if mine is not None and theirs is not None and theirs.get("probe_accuracy") is not None:
            checks.append(
                _at_most(
                    "class_recovery",
                    mine.get("probe_accuracy"),
                    theirs["probe_accuracy"],
                    t.class_recovery,
                    "multi-class probe accuracy on the forgotten classes",
                    pct=True,
                )
            )
    return Verdict.of([c for c in checks if c is not None], empty="representations were not audited")


def certify(
    models: Mapping[str, Mapping[str, Any]], kind: str, thresholds: CertificateThresholds | None = None
) -> dict[str, Certificate]:
    """Certificates of every model from its audit results.

    Parameters
    ----------
    models
        ``{model: {"output": ..., "representation": ..., "feature_recovery": ...}}``: the audit
        sections of ``report.json``'s ``models`` (so a saved report can be certified again with
        other thresholds). ``original`` must be present; ``retrain`` is the reference when present.
    kind
        The forget request's kind: ``class``, ``samples``, ``party`` or ``features``.
    thresholds
        Tolerances (defaults: :class:`~vfl_sim.config.CertificateThresholds`).
    """
    if kind not in ("class", "samples", "party", "features"):
        raise ValueError(f"unknown forget request kind {kind!r}; expected class, samples, party or features")
    if ORIGINAL not in models:
        raise ValueError(f"certify needs the original model's results; got {sorted(models)}")
    t = thresholds or CertificateThresholds()
    retrain = models.get(RETRAIN)
    ref_name = RETRAIN if retrain is not None else ORIGINAL
    ref = models[ref_name]
    out: dict[str, Certificate] = {}
    for name, m in models.items():
        u = _utility(m, ref, ref_name, t)
        o = _output(kind, m, retrain, t)
        r = _representation(kind, m, retrain, t)
        out[name] = Certificate(u, o, r, trilemma_region(u.status, o.status, r.status))
    return out
