"""Benchmark: what each unlearning method and the audit cost next to retraining, on digits.

One whole run (``vfl-sim run``) in a temporary folder of the digits demo with ``methods: all``
(every registered method that takes the class request: forget class 0, 30-epoch original,
2 parties, CNN bottoms, batch 64). From its ``report.json``, per model: the wall time
(``models.<m>.runtime_s``) and the traffic (``models.<m>.communication``: rounds and bytes,
both directions) and each as a ratio to ``retrain``'s; and the audit: its total time
(``audit.runtime_s``), each step's (``audit.timings_s``: gathering every model's embeddings, the
output, representation and reference-free auditors, the relearning attack), the mean per
audited model, and each as a ratio to ``retrain``'s runtime. The audit runs once over every
model (the probes of all models share their splits), so its cost is given per step and per
model, not per method. The original's row is its training, for scale.

    .venv/bin/python benchmarks/unlearning_cost.py                               # the digits demo
    .venv/bin/python benchmarks/unlearning_cost.py --set train.epochs=10 --json rows.json
    .venv/bin/python benchmarks/unlearning_cost.py configs/synthetic_planted.yaml --set methods=all

``--threads`` (default 1) sets torch's intra-op threads (``threads`` of the config),
``--blas-threads`` those of numpy's and scipy's BLAS (default: the library's). Timings on a
shared machine move; run it alone. Per-party traffic is ``benchmarks/communication.py``.

First run, 2 CPU cores shared with other jobs (noisy), 1 torch thread, ``--blas-threads 1``
(runtime, then bytes, as a ratio to retrain's 3.45 s and 20.5 MB):

| model | runtime s | / retrain | rounds | MB | / retrain |
|---|---|---|---|---|---|
| original | 4.03 | 1.17 | 721 | 22.79 | 1.11 |
| retrain | 3.45 | 1.00 | 662 | 20.54 | 1.00 |
| boundary_expand | 0.19 | 0.05 | 41 | 0.75 | 0.04 |
| boundary_shrink | 0.16 | 0.05 | 45 | 0.86 | 0.04 |
| cmf | 4.10 | 1.19 | 378 | 18.04 | 0.88 |
| few_shot_mixup | 0.46 | 0.13 | 97 | 0.57 | 0.03 |
| finetune | 0.67 | 0.19 | 111 | 3.42 | 0.17 |
| fisher | 5.18 | 1.50 | 23 | 3.69 | 0.18 |
| l1_sparse | 1.26 | 0.36 | 221 | 6.85 | 0.33 |
| neggrad | 0.03 | 0.01 | 9 | 0.15 | 0.01 |
| neggrad_plus | 1.86 | 0.54 | 221 | 12.09 | 0.59 |
| random_label | 0.27 | 0.08 | 49 | 1.52 | 0.07 |
| salun | 1.44 | 0.42 | 260 | 7.71 | 0.38 |
| scrub | 0.58 | 0.17 | 69 | 3.89 | 0.19 |
| ssd | 0.17 | 0.05 | 29 | 0.86 | 0.04 |
| unsir | 1.35 | 0.39 | 195 | 6.12 | 0.30 |

The audit of the 16 models took 6.26 s (1.81x retrain; 0.39 s per model): gathering 0.87,
output 0.24, representation 1.64, reference-free 0.12, relearning 3.38. With the BLAS default
(2 threads here) the representation audit took 22.3 s instead of 1.64 s (whole audit 27.0 s,
6.6x retrain): its scikit-learn probes (lbfgs on 64-wide embeddings) spend their time in
OpenBLAS threads waiting for a busy core; one fit took 81 ms with the default and 2.3 ms with
one BLAS thread. The reference-free audit already limits BLAS to one thread.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

from vfl_sim.config import ExperimentConfig, config_from_dict, load_config
from vfl_sim.experiment import prepare

DEFAULT: dict[str, Any] = {"name": "bench-unlearning", "methods": "all"}
STEPS = ("gather", "output", "representation", "reference_free", "feature_recovery", "relearning")


def load_case(config: Path | None, overrides: list[str], threads: int) -> ExperimentConfig:
    """The config to run: ``config`` (default: the digits demo with every method), with ``overrides``.

    Parameters
    ----------
    config
        A YAML config, or None for the digits demo with ``methods: all``.
    overrides
        ``KEY=VALUE`` settings.
    threads
        Torch intra-op threads (the config's ``threads``).

    Returns
    -------
    ExperimentConfig
        The validated config, plots off.
    """
    settings = [*overrides, f"threads={threads}", "audit.plots=false"]
    if config is None:
        return config_from_dict(DEFAULT, settings)
    return load_config(config, settings)


def run_report(cfg: ExperimentConfig, blas_threads: int = 0) -> dict[str, Any]:
    """Run ``cfg`` in a temporary folder and return its report.

    Parameters
    ----------
    cfg
        The experiment.
    blas_threads
        Threads of the BLAS libraries behind numpy and scipy during the run (0: their default).

    Returns
    -------
    dict
        The run's ``report.json``.
    """
    with contextlib.ExitStack() as stack:
        if blas_threads:
            stack.enter_context(threadpool_limits(limits=blas_threads, user_api="blas"))
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        return prepare(cfg).run(Path(tmp) / "run")


def cost_rows(report: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-model cost rows and the audit's cost, relative to ``retrain``.

    Parameters
    ----------
    report
        A run's ``report.json`` as a dict.

    Returns
    -------
    tuple of list of dict and dict
        Rows with ``model``, ``runtime_s``, ``runtime_vs_retrain``, ``rounds``, ``bytes_total``,
        ``bytes_vs_retrain``; and the audit's ``runtime_s``, ``models``, ``per_model_s``,
        ``vs_retrain``, ``per_model_vs_retrain`` and ``steps`` (seconds and ratio to retrain).
        Ratios are None without a ``retrain`` model.
    """
    models = report["models"]
    retrain = models.get("retrain")
    base_s = retrain["runtime_s"] if retrain else None
    base_b = retrain["communication"]["bytes_total"] if retrain else None
    rows = []
    for name, m in models.items():
        comm = m["communication"]
        rows.append(
            {
                "model": name,
                "runtime_s": m["runtime_s"],
                "runtime_vs_retrain": m["runtime_s"] / base_s if base_s else None,
                "rounds": comm["rounds"],
                "bytes_total": comm["bytes_total"],
                "bytes_vs_retrain": comm["bytes_total"] / base_b if base_b else None,
            }
        )
    audit = report["audit"]
    total = audit["runtime_s"]
    per_model = total / len(models)
    audit_cost = {
        "runtime_s": total,
        "models": len(models),
        "per_model_s": per_model,
        "vs_retrain": total / base_s if base_s else None,
        "per_model_vs_retrain": per_model / base_s if base_s else None,
        "steps": {
            step: {"s": secs, "vs_retrain": secs / base_s if base_s else None}
            for step, secs in audit["timings_s"].items()
        },
    }
    return rows, audit_cost


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def tables(rows: list[dict[str, Any]], audit: dict[str, Any]) -> list[str]:
    """The two markdown tables: methods, then the audit."""
    lines = [
        "| model | runtime s | runtime / retrain | rounds | MB (both directions) | bytes / retrain |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['runtime_s']:.2f} | {_ratio(r['runtime_vs_retrain'])} | {r['rounds']}"
            f" | {r['bytes_total'] / 1e6:.2f} | {_ratio(r['bytes_vs_retrain'])} |"
        )
    steps = [s for s in STEPS if s in audit["steps"]] + [s for s in audit["steps"] if s not in STEPS]
    lines += [
        "",
        "| audit | s | / retrain runtime |",
        "|---|---|---|",
        f"| whole audit ({audit['models']} models) | {audit['runtime_s']:.2f} | {_ratio(audit['vs_retrain'])} |",
        f"| per model (mean) | {audit['per_model_s']:.2f} | {_ratio(audit['per_model_vs_retrain'])} |",
    ]
    for step in steps:
        lines.append(f"| {step} | {audit['steps'][step]['s']:.2f} | {_ratio(audit['steps'][step]['vs_retrain'])} |")
    return lines


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> dict[str, Any]:
    """Parse ``argv``, run once, print both tables through ``out``; returns ``{"rows", "audit"}``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", type=Path, default=None, help="default: the digits demo with methods: all")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--blas-threads", type=int, default=0, help="numpy/scipy BLAS threads (0: the library default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", type=Path, help="also write the rows, the audit cost and the report's communication here")
    args = p.parse_args(argv)
    report = run_report(load_case(args.config, args.overrides, args.threads), args.blas_threads)
    rows, audit = cost_rows(report)
    for line in tables(rows, audit):
        out(line)
    result = {
        "rows": rows,
        "audit": audit,
        "communication": {m: v["communication"] for m, v in report["models"].items()},
        "parties": report["parties"],
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
