"""Benchmark: bytes the protocol exchanges, per training epoch per party and per unlearning method.

Bytes are the protocol's own count (every message's ``nbytes``, summed per party by the
``Transport``'s ``CommStats``; the same on every runtime), so nothing here is timed and the
numbers are exact for the settings.

- Training: one epoch through the in-process runtime for each case (digits, CNN bottoms, batch
  64, at ``--digits-parties``; the 20,000-sample synthetic set, MLP bottoms, batch 128, at
  ``--parties`` with ``--features-per-party`` columns each): rounds, bytes to each party (the
  gradient of its embedding and the next batch's ids), bytes from each party (its embedding),
  and per training sample. Both grow with the samples and the embedding width only, not with a
  party's columns or model.
- Unlearning: every method that takes the class request (``methods: all``) on the digits demo
  (forget class 0): rounds, bytes in all, to and from each party, and the ratio to ``retrain``.
  The audit is trimmed for this run (one probe split, no relearning attack or reference-free
  audit), which changes no method's traffic; ``--report`` reads the ``report.json`` of a
  finished run instead (or the ``--json`` of ``benchmarks/unlearning_cost.py``).

    .venv/bin/python benchmarks/communication.py                       # both tables
    .venv/bin/python benchmarks/communication.py --parts training --parties 2,32
    .venv/bin/python benchmarks/communication.py --parts methods --report runs/demo/report.json

Training (first run): 264.1 bytes per training sample per party in every case, whatever the
party count, columns or bottom model: 136 to the party (its 32-float embedding gradient, 128
bytes, and the next batch's int64 id, 8) and 128 from it (its embedding), plus a few bytes of
framing per message. Per epoch and party: digits (1,438 samples, 24 rounds) 195.7 KB to, 184.1
KB from, 379.8 KB in all, at 2, 4 and 8 parties alike; the 20k synthetic set (158 rounds)
2,721 KB to, 2,560 KB from, 5,281 KB in all, at 2 to 32 parties alike. The whole protocol's
traffic is that times the parties.

Unlearning on digits (``methods: all``, 2 parties, every party the same bytes; MB to / from
each party, total, as a ratio to retrain's 20.54 MB): retrain 5.29 / 4.98; original (30
epochs) 5.87 / 5.52, 1.11; cmf 3.13 / 5.89, 0.88; neggrad_plus 3.12 / 2.93, 0.59; salun 1.99 /
1.87, 0.38; l1_sparse 1.76 / 1.66, 0.33; unsir 1.56 / 1.50, 0.30; scrub 0.91 / 1.03, 0.19;
fisher 1.68 / 0.17, 0.18 (an embedding gradient per retained sample and class goes down); finetune 0.88 /
0.83, 0.17; random_label 0.39 / 0.37, 0.07; boundary_shrink 0.21 / 0.22, ssd 0.23 / 0.20 and
boundary_expand 0.19 / 0.18, about 0.04; few_shot_mixup 0.15 / 0.14, 0.03; neggrad 0.04 /
0.04, 0.007.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vfl_sim.bench import DEFAULT_CASES, int_list, synthetic_case, time_split_epochs
from vfl_sim.config import config_from_dict
from vfl_sim.experiment import prepare
from vfl_sim.seeding import seed_everything

METHODS_RUN: dict[str, Any] = {"name": "bench-communication", "methods": "all"}
TRIMMED_AUDIT = [
    "audit.plots=false",
    "audit.probe_repeats=1",
    "audit.relearning.enabled=false",
    "audit.reference_free.enabled=false",
]


def training_row(case: str, raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """The traffic of one training epoch of a case, per party.

    Parameters
    ----------
    case
        Name of the case (a table column).
    raw
        The case's config dict.
    overrides
        ``KEY=VALUE`` settings.

    Returns
    -------
    dict
        ``case``, ``train_samples``, ``parties``, ``embedding_dim``, ``batch_size``,
        ``rounds_per_epoch``, ``to_party`` and ``from_party`` (bytes per epoch, mean over
        parties), ``per_party`` (both directions), ``per_party_per_sample``, ``parties_equal``
        (every party exchanged the same bytes).
    """
    cfg = config_from_dict(raw, [*overrides, "methods=[]"])
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    exp = prepare(cfg)
    seed_everything(cfg.seed)
    server = exp.build_server()
    _, stats = time_split_epochs(exp, server, 1)
    k = len(stats.bytes_to_parties)
    to_party, from_party = stats.bytes_to_parties.values(), stats.bytes_to_server.values()
    per_party = [a + b for a, b in zip(to_party, from_party, strict=True)]
    n = int(exp.dataset.train_ids.size)
    return {
        "case": case,
        "train_samples": n,
        "parties": k,
        "embedding_dim": cfg.model.embedding_dim,
        "batch_size": cfg.train.batch_size,
        "rounds_per_epoch": stats.rounds,
        "to_party": sum(to_party) / k,
        "from_party": sum(from_party) / k,
        "per_party": sum(per_party) / k,
        "per_party_per_sample": sum(per_party) / k / n,
        "parties_equal": len(set(per_party)) == 1,
    }


def method_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-model traffic from a run's report (or from ``benchmarks/unlearning_cost.py --json``).

    Parameters
    ----------
    report
        ``report.json`` as a dict, or a dict with ``communication`` (``model -> communication``).

    Returns
    -------
    list of dict
        ``model``, ``rounds``, ``bytes_total``, ``to_party`` and ``from_party`` (mean over
        parties), ``parties_equal``, ``bytes_vs_retrain`` (None without ``retrain``).
    """
    comms = report.get("communication") or {m: v["communication"] for m, v in report["models"].items()}
    base = comms["retrain"]["bytes_total"] if "retrain" in comms else None
    rows = []
    for model, comm in comms.items():
        to_party, from_party = list(comm["bytes_to_parties"].values()), list(comm["bytes_to_server"].values())
        k = max(1, len(to_party))
        per_party = {a + b for a, b in zip(to_party, from_party, strict=True)}
        rows.append(
            {
                "model": model,
                "rounds": comm["rounds"],
                "bytes_total": comm["bytes_total"],
                "to_party": sum(to_party) / k,
                "from_party": sum(from_party) / k,
                "parties_equal": len(per_party) <= 1,
                "bytes_vs_retrain": comm["bytes_total"] / base if base else None,
            }
        )
    return rows


def training_table(rows: list[dict[str, Any]]) -> list[str]:
    """Training rows as a markdown table."""
    lines = [
        "| case | train samples | parties | batch | rounds/epoch | KB/epoch to each party | KB/epoch from each party "
        "| KB/epoch per party | bytes per sample per party | parties equal |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['train_samples']:,} | {r['parties']} | {r['batch_size']} | {r['rounds_per_epoch']}"
            f" | {r['to_party'] / 1e3:.1f} | {r['from_party'] / 1e3:.1f} | {r['per_party'] / 1e3:.1f}"
            f" | {r['per_party_per_sample']:.1f} | {'yes' if r['parties_equal'] else 'no'} |"
        )
    return lines


def methods_table(rows: list[dict[str, Any]]) -> list[str]:
    """Method rows as a markdown table."""
    lines = [
        "| model | rounds | MB total | MB to each party | MB from each party | bytes / retrain | parties equal |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = "-" if r["bytes_vs_retrain"] is None else f"{r['bytes_vs_retrain']:.3f}"
        lines.append(
            f"| {r['model']} | {r['rounds']} | {r['bytes_total'] / 1e6:.2f} | {r['to_party'] / 1e6:.3f}"
            f" | {r['from_party'] / 1e6:.3f} | {ratio} | {'yes' if r['parties_equal'] else 'no'} |"
        )
    return lines


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> dict[str, list[dict[str, Any]]]:
    """Parse ``argv``, count both parts, print the tables through ``out``; returns ``{"training", "methods"}``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="training,methods", help="comma list of training, methods")
    p.add_argument("--digits-parties", default="2,4,8", help="party counts of the digits training case (at most 8)")
    p.add_argument("--parties", default="2,4,8,16,32", help="party counts of the synthetic training case")
    p.add_argument("--party-samples", type=int, default=20_000, help="training samples of the synthetic case")
    p.add_argument("--features-per-party", type=int, default=8)
    p.add_argument("--report", type=Path, help="methods: read this report.json (or unlearning_cost --json) instead")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (speed only; bytes do not change)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="every run")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    parts = args.parts.split(",")
    overrides = [*args.overrides, f"threads={args.threads}"]
    result: dict[str, list[dict[str, Any]]] = {}
    if "training" in parts:
        digits = DEFAULT_CASES["digits"]
        cases = [("digits", {**digits, "partition": {"parties": k}}) for k in int_list(args.digits_parties)]
        cases += [
            ("synthetic", synthetic_case(args.party_samples, k, features_per_party=args.features_per_party))
            for k in int_list(args.parties)
        ]
        result["training"] = [training_row(case, raw, overrides) for case, raw in cases]
        out("Training, one epoch:")
        out("")
        for line in training_table(result["training"]):
            out(line)
    if "methods" in parts:
        if args.report is not None:
            report = json.loads(args.report.read_text())
        else:
            cfg = config_from_dict(METHODS_RUN, [*overrides, *TRIMMED_AUDIT])
            with tempfile.TemporaryDirectory() as tmp:
                report = prepare(cfg).run(Path(tmp) / "run")
        result["methods"] = method_rows(report)
        out("")
        out("Unlearning, per method (the original's row is its whole training):")
        out("")
        for line in methods_table(result["methods"]):
            out(line)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
