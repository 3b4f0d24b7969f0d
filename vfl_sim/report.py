"""Report writers: the versioned ``report.json`` schema and its markdown rendering.

``report.json`` (schema ``SCHEMA_VERSION``) holds, for every model (``original``, each method,
``retrain`` among them): ``runtime_s``, ``communication``, ``output`` (accuracies as fractions)
and ``representation`` (``fused`` and ``parties.<id>``, each with ``lpr``, ``lpr_auroc``,
``lpr_gap``, ``cka_original``, ``cka_retrain``). Later versions add keys; they do not rename
these. The README documents every key.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence
from typing import Any

SCHEMA_VERSION = "1.0"


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


VERDICT_MARK = {"pass": "pass", "fail": "FAIL", "n/a": "n/a"}


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
        "ref-free agree",
        "pass",
    ]
    rows = []
    for name, m in report["models"].items():
        rel, rf = m.get("relearning") or {}, m.get("reference_free") or {}
        if not rel and not rf:
            continue
        row = [name]
        for phase in ("top", "full"):
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


def certificate_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per model: the three verdicts of its certificate and its trilemma region."""
    header = ["model", "utility", "output forgetting", "representation forgetting", "trilemma", "removal claimed"]
    rows = []
    for name, m in report["models"].items():
        c = m.get("certificate")
        if c is None:
            continue
        rows.append(
            [
                name,
                VERDICT_MARK[c["utility"]["status"]],
                VERDICT_MARK[c["output_forgetting"]["status"]],
                VERDICT_MARK[c["representation_forgetting"]["status"]],
                c["trilemma"],
                "yes" if c["removal"] else "no",
            ]
        )
    return header, rows


def certificate_evidence(report: dict[str, Any]) -> list[str]:
    """Markdown lines: per model, its claim, the failed checks with their numbers, and why a
    verdict is ``n/a``."""
    lines: list[str] = []
    parts = (("utility", "utility"), ("output_forgetting", "output"), ("representation_forgetting", "representation"))
    for name, m in report["models"].items():
        c = m.get("certificate")
        if c is None:
            continue
        lines.append(f"- **{name}** ({c['trilemma']}): {c['claim']}.")
        for key, label in parts:
            v = c[key]
            failed = [ch["evidence"] for ch in v["checks"] if not ch["passed"]]
            if v["status"] == "n/a":
                lines.append(f"  - {label}: n/a, {v['note']}")
            elif failed:
                shown = "; ".join(failed[:4]) + (f"; and {len(failed) - 4} more" if len(failed) > 4 else "")
                lines.append(f"  - {label} fails ({len(failed)} of {len(v['checks'])} checks): {shown}")
    return lines


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]], *, right: Container[int] = ()) -> str:
    """A markdown table; columns whose index is in ``right`` are right-aligned."""
    rule = ("---:" if i in right else "---" for i in range(len(header)))
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def request_target(f: dict[str, Any]) -> str:
    """What a forget request (``report["forget_request"]``) removes, in a few words."""
    if f["kind"] == "class":
        return f"classes {f['classes']}"
    if f["kind"] == "party":
        return f"{f['party']} leaves"
    if f["kind"] == "features":
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
            "Relearning: fine-tuning on a few labeled samples of every class (top model alone, then top and "
            "bottoms); steps until the forgotten test accuracy reaches the threshold, the mean forgotten "
            "accuracy over the attack (area) and its gap to retrain's. Reference-free: agreement of the "
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
            "Three independent verdicts per model (see `audits.certificate`): utility (retained test accuracy "
            "close to retrain's), output forgetting (suppression: forgotten accuracy and membership at retrain's "
            "level) and representation forgetting (removal: LPR gaps fused, per party and per layer, CKA closer "
            "to retrain than to the original, probe recovery). Passing output forgetting alone is suppression, "
            "never removal.",
            "",
            markdown_table(header, rows),
            "",
            *certificate_evidence(report),
            "",
            "Tolerances: " + ", ".join(f"{k} {v:g}" for k, v in t.items()) + ".",
            "",
        ]
    return "\n".join(parts)
