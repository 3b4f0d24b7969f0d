"""Benchmark: epoch time of exact split learning vs the monolithic model.

Both sides train the same bottoms and top from the same weights, on the same per-party feature
tensors and the same minibatches, with the same optimizer settings; the monolithic side is one
``nn.Module`` with one optimizer. The ratio is the protocol's overhead: party dispatch, message
objects, per-role optimizers and the detach/re-attach of embeddings at the cut.

:func:`bench_runtimes` times any number of runtimes against the same monolithic model (each
runtime is a factory of the :class:`~vfl_sim.transport.Transport` that reaches its parties;
``None`` is the in-process ``local`` one); :func:`bench_case` is the ``local``-only case that
``vfl-sim bench`` prints. :func:`time_split_epochs`, :func:`time_monolithic_epochs`,
:func:`time_empty_round` and :func:`time_run` are the timing loops themselves.

This module is the library: every timing loop lives here, and both ``vfl-sim bench`` and the
scripts under ``benchmarks/`` (which only pick cases, call these functions and print tables)
import it.
"""

from __future__ import annotations

import copy
import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F

from vfl_sim.config import ExperimentConfig, config_from_dict, load_config
from vfl_sim.errors import ConfigError
from vfl_sim.models.monolithic import MonolithicModel
from vfl_sim.optim import build_optimizer, build_scheduler, clear_grads
from vfl_sim.protocol import Embed
from vfl_sim.seeding import seed_everything, torch_generator
from vfl_sim.transport import CommStats, Transport

if TYPE_CHECKING:
    from vfl_sim.experiment import Experiment
    from vfl_sim.server.server import Server

log = logging.getLogger("vfl_sim")

TransportFactory = Callable[["Experiment"], Transport]
"""Builds the transport of one runtime for a prepared experiment (its parties live elsewhere)."""

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


def synthetic_case(
    train_samples: int,
    parties: int,
    *,
    features_per_party: int = 8,
    total_features: int | None = None,
    batch_size: int = 128,
) -> dict[str, Any]:
    """A raw config of the synthetic set (MLP bottoms, contiguous columns) at a given size.

    Parameters
    ----------
    train_samples
        Training samples; the set has ``train_samples / 0.8`` samples (the default 20 % test split).
    parties
        Passive parties.
    features_per_party
        Columns per party (``features = features_per_party * parties``): every party's bottom
        model does the same work whatever the party count.
    total_features
        A fixed number of columns shared out among the parties instead (the last parties may
        hold one column fewer).
    batch_size
        Training minibatch size.

    Returns
    -------
    dict
        A config dict for :func:`vfl_sim.config.config_from_dict`.
    """
    features = total_features if total_features is not None else features_per_party * parties
    informative = max(1, min(8, features // parties))
    return {
        "name": f"bench-synthetic-{train_samples}-{parties}p",
        "data": {
            "name": "synthetic",
            "synthetic": {
                "samples": round(train_samples / 0.8),
                "features": features,
                "classes": 10,
                "informative_per_party": informative,
            },
        },
        "partition": {"parties": parties, "scheme": "contiguous"},
        "train": {"batch_size": batch_size},
    }


def time_split_epochs(exp: Experiment, server: Server, epochs: int) -> tuple[float, CommStats]:
    """Train ``epochs`` epochs of the split model through ``server``'s transport.

    Parameters
    ----------
    exp
        The prepared experiment (data, training recipe).
    server
        A server whose transport reaches the parties of one runtime.
    epochs
        Epochs to time.

    Returns
    -------
    tuple of float and CommStats
        Wall seconds of the epochs (fresh optimizers excluded) and the traffic of the epochs.
    """
    from vfl_sim.server.server import count_batches, make_batches

    cfg = exp.cfg
    train_ids = torch.from_numpy(exp.dataset.train_ids)
    gen = torch_generator(1)
    server.configure(cfg.train, epochs * count_batches(train_ids.numel(), cfg.train.batch_size))
    before = server.transport.stats.snapshot()
    start = time.perf_counter()
    for _ in range(epochs):
        server.run_epoch(make_batches(train_ids, cfg.train.batch_size, gen))
    return time.perf_counter() - start, server.transport.stats.since(before)


def features_device(features: Sequence[torch.Tensor]) -> torch.device:
    """The one device every party's feature tensor is on (where a batch's index must be)."""
    devices = {f.device for f in features}
    if len(devices) != 1:
        raise ValueError(f"the parties' features are on several devices: {sorted(str(d) for d in devices)}")
    return devices.pop()


def time_empty_round(server: Server, n: int = 50) -> float:
    """Median seconds of a round that asks every party for the eval embedding of one sample: the
    transport's own cost per round (after one untimed round)."""
    request = Embed(torch.arange(1), train=False)
    server.transport.broadcast(request)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        server.transport.broadcast(request)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_run(cfg: ExperimentConfig, epochs: int) -> dict[str, Any]:
    """A whole run of ``cfg`` (the original model only, ``epochs`` epochs) on the runtime its
    config names, in a temporary run folder: what a runtime whose server runs elsewhere (Flower's
    ServerApp) can be timed by.

    Parameters
    ----------
    cfg
        The experiment (its ``methods`` are dropped and ``train.epochs`` set to ``epochs``).
    epochs
        Training epochs of the run.

    Returns
    -------
    dict
        ``epoch_s`` (the run's own training time of the original per epoch, set-up rounds
        included, start-up excluded), ``rounds_per_epoch``, ``bytes_per_epoch``,
        ``bytes_per_epoch_per_party``, ``run_wall_s`` (the whole run, process start-up
        included) and ``retain_test_acc`` of the original.
    """
    from vfl_sim.experiment import prepare
    from vfl_sim.runtimes.base import run_experiment

    run_cfg = config_from_dict(cfg.model_dump(mode="json"), [f"train.epochs={epochs}", "methods=[]"])
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report = run_experiment(prepare(run_cfg), Path(tmp) / "run")
        wall = time.perf_counter() - start
    original = report["models"]["original"]
    comm = original["communication"]
    return {
        "epoch_s": original["runtime_s"] / epochs,
        "rounds_per_epoch": comm["rounds"] / epochs,
        "bytes_per_epoch": comm["bytes_total"] / epochs,
        "bytes_per_epoch_per_party": comm["bytes_total"] / epochs / run_cfg.partition.parties,
        "run_wall_s": wall,
        "retain_test_acc": original["output"]["retain_test_acc"],
    }


def time_monolithic_epochs(
    exp: Experiment, model: MonolithicModel, features: list[torch.Tensor], labels: torch.Tensor, epochs: int
) -> float:
    """Train ``epochs`` epochs of the monolithic model on the same batches as :func:`time_split_epochs`.

    Parameters
    ----------
    exp
        The prepared experiment (data, training recipe).
    model
        Every bottom and the top as one module.
    features
        Each party's feature tensor (row ``i`` is sample id ``i``), in the model's bottom order.
    labels
        Labels of every sample by id.
    epochs
        Epochs to time.

    Returns
    -------
    float
        Wall seconds of the epochs.
    """
    from vfl_sim.server.server import count_batches, make_batches

    cfg = exp.cfg
    train_ids = torch.from_numpy(exp.dataset.train_ids)
    gen = torch_generator(1)
    opt = build_optimizer(model.parameters(), cfg.train)
    sched = build_scheduler(opt, cfg.train.schedule, epochs * count_batches(train_ids.numel(), cfg.train.batch_size))
    device = features_device(features)
    labels = labels.to(device)
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in make_batches(train_ids, cfg.train.batch_size, gen):
            index = batch.to(device)  # the batches are cut on the CPU; index_select wants the features' device
            logits = model([f.index_select(0, index) for f in features])
            loss = F.cross_entropy(logits, labels[index])
            clear_grads(opt)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
    return time.perf_counter() - start


def bench_runtimes(
    cfg: ExperimentConfig,
    runtimes: Mapping[str, TransportFactory | None],
    *,
    epochs: int,
    repeats: int,
) -> list[dict[str, Any]]:
    """Time training epochs of each runtime and of the monolithic model, interleaved.

    Every runtime's server starts from the same weights (the same seed), and the monolithic
    model from copies of the in-process parties' bottoms and the top. After one warm-up pass of
    each, the runtimes and the monolithic model take turns ``repeats`` times, so load from other
    work on a shared machine hits all of them alike; the medians are reported. ``cfg.threads``
    (when not 0) sets torch's intra-op threads of this process, as a run does.

    Parameters
    ----------
    cfg
        The experiment (its ``methods`` are ignored).
    runtimes
        ``name -> transport factory``, in the order to time them; ``None`` is the in-process
        runtime (``local``). Transports built here are closed before returning.
    epochs
        Epochs per timing.
    repeats
        Timings per runtime (after the warm-up).

    Returns
    -------
    list of dict
        One row per runtime: ``runtime``, ``dataset``, ``train_samples``, ``parties``,
        ``features``, ``batch_size``, ``steps_per_epoch``, ``epoch_s``, ``monolithic_epoch_s``,
        ``ratio`` (epoch_s / monolithic_epoch_s), ``rounds_per_epoch``,
        ``bytes_per_epoch_per_party`` (both directions, mean over parties) and ``epoch_s_all``
        (every timing, per epoch).
    """
    from vfl_sim.experiment import prepare
    from vfl_sim.parties.party import Party
    from vfl_sim.server.server import count_batches
    from vfl_sim.transport import LocalTransport

    exp = prepare(cfg.model_copy(update={"methods": []}))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)  # as a run does
    seed_everything(cfg.seed)
    local = exp.build_server()
    assert isinstance(local.transport, LocalTransport)
    parties = [cast(Party, p) for p in local.transport.parties.values()]
    mono = MonolithicModel([copy.deepcopy(p.bottom) for p in parties], copy.deepcopy(local.top), cfg.model.fusion)
    features = [p.features for p in parties]
    servers: dict[str, Server] = {}
    try:
        for name, factory in runtimes.items():
            servers[name] = local if factory is None else exp.build_server(factory(exp))
        times: dict[str, list[float]] = {name: [] for name in servers}
        traffic: dict[str, CommStats] = {}
        mono_t: list[float] = []
        for name, server in servers.items():  # warm-up: allocator, kernels, lazy init, remote caches
            traffic[name] = time_split_epochs(exp, server, epochs)[1]
        time_monolithic_epochs(exp, mono, features, local.labels, epochs)
        for _ in range(repeats):
            for name, server in servers.items():
                times[name].append(time_split_epochs(exp, server, epochs)[0])
            mono_t.append(time_monolithic_epochs(exp, mono, features, local.labels, epochs))
    finally:
        for server in servers.values():
            if server is not local:
                server.transport.close()
    train_samples = int(exp.dataset.train_ids.size)
    mono_s = statistics.median(mono_t) / epochs
    rows = []
    for name in servers:
        stats = traffic[name]
        epoch_s = statistics.median(times[name]) / epochs
        rows.append(
            {
                "runtime": name,
                "dataset": exp.dataset.name,
                "train_samples": train_samples,
                "parties": len(parties),
                "features": sum(int(f[0].numel()) for f in features),
                "batch_size": cfg.train.batch_size,
                "steps_per_epoch": count_batches(train_samples, cfg.train.batch_size),
                "epoch_s": epoch_s,
                "monolithic_epoch_s": mono_s,
                "ratio": epoch_s / mono_s,
                "rounds_per_epoch": stats.rounds / epochs,
                "bytes_per_epoch_per_party": stats.total_bytes / epochs / len(parties),
                "epoch_s_all": [t / epochs for t in times[name]],
                "monolithic_epoch_s_all": [t / epochs for t in mono_t],
            }
        )
    return rows


def ray_factory() -> TransportFactory | None:
    """The transport factory of ``runtime: ray`` (one actor per party, on the Ray this process
    is connected to), or None where the Ray runtime does not import (Ray missing, or broken)."""
    try:
        from vfl_sim.runtimes.ray_runtime import ray_transport
    except Exception:  # noqa: BLE001 - any import failure means: no Ray runtime here
        return None

    def factory(exp: Experiment) -> Transport:
        return ray_transport(exp.cfg, exp.dataset, exp.slices, exp.device)

    return factory


def bench_named_runtimes(
    cfg: ExperimentConfig, runtimes: Sequence[str], *, epochs: int, repeats: int
) -> list[dict[str, Any]]:
    """:func:`bench_runtimes` for runtimes given by name (see :mod:`vfl_sim.runtimes.base`):
    those that give this process a transport to their parties, ``local`` and ``ray`` among the
    built-in ones.

    Each runtime starts its parties as a run would (for ``ray``, a local Ray for the case, or the
    cluster at ``ray.address``) and stops them afterwards; a runtime that cannot start here (Ray
    not installed) is left out.

    Parameters
    ----------
    cfg
        The experiment.
    runtimes
        Runtime names, in the order to time them.
    epochs, repeats
        As for :func:`bench_runtimes`.

    Returns
    -------
    list of dict
        The rows of :func:`bench_runtimes`.
    """
    from vfl_sim.runtimes.base import Runtime, available_runtimes, get_runtime

    unknown = set(runtimes) - set(available_runtimes())
    if unknown:
        raise ValueError(f"unknown runtimes {sorted(unknown)}; bench times local and ray")
    chosen: dict[str, Runtime] = {}
    for name in runtimes:
        try:
            chosen[name] = get_runtime(name)
        except ConfigError as exc:
            log.warning("bench: leaving out %s", exc)
    driven = [n for n, r in chosen.items() if not r.drives_parties]
    if driven:
        raise ValueError(f"unknown runtimes {sorted(driven)}; bench times local and ray")

    with ExitStack() as stack:

        def factory_of(runtime: Runtime) -> TransportFactory:
            def factory(exp: Experiment) -> Transport:
                transport = stack.enter_context(runtime.parties(exp))
                assert transport is not None  # only the in-process runtime gives none
                return transport

            return factory

        factories = {n: None if n == "local" else factory_of(r) for n, r in chosen.items()}
        return bench_runtimes(cfg, factories, epochs=epochs, repeats=repeats)


def bench_case(cfg: ExperimentConfig, *, epochs: int, repeats: int) -> dict[str, Any]:
    """Time ``epochs`` training epochs, split (local runtime) vs monolithic, ``repeats`` times (interleaved).

    Parameters
    ----------
    cfg
        The experiment.
    epochs
        Epochs per timing.
    repeats
        Timings of each side (after a warm-up).

    Returns
    -------
    dict
        ``dataset``, ``train_samples``, ``parties``, ``batch_size``, ``steps_per_epoch``,
        ``split_epoch_s``, ``monolithic_epoch_s``, ``ratio``.
    """
    (row,) = bench_runtimes(cfg, {"local": None}, epochs=epochs, repeats=repeats)
    return {
        "dataset": row["dataset"],
        "train_samples": row["train_samples"],
        "parties": row["parties"],
        "batch_size": row["batch_size"],
        "steps_per_epoch": row["steps_per_epoch"],
        "split_epoch_s": row["epoch_s"],
        "monolithic_epoch_s": row["monolithic_epoch_s"],
        "ratio": row["ratio"],
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


def int_list(text: str) -> list[int]:
    """``"2,4,8"`` -> ``[2, 4, 8]``: the comma lists of the benchmark scripts' flags."""
    return [int(x) for x in text.split(",") if x]
