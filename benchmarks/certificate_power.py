"""Benchmark: auditing the audits. How often does the certificate claim removal where it must
not, and how often is it stable?

For every dataset (digits, breast_cancer, wine, the planted synthetic set), request kind
(class, samples, party) and seed, one full run from the shipped config with its built-in
controls (:mod:`vfl_sim.methods.controls`) and a few methods; from each ``report.json``:

- **false removal claims** of the controls that certainly did not remove anything: the
  negative control (``original`` for class and sample requests, ``cut_only`` for party
  requests) and the known-suppression control ``output_mask``. Must be 0.
- **retrain**: how often it is certified ``removal``, and how often it is refused (a failed
  verdict: the reference failing its own checks) rather than left ``inconclusive`` for lack of
  power. Where the run has power, retrain must keep removal.
- **power**: the share of runs in which each forgetting verdict could fail (its controls fail it).
- **stability**: per method, the trilemma region over seeds, its most common value and the
  share of seeds that differ from it.

    .venv/bin/python benchmarks/certificate_power.py                     # the whole study
    .venv/bin/python benchmarks/certificate_power.py --seeds 2 --datasets wine --kinds class
    .venv/bin/python benchmarks/certificate_power.py --workers 2 --out docs/certificate_power.md

``--workers`` runs that many experiments at once (processes, one torch thread each). Prints
markdown tables (and writes them to ``--out``); ``--json`` keeps the raw per-run rows.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vfl_sim.report import markdown_table

CONFIGS = {
    "digits": "configs/digits.yaml",
    "breast_cancer": "configs/breast_cancer.yaml",
    "wine": "configs/wine.yaml",
    "synthetic": "configs/synthetic_planted.yaml",
}
REQUESTS = {
    "class": ["forget={kind: class, classes: [0]}"],
    "samples": ["forget={kind: samples, fraction: 0.1, stratified: true}"],
    "party": ["forget={kind: party, party: party_1}"],
}
METHODS = {
    "class": ["finetune", "neggrad_plus", "scrub", "salun"],
    "samples": ["finetune", "neggrad_plus", "scrub"],
    "party": ["finetune", "vfu_kd"],
}
# Smaller than the shipped configs, so the study fits a 2-core machine (the trained originals
# still fit their tasks: see the utility column of each run's report).
SCALE = {
    "digits": ["train.epochs=10"],
    "breast_cancer": ["train.epochs=20"],
    "wine": ["train.epochs=40"],
    "synthetic": ["train.epochs=5", "data.synthetic.samples=4000"],
}
NEGATIVE = {"class": "original", "samples": "original", "party": "cut_only"}


@dataclass(frozen=True)
class Job:
    dataset: str
    kind: str
    seed: int


def run_one(job: Job) -> dict[str, Any]:
    """One experiment; the certificate of every model and control, and the power summary."""
    import torch

    from vfl_sim.config import load_config
    from vfl_sim.experiment import prepare

    torch.set_num_threads(1)
    overrides = [
        *SCALE[job.dataset],
        *REQUESTS[job.kind],
        f"seed={job.seed}",
        "methods=[" + ", ".join(["retrain", *METHODS[job.kind]]) + "]",
        "audit.plots=false",
    ]
    cfg = load_config(CONFIGS[job.dataset], overrides)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        report = prepare(cfg).run(Path(tmp) / "run")
    models = {**report["models"], **report["controls"]}
    return {
        "dataset": job.dataset,
        "kind": job.kind,
        "seed": job.seed,
        "seconds": time.perf_counter() - start,
        "power": {k: v["powered"] for k, v in report["audit"]["certificate"]["power"].items()},
        "models": {
            name: {
                "role": m.get("role", "method" if name != "original" else "negative"),
                "trilemma": m["certificate"]["trilemma"],
                "removal": m["certificate"]["removal"],
                "representation": m["certificate"]["representation_forgetting"]["status"],
                "output": m["certificate"]["output_forgetting"]["status"],
            }
            for name, m in models.items()
        },
    }


def _pct(k: int, n: int) -> str:
    return "-" if n == 0 else f"{100 * k / n:.0f}% ({k}/{n})"


def tables(rows: Sequence[dict[str, Any]]) -> str:
    """The study's markdown tables from its per-run rows."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["kind"]), []).append(r)
    header = [
        "dataset",
        "request",
        "runs",
        "negative control: false removal",
        "output_mask: false removal",
        "retrain: removal",
        "retrain: refused",
        "output power",
        "representation power",
        "calibration retrains: removal",
    ]
    body = []
    for (dataset, kind), runs in sorted(groups.items()):
        n = len(runs)
        neg = sum(r["models"][NEGATIVE[kind]]["removal"] for r in runs if NEGATIVE[kind] in r["models"])
        masked = [r["models"]["output_mask"]["removal"] for r in runs if "output_mask" in r["models"]]
        retrain = [r["models"]["retrain"] for r in runs]
        calib = [m for r in runs for name, m in r["models"].items() if m["role"] == "calibration"]
        body.append(
            [
                dataset,
                kind,
                str(n),
                _pct(neg, n),
                "-" if not masked else _pct(sum(masked), len(masked)),
                _pct(sum(m["removal"] for m in retrain), n),
                _pct(sum("fail" in (m["representation"], m["output"]) for m in retrain), n),
                _pct(sum(r["power"]["output_forgetting"] for r in runs), n),
                _pct(sum(r["power"]["representation_forgetting"] for r in runs), n),
                _pct(sum(m["removal"] for m in calib), len(calib)),
            ]
        )
    parts = ["## False removal claims, retrain and power", "", markdown_table(header, body), ""]

    header = ["dataset", "request", "model", "seeds", "most common region", "seeds that differ", "regions seen"]
    body = []
    for (dataset, kind), runs in sorted(groups.items()):
        names = [n for n in runs[0]["models"] if runs[0]["models"][n]["role"] != "calibration"]
        for name in names:
            regions = [r["models"][name]["trilemma"] for r in runs if name in r["models"]]
            common, count = Counter(regions).most_common(1)[0]
            seen = ", ".join(f"{k} {v}" for k, v in sorted(Counter(regions).items()))
            body.append(
                [dataset, kind, name, str(len(regions)), common, _pct(len(regions) - count, len(regions)), seen]
            )
    parts += ["## Stability of the verdicts over seeds", "", markdown_table(header, body), ""]
    return "\n".join(parts)


def study(
    datasets: Sequence[str], kinds: Sequence[str], seeds: int, workers: int, *, quiet: bool = False
) -> list[dict[str, Any]]:
    jobs = [Job(d, k, s) for d in datasets for k in kinds for s in range(seeds)]
    rows: list[dict[str, Any]] = []
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with ProcessPoolExecutor(max_workers=workers) if workers > 1 else _InProcess() as pool:
        for i, row in enumerate(pool.map(run_one, jobs), 1):
            rows.append(row)
            if not quiet:
                print(f"[{i}/{len(jobs)}] {row['dataset']} {row['kind']} seed {row['seed']}: {row['seconds']:.1f}s")
    return rows


class _InProcess:
    """One worker: the runs in this process (no pickling, so it works from a test too)."""

    def __enter__(self) -> _InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, fn: Any, items: Sequence[Job]) -> Any:
        return map(fn, items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join(CONFIGS), help="comma list of " + ", ".join(CONFIGS))
    parser.add_argument("--kinds", default=",".join(REQUESTS), help="comma list of " + ", ".join(REQUESTS))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="also write the tables here")
    parser.add_argument("--json", type=Path, default=None, help="write the per-run rows here")
    args = parser.parse_args()
    datasets = [d for d in args.datasets.split(",") if d]
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = [d for d in datasets if d not in CONFIGS] + [k for k in kinds if k not in REQUESTS]
    if unknown:
        parser.error(f"unknown dataset or request kind: {unknown[0]}")
    start = time.perf_counter()
    rows = study(datasets, kinds, args.seeds, args.workers)
    text = tables(rows) + f"\n{len(rows)} runs in {time.perf_counter() - start:.0f} s, {args.workers} workers.\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
