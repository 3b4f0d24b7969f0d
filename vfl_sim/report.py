"""Report writers: the versioned ``report.json`` schema and its markdown rendering.

``report.json`` (schema ``SCHEMA_VERSION``) holds, for every model (``original``, each method,
``retrain`` among them): ``runtime_s``, ``communication``, ``output`` (accuracies as fractions)
and ``representation`` (``fused`` and ``parties.<id>``, each with ``lpr``, ``lpr_auroc``,
``lpr_gap``, ``cka_original``, ``cka_retrain``). Later versions add keys; they do not rename
these. docs/report.md documents every key.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence
from typing import Any

from vfl_sim.forget import ForgetKind

SCHEMA_VERSION = "1.3"
"""1.1: ``controls`` (built-in control models and calibration retrains, audited like models),
``audit.certificate`` (controls, calibration, power, tolerances), checks with ``status``,
``interval``, ``tolerance``, ``tolerance_source`` and ``mde``, ``models.<m>.diverged``, the
``inconclusive``, ``structural_removal`` and ``diverged`` trilemma regions."""


def _fmt(v: Any, pct: bool = False, signed: bool = False) -> str:
    if v is None:
        return "-"
    if pct:
        return f"{100 * v:+.1f}" if signed else f"{100 * v:.1f}"
    return f"{v:.3f}"


def results_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The summary table (one row per model) shared by ``report.md`` and the CLI."""
    header = [
        "model",
        "time s",
        "retain test",
        "forget test",
        "retain train",
        "forget train",
        "LPR",
        "LPR gap",
        "CKA orig",
        "CKA retr",
    ]
    rows = []
    for name, m in report["models"].items():
        # Party and feature requests have no forgotten samples to probe for (no representation).
        o, f = m["output"], m.get("representation", {}).get("fused", {})
        rows.append(
            [
                name,
                f"{m['runtime_s']:.2f}",
                _fmt(o["retain_test_acc"], True),
                _fmt(o["forget_test_acc"], True),
                _fmt(o["retain_train_acc"], True),
                _fmt(o["forget_train_acc"], True),
                _fmt(f.get("lpr"), True),
                _fmt(f.get("lpr_gap"), True, True),
                _fmt(f.get("cka_original")),
                _fmt(f.get("cka_retrain")),
            ]
        )
    return header, rows


def party_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per-party representation table: LPR, gap and CKA of each party's own embedding."""
    header = ["model", "party", "LPR %", "LPR gap", "AUROC", "CKA orig", "CKA retrain"]
    rows = []
    for name, m in report["models"].items():
        for pid, r in m.get("representation", {}).get("parties", {}).items():
            rows.append(
                [
                    name,
                    pid,
                    _fmt(r["lpr"], True),
                    _fmt(r["lpr_gap"], True, True),
                    _fmt(r["lpr_auroc"]),
                    _fmt(r["cka_original"]),
                    _fmt(r["cka_retrain"]),
                ]
            )
    return header, rows


VERDICT_MARK = {"pass": "pass", "fail": "FAIL", "inconclusive": "inconclusive", "n/a": "n/a"}


def attack_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Relearning attack (per phase: steps until the forgotten class is back, mean forgotten
    accuracy over the attack, its gap to retrain's) and the reference-free audit, per model."""
    header = [
        "model",
        "relearn top: steps",
        "area",
        "gap",
        "relearn full: steps",
        "area",
        "gap",
        "relearn head: steps",
        "area",
        "gap",
        "ref-free agree",
        "pass",
    ]
    rows = []
    for name, m in report["models"].items():
        rel, rf = m.get("relearning") or {}, m.get("reference_free") or {}
        if not rel and not rf:
            continue
        row = [name]
        for phase in ("top", "full", "head"):
            p = rel.get(phase)
            if p is None:
                row += ["-", "-", "-"]
                continue
            steps = p["steps_to_recover"]
            row += [
                f">{p['budget']}" if steps is None else str(steps),
                _fmt(p["area"], True),
                _fmt(p["area_gap"], True, True),
            ]
        row += [_fmt(rf.get("agreement")), "-" if "passed" not in rf else ("yes" if rf["passed"] else "no")]
        rows.append(row)
    return header, rows


def feature_recovery_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Party and feature requests: held-out R^2 of the removed columns from each embedding, and
    its gap to retrain."""
    header = ["model", "embedding", "R^2", "R^2 gap", "gap interval"]
    rows = []
    for name, m in report["models"].items():
        rec = m.get("feature_recovery")
        if not rec:
            continue
        for view, r in {"fused": rec["fused"], **rec.get("parties", {})}.items():
            interval = r.get("recovery_gap_interval")
            rows.append(
                [
                    name,
                    view,
                    _fmt(r["r2"]),
                    "-" if r["recovery_gap"] is None else f"{r['recovery_gap']:+.3f}",
                    "-" if interval is None else f"[{interval[0]:+.3f}, {interval[1]:+.3f}]",
                ]
            )
    return header, rows


def certified_models(report: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """``{model: (label, entry)}`` of every certified model, methods first, then the controls
    (labelled with their role)."""
    out = {name: (name, m) for name, m in report["models"].items()}
    for name, m in report.get("controls", {}).items():
        out[name] = (f"{name} ({m['role']})", m)
    return out


def certificate_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per model (controls last): the three verdicts of its certificate and its
    trilemma region."""
    header = ["model", "utility", "output forgetting", "representation forgetting", "trilemma", "removal claimed"]
    rows = []
    for label, m in certified_models(report).values():
        c = m.get("certificate")
        if c is None:
            continue
        rows.append(
            [
                label,
                VERDICT_MARK[c["utility"]["status"]],
                VERDICT_MARK[c["output_forgetting"]["status"]],
                VERDICT_MARK[c["representation_forgetting"]["status"]],
                c["trilemma"],
                "yes" if c["removal"] else "no",
            ]
        )
    return header, rows


PARTY_THREATS = ("bottom_retrained.", "model_completion.")
"""Prefixes of the certificate's per-party threat checks (:mod:`vfl_sim.audits.certificate`)."""


def certificate_evidence(report: dict[str, Any]) -> list[str]:
    """Markdown lines: per model, its claim, the failed and undecided checks with their
    numbers, and why a verdict is ``n/a`` or ``inconclusive``."""
    lines: list[str] = []
    parts = (("utility", "utility"), ("output_forgetting", "output"), ("representation_forgetting", "representation"))
    for label, m in certified_models(report).values():
        c = m.get("certificate")
        if c is None:
            continue
        lines.append(f"- **{label}** ({c['trilemma']}): {c['claim']}.")
        for key, part in parts:
            v = c[key]
            if v["status"] == "n/a":
                lines.append(f"  - {part}: n/a, {v['note']}")
                continue
            for status, verb in (("fail", "fails"), ("inconclusive", "undecided")):
                # A passive party's own threats first: they name the party that decides the verdict.
                checks = sorted(v["checks"], key=lambda ch: not str(ch["name"]).startswith(PARTY_THREATS))
                hits = [ch["evidence"] for ch in checks if _status(ch) == status]
                if hits:
                    shown = "; ".join(hits[:4]) + (f"; and {len(hits) - 4} more" if len(hits) > 4 else "")
                    lines.append(f"  - {part} {verb} ({len(hits)} of {len(v['checks'])} checks): {shown}")
            if v["status"] == "inconclusive" and v.get("note"):
                lines.append(f"  - {part} is inconclusive: {v['note']}")
    return lines


def _status(check: dict[str, Any]) -> str:
    # Reports of schema 1.0 have only ``passed``.
    return str(check.get("status", "pass" if check.get("passed") else "fail"))


def tolerance_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per check: the tolerance the certificate used, where it came from, the floor, the
    calibration retrains' spread and the median minimum detectable effect over the models."""
    header = ["check", "tolerance", "source", "floor", "retrain spread", "median MDE"]
    cert = report.get("audit", {}).get("certificate") or {}
    mdes: dict[str, list[float]] = {}
    for _, m in certified_models(report).values():
        for part in ("utility", "output_forgetting", "representation_forgetting"):
            for ch in (m.get("certificate") or {}).get(part, {}).get("checks", []):
                if ch.get("mde") is not None:
                    mdes.setdefault(ch["name"], []).append(ch["mde"])
    rows = []
    for name, t in cert.get("tolerances", {}).items():
        null = ", ".join(f"{v:+.3f}" for v in t["null"]) or "-"
        mde = sorted(mdes.get(name, []))
        rows.append(
            [
                name,
                f"{t['tolerance']:.3f}",
                t["source"],
                f"{t['floor']:.3f}",
                null,
                "-" if not mde else f"{mde[len(mde) // 2]:.3f}",
            ]
        )
    return header, rows


def power_lines(report: dict[str, Any]) -> list[str]:
    """Markdown lines: whether each forgetting verdict can fail on this run, by its controls."""
    cert = report.get("audit", {}).get("certificate") or {}
    lines = []
    for part, p in cert.get("power", {}).items():
        shown = ", ".join(f"{c} {s}" for c, s in p["controls"].items()) or "no control needed"
        what = part.replace("_", " ")
        lines.append(
            f"- {what}: {'has power' if p['powered'] else 'NO POWER'} ({shown})"
            + (f": {p['reason']}" if p.get("reason") else "")
        )
    return lines


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]], *, right: Container[int] = ()) -> str:
    """A markdown table; columns whose index is in ``right`` are right-aligned."""
    rule = ("---:" if i in right else "---" for i in range(len(header)))
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def request_target(f: dict[str, Any]) -> str:
    """What a forget request (``report["forget_request"]``) removes, in a few words."""
    if f["kind"] == ForgetKind.CLASS:
        return f"classes {f['classes']}"
    if f["kind"] == ForgetKind.PARTY:
        return f"{f['party']} leaves"
    if f["kind"] == ForgetKind.FEATURES:
        return f"columns {f['columns']} of {f['party']}"
    return f"{f['forget_train_samples']} training samples"


def write_markdown(report: dict[str, Any]) -> str:
    """Human-readable summary of a report."""
    d, f = report["dataset"], report["forget_request"]
    target = request_target(f)
    parts = [
        f"# {report['name']}",
        "",
        f"- dataset: **{d['name']}** ({d['train']} train / {d['test']} test, {len(d['classes'])} classes, {d['kind']})",
        f"- parties: {len(report['parties'])}; runtime: {report['runtime']}; seed: {report['seed']}",
        f"- forget request: {f['kind']} ({target}); {f['retain_train_samples']} training samples retained",
        f"- audit: {report['audit']['runtime_s']:.2f}s on {report['audit']['samples']}",
        "",
        "## Output and fused representation",
        "",
        "LPR: balanced accuracy of a linear probe recovering the forgotten samples from the embeddings; "
        "the gap to `retrain` is what matters (positive: the model keeps more than a model that never saw the data). "
        "Accuracies drive output suppression; LPR gap and CKA speak to removal.",
        "",
        markdown_table(*results_rows(report)),
        "",
        "## Per party",
        "",
        markdown_table(*party_rows(report)),
        "",
    ]
    header, rows = feature_recovery_rows(report)
    if rows:
        parts += [
            "## Feature recovery",
            "",
            "How well a ridge readout recovers the removed columns (their top principal components) from "
            "the remaining embeddings, held-out R^2; the departed party's own embedding is left out of every model.",
            "",
            markdown_table(header, rows),
            "",
        ]
    header, rows = attack_rows(report)
    if rows:
        parts += [
            "## Relearning attack and reference-free audit",
            "",
            "Relearning: fine-tuning on a few labeled samples of every class (top model alone; top and "
            "bottoms; a freshly initialized output layer fitted on the frozen features); steps until the "
            "forgotten test accuracy reaches the threshold, the mean forgotten accuracy over the attack (area) "
            "and its gap to retrain's. Reference-free: agreement of the "
            "model's predictions on the forget set with verification models that never saw it.",
            "",
            markdown_table(header, rows),
            "",
        ]
    header, rows = certificate_rows(report)
    if rows:
        t = report["audit"].get("certificate_thresholds", {})
        parts += [
            "## Certificate",
            "",
            "Three independent verdicts per model (see `vfl_sim.audits.certificate`): utility (retained test accuracy "
            "close to retrain's), output forgetting (suppression: forgotten accuracy and membership at retrain's "
            "level) and representation forgetting (removal: LPR gaps fused, per party and per layer, CKA closer "
            "to retrain than to the original, probe recovery, relearning). Passing output forgetting alone is "
            "suppression, never removal; a verdict the run cannot decide is inconclusive, never a pass.",
            "",
            markdown_table(header, rows),
            "",
            "Controls (built in; see `vfl_sim.methods.controls`): a verdict counts only where its controls fail it.",
            "",
            *power_lines(report),
            "",
            *certificate_evidence(report),
            "",
        ]
        header, rows = tolerance_rows(report)
        if rows:
            parts += [
                "### Tolerances",
                "",
                "A check passes only when its whole interval is within the tolerance, fails when the point "
                "estimate is beyond it, and is inconclusive in between. Tolerances are the calibration "
                "retrains' spread (the quantile of their deviation from retrain), never below the floor; "
                "MDE: minimum detectable effect (tolerance plus the interval's half width).",
                "",
                markdown_table(header, rows, right=(1, 3, 5)),
                "",
            ]
        else:
            parts += ["Tolerances: " + ", ".join(f"{k} {v:g}" for k, v in t.items()) + ".", ""]
    return "\n".join(parts)
