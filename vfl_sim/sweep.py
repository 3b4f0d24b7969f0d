"""Experiment grids: ``vfl-sim sweep CONFIG``.

A sweep config is an experiment config with a top-level ``sweep:`` section whose ``axes`` map
dotted config keys to lists of values; the cells are their cartesian product, each an ordinary
experiment (the base config with the cell's values set). :func:`load_sweep` validates the base
and every cell (schema, dataset, partition, forget request, methods) before anything runs or
is written, and names the axis and value behind a bad cell.

:func:`run_sweep` runs each unfinished cell as a Ray task (one CPU each) on a local Ray it
starts with a bounded number of workers, or on an existing cluster (``ray_address`` or
``RAY_ADDRESS``). Every cell writes its own run folder ``OUT/cells/<id>/`` through
:meth:`vfl_sim.experiment.Experiment.run` (atomically, so a finished cell is one with a
``report.json``); a rerun skips finished cells of the same config and resumes interrupted
ones; a cell that raises is recorded in ``OUT/cells/<id>.error.json`` and does not stop the
others. ``results.csv``, ``results.jsonl`` (:mod:`vfl_sim.sweep_table`) and ``summary.md`` are
rebuilt from every finished cell.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import socket
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from vfl_sim.config import (
    NAME_PATTERN,
    ExperimentConfig,
    apply_overrides,
    config_from_dict,
    deep_copy,
    dump_config,
    read_yaml,
    set_dotted,
)
from vfl_sim.errors import ConfigError, RunFolderError, VflSimError, error_line, os_error_text
from vfl_sim.runfolder import partial_dir, write_atomic
from vfl_sim.sweep_table import (
    FAILED,
    FINISHED,
    cell_rows,
    failed_row,
    summary_markdown,
    write_tables,
)

log = logging.getLogger("vfl_sim")

SWEEP_SECTION = "sweep"
CELLS = "cells"
SWEEP_FILE = "sweep.yaml"
SUMMARY_FILE = "summary.md"
OUTPUTS = ("results.csv", "results.jsonl", SUMMARY_FILE)
TABLE_EVERY_S = 5.0  # rewrite the tables at most this often while cells finish
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class SweepSettings(BaseModel):
    """The ``sweep:`` section.

    Attributes
    ----------
    axes
        Dotted config key -> list of values; the cells are the cartesian product. A value
        replaces the key's whole value (a mapping given for ``forget`` replaces the base's
        ``forget`` section).
    name
        Name of the sweep (summary title, default folder ``runs/<name>-sweep-<time>``);
        default: the base config's ``name``.
    workers
        Cells run at once; on a local Ray also its CPUs. Default: the CPUs of this machine
        (local) or of the cluster, at most the cells to run.
    gpus_per_cell
        GPUs Ray reserves for each cell (for ``device: cuda``).
    retries
        Ray retries of a cell whose worker process died (a cell that raises is not retried).
    runtime_env
        Ray runtime environment of every cell (``working_dir``, ``py_modules``, ``pip``,
        ``env_vars``), for clusters where vfl-sim is not installed on the workers.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    axes: dict[str, list[Any]]
    name: Annotated[str, Field(min_length=1, max_length=100, pattern=NAME_PATTERN)] | None = None
    workers: Annotated[int, Field(ge=1)] | None = None
    gpus_per_cell: Annotated[float, Field(ge=0)] = 0.0
    retries: Annotated[int, Field(ge=0)] = 0
    runtime_env: dict[str, Any] | None = None

    @field_validator("axes", mode="before")
    @classmethod
    def _flatten(cls, axes: Any) -> Any:
        # An axis is always a list, so a mapping under ``axes`` is a section written out in
        # YAML (``partition: {parties: [2, 4]}``) or what ``--set sweep.axes.partition.parties=...``
        # makes of a dotted key: either way its leaves are dotted axes (a later one wins).
        if not isinstance(axes, Mapping):
            return axes
        flat: dict[str, Any] = {}

        def walk(prefix: str, node: Mapping[str, Any]) -> None:
            for key, value in node.items():
                name = f"{prefix}{key}"
                if isinstance(value, Mapping):
                    walk(name + ".", value)
                else:
                    flat[name] = value

        walk("", axes)
        return flat

    @field_validator("axes")
    @classmethod
    def _axes(cls, axes: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if not axes:
            raise ValueError("give at least one axis, e.g. {seed: [0, 1, 2]}")
        for key, values in axes.items():
            if not _KEY.match(key):
                raise ValueError(f"axis {key!r} is not a dotted config key such as partition.parties")
            if key == SWEEP_SECTION or key.startswith(SWEEP_SECTION + "."):
                raise ValueError(f"axis {key!r}: the sweep section cannot be swept")
            if not values:
                raise ValueError(f"axis {key!r} has no values")
            seen = [_canonical(v) for v in values]
            dup = next((v for i, v in enumerate(values) if seen[i] in seen[:i]), None)
            if dup is not None:
                raise ValueError(f"axis {key!r} lists {_render(dup)} more than once")
        return axes


@dataclass(frozen=True)
class Cell:
    """One experiment of the grid."""

    id: str
    overrides: dict[str, Any]
    raw: dict[str, Any]
    config: ExperimentConfig

    def describe(self) -> str:
        """``key=value, ...`` of the cell's axis values."""
        return ", ".join(f"{k}={_render(v)}" for k, v in self.overrides.items())


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: its settings, the config as given, the base and every cell."""

    name: str
    settings: SweepSettings
    raw: dict[str, Any]
    base: ExperimentConfig
    cells: list[Cell]

    @property
    def axes(self) -> list[str]:
        return list(self.settings.axes)


# --------------------------------------------------------------------------------------------
# The grid


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _render(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), default=str)


def expand_grid(axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of ``axes`` as ``{key: value}`` per cell, the last axis varying
    fastest."""
    keys = list(axes)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]


def _slug(text: str, limit: int) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-.")[:limit].strip("-.")


def cell_id(overrides: Mapping[str, Any]) -> str:
    """A stable, readable id of a cell: a slug of its axis values and a short hash of them.

    Keys are taken in sorted order, so reordering the axes of a sweep keeps every id (and a
    rerun finds its finished cells); the hash tells apart values whose slugs coincide.
    """
    keys = sorted(overrides)
    parts = [f"{_slug(k.rsplit('.', 1)[-1], 24)}-{_slug(_render(overrides[k]), 40) or 'x'}" for k in keys]
    digest = hashlib.sha256(_canonical({k: overrides[k] for k in keys}).encode()).hexdigest()[:8]
    return f"{'_'.join(parts)[:100].rstrip('_-.')}-{digest}"


def with_dotted(raw: Mapping[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of ``raw`` with the dotted ``key`` set to ``value`` (sections made as needed)."""
    out = deep_copy(raw)
    set_dotted(out, key, value, where=f"sweep.axes.{key}")
    return out


def _with_overrides(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = deep_copy(base)
    for key, value in overrides.items():
        out = with_dotted(out, key, value)
    return out


# --------------------------------------------------------------------------------------------
# Loading and validation


def _read_yaml(path: Path) -> Any:
    return read_yaml(path) or {}


def has_sweep_section(path: str | Path) -> bool:
    """Whether the YAML file at ``path`` has a top-level ``sweep:`` section (False when it
    cannot be read: the caller's own loading reports that)."""
    try:
        raw = _read_yaml(Path(path))
    except ConfigError:
        return False
    return isinstance(raw, Mapping) and SWEEP_SECTION in raw


def refuse_sweep_config(path: str | Path, command: str = "run") -> None:
    """Raise a :class:`ConfigError` pointing at ``vfl-sim sweep`` if ``path`` is a sweep config
    (a single-experiment command would otherwise call ``sweep`` an unknown field)."""
    if has_sweep_section(path):
        raise ConfigError(
            f"{path} is a sweep config (it has a '{SWEEP_SECTION}:' section): run its grid with "
            f"`vfl-sim sweep {path}`, or remove the section to {command} one experiment"
        )


def load_sweep(path: str | Path, overrides: Iterable[str] = (), *, check: bool = True) -> Sweep:
    """Read a sweep config file; see :func:`sweep_from_dict`."""
    raw = _read_yaml(Path(path))
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: the config must be a mapping of sections (data, partition, ..., sweep)")
    if SWEEP_SECTION not in raw:
        raise ConfigError(f"{path} has no '{SWEEP_SECTION}:' section; run one experiment with `vfl-sim run {path}`")
    return sweep_from_dict(raw, overrides, check=check)


def sweep_from_dict(raw: Mapping[str, Any], overrides: Iterable[str] = (), *, check: bool = True) -> Sweep:
    """Validate a sweep config: the ``sweep:`` section, the base config and every cell.

    Parameters
    ----------
    raw
        The config mapping with its ``sweep:`` section.
    overrides
        Dotted ``key=value`` overrides applied first (to the base, or to ``sweep.*``); the
        axes' values take precedence over the base in each cell.
    check
        Also build each cell's experiment (:func:`vfl_sim.experiment.prepare`: dataset,
        partition, models, forget request, methods), not only its config schema.

    Raises
    ------
    ConfigError
        On the first bad input, naming the field, or for a bad cell the axis and value.
    """
    merged = apply_overrides(dict(raw), overrides)
    section = merged.pop(SWEEP_SECTION, None)
    if not isinstance(section, Mapping):
        raise ConfigError(f"{SWEEP_SECTION}: must be a mapping with at least 'axes' (got {section!r})")
    try:
        settings = SweepSettings.model_validate(section)
    except ValidationError as err:
        raise ConfigError(_format_settings_error(err)) from None
    try:
        base = config_from_dict(merged)
    except ConfigError as exc:
        raise ConfigError(f"base config (before the sweep's axes are applied): {exc}") from None

    grid = expand_grid(settings.axes)
    cells = [_make_cell(merged, overrides_) for overrides_ in grid]
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):  # a hash collision of 8 hex digits: unheard of in practice
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ConfigError(f"two cells of the sweep share the id {dup}")
    if check:
        from vfl_sim.experiment import prepare

        for cell in cells:
            try:
                prepare(cell.config)
            except VflSimError as exc:
                raise ConfigError(_blame(merged, cell.overrides, exc, lambda r: prepare(config_from_dict(r)))) from None
    return Sweep(settings.name or base.name, settings, {**merged, SWEEP_SECTION: dict(section)}, base, cells)


def cell_config(raw: Mapping[str, Any]) -> ExperimentConfig:
    """A cell's validated config: any experiment config on the local runtime."""
    cfg = config_from_dict(raw)
    if cfg.runtime != "local":
        # A cell is one Ray task that runs its parties in-process; the Flower and Ray party
        # runtimes start processes of their own, one experiment at a time (vfl-sim run).
        raise ConfigError(
            f"runtime: a sweep runs every cell on the local runtime, one Ray task each (got '{cfg.runtime}')"
        )
    return cfg


def _make_cell(base_raw: Mapping[str, Any], overrides: dict[str, Any]) -> Cell:
    try:
        raw = _with_overrides(base_raw, overrides)
        cfg = cell_config(raw)
    except ConfigError as exc:
        raise ConfigError(_blame(base_raw, overrides, exc, cell_config)) from None
    return Cell(cell_id(overrides), overrides, raw, cfg)


def _blame(base_raw: Mapping[str, Any], overrides: Mapping[str, Any], exc: Exception, build: Callable[..., Any]) -> str:
    """The error of a bad cell, attributed to the first axis value that fails on its own with
    the base, or else to the combination of the cell's values."""
    for key, value in overrides.items():
        try:
            build(with_dotted(base_raw, key, value))
        except VflSimError as alone:
            return f"sweep.axes.{key} = {_render(value)}: {alone}"
    combo = ", ".join(f"{k}={_render(v)}" for k, v in overrides.items())
    return f"sweep cell {combo} (this combination of axis values): {exc}"


def _format_settings_error(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        allowed = ", ".join(sorted(SweepSettings.model_fields))
        return f"{SWEEP_SECTION}: unknown field '{first['loc'][-1]}'; allowed: {allowed}"
    if first["type"] == "missing":
        return f"{SWEEP_SECTION}.{loc}: missing (a mapping of dotted config keys to lists of values)"
    if first["type"] == "string_pattern_mismatch":
        msg = "must be one folder name: letters, digits and - _ . = +, not starting with '.'"
    got = first.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    return f"{SWEEP_SECTION}.{loc}: {msg}{shown}"


# --------------------------------------------------------------------------------------------
# One cell (runs in a Ray worker)


def run_cell(raw: dict[str, Any], out_dir: str, resume: bool) -> dict[str, Any]:
    """Run one cell's experiment into ``out_dir``; the Ray task body.

    Exceptions are returned as data (``status: failed`` with the error line and traceback),
    so a cell's own error is recorded as it is, not as Ray's wrapper, and never retried.
    """
    import torch

    from vfl_sim.experiment import prepare
    from vfl_sim.runtimes.base import run_experiment

    info = {"host": socket.gethostname(), "pid": os.getpid()}
    start = time.perf_counter()
    try:
        cfg = config_from_dict(raw)
        # One CPU per task: torch's default of one thread per core would make every cell
        # compete for all cores.
        torch.set_num_threads(cfg.threads or 1)
        report = run_experiment(prepare(cfg), out_dir, resume=resume, overwrite=not resume)
    except Exception as exc:
        return {
            "status": FAILED,
            "error": error_line(exc),
            "traceback": traceback.format_exc(),
            "runtime_s": time.perf_counter() - start,
            **info,
        }
    return {
        "status": FINISHED,
        "report": report,
        "config_yaml": dump_config(cfg),
        "runtime_s": time.perf_counter() - start,
        **info,
    }


# --------------------------------------------------------------------------------------------
# Running


@dataclass(frozen=True)
class SweepStatus:
    """Where a running sweep stands (cells of this run: skipped ones are not counted)."""

    total: int
    finished: int
    failed: int
    running: int
    skipped: int
    elapsed_s: float

    @property
    def done(self) -> int:
        return self.finished + self.failed

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the rate cells have completed so far (``None`` before the first)."""
        if self.done == 0:
            return None
        return self.elapsed_s / self.done * (self.total - self.done)


@dataclass
class SweepResult:
    """What a sweep did."""

    out: Path
    cells: int
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def not_run(self) -> int:
        return self.cells - len(self.ran) - len(self.skipped) - len(self.failed)

    @property
    def ok(self) -> bool:
        return not self.failed and self.not_run == 0


def cell_dir(out: Path, cell: Cell) -> Path:
    return out / CELLS / cell.id


def error_file(out: Path, cell: Cell) -> Path:
    return out / CELLS / f"{cell.id}.error.json"


def _is_finished(folder: Path, cfg_yaml: str) -> bool:
    saved = folder / "config.yaml"
    return (folder / "report.json").is_file() and saved.is_file() and saved.read_text() == cfg_yaml


def _check_out(sweep: Sweep, out: Path, overwrite: bool) -> None:
    """Refuse a folder that is not this sweep's to continue, before anything is written."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    if overwrite or not out.is_dir():
        return
    if any(out.iterdir()) and not (out / SWEEP_FILE).is_file():
        raise ConfigError(
            f"output folder {out} exists, is not empty and is not a sweep folder (no {SWEEP_FILE}); "
            "choose another --out or pass --overwrite"
        )
    stale = []
    for cell in sweep.cells:
        want = dump_config(cell.config)
        for folder in (cell_dir(out, cell), partial_dir(cell_dir(out, cell))):
            saved = folder / "config.yaml"
            if saved.is_file() and saved.read_text() != want:
                stale.append(cell.id)
                break
    if stale:
        which = f"cells {stale[0]} and {len(stale) - 1} more were" if len(stale) > 1 else f"cell {stale[0]} was"
        raise ConfigError(
            f"{out}: {which} run with another config than this sweep gives it (the base "
            "config or a --set changed); pass --overwrite to run every cell again, or choose another --out"
        )


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextmanager
def ray_session(address: str | None, cpus: int, runtime_env: dict[str, Any] | None) -> Iterator[int]:
    """Start a local Ray with ``cpus`` CPUs (``address`` None) or connect to the cluster at
    ``address`` (:func:`vfl_sim.runtimes.ray_start.ray_session`); yields the CPUs the cluster
    has, and shuts Ray down afterwards (a local Ray's processes end with it)."""
    import ray

    from vfl_sim.runtimes.ray_start import ray_session as connected

    with connected(
        address,
        num_cpus=cpus,
        # Reports are the only objects; a small store avoids reserving 30 % of memory.
        local_options={"object_store_memory": 256 * 1024**2},
        # No worker output in the driver's terminal (each cell's log stays in Ray's session folder).
        log_to_driver=False,
        logging_level=logging.WARNING,
        runtime_env=runtime_env,
    ):
        yield int(ray.cluster_resources().get("CPU", cpus))


def run_sweep(
    sweep: Sweep,
    out: str | Path,
    *,
    overwrite: bool = False,
    workers: int | None = None,
    ray_address: str | None = None,
    on_status: Callable[[SweepStatus], None] | None = None,
) -> SweepResult:
    """Run every unfinished cell of ``sweep`` as a Ray task and write the tables into ``out``.

    Parameters
    ----------
    sweep
        A validated sweep (:func:`load_sweep`).
    out
        The sweep folder: ``cells/<id>/`` (each cell's run folder), ``cells/<id>.error.json``
        (a cell that raised), ``results.csv``, ``results.jsonl``, ``summary.md``, ``sweep.yaml``.
    overwrite
        Run every cell again (``cells/`` and the tables are removed first); otherwise finished
        cells of the same config are skipped and interrupted ones resumed.
    workers
        Cells at once (overrides ``sweep.workers``); on a local Ray also its CPUs.
    ray_address
        Ray cluster to run on; default ``$RAY_ADDRESS``, and with neither (or ``local``) a
        local Ray is started and stopped.
    on_status
        Called with a :class:`SweepStatus` as cells start and finish, and about every second.

    Returns
    -------
    SweepResult
        The cells run, skipped and failed, and the table's rows. A failed cell does not raise.
    """
    import ray

    from vfl_sim.runtimes.ray_start import ray_address as resolve_ray_address

    start = time.perf_counter()
    out = Path(out).absolute()  # workers may not share the driver's working directory
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1 (got {workers})")
    address = resolve_ray_address(ray_address)
    _check_out(sweep, out, overwrite)

    try:
        if overwrite:
            shutil.rmtree(out / CELLS, ignore_errors=True)
            for name in OUTPUTS:
                (out / name).unlink(missing_ok=True)
        (out / CELLS).mkdir(parents=True, exist_ok=True)
        write_atomic(out / SWEEP_FILE, yaml.safe_dump(sweep.raw, sort_keys=False))
    except OSError as exc:
        raise RunFolderError(f"cannot write the sweep folder {out}: {os_error_text(exc)}") from None

    result = SweepResult(out=out, cells=len(sweep.cells))
    rows: dict[str, list[dict[str, Any]]] = {}
    todo: list[Cell] = []
    for cell in sweep.cells:
        folder = cell_dir(out, cell)
        if _is_finished(folder, dump_config(cell.config)):
            try:
                report = json.loads((folder / "report.json").read_text())
            except (OSError, json.JSONDecodeError):
                todo.append(cell)  # a damaged report: run the cell again
                continue
            rows[cell.id] = cell_rows(cell.id, cell.overrides, cell.config.seed, report)
            result.skipped.append(cell.id)
        else:
            todo.append(cell)

    def finish() -> None:
        result.rows = [r for c in sweep.cells for r in rows.get(c.id, [])]
        write_tables(result.rows, sweep.axes, out)
        summary = summary_markdown(result.rows, sweep.axes, title=sweep.name, total_cells=len(sweep.cells))
        write_atomic(out / SUMMARY_FILE, summary)
        result.wall_s = time.perf_counter() - start

    if not todo:
        log.info("every cell of %s is finished; tables rebuilt", out)
        finish()
        return result

    want = workers or sweep.settings.workers
    local_cpus = min(want or _available_cpus(), len(todo))
    log.info(
        "sweep %s: %d cells, %d already finished, running %d on %s",
        sweep.name,
        len(sweep.cells),
        len(result.skipped),
        len(todo),
        f"the Ray cluster at {address}" if address else f"a local Ray with {local_cpus} workers",
    )
    run_start = time.perf_counter()
    inflight: dict[Any, Cell] = {}
    last_table = time.perf_counter()

    def status() -> None:
        if on_status is not None:
            on_status(
                SweepStatus(
                    total=len(todo),
                    finished=len(result.ran),
                    failed=len(result.failed),
                    running=len(inflight),
                    skipped=len(result.skipped),
                    elapsed_s=time.perf_counter() - run_start,
                )
            )

    try:
        status()
        with ray_session(address, local_cpus, sweep.settings.runtime_env) as cluster_cpus:
            window = min(want or cluster_cpus, len(todo)) if address else local_cpus
            task = ray.remote(run_cell)
            pending = deque(todo)
            while pending or inflight:
                while pending and len(inflight) < window:
                    cell = pending.popleft()
                    resume = partial_dir(cell_dir(out, cell)).is_dir()
                    ref = task.options(
                        num_cpus=1,
                        num_gpus=sweep.settings.gpus_per_cell,
                        max_retries=sweep.settings.retries,
                        name=f"vfl-sim cell {cell.id}",
                    ).remote(cell.raw, str(cell_dir(out, cell)), resume)
                    inflight[ref] = cell
                status()
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
                for ref in ready:
                    cell = inflight.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except Exception as exc:  # the worker died, was killed, or lost its node
                        outcome = {"status": FAILED, "error": error_line(exc), "traceback": str(exc)}
                    rows[cell.id] = _record(out, cell, outcome, result)
                if ready and time.perf_counter() - last_table > TABLE_EVERY_S:
                    finish()
                    last_table = time.perf_counter()
            status()
    finally:
        # Also on Ctrl-C: the tables hold every cell that finished; a rerun does the rest.
        finish()
    return result


def _record(out: Path, cell: Cell, outcome: Mapping[str, Any], result: SweepResult) -> list[dict[str, Any]]:
    """Keep a cell's outcome: its rows, and its error file (written or removed)."""
    folder = cell_dir(out, cell)
    errors = error_file(out, cell)
    if outcome.get("status") == FINISHED:
        report = outcome["report"]
        if not (folder / "report.json").is_file():
            # The cell ran on a node that does not share this folder: keep its report and
            # config here (its checkpoints stay on that node).
            folder.mkdir(parents=True, exist_ok=True)
            write_atomic(folder / "config.yaml", outcome["config_yaml"])
            write_atomic(folder / "report.json", json.dumps(report, indent=2))
        errors.unlink(missing_ok=True)
        result.ran.append(cell.id)
        log.info("cell %s finished in %.1fs", cell.id, outcome.get("runtime_s", 0.0))
        return cell_rows(cell.id, cell.overrides, cell.config.seed, report)
    error = str(outcome.get("error") or "unknown error")
    record = {
        "cell_id": cell.id,
        "overrides": cell.overrides,
        "error": error,
        "traceback": outcome.get("traceback"),
        "host": outcome.get("host"),
        "pid": outcome.get("pid"),
        "runtime_s": outcome.get("runtime_s"),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_atomic(errors, json.dumps(record, indent=2, default=str))
    result.failed[cell.id] = error
    log.warning("cell %s failed: %s", cell.id, error)
    return [failed_row(cell.id, cell.overrides, cell.config.seed, error)]


# --------------------------------------------------------------------------------------------
# Progress


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class SweepProgressBar:
    """One rich bar for a whole sweep: finished / failed / running cells and an ETA.

    Use it as a context manager and pass it as ``on_status`` to :func:`run_sweep`;
    ``enabled=False`` makes it silent.
    """

    def __init__(self, console: Console | None = None, enabled: bool = True) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> SweepProgressBar:
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]sweep"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[counts]}"),
                TimeElapsedColumn(),
                TextColumn("eta {task.fields[eta]}"),
                console=self.console,
                transient=False,
            )
            self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, status: SweepStatus) -> None:
        if self._progress is None:
            return
        counts = f"{status.finished} finished, {status.failed} failed, {status.running} running"
        if status.skipped:
            counts += f" ({status.skipped} done before)"
        eta = "-:--:--" if status.eta_s is None else _clock(status.eta_s)
        if self._task is None:
            self._task = self._progress.add_task("sweep", total=status.total, counts=counts, eta=eta)
        self._progress.update(self._task, completed=status.done, counts=counts, eta=eta)
