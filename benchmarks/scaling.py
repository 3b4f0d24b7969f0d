"""Benchmark: how training epoch time grows with the samples and with the parties.

Two axes on the synthetic set (MLP bottoms, batch 128, contiguous columns), each point timed as
``vfl-sim bench`` times it (:func:`vfl_sim.bench.bench_runtimes`: the split runtime and the
monolithic model on the same batches, one warm-up, then ``--repeats`` interleaved timings,
medians):

- samples: ``--samples`` training samples (default 2k, 20k, 200k) at ``--sample-parties``
  parties over ``--sample-features`` columns (default 2 x 40 columns: the ``vfl-sim bench``
  case);
- parties: ``--parties`` (default 2 to 32) on ``--party-samples`` training samples with
  ``--features-per-party`` columns each (default 8: features = 8 x parties, so the work per
  party is fixed), or a fixed ``--total-features`` shared out.

For each point, ``vs linear`` is the time per sample (or per party) divided by the first
point's: 1.00 is exactly linear, above 1 grows faster than linear. The monolithic model's is
printed next to it, so a departure that both share is the arithmetic's (caches, kernel sizes),
and one only the split runtime shows is the protocol's.

    .venv/bin/python benchmarks/scaling.py                                 # both axes
    .venv/bin/python benchmarks/scaling.py --axes samples --samples 2000,20000
    .venv/bin/python benchmarks/scaling.py --axes parties --total-features 64 --runtimes local,ray

``--threads`` (default 1) as in ``benchmarks/training_overhead.py``. First run, on 2 CPU cores
shared with other jobs (noisy), 1 thread, 1 epoch x 3 repeats (Ray: 2 repeats):

| axis | runtime | train samples | parties | columns | s/epoch | per unit | vs linear | monolithic vs linear |
|---|---|---|---|---|---|---|---|---|
| samples | local | 2,000 | 2 | 40 | 0.017 | 8.7 us/sample | 1.00 | 1.00 |
| samples | local | 20,000 | 2 | 40 | 0.184 | 9.2 us/sample | 1.06 | 1.14 |
| samples | local | 200,000 | 2 | 40 | 1.872 | 9.4 us/sample | 1.07 | 1.01 |
| samples | ray | 2,000 | 2 | 40 | 0.141 | 70.6 us/sample | 1.00 | 1.00 |
| samples | ray | 20,000 | 2 | 40 | 1.955 | 97.8 us/sample | 1.38 | 1.07 |
| samples | ray | 200,000 | 2 | 40 | 19.96 | 99.8 us/sample | 1.41 | 0.96 |
| parties | local | 20,000 | 2 | 16 | 0.177 | 88 ms/party | 1.00 | 1.00 |
| parties | local | 20,000 | 4 | 32 | 0.294 | 74 ms/party | 0.83 | 0.78 |
| parties | local | 20,000 | 8 | 64 | 0.567 | 71 ms/party | 0.80 | 0.72 |
| parties | local | 20,000 | 16 | 128 | 1.235 | 77 ms/party | 0.87 | 0.73 |
| parties | local | 20,000 | 32 | 256 | 2.392 | 75 ms/party | 0.85 | 0.76 |

With a fixed 64 columns (``--total-features 64``) the local runtime gives 1.00 / 0.86 / 0.86 /
0.78 / 0.76 per party (monolithic 1.00 / 0.77 / 0.72 / 0.65 / 0.64): the bottoms' cost hardly
depends on their input width, it is per-call overhead. Both axes are linear or better for the
local runtime (the first point carries the per-step cost of the top model and the batching).

Ray is not linear from 2k to 20k samples: its rounds got 40 % dearer. Profiled by timing every
round: the cost per round is flat within an epoch (no build-up), but it depends on the
dataset size, because each minibatch of ids is a view into the epoch's shuffled id tensor
(``torch.split`` in ``vfl_sim.server.server.make_batches``) and pickling a view writes its whole
storage: every ``Embed`` carries all n ids (16 KB at 2k, 160 KB at 20k, 1.6 MB at 200k)
instead of 1 KB. Above Ray's 100 KB inline limit the argument goes through the object store,
which costs a few ms per call. Compacting the batches (``b.clone()``) took a 200k-sample epoch
on Ray from 12.8 ms to 4.4 ms per round (20k: 12.9 to 8.0 ms); the protocol's byte counts
(``nbytes``) never saw the difference, and the Flower codec copies only the view.
``make_batches`` now gives every batch its own ids. Rerun after that change on an idle machine
(docs/benchmarks.md): Ray 38, 54 and 53 µs per sample at 2k, 20k and 200k, linear from 20k on.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vfl_sim.bench import bench_named_runtimes, int_list, ray_factory, synthetic_case
from vfl_sim.config import config_from_dict

RUNTIMES = ("local", "ray")


def with_linear_ratio(rows: list[dict[str, Any]], axis: str) -> list[dict[str, Any]]:
    """Add ``axis``, ``per_unit_s``, ``vs_linear`` and ``monolithic_vs_linear`` to each row.

    Parameters
    ----------
    rows
        Rows of one axis and one runtime, in growing order.
    axis
        ``samples`` (the unit is a training sample) or ``parties`` (a party).

    Returns
    -------
    list of dict
        The rows, each relative to the first.
    """
    key = "train_samples" if axis == "samples" else "parties"
    first = rows[0]
    unit0, mono0 = first["epoch_s"] / first[key], first["monolithic_epoch_s"] / first[key]
    out = []
    for r in rows:
        per_unit = r["epoch_s"] / r[key]
        out.append(
            {
                **r,
                "axis": axis,
                "per_unit_s": per_unit,
                "vs_linear": per_unit / unit0,
                "monolithic_vs_linear": r["monolithic_epoch_s"] / r[key] / mono0,
            }
        )
    return out


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The rows as a markdown table."""
    lines = [
        "| axis | runtime | train samples | parties | columns | steps/epoch | s/epoch | per unit | vs linear "
        "| monolithic s/epoch | monolithic vs linear | split / monolithic |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per_unit = (
            f"{1e6 * r['per_unit_s']:.1f} us/sample"
            if r["axis"] == "samples"
            else f"{1e3 * r['per_unit_s']:.1f} ms/party"
        )
        lines.append(
            f"| {r['axis']} | {r['runtime']} | {r['train_samples']:,} | {r['parties']} | {r['features']}"
            f" | {r['steps_per_epoch']} | {r['epoch_s']:.3f} | {per_unit}"
            f" | {r['vs_linear']:.2f} | {r['monolithic_epoch_s']:.3f} | {r['monolithic_vs_linear']:.2f}"
            f" | {r['ratio']:.2f} |"
        )
    return lines


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Parse ``argv``, time both axes, print the table through ``out`` and return the rows."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--axes", default="samples,parties", help="comma list of samples, parties")
    p.add_argument("--runtimes", default="local", help="comma list of local, ray")
    p.add_argument("--samples", default="2000,20000,200000", help="training samples of the samples axis")
    p.add_argument("--sample-parties", type=int, default=2)
    p.add_argument("--sample-features", type=int, default=40, help="columns of the samples axis")
    p.add_argument("--parties", default="2,4,8,16,32", help="party counts of the parties axis")
    p.add_argument("--party-samples", type=int, default=20_000, help="training samples of the parties axis")
    p.add_argument("--features-per-party", type=int, default=8)
    p.add_argument("--total-features", type=int, default=None, help="fixed columns on the parties axis instead")
    p.add_argument("--epochs", type=int, default=1, help="epochs per timing")
    p.add_argument("--repeats", type=int, default=3, help="timings per point after a warm-up")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (and every Ray actor's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    runtimes = [r for r in args.runtimes.split(",") if r]
    if set(runtimes) - set(RUNTIMES):
        p.error(f"unknown runtimes {sorted(set(runtimes) - set(RUNTIMES))}; choose from {', '.join(RUNTIMES)}")
    if "ray" in runtimes and ray_factory() is None:
        out("ray: vfl_sim.runtimes.ray_runtime does not import here; timing without it")
    points: dict[str, list[dict[str, Any]]] = {}
    if "samples" in args.axes.split(","):
        points["samples"] = [
            synthetic_case(n, args.sample_parties, total_features=args.sample_features) for n in int_list(args.samples)
        ]
    if "parties" in args.axes.split(","):
        points["parties"] = [
            synthetic_case(
                args.party_samples, k, features_per_party=args.features_per_party, total_features=args.total_features
            )
            for k in int_list(args.parties)
        ]
    rows: list[dict[str, Any]] = []
    for axis, raws in points.items():
        measured: list[dict[str, Any]] = []
        for raw in raws:
            cfg = config_from_dict(raw, [*args.overrides, f"threads={args.threads}"])
            new = bench_named_runtimes(cfg, runtimes, epochs=args.epochs, repeats=args.repeats)
            for r in new:
                out(f"{axis} {r['runtime']} {r['train_samples']} samples {r['parties']}p: {r['epoch_s']:.4f} s/epoch")
            measured.extend(new)
        for runtime in dict.fromkeys(r["runtime"] for r in measured):
            rows.extend(with_linear_ratio([r for r in measured if r["runtime"] == runtime], axis))
    out("")
    for line in table(rows):
        out(line)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
