"""The tidy results table of a sweep and its summary, as pure functions on rows.

A row is one model of one cell (or one row for a cell that failed): the cell id, the value of
every axis, the seed, the model's name, the cell's status and error line, and the metrics
read from the cell's ``report.json``. :func:`summarize` groups the rows by every axis except
``seed`` and takes the mean and standard deviation of each metric over the seeds;
:func:`summary_markdown` renders that in the shape of the Mirage tables.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vfl_sim.report import markdown_table
from vfl_sim.runfolder import write_atomic

FINISHED = "finished"
FAILED = "failed"

SEED = "seed"
CELL = "cell_id"
MODEL = "model"
STATUS = "status"
ERROR = "error"

# Column name -> path in ``report.json["models"][model]``. Paths that are missing in a report
# (an audit that does not apply to the request kind, an older schema) give an empty value. A
# ``*`` part stands for every key there (each party): the column is the largest value found,
# the worst party.
METRICS: tuple[tuple[str, str], ...] = (
    ("retain_test_acc", "output.retain_test_acc"),
    ("forget_test_acc", "output.forget_test_acc"),
    ("retain_train_acc", "output.retain_train_acc"),
    ("forget_train_acc", "output.forget_train_acc"),
    ("membership_auc", "output.membership.auc"),
    ("membership_calibrated_auc", "output.membership.calibrated_auc"),
    ("party_dependence", "output.party_dependence"),
    ("lpr", "representation.fused.lpr"),
    ("lpr_gap", "representation.fused.lpr_gap"),
    ("lpr_mean", "representation.fused.lpr_mean"),
    ("lpr_gap_mean", "representation.fused.lpr_gap_mean"),
    ("lpr_auroc", "representation.fused.lpr_auroc"),
    ("cka_original", "representation.fused.cka_original"),
    ("cka_retrain", "representation.fused.cka_retrain"),
    ("cka_original_uncentered", "representation.fused.cka_original_uncentered"),
    ("cka_retrain_uncentered", "representation.fused.cka_retrain_uncentered"),
    ("fisher_ratio", "representation.fused.separability.fisher_ratio"),
    ("knn_purity", "representation.fused.separability.knn_purity"),
    ("knn_chance", "representation.fused.separability.knn_chance"),
    ("class_recovery_probe_accuracy", "representation.class_recovery.probe_accuracy"),
    ("relearning_top_area_gap", "relearning.top.area_gap"),
    ("relearning_full_area_gap", "relearning.full.area_gap"),
    ("relearning_top_steps_to_recover", "relearning.top.steps_to_recover"),
    ("relearning_full_steps_to_recover", "relearning.full.steps_to_recover"),
    ("relearning_head_area_gap", "relearning.head.area_gap"),
    ("relearning_head_steps_to_recover", "relearning.head.steps_to_recover"),
    ("reference_free_agreement", "reference_free.agreement"),
    ("reference_free_passed", "reference_free.passed"),
    ("feature_recovery_r2", "feature_recovery.fused.r2"),
    ("feature_recovery_gap", "feature_recovery.fused.recovery_gap"),
    ("utility", "certificate.utility.status"),
    ("output_forgetting", "certificate.output_forgetting.status"),
    ("representation_forgetting", "certificate.representation_forgetting.status"),
    ("trilemma", "certificate.trilemma"),
    ("removal", "certificate.removal"),
    ("completion_gap_max", "model_completion.parties.*.completion_gap"),
    ("request_ids_advantage_max", "request_leakage.*.ids_advantage"),
    ("request_gradient_advantage_max", "request_leakage.*.gradient_norm_advantage"),
    ("request_op_gradient_advantage_max", "request_leakage.*.op_gradient_norm_advantage"),
    ("cover_decoy_bytes", "cover.decoy_bytes"),
    ("runtime_s", "runtime_s"),
    ("bytes_total", "communication.bytes_total"),
)
METRIC_NAMES = tuple(name for name, _ in METRICS)
_RESERVED = {CELL, MODEL, STATUS, ERROR, *METRIC_NAMES}


# --------------------------------------------------------------------------------------------
# Rows


def axis_column(key: str) -> str:
    """The table column of axis ``key``: the dotted key itself, unless it would shadow a fixed
    column (an axis over the whole ``model`` section)."""
    return f"axis.{key}" if key in _RESERVED else key


def columns(axes: Sequence[str]) -> list[str]:
    """Every column of the table, in order: cell id, one per axis, seed (when it is not an
    axis), model, status, error, then the metrics."""
    axis_cols = [axis_column(k) for k in axes]
    seed = [] if SEED in axes else [SEED]
    return [CELL, *axis_cols, *seed, MODEL, STATUS, ERROR, *METRIC_NAMES]


def encode_value(value: Any) -> Any:
    """An axis value as one table cell: scalars as they are, mappings and lists as compact JSON
    (so every cell is hashable and the CSV and JSON lines tables agree)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, separators=(",", ":"))


def lookup(tree: Mapping[str, Any], path: str) -> Any:
    """``tree`` at the dotted ``path``, or ``None`` where any part is missing; a ``*`` part
    takes the largest number found under any key there (``None`` if none is)."""
    node: Any = tree
    parts = path.split(".")
    for k, part in enumerate(parts):
        if not isinstance(node, Mapping):
            return None
        if part == "*":
            rest = ".".join(parts[k + 1 :])
            found = [
                lookup(child, rest) if rest else child
                for child in node.values()
                if isinstance(child, Mapping) or not rest
            ]
            numbers = [v for v in found if isinstance(v, (int, float)) and not isinstance(v, bool)]
            return max(numbers) if numbers else None
        if part not in node:
            return None
        node = node[part]
    return None if isinstance(node, (Mapping, list)) else node


def _cell_columns(cell_id: str, overrides: Mapping[str, Any], seed: int) -> dict[str, Any]:
    row: dict[str, Any] = {CELL: cell_id}
    for key, value in overrides.items():
        row[axis_column(key)] = encode_value(value)
    row.setdefault(SEED, seed)
    return row


def cell_rows(cell_id: str, overrides: Mapping[str, Any], seed: int, report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per model of a finished cell's report, in the report's model order.

    Parameters
    ----------
    cell_id
        The cell's id (its folder under ``cells/``).
    overrides
        The cell's axis values, ``{dotted key: value}``.
    seed
        The cell's seed (``cfg.seed``).
    report
        The cell's ``report.json``.
    """
    rows = []
    for model, entry in (report.get("models") or {}).items():
        row = _cell_columns(cell_id, overrides, seed)
        row.update({MODEL: model, STATUS: FINISHED, ERROR: None})
        row.update({name: lookup(entry, path) for name, path in METRICS})
        rows.append(row)
    return rows


def failed_row(cell_id: str, overrides: Mapping[str, Any], seed: int, error: str) -> dict[str, Any]:
    """The one row of a cell that raised: no model and no metrics, its error line."""
    row = _cell_columns(cell_id, overrides, seed)
    row.update({MODEL: None, STATUS: FAILED, ERROR: error})
    row.update(dict.fromkeys(METRIC_NAMES))
    return row


# --------------------------------------------------------------------------------------------
# Writing


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def csv_text(rows: Iterable[Mapping[str, Any]], cols: Sequence[str]) -> str:
    """The rows as CSV with header ``cols`` (missing values empty, booleans ``true``/``false``)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for row in rows:
        writer.writerow([_csv_value(row.get(c)) for c in cols])
    return buf.getvalue()


def jsonl_text(rows: Iterable[Mapping[str, Any]], cols: Sequence[str]) -> str:
    """The rows as JSON lines, every line with every column (missing values ``null``)."""
    return "".join(json.dumps({c: row.get(c) for c in cols}) + "\n" for row in rows)


def write_tables(rows: Sequence[Mapping[str, Any]], axes: Sequence[str], out: Path) -> None:
    """Write ``results.csv`` and ``results.jsonl`` into ``out``, each atomically."""
    cols = columns(axes)
    write_atomic(out / "results.csv", csv_text(rows, cols))
    write_atomic(out / "results.jsonl", jsonl_text(rows, cols))


# --------------------------------------------------------------------------------------------
# Aggregation


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (``ddof=1``; ``None`` for fewer than two values) of
    the ``n`` values that were present."""

    mean: float | None
    std: float | None
    n: int


def mean_std(values: Iterable[Any]) -> Stat:
    """:class:`Stat` of the numeric values in ``values`` (``None``, empty strings and
    non-finite values are skipped)."""
    xs = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if not xs:
        return Stat(None, None, 0)
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return Stat(mean, std, len(xs))


def counts(values: Iterable[Any]) -> list[tuple[str, int]]:
    """How often each present value occurs, most frequent first (ties in first-seen order)."""
    seen: dict[str, int] = {}
    for v in values:
        if v is not None and v != "":
            seen[str(v)] = seen.get(str(v), 0) + 1
    return sorted(seen.items(), key=lambda kv: -kv[1])


# (column, header, format) of the summary table; formats: pct (x100), gap (signed x100),
# cka (3 decimals), num (2 decimals).
SUMMARY_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("retain_test_acc", "retain test", "pct"),
    ("forget_test_acc", "forget test", "pct"),
    ("lpr", "LPR", "pct"),
    ("lpr_gap", "LPR gap", "gap"),
    ("cka_original", "CKA orig", "cka"),
    ("cka_retrain", "CKA retr", "cka"),
    ("fisher_ratio", "Fisher", "num"),
    ("knn_purity", "kNN purity", "pct"),
    ("membership_auc", "MIA AUC", "cka"),
    ("relearning_top_area_gap", "relearn gap top", "gap"),
    ("relearning_full_area_gap", "relearn gap full", "gap"),
)
COUNT_COLUMNS: tuple[tuple[str, str], ...] = (("trilemma", "trilemma"),)


@dataclass(frozen=True)
class GroupSummary:
    """One model in one group of cells (every axis but ``seed`` fixed)."""

    group: tuple[tuple[str, Any], ...]
    model: str
    n: int
    stats: dict[str, Stat]
    counts: dict[str, list[tuple[str, int]]]
    cells: tuple[str, ...]


def group_axes(axes: Sequence[str]) -> list[str]:
    """The axes that define a group: every axis except ``seed``."""
    return [k for k in axes if k != SEED]


def summarize(rows: Sequence[Mapping[str, Any]], axes: Sequence[str]) -> list[GroupSummary]:
    """Aggregate the finished rows over seeds: one :class:`GroupSummary` per group and model,
    groups and models in the order they first appear in ``rows``.

    Parameters
    ----------
    rows
        Table rows (:func:`cell_rows`, :func:`failed_row`); failed rows are ignored.
    axes
        The sweep's axis keys, in order.
    """
    keys = group_axes(axes)
    buckets: dict[tuple[tuple[tuple[str, Any], ...], str], list[Mapping[str, Any]]] = {}
    for row in rows:
        if row.get(STATUS) != FINISHED:
            continue
        group = tuple((k, row.get(axis_column(k))) for k in keys)
        buckets.setdefault((group, str(row.get(MODEL))), []).append(row)
    out = []
    for (group, model), members in buckets.items():
        stats = {col: mean_std(r.get(col) for r in members) for col, _, _ in SUMMARY_COLUMNS}
        cnts = {col: counts(r.get(col) for r in members) for col, _ in COUNT_COLUMNS}
        cells = tuple(str(r.get(CELL)) for r in members)
        out.append(GroupSummary(group, model, len(members), stats, cnts, cells))
    return out


def format_stat(stat: Stat, kind: str) -> str:
    """``mean ± std`` in the column's format; just the mean for one value, ``–`` for none."""
    if stat.mean is None:
        return "–"
    scale = 100.0 if kind in ("pct", "gap") else 1.0
    digits = {"pct": 1, "gap": 1, "cka": 3, "num": 2}[kind]
    sign = "+" if kind == "gap" else ""
    text = f"{stat.mean * scale:{sign}.{digits}f}"
    if stat.std is not None:
        text += f" ± {stat.std * scale:.{digits}f}"
    return text


def group_label(group: Sequence[tuple[str, Any]]) -> str:
    """``key=value, ...`` of a group (``all cells`` when only seeds vary)."""
    return ", ".join(f"{k}={v}" for k, v in group) or "all cells"


def summary_markdown(
    rows: Sequence[Mapping[str, Any]],
    axes: Sequence[str],
    *,
    title: str = "sweep",
    total_cells: int | None = None,
) -> str:
    """The summary of a sweep as Markdown: per group, a table of mean ± std over seeds for
    every model, then the cells that failed with their error line.

    Parameters
    ----------
    rows
        Every row of the table.
    axes
        The sweep's axis keys, in order.
    title
        The sweep's name, for the heading.
    total_cells
        Cells in the grid (to say how many have no result yet); default: the cells in ``rows``.
    """
    finished = sorted({str(r[CELL]) for r in rows if r.get(STATUS) == FINISHED})
    failed = [r for r in rows if r.get(STATUS) == FAILED]
    total = total_cells if total_cells is not None else len(finished) + len(failed)
    missing = total - len(finished) - len(failed)
    lines = [f"# {title}: summary", ""]
    status = f"{total} cells: {len(finished)} finished, {len(failed)} failed"
    lines.append(status + (f", {missing} not run yet" if missing > 0 else "") + ".")
    lines.append("")
    lines.append(
        "Mean ± standard deviation over seeds (n: finished seeds of the group); accuracies, LPR and "
        "kNN purity in %, LPR and relearning gaps in points against `retrain` on the same seed, CKA "
        "centered (to the original / to retrain), Fisher ratio of the fused embedding, membership "
        "AUC of the loss attack; trilemma: the certificate's region, seeds per region."
    )
    header = ["model", "n", *(h for _, h, _ in SUMMARY_COLUMNS), *(h for _, h in COUNT_COLUMNS)]
    numbers = range(1, len(header) - 1)  # every column but the model and the trilemma counts
    groups: dict[tuple[tuple[str, Any], ...], list[list[str]]] = {}
    for s in summarize(rows, axes):
        cells = [s.model, str(s.n)]
        cells += [format_stat(s.stats[col], kind) for col, _, kind in SUMMARY_COLUMNS]
        cells += [", ".join(f"{value} {k}/{s.n}" for value, k in s.counts[col]) or "–" for col, _ in COUNT_COLUMNS]
        groups.setdefault(s.group, []).append(cells)
    for group, table_rows in groups.items():
        lines += ["", f"## {group_label(group)}", "", markdown_table(header, table_rows, right=numbers)]
    if failed:
        lines += ["", "## Failed cells", ""]
        for r in failed:
            where = ", ".join(f"{k}={r.get(axis_column(k))}" for k in axes)
            error = str(r.get(ERROR) or "").splitlines()[0] if r.get(ERROR) else "unknown error"
            lines.append(f"- `{r[CELL]}` ({where}): {error}")
    return "\n".join(lines) + "\n"
