"""The ``vfl-sim`` command line.

``vfl-sim run CONFIG`` runs one experiment, ``validate`` checks a config without running it,
``demo`` runs the embedded default (digits, 2 parties, forget class 0, every registered method),
``bench`` times the split runtime against a monolithic model, ``sweep CONFIG`` runs a grid of
experiments as Ray tasks, and ``methods`` lists what is registered. Input errors print one line
and exit with code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

from vfl_sim import __version__
from vfl_sim.errors import ConfigError, VflSimError

EXIT_INPUT_ERROR = 2
log = logging.getLogger("vfl_sim")


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (the usage is for ``-h``), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_INPUT_ERROR, f"error: {self.prog}: {_one_line(message)}; see `{self.prog} -h`\n")


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vfl-sim", description="Vertical federated learning simulator with unlearning audits.")
    p.add_argument("--version", action="version", version=f"vfl-sim {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config field with a dotted key, e.g. --set train.epochs=5 (repeatable)",
        )
        sp.add_argument("--quiet", "-q", action="store_true", help="no progress bars or log lines; only the results")

    run = sub.add_parser("run", help="run an experiment from a YAML config")
    run.add_argument("config", type=Path)
    run.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<name>-<timestamp>)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty run folder")
    run.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted run of the same config in --out (from its checkpoints and request "
        "ledger); a no-op on a completed one",
    )
    common(run)

    val = sub.add_parser(
        "validate", help="check a config (and its dataset, partition and forget request) without running"
    )
    val.add_argument("config", type=Path)
    val.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    demo = sub.add_parser("demo", help="digits, 2 parties, forget class 0, every registered method, audit")
    demo.add_argument("--out", type=Path, default=None)
    demo.add_argument("--overwrite", action="store_true")
    common(demo)

    bench = sub.add_parser("bench", help="epoch time of the split (local) runtime vs one monolithic PyTorch model")
    bench.add_argument(
        "config",
        type=Path,
        nargs="?",
        default=None,
        help="config to benchmark (default: digits and a 20,000-sample synthetic set)",
    )
    bench.add_argument("--epochs", type=int, default=5, help="timed epochs per repeat")
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    fc = sub.add_parser(
        "flower-config",
        help="hand an experiment to Flower by hand: write the server's config and each party's data to "
        "$VFL_SIM_SERVER_DIR and $VFL_SIM_PARTY_DATA, print the run config (TOML) for `flwr run ... --run-config FILE`",
    )
    fc.add_argument("config", type=Path)
    fc.add_argument("--out", type=Path, required=True, help="run folder the ServerApp writes (made absolute)")
    fc.add_argument("--overwrite", action="store_true")
    fc.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    sweep = sub.add_parser(
        "sweep", help="run a grid of experiments (a config with a sweep: section), each cell a Ray task"
    )
    sweep.add_argument("config", type=Path)
    sweep.add_argument(
        "--out",
        type=Path,
        default=None,
        help="sweep folder (default: runs/<name>-sweep-<timestamp>); rerun with the same --out to finish a sweep",
    )
    sweep.add_argument(
        "--overwrite", action="store_true", help="run every cell again (cells/ and the tables are replaced)"
    )
    sweep.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to run the cells on (default: $RAY_ADDRESS; without either, a local Ray is started)",
    )
    sweep.add_argument(
        "--workers", type=int, default=None, help="cells at once (default: sweep.workers, else the CPU count)"
    )
    sweep.add_argument(
        "--dry-run", action="store_true", help="validate every cell and list them; run and write nothing"
    )
    common(sweep)

    methods = sub.add_parser("methods", help="list registered unlearning methods and their parameters")
    methods.add_argument(
        "--plugins",
        nargs="+",
        default=[],
        metavar="PLUGIN",
        help="plugin modules or .py files to import first; their methods are listed with their origin",
    )

    audit = sub.add_parser("audit", help="audit a finished run again from its checkpoints (no training)")
    audit.add_argument("run_dir", type=Path)
    audit.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change an audit setting for this audit, e.g. --set audit.seed=7 (the model settings must stay)",
    )
    audit.add_argument("--quiet", "-q", action="store_true", help="no log lines; only the results")
    return p


def _setup_logging(quiet: bool) -> Console:
    console = Console(stderr=True)
    level = logging.WARNING if quiet else logging.INFO
    logging.basicConfig(
        level=level, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)], force=True
    )
    return console


def _default_out(name: str) -> Path:
    return Path("runs") / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def print_results(report: dict[str, Any], console: Console) -> None:
    from vfl_sim.report import certificate_rows, request_target, results_rows

    header, rows = results_rows(report)
    f = report["forget_request"]
    table = Table(
        title=f"{report['name']}: {report['dataset']['name']}, {len(report['parties'])} parties, "
        f"forget {f['kind']}: {request_target(f)}"
    )
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*r)
    console.print(table)
    header, rows = certificate_rows(report)
    if rows:
        verdicts = Table(title="certificate (report.md has the evidence)")
        for i, h in enumerate(header):
            verdicts.add_column(h, justify="left" if i in (0, 4) else "center")
        for r in rows:
            verdicts.add_row(*r)
        console.print(verdicts)


def _run(cfg: Any, out: Path | None, overwrite: bool, quiet: bool, resume: bool = False) -> int:
    from vfl_sim.experiment import prepare
    from vfl_sim.progress import ProgressReporter
    from vfl_sim.runtimes.base import check_runtime, run_experiment

    console = _setup_logging(quiet)
    check_runtime(cfg)  # imports the plugins, which may register it; before the data is loaded
    exp = prepare(cfg)
    if resume and out is None:
        raise ConfigError("--resume needs --out, the run folder to finish")
    out = out or _default_out(cfg.name)
    report = run_experiment(
        exp,
        out,
        overwrite=overwrite,
        resume=resume,
        progress=ProgressReporter(enabled=not quiet, console=console),
        on_line=None if quiet else _relay(console),
    )
    # The table needs ~110 columns; rich assumes 80 when stdout is not a terminal.
    print_results(report, Console(width=max(Console().width, 112)))
    if not quiet:
        console.print(f"run folder: {out} (report.json, report.md, config.yaml, checkpoints/)")
    return 0


def _relay(console: Console) -> Any:
    """Show the ServerApp's own lines from a Flower run's log stream (the rest is in
    ``flower_logs/`` of the run folder)."""
    prefix = "vfl-sim: "

    def show(line: str) -> None:
        if line.startswith(prefix):
            console.print(Text.assemble(("server ", "dim"), line[len(prefix) :]), highlight=False)

    return show


def _demo_config(overrides: Sequence[str]) -> Any:
    from vfl_sim.config import config_from_dict

    # The defaults are the demo: digits, 2 parties (8x4 strips), forget class 0, every method
    # that takes a class request.
    return config_from_dict({"name": "demo", "methods": "all"}, overrides)


def _sweep(args: argparse.Namespace) -> int:
    from vfl_sim.sweep import SweepProgressBar, load_sweep, run_sweep

    console = _setup_logging(args.quiet)
    sweep = load_sweep(args.config, args.overrides)  # every cell validated before anything runs
    if args.dry_run:
        for cell in sweep.cells:
            print(f"{cell.id}  {cell.describe()}")
        print(f"ok: sweep {sweep.name}, {len(sweep.cells)} cells over {', '.join(sweep.axes)}")
        return 0
    out = args.out or _default_out(f"{sweep.name}-sweep")
    try:
        with SweepProgressBar(console, enabled=not args.quiet) as bar:
            result = run_sweep(
                sweep, out, overwrite=args.overwrite, workers=args.workers, ray_address=args.ray_address, on_status=bar
            )
    except KeyboardInterrupt:
        console.print(f"interrupted; finished cells are kept in {out}: rerun with --out {out} to finish the sweep")
        return 130
    print(
        f"sweep {sweep.name}: {result.cells} cells, {len(result.ran)} run, {len(result.skipped)} already finished, "
        f"{len(result.failed)} failed in {result.wall_s:.1f}s; {result.out}/results.csv, summary.md"
    )
    for cid, error in result.failed.items():
        console.print(
            Text.assemble(("failed: ", "bold red"), f"{cid}: {error} (cells/{cid}.error.json)"),
            highlight=False,
            soft_wrap=True,
        )
    return 0 if result.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # -h, --version, or a usage error (one line already printed)
        return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else EXIT_INPUT_ERROR
    err = Console(stderr=True)
    try:
        from vfl_sim.config import load_config

        if args.command == "run":
            from vfl_sim.sweep import refuse_sweep_config

            refuse_sweep_config(args.config, "run")  # rather than "unknown field 'sweep'"
            cfg = load_config(args.config, args.overrides)
            return _run(cfg, args.out, args.overwrite, args.quiet, resume=args.resume)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "demo":
            return _run(_demo_config(args.overrides), args.out, args.overwrite, args.quiet)
        if args.command in ("validate", "bench", "flower-config"):
            from vfl_sim.sweep import has_sweep_section, load_sweep, refuse_sweep_config

            if args.command == "validate" and has_sweep_section(args.config):
                sweep = load_sweep(args.config, args.overrides)  # the base and every cell
                print(f"ok: sweep {sweep.name}, {len(sweep.cells)} cells")
                return 0
            if args.config is not None:  # `vfl-sim bench` alone runs its built-in cases
                refuse_sweep_config(args.config, args.command)
        if args.command == "validate":
            from vfl_sim.experiment import prepare
            from vfl_sim.report import request_target
            from vfl_sim.runtimes.base import check_runtime

            cfg = load_config(args.config, args.overrides)
            check_runtime(cfg)
            exp = prepare(cfg)
            f = exp.forget
            print(
                f"ok: {exp.dataset.name}, {len(exp.slices)} parties, forget {f.kind}: {request_target(f.describe())} "
                f"(request {f.request_id}), methods: {', '.join(m.label for m in exp.methods)}"
            )
            return 0
        if args.command == "bench":
            from vfl_sim.bench import run_bench

            run_bench(args.config, args.overrides, epochs=args.epochs, repeats=args.repeats)
            return 0
        if args.command == "flower-config":
            import tomli_w

            from vfl_sim.experiment import prepare
            from vfl_sim.runtimes.flower_app import hand_off
            from vfl_sim.runtimes.flower_handoff import external_folders
            from vfl_sim.runtimes.flower_runtime import shipped_config

            cfg = load_config(args.config, args.overrides)
            exp = prepare(cfg)  # the same checks as a run, before anything is written
            server_dir, party_root = external_folders("flower-config")
            out = str(args.out.expanduser().resolve())
            run_config = hand_off(
                shipped_config(cfg),
                out,
                server_dir=server_dir,
                party_root=party_root,
                data=(exp.dataset, exp.slices),
                overwrite=args.overwrite,
            )
            print(tomli_w.dumps(run_config), end="")
            return 0
        if args.command == "audit":
            from vfl_sim.experiment import prepare
            from vfl_sim.runfolder import RunFolderLock

            console = _setup_logging(args.quiet)
            saved = args.run_dir / "config.yaml"
            if not saved.is_file():
                raise ConfigError(f"{args.run_dir} is not a run folder (no config.yaml)")
            exp = prepare(load_config(saved, args.overrides))
            with RunFolderLock(args.run_dir):  # it rewrites the report: not while a run writes the folder
                report = exp.reaudit(args.run_dir)  # parties built here
            print_results(report, Console(width=max(Console().width, 112)))
            if not args.quiet:
                console.print(f"audited again in {report['audit']['runtime_s']:.2f}s: {args.run_dir}/report.json")
            return 0
        if args.command == "methods":
            from vfl_sim.methods import available_methods, get_method
            from vfl_sim.plugins import import_plugins, resolve_plugins

            built_in = set(available_methods())
            import_plugins(resolve_plugins(args.plugins))
            for name in available_methods():
                cls = get_method(name)
                fields = cls.Params.model_fields.items()
                params = ", ".join(f"{k}={v.get_default(call_default_factory=True)}" for k, v in fields)
                origin = "" if name in built_in else f"  (plugin: {cls.__module__}.{cls.__qualname__})"
                print(f"{name:<16} supports {','.join(sorted(cls.supports)):<16} {params}{origin}")
            return 0
    except VflSimError as exc:
        err.print(Text.assemble(("error: ", "bold red"), _one_line(str(exc))), highlight=False, soft_wrap=True)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        err.print("interrupted; no run folder was written")
        return 130
    except BrokenPipeError:  # `vfl-sim methods | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 1


if __name__ == "__main__":
    sys.exit(main())
