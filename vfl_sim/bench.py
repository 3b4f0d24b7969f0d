"""Benchmark: epoch time of exact split learning (local runtime) vs the monolithic model.

Both sides train the same bottoms and top from the same weights, on the same per-party feature
tensors and the same minibatches, with the same optimizer settings; the monolithic side is one
``nn.Module`` with one optimizer. The ratio is the protocol's overhead: party dispatch, message
objects, per-role optimizers and the detach/re-attach of embeddings at the cut.
"""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vfl_sim.config import ExperimentConfig, config_from_dict, load_config
from vfl_sim.models.monolithic import MonolithicModel
from vfl_sim.optim import build_optimizer, build_scheduler, clear_grads
from vfl_sim.seeding import seed_everything, torch_generator

DEFAULT_CASES: dict[str, dict[str, Any]] = {
    "digits": {"name": "bench-digits"},
    "synthetic-20k": {
        "name": "bench-synthetic",
        "data": {
            "name": "synthetic",
            "synthetic": {"samples": 25_000, "features": 40, "classes": 10, "informative_per_party": 8},
        },
        "train": {"batch_size": 128},
    },
}


def bench_case(cfg: ExperimentConfig, *, epochs: int, repeats: int) -> dict[str, Any]:
    """Time ``epochs`` training epochs, split vs monolithic, ``repeats`` times (interleaved)."""
    from parties.party import Party
    from server.server import count_batches, make_batches
    from vfl_sim.experiment import prepare

    exp = prepare(cfg.model_copy(update={"methods": []}))
    seed_everything(cfg.seed)
    server = exp.build_server()
    parties: list[Party] = list(server.transport.parties.values())  # type: ignore[attr-defined]
    mono = MonolithicModel([copy.deepcopy(p.bottom) for p in parties], copy.deepcopy(server.top), cfg.model.fusion)
    labels = server.labels
    features = [p.features for p in parties]
    train_ids = torch.from_numpy(exp.dataset.train_ids)
    steps = count_batches(train_ids.numel(), cfg.train.batch_size)

    def split_epochs() -> float:
        gen = torch_generator(1)
        server.configure(cfg.train, epochs * steps)
        start = time.perf_counter()
        for _ in range(epochs):
            server.run_epoch(make_batches(train_ids, cfg.train.batch_size, gen))
        return time.perf_counter() - start

    def mono_epochs() -> float:
        gen = torch_generator(1)
        opt = build_optimizer(mono.parameters(), cfg.train)
        sched = build_scheduler(opt, cfg.train.schedule, epochs * steps)
        mono.train()
        start = time.perf_counter()
        for _ in range(epochs):
            for batch in make_batches(train_ids, cfg.train.batch_size, gen):
                logits = mono([f.index_select(0, batch) for f in features])
                loss = F.cross_entropy(logits, labels[batch])
                clear_grads(opt)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
        return time.perf_counter() - start

    split_epochs(), mono_epochs()  # warm-up: allocator, kernels, lazy init
    split_t, mono_t = [], []
    for _ in range(repeats):
        split_t.append(split_epochs())
        mono_t.append(mono_epochs())
    split_s, mono_s = statistics.median(split_t) / epochs, statistics.median(mono_t) / epochs
    return {
        "dataset": exp.dataset.name,
        "train_samples": int(train_ids.numel()),
        "parties": len(parties),
        "batch_size": cfg.train.batch_size,
        "steps_per_epoch": steps,
        "split_epoch_s": split_s,
        "monolithic_epoch_s": mono_s,
        "ratio": split_s / mono_s,
    }


def run_bench(config: Path | None, overrides: list[str], *, epochs: int, repeats: int) -> list[dict[str, Any]]:
    """Run the benchmark on a config (or the default cases) and print a table."""
    if config is not None:
        cases = {config.stem: load_config(config, overrides)}
    else:
        cases = {name: config_from_dict(raw, overrides) for name, raw in DEFAULT_CASES.items()}
    results = []
    print(f"{'case':<16}{'train':>8}{'parties':>8}{'steps':>7}{'split s/epoch':>15}{'mono s/epoch':>14}{'ratio':>8}")
    for name, cfg in cases.items():
        r = bench_case(cfg, epochs=epochs, repeats=repeats)
        results.append({"case": name, **r})
        print(
            f"{name:<16}{r['train_samples']:>8}{r['parties']:>8}{r['steps_per_epoch']:>7}"
            f"{r['split_epoch_s']:>15.4f}{r['monolithic_epoch_s']:>14.4f}{r['ratio']:>8.3f}"
        )
    return results
