"""Benchmark: training epoch time of each runtime divided by the monolithic PyTorch model's.

Every case trains the same bottoms and top from the same weights on the same minibatches, once
per runtime and once as one ``nn.Module`` (:func:`vfl_sim.bench.bench_runtimes`: one warm-up,
then ``--repeats`` interleaved timings, medians). The ratio is what splitting the model across
parties costs. Cases:

- ``digits``: the demo (CNN bottoms on 8x4 strips, batch 64, 1,438 training samples), at
  ``--digits-parties`` (the strips scheme allows at most 8 parties: digits is 8 pixels wide);
- ``synthetic-20k``: 20,000 training samples (25,000 drawn, 20 % test) x 40 columns, 2 parties,
  MLP bottoms, batch 128 (the ``vfl-sim bench`` case);
- ``parties``: the same 20,000-sample synthetic set at each of ``--parties`` (2, 4, 8, 16, 32),
  with ``--features-per-party`` columns per party (default 8: features = 8 x parties, so every
  party's bottom does the same work), or a fixed ``--total-features`` shared out.

Runtimes: ``local`` (in-process parties); ``ray`` (every party a Ray actor, started once per
case; only when :mod:`vfl_sim.runtimes.ray_runtime` imports); ``flower-sim`` with ``--flower``
(slow: a whole run per case, about 25 s of start-up; its seconds per epoch are the
ServerApp's training time of the original, set-up rounds included, as in
``benchmarks/flower_runtime.py``).

    .venv/bin/python benchmarks/training_overhead.py                      # every case, local + ray
    .venv/bin/python benchmarks/training_overhead.py --cases parties --parties 2,8,32 --runtimes local
    .venv/bin/python benchmarks/training_overhead.py --cases digits --flower --json rows.json

``--threads`` (default 1) sets torch's intra-op threads of this process and of every Ray actor.
On a 2-core machine that another process keeps busy, torch's default (one thread per core)
made kernels wait on each other: one ``vfl-sim bench`` of the 20k synthetic case (batch 256)
took 29 s per epoch; reruns took 0.23 s with 2 threads and 0.10 s with 1.

First run: 2 CPU cores shared with other jobs (load average 3 to 25 during the Ray cases, so
every number is noisy), 1 thread, 1 epoch x 3 repeats, ``parties`` with 8 columns per party:

| case | parties | columns | steps/epoch | monolithic s/epoch | local s/epoch | local ratio | ray s/epoch | ray ratio |
|---|---|---|---|---|---|---|---|---|
| digits | 2 | 64 | 23 | 0.112 | 0.130 | 1.16 | 0.282 | 2.51 |
| synthetic-20k | 2 | 40 | 157 | 0.131 | 0.175 | 1.33 | 2.05 | 15.6 |
| parties | 2 | 16 | 157 | 0.123 | 0.171 | 1.38 | 1.35 | 10.9 |
| parties | 4 | 32 | 157 | 0.199 | 0.301 | 1.52 | 3.50 | 17.6 |
| parties | 8 | 64 | 157 | 0.348 | 0.594 | 1.71 | 5.96 | 17.1 |
| parties | 16 | 128 | 157 | 0.721 | 1.327 | 1.84 | 12.0 | 16.6 |
| parties | 32 | 256 | 157 | 1.609 | 2.500 | 1.55 | 23.6 | 14.7 |

A second run with ``--cases digits,synthetic-20k --flower`` gave local 1.06 / 1.49, ray 1.97 /
14.1, and ``flower-sim`` 50x (6.8 s per epoch; one epoch, so its set-up rounds are not spread)
and 132x (18.8 s per epoch: about 0.12 s per round, Flower's polling).

The local runtime's overhead is a fixed cost per party and step (a backward call, an optimizer
step and a message each, about 0.2 ms), which the monolithic model pays once per step: the
ratio grows with the parties while the work per party is small. Ray pays an actor call per
party and round (about 5 ms per party and round on these 2 busy cores).
Its rounds on the 20k set cost more than on 2k in this first run because every ``Embed``
pickled the whole epoch's shuffled id tensor (see ``benchmarks/scaling.py``; fixed since: the
docs/benchmarks.md has the rerun on an idle machine, Ray 6.6-8.3x monolithic on the 20k set).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vfl_sim.bench import DEFAULT_CASES, bench_named_runtimes, int_list, ray_factory, synthetic_case, time_run
from vfl_sim.config import ExperimentConfig, config_from_dict

RUNTIMES = ("local", "ray")


def cases(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """The ``(case name, raw config)`` pairs that ``args`` asks for, in table order."""
    wanted = args.cases.split(",")
    out: list[tuple[str, dict[str, Any]]] = []
    if "digits" in wanted:
        for k in int_list(args.digits_parties):
            out.append(("digits", {**DEFAULT_CASES["digits"], "partition": {"parties": k}}))
    if "synthetic-20k" in wanted:
        out.append(("synthetic-20k", DEFAULT_CASES["synthetic-20k"]))
    if "parties" in wanted:
        for k in int_list(args.parties):
            raw = synthetic_case(
                args.party_samples,
                k,
                features_per_party=args.features_per_party,
                total_features=args.total_features,
            )
            out.append(("parties", raw))
    return out


def flower_epoch_s(cfg: ExperimentConfig, epochs: int) -> dict[str, Any]:
    """``flower-sim``: seconds, rounds and bytes per epoch of the original's training in a whole
    run (:func:`vfl_sim.bench.time_run`).

    Parameters
    ----------
    cfg
        The case's config.
    epochs
        Training epochs of the run.

    Returns
    -------
    dict
        ``epoch_s``, ``rounds_per_epoch``, ``bytes_per_epoch_per_party``.
    """
    run = time_run(cfg.model_copy(update={"runtime": "flower-sim"}), epochs)
    return {k: run[k] for k in ("epoch_s", "rounds_per_epoch", "bytes_per_epoch_per_party")}


def measure(
    case: str,
    raw: dict[str, Any],
    runtimes: list[str],
    *,
    epochs: int,
    repeats: int,
    threads: int,
    flower: bool,
    overrides: list[str],
) -> list[dict[str, Any]]:
    """Time one case on each runtime against the monolithic model.

    Parameters
    ----------
    case
        Name of the case (a table column).
    raw
        The case's config dict.
    runtimes
        ``local`` and/or ``ray`` (dropped when the Ray runtime does not import).
    epochs, repeats
        Epochs per timing and timings per runtime.
    threads
        Torch intra-op threads here and in every Ray actor.
    flower
        Also time ``flower-sim`` (a whole run).
    overrides
        ``KEY=VALUE`` settings applied to the case.

    Returns
    -------
    list of dict
        The rows of :func:`vfl_sim.bench.bench_runtimes` with ``case`` added (``flower-sim``
        reuses the first runtime's monolithic timing).
    """
    cfg = config_from_dict(raw, [*overrides, f"threads={threads}", "audit.plots=false"])
    rows = bench_named_runtimes(cfg, runtimes, epochs=epochs, repeats=repeats)
    if flower:
        base = rows[0]
        flw = flower_epoch_s(cfg, epochs)
        ratio = flw["epoch_s"] / base["monolithic_epoch_s"]
        rows.append({**base, "runtime": "flower-sim", **flw, "ratio": ratio, "epoch_s_all": [flw["epoch_s"]]})
    return [{"case": case, **row} for row in rows]


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The rows as a markdown table."""
    lines = [
        "| case | runtime | train samples | parties | columns | steps/epoch | s/epoch | monolithic s/epoch | ratio "
        "| KB/epoch/party |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['runtime']} | {r['train_samples']:,} | {r['parties']} | {r['features']}"
            f" | {r['steps_per_epoch']} | {r['epoch_s']:.3f} | {r['monolithic_epoch_s']:.3f} | {r['ratio']:.2f}"
            f" | {r['bytes_per_epoch_per_party'] / 1e3:.0f} |"
        )
    return lines


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Parse ``argv``, time every case, print the table through ``out`` and return the rows."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--cases", default="digits,synthetic-20k,parties", help="comma list of digits, synthetic-20k, parties"
    )
    p.add_argument("--runtimes", default="local,ray", help="comma list of local, ray")
    p.add_argument("--flower", action="store_true", help="also time flower-sim (a whole run per case, slow)")
    p.add_argument("--digits-parties", default="2", help="party counts of the digits case (at most 8)")
    p.add_argument("--parties", default="2,4,8,16,32", help="party counts of the parties case")
    p.add_argument("--party-samples", type=int, default=20_000, help="training samples of the parties case")
    p.add_argument("--features-per-party", type=int, default=8, help="columns per party in the parties case")
    p.add_argument("--total-features", type=int, default=None, help="fixed columns in the parties case instead")
    p.add_argument("--epochs", type=int, default=1, help="epochs per timing")
    p.add_argument("--repeats", type=int, default=3, help="timings per runtime after a warm-up")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads here and in every Ray actor")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    runtimes = [r for r in args.runtimes.split(",") if r]
    unknown = set(runtimes) - set(RUNTIMES)
    if unknown or not runtimes:
        p.error(f"--runtimes takes a comma list of {', '.join(RUNTIMES)}")
    if "ray" in runtimes and ray_factory() is None:
        out("ray: vfl_sim.runtimes.ray_runtime does not import here; timing without it")
    rows: list[dict[str, Any]] = []
    for case, raw in cases(args):
        new = measure(
            case,
            raw,
            runtimes,
            epochs=args.epochs,
            repeats=args.repeats,
            threads=args.threads,
            flower=args.flower,
            overrides=args.overrides,
        )
        for row in new:
            out(f"{case} {row['runtime']} {row['parties']}p: {row['epoch_s']:.4f} s/epoch, ratio {row['ratio']:.2f}")
        rows.extend(new)
    out("")
    for line in table(rows):
        out(line)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
