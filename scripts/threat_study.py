"""Tables and plots of the threat study (docs/threats.md) from finished sweeps.

Reads the ``results.jsonl`` of each sweep folder given: the threat sweeps
(``configs/sweep_threats_digits.yaml``, ``configs/sweep_threats_synthetic.yaml``: axes
``forget.cover``, ``parties.party_1.behaviour``, ``seed``) and, optionally, the defense sweep
(``configs/sweep_defense.yaml``: axes ``train.defense``, ``seed``). Writes ``tables.md`` and one
plot per question into ``--out``, and prints the tables (Markdown)::

    vfl-sim sweep configs/sweep_threats_digits.yaml --out runs/threats-digits
    vfl-sim sweep configs/sweep_threats_synthetic.yaml --out runs/threats-synthetic
    vfl-sim sweep configs/sweep_defense.yaml --out runs/sweep_defense
    python scripts/threat_study.py runs/threats-digits runs/threats-synthetic \\
        --defense runs/sweep_defense --out docs/threats > threat_tables.md

Every number is a mean over the seeds of a group (± the sample standard deviation where there
are two or more); ``removal`` counts the seeds whose certificate backs removal.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

COVER, BEHAVIOUR, DEFENSE = "forget.cover", "parties.party_1.behaviour", "train.defense"
METHODS = ("original", "retrain", "finetune", "neggrad", "neggrad_plus")


def read_rows(folder: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines() if line.strip()]
    name = _sweep_name(folder)
    for r in rows:
        r["sweep"] = name
    return [r for r in rows if r.get("status") == "finished"]


def _sweep_name(folder: Path) -> str:
    text = (folder / "sweep.yaml").read_text() if (folder / "sweep.yaml").is_file() else ""
    for line in text.splitlines():
        if line.strip().startswith("name:"):
            return line.split(":", 1)[1].strip()
    return folder.name


def _values(rows: Iterable[dict[str, Any]], col: str) -> list[float]:
    return [float(r[col]) for r in rows if isinstance(r.get(col), (int, float)) and not isinstance(r.get(col), bool)]


def mean(rows: Sequence[dict[str, Any]], col: str) -> float | None:
    v = _values(rows, col)
    return statistics.fmean(v) if v else None


def fmt(rows: Sequence[dict[str, Any]], col: str, scale: float = 1.0, digits: int = 2) -> str:
    v = [x * scale for x in _values(rows, col)]
    if not v:
        return "–"
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{statistics.fmean(v):.{digits}f} ± {statistics.stdev(v):.{digits}f}"


def removal(rows: Sequence[dict[str, Any]]) -> str:
    return f"{sum(1 for r in rows if r.get('removal') is True)}/{len(rows)}"


def group(rows: Iterable[dict[str, Any]], *keys: str) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    out: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        out[tuple(r.get(k) for k in keys)].append(r)
    return out


def table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _models(rows: Iterable[dict[str, Any]]) -> list[str]:
    present = {r["model"] for r in rows}
    return [m for m in METHODS if m in present]


def completion_table(rows: list[dict[str, Any]]) -> tuple[str, dict[tuple[str, str], list[dict[str, Any]]]]:
    """Q1: model completion by an honest party, no cover."""
    honest = [r for r in rows if r.get(BEHAVIOUR) == "honest" and r.get(COVER) is False]
    groups = group(honest, "sweep", "model")
    body = []
    for sweep in sorted({r["sweep"] for r in honest}):
        for m in _models(honest):
            g = groups.get((sweep, m), [])
            body.append([sweep, m, fmt(g, "forget_test_acc", 100, 1), fmt(g, "completion_gap_max", 100, 1), removal(g)])
    header = ["sweep", "model", "forgotten test acc. (%)", "completion gap, worst party (points)", "removal"]
    return table(header, body), {(k[0], k[1]): v for k, v in groups.items()}


def request_table(rows: list[dict[str, Any]]) -> tuple[str, dict[tuple[Any, ...], list[dict[str, Any]]]]:
    """Q2: what the request leaks, without and with cover; the cover's cost."""
    honest = [r for r in rows if r.get(BEHAVIOUR) == "honest" and r.get("model") not in ("original",)]
    groups = group(honest, "sweep", "model", COVER)
    body = []
    for sweep in sorted({r["sweep"] for r in honest}):
        for m in _models(honest):
            plain, covered = groups.get((sweep, m, False), []), groups.get((sweep, m, True), [])
            b0, b1 = mean(plain, "bytes_total"), mean(covered, "bytes_total")
            t0, t1 = mean(plain, "runtime_s"), mean(covered, "runtime_s")
            body.append(
                [
                    sweep,
                    m,
                    fmt(plain, "request_ids_advantage_max"),
                    fmt(covered, "request_ids_advantage_max"),
                    fmt(plain, "request_gradient_advantage_max"),
                    fmt(covered, "request_gradient_advantage_max"),
                    "–" if not (b0 and b1) else f"{b1 / b0:.1f}x",
                    "–" if not (t0 and t1) else f"{t1 / t0:.1f}x",
                    fmt(plain, "forget_test_acc", 100, 1) + " / " + fmt(covered, "forget_test_acc", 100, 1),
                ]
            )
    header = [
        "sweep",
        "method",
        "ids adv.",
        "ids adv., cover",
        "grad. norm adv.",
        "grad. norm adv., cover",
        "bytes, cover",
        "time, cover",
        "forgotten acc. % (plain / cover)",
    ]
    return table(header, body), groups


def lazy_table(rows: list[dict[str, Any]]) -> tuple[str, dict[tuple[Any, ...], list[dict[str, Any]]]]:
    """Q4: a party that ignores unlearning (no cover)."""
    plain = [r for r in rows if r.get(COVER) is False]
    groups = group(plain, "sweep", "model", BEHAVIOUR)
    body = []
    for sweep in sorted({r["sweep"] for r in plain}):
        for m in _models(plain):
            honest, lazy = groups.get((sweep, m, "honest"), []), groups.get((sweep, m, "ignore_unlearning"), [])
            body.append(
                [
                    sweep,
                    m,
                    removal(honest),
                    removal(lazy),
                    fmt(honest, "forget_test_acc", 100, 1),
                    fmt(lazy, "forget_test_acc", 100, 1),
                    fmt(honest, "lpr_gap", 100, 1),
                    fmt(lazy, "lpr_gap", 100, 1),
                ]
            )
    header = [
        "sweep",
        "model",
        "removal, honest",
        "removal, party_1 lazy",
        "forgotten acc. %, honest",
        "forgotten acc. %, lazy",
        "LPR gap, honest",
        "LPR gap, lazy",
    ]
    return table(header, body), groups


def defense_table(rows: list[dict[str, Any]]) -> tuple[str, dict[tuple[Any, ...], list[dict[str, Any]]]]:
    """Q3: a defended original, crossed with forgetting."""
    groups = group(rows, DEFENSE, "model")
    body = []
    for defense in dict.fromkeys(r.get(DEFENSE) for r in rows):
        for m in _models(rows):
            g = groups.get((defense, m), [])
            body.append(
                [
                    f"`{defense}`",
                    m,
                    fmt(g, "retain_test_acc", 100, 1),
                    fmt(g, "forget_test_acc", 100, 1),
                    fmt(g, "lpr_gap", 100, 1),
                    removal(g),
                ]
            )
    header = ["train.defense", "model", "retained test acc. %", "forgotten test acc. %", "LPR gap", "removal"]
    return table(header, body), groups


def _bars(ax: Any, labels: Sequence[str], series: dict[str, list[tuple[float | None, float | None]]]) -> None:
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(labels))]
        ys = [v[0] if v[0] is not None else 0.0 for v in values]
        err = [v[1] or 0.0 for v in values]
        ax.bar(xs, ys, width, yerr=err, label=name, capsize=2)
    ax.set_xticks(range(len(labels)), labels, rotation=20)
    ax.legend(fontsize=7)


def _stat(rows: Sequence[dict[str, Any]], col: str, scale: float = 1.0) -> tuple[float | None, float | None]:
    v = [x * scale for x in _values(rows, col)]
    if not v:
        return None, None
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else None)


def plots(rows: list[dict[str, Any]], defense_rows: list[dict[str, Any]], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    sweeps = sorted({r["sweep"] for r in rows})
    models = _models(rows)

    fig, ax = plt.subplots(figsize=(7, 3.2))
    honest = group([r for r in rows if r.get(BEHAVIOUR) == "honest" and r.get(COVER) is False], "sweep", "model")
    _bars(ax, models, {s: [_stat(honest.get((s, m), []), "completion_gap_max", 100) for m in models] for s in sweeps})
    ax.axhline(0, color="black", lw=0.5)
    ax.set_ylabel("completion gap to retrain (points)")
    ax.set_title("Q1: model completion by a passive party (worst party, 40 labels)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "q1_model_completion.png", dpi=120)
    written.append("q1_model_completion.png")

    methods = [m for m in models if m != "original"]
    fig, axes = plt.subplots(1, len(sweeps), figsize=(5 * len(sweeps), 3.2), squeeze=False)
    req = group([r for r in rows if r.get(BEHAVIOUR) == "honest"], "sweep", "model", COVER)
    for ax, s in zip(axes[0], sweeps, strict=True):
        series = {
            f"{channel}{', cover' if cov else ''}": [_stat(req.get((s, m, cov), []), col) for m in methods]
            for channel, col in (("ids", "request_ids_advantage_max"), ("grad. norm", "request_gradient_advantage_max"))
            for cov in (False, True)
        }
        _bars(ax, methods, series)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("advantage 2|AUC - 0.5|")
        ax.set_title(f"Q2: what the request leaks ({s})", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "q2_request_leakage.png", dpi=120)
    written.append("q2_request_leakage.png")

    if defense_rows:
        defenses = list(dict.fromkeys(r.get(DEFENSE) for r in defense_rows))
        labels = [
            "none" if d == "{}" else str(d).replace('"', "").replace("gradient_", "g_").replace("embedding_", "e_")
            for d in defenses
        ]
        dg = group(defense_rows, DEFENSE, "model")
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
        dmodels = _models(defense_rows)
        _bars(
            axes[0], labels, {m: [_stat(dg.get((d, m), []), "retain_test_acc", 100) for d in defenses] for m in dmodels}
        )
        axes[0].set_ylabel("retained test accuracy (%)")
        _bars(axes[1], labels, {m: [_stat(dg.get((d, m), []), "lpr_gap", 100) for d in defenses] for m in dmodels})
        axes[1].set_ylabel("LPR gap to retrain (points)")
        axes[0].set_title("Q3: defended training, crossed with forgetting", fontsize=9)
        for ax in axes:
            ax.tick_params(axis="x", labelsize=6)
        fig.tight_layout()
        fig.savefig(out / "q3_defenses.png", dpi=120)
        written.append("q3_defenses.png")

    fig, ax = plt.subplots(figsize=(7, 3.2))
    lazy = group([r for r in rows if r.get(COVER) is False], "sweep", "model", BEHAVIOUR)
    series = {}
    for s in sweeps:
        for b, name in (("honest", "honest"), ("ignore_unlearning", "party_1 lazy")):
            vals = []
            for m in models:
                g = lazy.get((s, m, b), [])
                vals.append((sum(1 for r in g if r.get("removal") is True) / len(g) if g else None, None))
            series[f"{s}, {name}"] = vals
    _bars(ax, models, series)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of seeds certified 'removal'")
    ax.set_title("Q4: a party that ignores unlearning", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "q4_lazy_party.png", dpi=120)
    written.append("q4_lazy_party.png")
    plt.close("all")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", type=Path, help="folders of the threat sweeps")
    parser.add_argument("--defense", type=Path, help="folder of the defense sweep")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    rows = [r for folder in args.sweeps for r in read_rows(folder)]
    defense_rows = read_rows(args.defense) if args.defense else []
    args.out.mkdir(parents=True, exist_ok=True)
    sections = [
        ("Q1: model completion by a passive party (honest parties, no cover)", completion_table(rows)[0]),
        ("Q2: what the forget request leaks, without and with `forget.cover`", request_table(rows)[0]),
    ]
    if defense_rows:
        sections.append(("Q3: a defended original, crossed with forgetting", defense_table(defense_rows)[0]))
    sections.append(("Q4: a party that ignores unlearning (no cover)", lazy_table(rows)[0]))
    text = "\n\n".join(f"### {title}\n\n{body}" for title, body in sections) + "\n"
    written = plots(rows, defense_rows, args.out)
    print(text, end="")
    print(f"wrote {', '.join(written)} into {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
