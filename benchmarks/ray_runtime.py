"""Benchmark: the per-round (per-batch) cost of ``runtime: ray`` against ``local`` (and Flower).

For each party count, the digits demo's original model (CNN bottoms, batch 64) is trained for a
few epochs on the in-process parties and on Ray actor parties, timed by ``vfl_sim.bench``'s
loops (``time_split_epochs``, ``time_empty_round``): the same server, the same minibatches, one
warm-up pass, then the median of ``--repeats`` timings (local and Ray interleaved, so that load
from other work on a shared machine hits both alike). A training round is one ``Backward``
(carrying the next batch's ``Embed``) to every party. Also reported: an empty round (an eval
``Embed`` of one sample to every party, which is the transport's own cost per round), and Ray's
start-up (``ray.init`` and the actors, once per run). With ``--flower``, the ``flower-sim``
runtime is timed as ``benchmarks/flower_runtime.py`` does it (``vfl_sim.bench.time_run``: the
ServerApp's own training time of the original, from a whole run).

    .venv/bin/python benchmarks/ray_runtime.py                        # digits, 2 and 4 parties
    .venv/bin/python benchmarks/ray_runtime.py --parties 2,4,8 --flower
    .venv/bin/python benchmarks/ray_runtime.py --set model.bottom=mlp --epochs 3

Prints a markdown table. Timings on a shared machine move; run it alone.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import torch

from vfl_sim.bench import time_empty_round, time_run, time_split_epochs
from vfl_sim.config import ExperimentConfig, config_from_dict, load_config
from vfl_sim.experiment import prepare
from vfl_sim.runtimes.ray_runtime import init_ray, ray_transport
from vfl_sim.seeding import seed_everything
from vfl_sim.server.server import Server


def _row(runtime: str, parties: int, seconds: list[float], rounds: int, epochs: int, **extra: Any) -> dict[str, Any]:
    s_per_epoch = statistics.median(seconds) / epochs
    rounds_per_epoch = rounds / epochs
    return {
        "runtime": runtime,
        "parties": parties,
        "s_per_epoch": s_per_epoch,
        "rounds_per_epoch": rounds_per_epoch,
        "s_per_round": s_per_epoch / rounds_per_epoch,
        **extra,
    }


def local_and_ray(cfg: ExperimentConfig, *, epochs: int, repeats: int) -> list[dict[str, Any]]:
    """Time ``epochs`` epochs on in-process parties and on Ray actors, ``repeats`` times each."""
    exp = prepare(cfg.model_copy(update={"methods": []}))
    parties = len(exp.slices)
    seed_everything(cfg.seed)
    local = exp.build_server()
    start = time.perf_counter()
    init_ray(cfg)
    init_s = time.perf_counter() - start
    transport = ray_transport(cfg, exp.dataset, exp.slices, exp.device)
    actors_s = time.perf_counter() - start - init_s
    try:
        remote = exp.build_server(transport)
        runs: dict[str, tuple[Server, list[float]]] = {"local": (local, []), "ray": (remote, [])}
        rounds = {}
        for name, (server, _) in runs.items():  # warm-up: allocator, kernels, Ray's worker-side caches
            rounds[name] = time_split_epochs(exp, server, epochs)[1].rounds
        for _ in range(repeats):
            for server, times in runs.values():
                times.append(time_split_epochs(exp, server, epochs)[0])
        empty = {name: time_empty_round(server) for name, (server, _) in runs.items()}
    finally:
        transport.close()
        ray.shutdown()
    rows = [
        _row("local", parties, runs["local"][1], rounds["local"], epochs, empty_round_s=empty["local"]),
        _row(
            "ray",
            parties,
            runs["ray"][1],
            rounds["ray"],
            epochs,
            empty_round_s=empty["ray"],
            startup_s=init_s + actors_s,
        ),
    ]
    return rows


def flower_sim(cfg: ExperimentConfig, *, epochs: int) -> dict[str, Any]:
    """``flower-sim``: the original's training time from a whole run, per epoch."""
    run = time_run(cfg.model_copy(update={"runtime": "flower-sim"}), epochs)
    rounds = round(run["rounds_per_epoch"] * epochs)
    return _row(
        "flower-sim", cfg.partition.parties, [run["epoch_s"] * epochs], rounds, epochs, run_wall_s=run["run_wall_s"]
    )


def _fmt(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "" if value is None else f"{value * scale:.{digits}f}"


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("config", nargs="?", type=Path, default=None, help="default: the digits demo config")
    p.add_argument("--parties", default="2,4")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the driver and of every Ray actor")
    p.add_argument("--flower", action="store_true", help="also time flower-sim (about 25 s per party count)")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args(argv)
    raw = load_config(args.config).model_dump(mode="json") if args.config else {"name": "bench-ray"}
    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    for k in (int(x) for x in args.parties.split(",")):
        cfg = config_from_dict(
            raw,
            [
                *args.overrides,
                "runtime=ray",
                f"partition.parties={k}",
                f"train.epochs={args.epochs}",
                f"threads={args.threads}",
                "audit.plots=false",
            ],
        )
        rows.extend(local_and_ray(cfg, epochs=args.epochs, repeats=args.repeats))
        if args.flower:
            rows.append(flower_sim(cfg, epochs=args.epochs))
        for row in rows[-3 if args.flower else -2 :]:
            out(str(row))
    local = {r["parties"]: r for r in rows if r["runtime"] == "local"}
    out("")
    out(
        "| runtime | parties | s/epoch | vs local | rounds/epoch | ms/round | +ms/round vs local | empty round ms "
        "| Ray start-up s (flower: run wall s) |"
    )
    out("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = local[r["parties"]]
        extra = r["s_per_round"] - base["s_per_round"]
        ratio = r["s_per_epoch"] / base["s_per_epoch"]
        out(
            f"| {r['runtime']} | {r['parties']} | {r['s_per_epoch']:.3f} | {ratio:.1f}x"
            f" | {r['rounds_per_epoch']:.1f} | {r['s_per_round'] * 1e3:.2f} | {extra * 1e3:+.2f}"
            f" | {_fmt(r.get('empty_round_s'), 1e3)} | {_fmt(r.get('startup_s') or r.get('run_wall_s'), 1.0, 1)} |"
        )
    return rows


if __name__ == "__main__":
    main()
