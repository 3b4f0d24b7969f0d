"""Tests of ``vfl-sim sweep``: the grid, validation before anything runs, the tidy table and its
summary, and real sweeps on a local Ray (rerun skips, a failing cell, no Ray process left)."""

from __future__ import annotations

import csv
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from vfl_sim.cli import EXIT_INPUT_ERROR, main
from vfl_sim.errors import ConfigError
from vfl_sim.sweep import (
    SweepStatus,
    cell_id,
    expand_grid,
    load_sweep,
    run_sweep,
    sweep_from_dict,
)
from vfl_sim.sweep_table import (
    FAILED,
    FINISHED,
    cell_rows,
    columns,
    csv_text,
    failed_row,
    format_stat,
    jsonl_text,
    lookup,
    mean_std,
    summarize,
    summary_markdown,
)

TINY_DATA = {
    "name": "synthetic",
    "synthetic": {"samples": 240, "features": 8, "classes": 3, "informative_per_party": 2},
}
BASE: dict[str, Any] = {
    "name": "tiny",
    "data": TINY_DATA,
    "train": {"epochs": 2, "batch_size": 64},
    "methods": ["retrain", "finetune"],
    "audit": {"relearning": {"steps": 2}, "probe_repeats": 2, "plots": False},
}
TAG = "VFL_SIM_SWEEP_TEST_TAG"
PLUGIN = "sweep_test_plugin"
EXPLODE = "VFL_SIM_SWEEP_TEST_EXPLODE"


def _config(axes: dict[str, Any], **sweep: Any) -> dict[str, Any]:
    return {**BASE, "sweep": {"axes": axes, **sweep}}


def _write(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _tagged(tag: str) -> list[int]:
    """Processes whose environment carries ``TAG=tag``: everything Ray started from a driver
    that had it (the GCS, the raylet, workers), since they inherit the driver's environment."""
    needle = f"{TAG}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _wait_gone(tag: str, timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := _tagged(tag)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


# --------------------------------------------------------------------------------------------
# The grid and its ids


def test_grid_is_the_cartesian_product_in_axis_order() -> None:
    grid = expand_grid({"a": [1, 2], "b": ["x", "y", "z"]})
    assert len(grid) == 6
    assert grid[0] == {"a": 1, "b": "x"} and grid[1] == {"a": 1, "b": "y"} and grid[-1] == {"a": 2, "b": "z"}


def test_cell_ids_are_stable_readable_and_unique() -> None:
    # A literal: the id must not depend on the process (no hash()), so reruns find their cells.
    assert cell_id({"partition.parties": 2, "seed": 0}) == "parties-2_seed-0-343916ec"
    assert cell_id({"seed": 0, "partition.parties": 2}) == cell_id({"partition.parties": 2, "seed": 0})
    forget = cell_id({"forget": {"kind": "class", "classes": [0]}})
    assert forget.startswith("forget-kind-class-classes-0-")
    cells = sweep_from_dict(
        _config({"partition.parties": [2, 3], "seed": [0, 1], "forget": [{"kind": "class", "classes": [0]}]}),
        check=False,
    ).cells
    ids = [c.id for c in cells]
    assert len(set(ids)) == len(ids) == 4
    assert all(c.id == cell_id(c.overrides) for c in cells)
    assert cells[0].config.partition.parties == 2 and cells[1].config.seed == 1
    # A value replaces the whole key: the forget mapping is not merged with the base's.
    assert cells[0].config.forget.classes == [0]


def test_nested_axes_and_set_overrides_flatten_to_dotted_keys() -> None:
    raw = {**BASE, "sweep": {"axes": {"partition": {"parties": [2, 3]}, "seed": [0]}}}
    sweep = sweep_from_dict(raw, ["sweep.axes.partition.parties=[3]", "sweep.workers=1"], check=False)
    assert sweep.axes == ["partition.parties", "seed"]
    assert [c.config.partition.parties for c in sweep.cells] == [3]
    assert sweep.settings.workers == 1 and sweep.name == "tiny"


@pytest.mark.parametrize(
    ("axes", "expected"),
    [
        ({"data.name": ["synthetic", "digitz"]}, "sweep.axes.data.name = digitz: data.name:"),
        ({"data.nme": ["digits"]}, "sweep.axes.data.nme = digits: unknown field 'nme' in data"),
        ({"seed": [0], "partition.parties": [2, 99]}, "sweep.axes.partition.parties = 99: partition.parties is 99"),
        (
            {"forget": [{"kind": "class", "classes": [0]}, {"kind": "class", "classes": [7]}]},
            'sweep.axes.forget = {"kind":"class","classes":[7]}: forget.classes: class 7 does not exist',
        ),
        ({"methods": [["retrain"], ["retrain", "nope"]]}, 'sweep.axes.methods = ["retrain","nope"]: unknown'),
        ({"runtime": ["local", "flower-sim"]}, "sweep.axes.runtime = flower-sim: runtime: a sweep runs every cell"),
        ({"seed": [0, 0]}, "axis 'seed' lists 0 more than once"),
        ({"seed": 3}, "sweep.axes.seed: Input should be a valid list"),
        ({}, "give at least one axis"),
    ],
)
def test_bad_axis_values_name_the_axis_and_value(axes: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        sweep_from_dict(_config(axes))
    assert expected in str(err.value)


def test_bad_sweep_settings_and_base() -> None:
    with pytest.raises(ConfigError, match="sweep: unknown field 'paralell'; allowed: axes, "):
        sweep_from_dict(_config({"seed": [0]}, paralell=2))
    with pytest.raises(ConfigError, match="sweep.workers: "):
        sweep_from_dict(_config({"seed": [0]}, workers=0))
    with pytest.raises(ConfigError, match=r"base config \(before the sweep's axes are applied\): train.epochs"):
        sweep_from_dict({**_config({"seed": [0]}), "train": {"epochs": -1}})


def test_cli_bad_axis_exits_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _write(tmp_path / "sweep.yaml", _config({"seed": [0, 1], "partition.parties": [2, 99]}))
    out = tmp_path / "out"
    assert main(["sweep", str(cfg), "--out", str(out), "--quiet"]) == EXIT_INPUT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: sweep.axes.partition.parties = 99: ") and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_dry_run_lists_cells(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _write(tmp_path / "sweep.yaml", _config({"partition.parties": [2, 3], "seed": [0, 1]}))
    assert main(["sweep", str(cfg), "--dry-run", "--out", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "parties-2_seed-0-343916ec  partition.parties=2, seed=0"
    assert lines[-1] == "ok: sweep tiny, 4 cells over partition.parties, seed"
    assert not (tmp_path / "out").exists()


def test_run_on_a_sweep_config_points_at_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _write(tmp_path / "sweep.yaml", _config({"seed": [0]}))
    assert main(["run", str(cfg), "--out", str(tmp_path / "out")]) == EXIT_INPUT_ERROR
    err = capsys.readouterr().err
    assert "is a sweep config" in err and f"vfl-sim sweep {cfg}" in err and "unknown field" not in err
    assert not (tmp_path / "out").exists()


def test_sweep_on_a_plain_config_points_at_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _write(tmp_path / "one.yaml", BASE)
    assert main(["sweep", str(cfg), "--dry-run"]) == EXIT_INPUT_ERROR
    assert "has no 'sweep:' section" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# The table and its aggregation (hand-made rows with known answers)


def _report(acc: float, gap: float, trilemma: str) -> dict[str, Any]:
    return {
        "models": {
            "original": {"output": {"retain_test_acc": 1.0}, "certificate": {"trilemma": "no_forgetting"}},
            "neggrad": {
                "runtime_s": 1.5,
                "communication": {"bytes_total": 1000},
                "output": {"retain_test_acc": acc, "forget_test_acc": 0.0, "membership": {"auc": 0.5}},
                "representation": {"fused": {"lpr": 0.9, "lpr_gap": gap, "separability": {"fisher_ratio": 2.0}}},
                "relearning": {"top": {"area_gap": 0.25}, "full": {"area_gap": None}},
                "certificate": {"trilemma": trilemma, "removal": False, "utility": {"status": "pass"}},
            },
        }
    }


def _rows() -> list[dict[str, Any]]:
    forget = {"kind": "class", "classes": [0]}
    rows = []
    for seed, acc, gap, tri in [
        (0, 0.9, 0.05, "suppression"),
        (1, 1.0, 0.05, "suppression"),
        (2, 0.8, 0.05, "removal"),
    ]:
        overrides = {"forget": forget, "partition.parties": 2, "seed": seed}
        rows += cell_rows(f"a{seed}", overrides, seed, _report(acc, gap, tri))
    rows += cell_rows("b0", {"forget": forget, "partition.parties": 4, "seed": 0}, 0, _report(0.7, -0.1, "removal"))
    rows.append(failed_row("b1", {"forget": forget, "partition.parties": 4, "seed": 1}, 1, "RuntimeError: boom"))
    return rows


AXES = ["forget", "partition.parties", "seed"]


def test_mean_std_known_values() -> None:
    s = mean_std([0.9, 1.0, 0.8, None, ""])
    assert s.n == 3 and s.mean == pytest.approx(0.9) and s.std == pytest.approx(0.1)
    assert mean_std([0.5]).std is None and mean_std([None]).mean is None
    assert mean_std([True, 2.0]).n == 1  # booleans are not numbers here
    assert format_stat(s, "pct") == "90.0 ± 10.0"
    assert format_stat(mean_std([0.05, 0.05]), "gap") == "+5.0 ± 0.0"
    assert format_stat(mean_std([0.123456]), "cka") == "0.123"
    assert format_stat(mean_std([]), "num") == "–"


def test_rows_hold_axes_seed_model_status_and_metrics() -> None:
    rows = _rows()
    assert len(rows) == 4 * 2 + 1
    first = rows[1]
    assert first["cell_id"] == "a0" and first["model"] == "neggrad" and first["status"] == FINISHED
    assert first["forget"] == '{"kind":"class","classes":[0]}' and first["partition.parties"] == 2
    assert first["lpr_gap"] == 0.05 and first["fisher_ratio"] == 2.0 and first["relearning_top_area_gap"] == 0.25
    assert first["bytes_total"] == 1000 and first["utility"] == "pass" and first["removal"] is False
    assert first["relearning_full_area_gap"] is None and first["cka_original"] is None  # missing -> empty
    assert rows[-1]["status"] == FAILED and rows[-1]["model"] is None and rows[-1]["error"] == "RuntimeError: boom"


def test_party_columns_take_the_worst_party() -> None:
    """``*`` in a metric's path is every party: the column is the largest value (the worst
    party), ignoring parties without one; no party with a value gives an empty cell."""
    entry = {
        "model_completion": {"parties": {"party_0": {"completion_gap": 0.02}, "party_1": {"completion_gap": None}}},
        "request_leakage": {
            "party_0": {"ids_advantage": 0.0, "gradient_norm_advantage": 0.7},
            "party_1": {"ids_advantage": 1.0, "gradient_norm_advantage": None},
        },
    }
    (row,) = cell_rows("c", {}, 0, {"models": {"neggrad": entry}})
    assert row["completion_gap_max"] == 0.02
    assert (row["request_ids_advantage_max"], row["request_gradient_advantage_max"]) == (1.0, 0.7)
    assert lookup({"a": {"p": {"x": True}}}, "a.*.x") is None  # a flag is not a number
    assert lookup({"a": 3}, "a.*.x") is None


def test_csv_and_jsonl_agree() -> None:
    rows = _rows()
    cols = columns(AXES)
    assert cols[:6] == ["cell_id", "forget", "partition.parties", "seed", "model", "status"]
    assert columns(["model"])[1] == "axis.model"  # an axis over the model section keeps the model column
    parsed = list(csv.DictReader(csv_text(rows, cols).splitlines()))
    lines = [json.loads(line) for line in jsonl_text(rows, cols).splitlines()]
    assert len(parsed) == len(lines) == len(rows)
    assert parsed[1]["forget"] == lines[1]["forget"] == '{"kind":"class","classes":[0]}'
    assert parsed[1]["cka_original"] == "" and lines[1]["cka_original"] is None
    assert parsed[1]["removal"] == "false" and lines[1]["removal"] is False
    assert float(parsed[1]["retain_test_acc"]) == lines[1]["retain_test_acc"] == 0.9


def test_summary_groups_over_seeds() -> None:
    rows = _rows()
    groups = summarize(rows, AXES)
    assert [(dict(g.group)["partition.parties"], g.model, g.n) for g in groups] == [
        (2, "original", 3),
        (2, "neggrad", 3),
        (4, "original", 1),
        (4, "neggrad", 1),
    ]
    neggrad = groups[1]
    assert neggrad.stats["retain_test_acc"].mean == pytest.approx(0.9)
    assert neggrad.stats["retain_test_acc"].std == pytest.approx(0.1)
    assert neggrad.counts["trilemma"] == [("suppression", 2), ("removal", 1)]
    text = summary_markdown(rows, AXES, title="t", total_cells=6)
    assert "6 cells: 4 finished, 1 failed, 1 not run yet." in text
    assert '## forget={"kind":"class","classes":[0]}, partition.parties=2' in text
    line = next(x for x in text.splitlines() if x.startswith("| neggrad | 3 |"))
    assert "| 90.0 ± 10.0 |" in line and "| +5.0 ± 0.0 |" in line and "suppression 2/3, removal 1/3" in line
    assert "| +25.0 ± 0.0 | – |" in line  # relearning top gap, and full (missing everywhere)
    one = next(x for x in text.splitlines() if x.startswith("| neggrad | 1 |"))
    assert "| 70.0 |" in one and "| -10.0 |" in one  # one seed: no spread
    assert "## Failed cells" in text and "- `b1` (" in text and "): RuntimeError: boom" in text


# --------------------------------------------------------------------------------------------
# Real sweeps on a local Ray


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A 2 x 2 sweep (party counts x seeds) on a local Ray with 2 workers, run once."""
    out = tmp_path_factory.mktemp("sweep") / "out"
    sweep = sweep_from_dict(_config({"partition.parties": [2, 3], "seed": [0, 1]}))
    tag = uuid.uuid4().hex
    seen: list[int] = []
    statuses: list[SweepStatus] = []

    def on_status(status: SweepStatus) -> None:
        statuses.append(status)
        if status.running and not seen:
            seen.extend(_tagged(tag))

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(TAG, tag)
        mp.delenv("RAY_ADDRESS", raising=False)
        start = time.perf_counter()
        result = run_sweep(sweep, out, workers=2, on_status=on_status)
        wall = time.perf_counter() - start
    yield {"sweep": sweep, "out": out, "result": result, "tag": tag, "seen": seen, "statuses": statuses, "wall": wall}


@pytest.mark.processes
def test_sweep_runs_every_cell(finished_sweep: dict[str, Any]) -> None:
    out, result, sweep = finished_sweep["out"], finished_sweep["result"], finished_sweep["sweep"]
    assert result.ok and len(result.ran) == 4 and not result.skipped
    for cell in sweep.cells:
        assert (out / "cells" / cell.id / "report.json").is_file()
        assert (out / "cells" / cell.id / "config.yaml").is_file()
    rows = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    assert len(rows) == 4 * 3  # cells x models (original, retrain, finetune)
    assert len((out / "results.jsonl").read_text().splitlines()) == 12
    assert {r["model"] for r in rows} == {"original", "retrain", "finetune"}
    assert {(r["partition.parties"], r["seed"]) for r in rows} == {("2", "0"), ("2", "1"), ("3", "0"), ("3", "1")}
    retrain = [r for r in rows if r["model"] == "retrain"]
    assert all(float(r["lpr_gap"]) == 0.0 for r in retrain)
    # Retrain passes its own checks; on this tiny 2-epoch run a control may show no power, so
    # it is removal or inconclusive, never refused.
    assert all(r["trilemma"] in ("removal", "inconclusive") for r in retrain)
    assert all("fail" not in (r["output_forgetting"], r["representation_forgetting"]) for r in retrain)
    assert all(r["relearning_top_area_gap"] != "" and r["retain_test_acc"] != "" for r in rows)
    # The table's numbers are the cells' reports.
    cell = sweep.cells[0]
    report = json.loads((out / "cells" / cell.id / "report.json").read_text())
    row = next(r for r in rows if r["cell_id"] == cell.id and r["model"] == "finetune")
    assert float(row["lpr"]) == report["models"]["finetune"]["representation"]["fused"]["lpr"]
    summary = (out / "summary.md").read_text()
    assert "4 cells: 4 finished, 0 failed." in summary
    assert "## partition.parties=2" in summary and "## partition.parties=3" in summary
    assert sum(line.startswith("| finetune | 2 | ") for line in summary.splitlines()) == 2
    assert " ± " in summary
    assert yaml.safe_load((out / "sweep.yaml").read_text())["sweep"]["axes"]["seed"] == [0, 1]
    last = finished_sweep["statuses"][-1]
    assert (last.total, last.finished, last.failed, last.running) == (4, 4, 0, 0) and last.eta_s == 0


@pytest.mark.processes
def test_no_ray_process_is_left(finished_sweep: dict[str, Any]) -> None:
    assert finished_sweep["seen"], "the check found no Ray process while cells ran, so it proves nothing"
    assert _wait_gone(finished_sweep["tag"]) == []


@pytest.mark.processes
def test_rerun_skips_finished_cells(
    finished_sweep: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import ray

    out, sweep = finished_sweep["out"], finished_sweep["sweep"]
    reports = {c.id: out / "cells" / c.id / "report.json" for c in sweep.cells}
    mtimes = {cid: p.stat().st_mtime_ns for cid, p in reports.items()}
    table = (out / "results.csv").read_text()
    (out / "results.csv").unlink()

    def no_ray(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a rerun of a finished sweep must not start Ray")

    monkeypatch.setattr(ray, "init", no_ray)
    cfg = _write(out.parent / "sweep.yaml", sweep.raw)
    start = time.perf_counter()
    assert main(["sweep", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert time.perf_counter() - start < finished_sweep["wall"]
    assert "4 cells, 0 run, 4 already finished, 0 failed" in capsys.readouterr().out
    assert {cid: p.stat().st_mtime_ns for cid, p in reports.items()} == mtimes
    assert (out / "results.csv").read_text() == table  # rebuilt, complete

    # Another base config is refused before anything runs, naming --overwrite.
    assert main(["sweep", str(cfg), "--out", str(out), "--quiet", "--set", "train.epochs=1"]) == EXIT_INPUT_ERROR
    assert "pass --overwrite" in capsys.readouterr().err
    assert {cid: p.stat().st_mtime_ns for cid, p in reports.items()} == mtimes


PLUGIN_CODE = f'''
import os

from vfl_sim.methods import PhaseParams, UnlearningContext, UnlearningMethod, register_method


@register_method("sweep_test_explode")
class Explode(UnlearningMethod):
    Params = PhaseParams
    supports = frozenset({{"class"}})

    def unlearn(self, ctx: UnlearningContext) -> None:
        if os.environ.get("{EXPLODE}") == "1":
            raise RuntimeError("boom from the sweep test plugin")
'''


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder with a plugin method that raises at run time while ``EXPLODE=1``, as the
    working directory (plugins are imported from there, in the driver and in Ray's workers)."""
    from vfl_sim.methods.registry import METHODS

    (tmp_path / f"{PLUGIN}.py").write_text(PLUGIN_CODE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield tmp_path
    # Other tests list every registered method; leave the registry as it was.
    METHODS.unregister("sweep_test_explode")
    sys.modules.pop(PLUGIN, None)


@pytest.mark.processes
def test_a_failing_cell_is_reported_and_the_others_finish(
    plugin_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = _config({"methods": [["retrain"], ["retrain", "sweep_test_explode"]]})
    raw["plugins"] = [PLUGIN]
    cfg = _write(plugin_dir / "sweep.yaml", raw)
    out = plugin_dir / "out"
    good, bad = sweep_from_dict(raw).cells
    tag = uuid.uuid4().hex
    monkeypatch.setenv(TAG, tag)
    monkeypatch.setenv(EXPLODE, "1")  # Ray's workers inherit it

    assert main(["sweep", str(cfg), "--out", str(out), "--workers", "2", "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "2 cells, 1 run, 0 already finished, 1 failed" in captured.out
    # A plugin's failure names the method and the plugin's line (vfl_sim.errors.PluginError).
    expected = (
        f"PluginError: method 'sweep_test_explode' failed in {PLUGIN}.py:14: "
        "RuntimeError: boom from the sweep test plugin"
    )
    assert f"failed: {bad.id}: {expected}" in " ".join(captured.err.split())
    error = json.loads((out / "cells" / f"{bad.id}.error.json").read_text())
    assert error["error"] == expected
    assert "raise RuntimeError" in error["traceback"] and error["overrides"] == bad.overrides
    assert (out / "cells" / good.id / "report.json").is_file()
    assert not (out / "cells" / bad.id / "report.json").exists()
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["cell_id"], r["status"]) for r in rows] == [(good.id, "finished")] * 2 + [(bad.id, "failed")]
    assert rows[-1]["error"] == expected
    assert f"- `{bad.id}` (methods=" in (out / "summary.md").read_text()
    assert _wait_gone(tag) == []

    # Fixed: a rerun runs only the failed cell (from the checkpoints its partial run kept).
    monkeypatch.delenv(EXPLODE)
    mtime = (out / "cells" / good.id / "report.json").stat().st_mtime_ns
    assert main(["sweep", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert "2 cells, 1 run, 1 already finished, 0 failed" in capsys.readouterr().out
    assert (out / "cells" / good.id / "report.json").stat().st_mtime_ns == mtime
    assert not (out / "cells" / f"{bad.id}.error.json").exists()
    report = json.loads((out / "cells" / bad.id / "report.json").read_text())
    assert list(report["models"]) == ["original", "retrain", "sweep_test_explode"]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 + 3 and {r["status"] for r in rows} == {"finished"}
    assert _wait_gone(tag) == []


def test_load_sweep_reads_the_shipped_example() -> None:
    sweep = load_sweep(Path(__file__).parent.parent / "configs" / "sweep_digits.yaml")
    assert len(sweep.cells) == 6 and "seed" in sweep.axes
