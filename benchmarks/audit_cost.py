"""Benchmark: what the audit costs next to retraining, on every shipped config that runs here.

For each config, one full run (``vfl-sim run``) in a temporary folder; from its ``report.json``
the retrain's wall time, the whole audit's (``audit.runtime_s``: gathering embeddings, every
auditor and the relearning attack) and each step's (``audit.timings_s``), and the audit's share
of retraining. Configs that need a local dataset root (MNIST, CIFAR) are skipped.

    .venv/bin/python benchmarks/audit_cost.py                          # every config that runs here
    .venv/bin/python benchmarks/audit_cost.py configs/digits.yaml      # some of them
    .venv/bin/python benchmarks/audit_cost.py --set audit.relearning.enabled=false

Prints a markdown table. Timings on a shared machine move; run it alone.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from vfl_sim.config import load_config
from vfl_sim.errors import VflSimError
from vfl_sim.experiment import prepare
from vfl_sim.report import markdown_table

RUNNABLE = (
    "digits.yaml",
    "digits_samples.yaml",
    "digits_methods.yaml",
    "breast_cancer.yaml",
    "wine.yaml",
    "synthetic_planted.yaml",
)
STEPS = ("gather", "output", "representation", "reference_free", "feature_recovery", "relearning")


def measure(config: Path, overrides: list[str]) -> dict[str, Any]:
    cfg = load_config(config, overrides)
    exp = prepare(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        report = exp.run(Path(tmp) / "run")
    retrain = report["models"].get("retrain", {}).get("runtime_s")
    audit = report["audit"]
    return {
        "config": config.name,
        "models": len(report["models"]),
        "retrain_s": retrain,
        "audit_s": audit["runtime_s"],
        "per_model_s": audit["runtime_s"] / len(report["models"]),
        "share": None if not retrain else audit["runtime_s"] / retrain,
        "steps": audit["timings_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="*", type=Path)
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    root = Path(__file__).resolve().parent.parent / "configs"
    configs = args.configs or [root / name for name in RUNNABLE]
    rows = []
    for config in configs:
        try:
            rows.append(measure(config, args.overrides))
        except VflSimError as err:
            print(f"skipped {config.name}: {err}")
    header = ["config", "models", "retrain s", "audit s", "per model s", "audit / retrain", *STEPS]
    table = []
    for r in rows:
        share = "-" if r["share"] is None else f"{100 * r['share']:.0f} %"
        retrain = "-" if r["retrain_s"] is None else f"{r['retrain_s']:.2f}"
        steps = [f"{r['steps'][s]:.2f}" if s in r["steps"] else "-" for s in STEPS]
        table.append(
            [r["config"], str(r["models"]), retrain, f"{r['audit_s']:.2f}", f"{r['per_model_s']:.2f}", share, *steps]
        )
    print(markdown_table(header, table))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
