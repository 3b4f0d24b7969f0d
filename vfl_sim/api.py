"""The Python API: run experiments and sweeps, and read their results, from notebooks and scripts.

::

    from vfl_sim import api

    run = api.run("configs/digits.yaml", overrides={"train.epochs": 1}, out="runs/digits")
    run.to_pandas()                          # one row per model, the headline metrics as columns
    run.verdict("finetune").trilemma         # the certificate, as objects
    api.load_run("runs/digits")              # a finished run folder, read back

Bad input raises a :class:`~vfl_sim.errors.VflSimError` with a one-line message, as the CLI
prints it: a :class:`~vfl_sim.errors.ConfigError` for a bad config or override, a
:class:`~vfl_sim.errors.RunFolderError` for a folder that is not a finished run or sweep.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path, PurePath
from typing import Any, TypeAlias

import pandas as pd
import yaml

from vfl_sim import sweep as sweeps
from vfl_sim.audits.certificate import Certificate, Certification, Check, Tolerance, Verdict
from vfl_sim.config import ExperimentConfig, config_from_dict, load_config, read_yaml
from vfl_sim.errors import ConfigError, RunFolderError
from vfl_sim.experiment import prepare, read_report
from vfl_sim.forget import ORIGINAL
from vfl_sim.progress import ProgressReporter
from vfl_sim.runfolder import partial_dir
from vfl_sim.runtimes.base import check_runtime, run_experiment
from vfl_sim.sweep_table import METRIC_NAMES, METRICS, columns, lookup

__all__ = [
    "Certificate",
    "Check",
    "Run",
    "SweepRun",
    "Verdict",
    "load_run",
    "load_sweep",
    "run",
    "run_sweep",
]

ConfigSource: TypeAlias = str | os.PathLike[str] | Mapping[str, Any] | ExperimentConfig
"""A YAML config file, a mapping shaped like one, or a validated config."""

Overrides: TypeAlias = Iterable[str] | Mapping[str, Any]
"""``--set``-style ``"key=value"`` strings, or a mapping of dotted keys to values."""


# --------------------------------------------------------------------------------------------
# One experiment


@dataclass(frozen=True)
class Run:
    """A finished run: its folder, config and report, with the certificate as objects.

    Attributes
    ----------
    folder
        The run folder (``report.json``, ``report.md``, ``config.yaml``, ``checkpoints/``).
    config
        The run's validated config.
    report
        ``report.json`` as a dict.
    """

    folder: Path
    config: ExperimentConfig = field(repr=False)
    report: dict[str, Any] = field(repr=False)

    @property
    def models(self) -> list[str]:
        """The models in report order: ``original``, then the methods."""
        return list(self.report["models"])

    @property
    def controls(self) -> dict[str, str]:
        """``{control: role}`` of the controls certified beside the models (``negative``,
        ``suppression``, ``calibration``)."""
        return {name: entry["role"] for name, entry in self.report.get("controls", {}).items()}

    @cached_property
    def certification(self) -> Certification:
        """Every certificate (controls included), the tolerances used and each verdict's power."""
        cert = self.report.get("audit", {}).get("certificate") or {}
        entries = {**self.report["models"], **self.report.get("controls", {})}
        try:
            return Certification(
                {name: Certificate.from_dict(e["certificate"]) for name, e in entries.items() if e.get("certificate")},
                {name: Tolerance.from_dict(t) for name, t in cert.get("tolerances", {}).items()},
                dict(cert.get("power", {})),
                tuple((cert.get("calibration") or {}).get("retrains", ())),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RunFolderError(f"{self.folder}/report.json: a certificate is damaged ({exc!r})") from None

    @property
    def certificates(self) -> dict[str, Certificate]:
        """``{model: Certificate}``, the models first, then the controls."""
        return self.certification.certificates

    def verdict(self, model: str) -> Certificate:
        """The certificate of ``model`` (a model or a control of this run)."""
        try:
            return self.certificates[model]
        except KeyError:
            known = ", ".join(self.certificates) or "none"
            raise ConfigError(f"{self.folder}: no certificate for model {model!r} (certified: {known})") from None

    def to_pandas(self) -> pd.DataFrame:
        """One row per model, then per control: ``model``, ``role`` (``original``, ``method``,
        or the control's role) and the headline metrics, the same columns as a sweep's
        ``results.csv`` (empty where an audit does not apply)."""
        entries = [(name, "original" if name == ORIGINAL else "method", e) for name, e in self.report["models"].items()]
        entries += [(name, e["role"], e) for name, e in self.report.get("controls", {}).items()]
        rows = [{"model": n, "role": r, **{col: lookup(e, path) for col, path in METRICS}} for n, r, e in entries]
        return pd.DataFrame(rows, columns=["model", "role", *METRIC_NAMES])


def run(
    config: ConfigSource,
    *,
    overrides: Overrides = (),
    out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
) -> Run:
    """Run one experiment, as ``vfl-sim run`` does, on the runtime its config names.

    Parameters
    ----------
    config
        A YAML config file, a mapping shaped like one, or an :class:`ExperimentConfig`. A
        config with a ``sweep:`` section is refused: see :func:`run_sweep`.
    overrides
        ``["train.epochs=2", ...]`` as ``--set`` takes them, or ``{"train.epochs": 2}``.
    out
        The run folder; default ``runs/<name>-<timestamp>``, as the CLI.
    overwrite, resume
        Replace a non-empty run folder; finish an interrupted run in ``out`` (a no-op on a
        finished one).
    progress
        Show progress bars (on stderr).

    Returns
    -------
    Run
        The finished run.

    Raises
    ------
    VflSimError
        A bad config, override or run folder (nothing is trained).
    """
    cfg = _config(config, overrides)
    if resume and out is None:
        raise ConfigError("resume=True needs out, the run folder to finish")
    folder = Path(out) if out is not None else _default_out(cfg.name)
    check_runtime(cfg)
    report = run_experiment(
        prepare(cfg), folder, overwrite=overwrite, resume=resume, progress=ProgressReporter(enabled=progress)
    )
    return Run(folder, cfg, report)


def load_run(folder: str | os.PathLike[str]) -> Run:
    """A finished run folder, read back (nothing is run or imported from its plugins).

    Raises
    ------
    RunFolderError
        ``folder`` is missing, unfinished, a sweep folder, or has a damaged report or config.
    """
    folder = Path(folder)
    if not (folder / "report.json").is_file():
        raise RunFolderError(f"{folder} is not a finished run folder: {_why_not_a_run(folder)}")
    report = read_report(folder)
    saved = folder / "config.yaml"
    if not saved.is_file():
        raise RunFolderError(f"{folder} is damaged: it has a report.json but no config.yaml")
    try:
        config = config_from_dict(read_yaml(saved) or {})
    except ConfigError as exc:
        raise RunFolderError(f"{saved} is damaged: {exc}") from None
    return Run(folder, config, report)


def _why_not_a_run(folder: Path) -> str:
    if partial_dir(folder).is_dir():
        return f"its run did not finish ({partial_dir(folder).name} holds it); finish it with resume=True"
    if not folder.exists():
        return "no such folder"
    if not folder.is_dir():
        return "it is a file"
    if (folder / sweeps.SWEEP_FILE).is_file():
        return "it is a sweep folder; read it with load_sweep()"
    return "it has no report.json"


# --------------------------------------------------------------------------------------------
# Sweeps


@dataclass(frozen=True)
class SweepRun:
    """A sweep folder: its grid and every finished cell's run.

    Attributes
    ----------
    folder
        The sweep folder (``cells/``, ``results.csv``, ``results.jsonl``, ``summary.md``,
        ``sweep.yaml``).
    sweep
        The grid: its name, settings, base config and cells.
    """

    folder: Path
    sweep: sweeps.Sweep = field(repr=False)

    @property
    def cells(self) -> list[str]:
        """Every cell's id, in grid order."""
        return [c.id for c in self.sweep.cells]

    @property
    def finished(self) -> list[str]:
        """The ids of the cells with a finished run."""
        return [c.id for c in self.sweep.cells if (sweeps.cell_dir(self.folder, c) / "report.json").is_file()]

    @property
    def failed(self) -> dict[str, str]:
        """``{cell id: error line}`` of the cells whose last run raised."""
        found = {}
        for c in self.sweep.cells:
            path = sweeps.error_file(self.folder, c)
            if path.is_file():
                try:
                    found[c.id] = str(json.loads(path.read_text())["error"])
                except (OSError, ValueError, KeyError, TypeError):
                    found[c.id] = f"(unreadable error file {path.name})"
        return found

    def cell(self, cell_id: str) -> Run:
        """The run of one finished cell."""
        if cell_id not in self.cells:
            raise ConfigError(f"{self.folder}: no cell {cell_id!r} in this sweep (cells: {', '.join(self.cells)})")
        return load_run(self.folder / sweeps.CELLS / cell_id)

    def runs(self) -> dict[str, Run]:
        """``{cell id: Run}`` of every finished cell."""
        return {cid: self.cell(cid) for cid in self.finished}

    def to_pandas(self) -> pd.DataFrame:
        """The sweep's results table: one row per model of each finished cell and one per
        failed cell; the columns of ``results.csv`` (cell id, one per axis, seed, model,
        status, error, the metrics). Read from ``results.jsonl``, its twin, so that values
        keep their types (``None`` where empty, booleans, ``n/a`` as a string)."""
        path = self.folder / "results.jsonl"
        try:
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except FileNotFoundError:
            raise RunFolderError(f"{self.folder}: no results table yet (run the sweep to write it)") from None
        except (OSError, ValueError) as exc:
            raise RunFolderError(f"{path} is unreadable ({type(exc).__name__}: {exc})") from None
        return pd.DataFrame(rows, columns=columns(self.sweep.axes))


def run_sweep(
    config: str | os.PathLike[str] | Mapping[str, Any],
    *,
    overrides: Overrides = (),
    out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    workers: int | None = None,
    ray_address: str | None = None,
) -> SweepRun:
    """Run a grid of experiments, as ``vfl-sim sweep`` does: each unfinished cell a Ray task.

    Parameters
    ----------
    config
        A sweep config (a config with a ``sweep:`` section): a YAML file or a mapping.
    overrides
        As for :func:`run`; they apply to the base config or to ``sweep.*``.
    out
        The sweep folder; default ``runs/<name>-sweep-<timestamp>``. Rerun with the same ``out``
        to finish a sweep (finished cells are skipped).
    overwrite
        Run every cell again.
    workers
        Cells at once (default ``sweep.workers``, else the CPUs).
    ray_address
        A Ray cluster to run on (default ``$RAY_ADDRESS``; without either a local Ray is
        started and stopped).

    Returns
    -------
    SweepRun
        A cell that raises does not raise here: see :attr:`SweepRun.failed`.
    """
    sets = _override_strings(overrides)
    if isinstance(config, Mapping):
        grid = sweeps.sweep_from_dict(config, sets)
    else:
        grid = sweeps.load_sweep(_path(config), sets)
    folder = Path(out) if out is not None else _default_out(f"{grid.name}-sweep")
    result = sweeps.run_sweep(grid, folder, overwrite=overwrite, workers=workers, ray_address=ray_address)
    return SweepRun(result.out, grid)


def load_sweep(folder: str | os.PathLike[str]) -> SweepRun:
    """A sweep folder, read back (finished or not; nothing is run).

    Raises
    ------
    RunFolderError
        ``folder`` is missing, not a sweep folder, or its ``sweep.yaml`` is damaged.
    """
    folder = Path(folder)
    spec = folder / sweeps.SWEEP_FILE
    if not spec.is_file():
        why = "no such folder" if not folder.exists() else f"it has no {sweeps.SWEEP_FILE}"
        if (folder / "report.json").is_file():
            why = "it is a run folder; read it with load_run()"
        raise RunFolderError(f"{folder} is not a sweep folder: {why}")
    try:
        raw = read_yaml(spec)
        if not isinstance(raw, Mapping):
            raise ConfigError("not a mapping")
        grid = sweeps.sweep_from_dict(raw, check=False)
    except ConfigError as exc:
        raise RunFolderError(f"{spec} is damaged: {exc}") from None
    return SweepRun(folder, grid)


# --------------------------------------------------------------------------------------------
# Configs and overrides


class _OverrideDumper(yaml.SafeDumper):
    """Writes an override's value as the YAML ``--set`` would parse back to it."""


_OverrideDumper.add_representer(tuple, _OverrideDumper.represent_list)
_OverrideDumper.add_multi_representer(PurePath, lambda d, p: d.represent_str(str(p)))
_DOCUMENT_END = "...\n"  # what YAML writes after a lone scalar


def _override_strings(overrides: Overrides) -> list[str]:
    """``--set`` strings of ``overrides`` (a mapping's values written as YAML)."""
    if isinstance(overrides, str):
        return [overrides]
    if not isinstance(overrides, Mapping):
        return list(overrides)
    out = []
    for key, value in overrides.items():
        try:
            text = yaml.dump(value, Dumper=_OverrideDumper, default_flow_style=True, width=math.inf)
        except yaml.YAMLError:
            raise ConfigError(
                f"override {key!r}: {type(value).__name__} is not a config value "
                "(numbers, strings, booleans, None, and lists and mappings of them)"
            ) from None
        out.append(f"{key}={text.removesuffix(_DOCUMENT_END).strip()}")
    return out


def _config(config: ConfigSource, overrides: Overrides) -> ExperimentConfig:
    sets = _override_strings(overrides)
    if isinstance(config, ExperimentConfig):
        return config_from_dict(config.model_dump(mode="json"), sets) if sets else config
    if isinstance(config, Mapping):
        if sweeps.SWEEP_SECTION in config:
            raise _sweep_refused("this config")
        return config_from_dict(config, sets)
    path = _path(config)
    if sweeps.has_sweep_section(path):
        raise _sweep_refused(str(path))
    return load_config(path, sets)


def _path(config: object) -> Path:
    if not isinstance(config, (str, os.PathLike)):
        raise ConfigError(
            f"config must be a path to a YAML file, a mapping or an ExperimentConfig (got {type(config).__name__})"
        )
    return Path(config)


def _sweep_refused(what: str) -> ConfigError:
    return ConfigError(
        f"{what} is a sweep config (it has a '{sweeps.SWEEP_SECTION}:' section): run its grid with "
        "vfl_sim.api.run_sweep(), or remove the section to run one experiment"
    )


def _default_out(name: str) -> Path:
    """``runs/<name>-<timestamp>``, as ``vfl-sim run`` names a run folder."""
    return Path("runs") / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"
