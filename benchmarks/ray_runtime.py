"""Benchmark: the per-round (per-batch) cost of ``runtime: ray`` against ``local`` (and Flower).

For each party count, the digits demo's original model (CNN bottoms, batch 64) is trained for a
few epochs on the in-process parties and on Ray actor parties, timed as ``vfl_sim.bench`` times
the split runtime: the same server, the same minibatches, one warm-up pass, then the median of
``--repeats`` timings (local and Ray interleaved, so that load from other work on a shared machine
hits both alike). A training round is one ``Backward`` (carrying the next batch's ``Embed``) to
every party. Also reported: an empty round (an eval ``Embed`` of one sample to every party, which
is the transport's own cost per round), and Ray's start-up (``ray.init`` and the actors, once
per run). With ``--flower``, the ``flower-sim`` runtime is timed as ``benchmarks/flower_runtime.py``
does it (the ServerApp's own training time of the original, from a whole run).

    .venv/bin/python benchmarks/ray_runtime.py                        # digits, 2 and 4 parties
    .venv/bin/python benchmarks/ray_runtime.py --parties 2,4,8 --flower
    .venv/bin/python benchmarks/ray_runtime.py --set model.bottom=mlp --epochs 3

Prints a markdown table. Timings on a shared machine move; run it alone.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import torch

from vfl_sim.config import ExperimentConfig, config_from_dict, load_config
from vfl_sim.experiment import Experiment, prepare
from vfl_sim.protocol import Embed
from vfl_sim.runtimes.ray_runtime import init_ray, ray_transport
from vfl_sim.seeding import seed_everything, torch_generator
from vfl_sim.server.server import Server, count_batches, make_batches


def _epochs(exp: Experiment, server: Server, epochs: int) -> tuple[float, int]:
    """Seconds and rounds of ``epochs`` training epochs of the split model, as ``vfl_sim.bench``."""
    cfg = exp.cfg
    train_ids = torch.from_numpy(exp.dataset.train_ids)
    steps = count_batches(train_ids.numel(), cfg.train.batch_size)
    gen = torch_generator(1)
    server.configure(cfg.train, epochs * steps)
    rounds = server.transport.stats.rounds
    start = time.perf_counter()
    for _ in range(epochs):
        server.run_epoch(make_batches(train_ids, cfg.train.batch_size, gen))
    return time.perf_counter() - start, server.transport.stats.rounds - rounds


def _empty_round(server: Server, n: int = 50) -> float:
    """Median seconds of a round that asks every party for the eval embedding of one sample."""
    request = Embed(torch.arange(1), train=False)
    server.transport.broadcast(request)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        server.transport.broadcast(request)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
            _, rounds[name] = _epochs(exp, server, epochs)
        for _ in range(repeats):
            for server, times in runs.values():
                times.append(_epochs(exp, server, epochs)[0])
        empty = {name: _empty_round(server) for name, (server, _) in runs.items()}
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
    from vfl_sim.runtimes.flower_runtime import run_on_flower

    flower_cfg = cfg.model_copy(update={"runtime": "flower-sim", "methods": []})
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report = run_on_flower(flower_cfg, Path(tmp) / "run")
        wall = time.perf_counter() - start
    original = report["models"]["original"]
    rounds = original["communication"]["rounds"]
    return _row("flower-sim", cfg.partition.parties, [original["runtime_s"]], rounds, epochs, run_wall_s=wall)


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
