"""Benchmark: training epoch time and traffic of the Flower runtimes against the local one.

For each party count, trains the original model of a config (default: the digits demo) for a
few epochs on each runtime and reports seconds per epoch (the ServerApp's own training time,
without starting Flower or Ray), rounds and bytes per epoch (the protocol's count, which is the
same on every runtime), and the whole run's wall time (process start-up included).

    .venv/bin/python benchmarks/flower_runtime.py                       # local and flower-sim, 2/4/8 parties
    .venv/bin/python benchmarks/flower_runtime.py --deploy --epochs 1   # adds flower-deploy at 2 parties
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vfl_sim.bench import time_run
from vfl_sim.config import config_from_dict, load_config


def measure(raw: dict[str, Any], runtime: str, parties: int, epochs: int, overrides: list[str]) -> dict[str, Any]:
    cfg = config_from_dict(raw, [*overrides, f"runtime={runtime}", f"partition.parties={parties}"])
    run = time_run(cfg, epochs)
    return {
        "runtime": runtime,
        "parties": parties,
        "s_per_epoch": run["epoch_s"],
        "rounds_per_epoch": run["rounds_per_epoch"],
        "bytes_per_epoch": run["bytes_per_epoch"],
        "wall_s": run["run_wall_s"],
        "retain_test_acc": run["retain_test_acc"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", nargs="?", type=Path, default=None, help="default: the digits demo config")
    p.add_argument("--parties", default="2,4,8")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--deploy", action="store_true", help="also time flower-deploy (processes) at the first party count")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    raw = load_config(args.config).model_dump(mode="json") if args.config else {"name": "bench-flower"}
    rows = []
    counts = [int(k) for k in args.parties.split(",")]
    for k in counts:
        for runtime in ("local", "flower-sim"):
            rows.append(measure(raw, runtime, k, args.epochs, args.overrides))
            print(rows[-1], flush=True)
    if args.deploy:
        rows.append(measure(raw, "flower-deploy", counts[0], args.epochs, args.overrides))
        print(rows[-1], flush=True)
    local = {r["parties"]: r["s_per_epoch"] for r in rows if r["runtime"] == "local"}
    print("\n| runtime | parties | s/epoch | vs local | rounds/epoch | MB/epoch | run wall s | retain acc |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["s_per_epoch"] / local[r["parties"]]
        print(
            f"| {r['runtime']} | {r['parties']} | {r['s_per_epoch']:.2f} | {ratio:.1f}x"
            f" | {r['rounds_per_epoch']:.0f} | {r['bytes_per_epoch'] / 1e6:.2f} | {r['wall_s']:.1f}"
            f" | {100 * r['retain_test_acc']:.1f} |"
        )


if __name__ == "__main__":
    main()
