"""The Flower App: each passive party is a ClientApp node, the server is the ServerApp.

The ClientApp has one handler per protocol message type. Flower builds it anew for every
message, so each handler rebuilds the party from the run's config and the node's
``partition-id``, restores its state from ``Context.state``, answers, and saves the state
back (:mod:`vfl_sim.runtimes.flower_state`). Cutting the party's feature slice out of the
dataset is pure (same config, same slice), so it is cached: per process, and on the node's disk
(:func:`party_view`), since a deployment starts a new process for every message.

The run's config travels in the Flower run config as one JSON string (``vfl-config``), with
the run folder (``out-dir``), the timeouts, the submitter's working directory (for plugin
modules) and the torch thread count that the submitter resolved (``threads``, applied by the
ServerApp and every ClientApp alike) beside it: :data:`APP_CONFIG` lists the keys and their
defaults.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections import deque
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

import vfl_sim.methods  # noqa: F401  (the built-in methods' party-side steps, in each ClientApp's process)
from vfl_sim import __version__
from vfl_sim.config import ExperimentConfig, config_from_dict
from vfl_sim.data.loaders import load_dataset
from vfl_sim.data.partition import partition_features, party_ids
from vfl_sim.experiment import apply_threads, prepare, resolve_threads
from vfl_sim.parties.build import build_party
from vfl_sim.parties.party import Party
from vfl_sim.plugins import import_plugins
from vfl_sim.runtimes.flower_codec import decode_request, encode_reply
from vfl_sim.runtimes.flower_pace import pace_grid
from vfl_sim.runtimes.flower_state import restore_party, save_party, state_stamp
from vfl_sim.runtimes.flower_transport import FlowerTransport, hello_reply
from vfl_sim.seeding import derive_seed

CONFIG_KEY, OUT_KEY, WORKDIR_KEY, THREADS_KEY = "vfl-config", "out-dir", "work-dir", "threads"

APP_CONFIG: dict[str, Any] = {
    CONFIG_KEY: "{}",
    OUT_KEY: "runs/flower",
    "overwrite": False,
    "resume": False,
    WORKDIR_KEY: "",
    "connect-timeout": 120.0,
    "round-timeout": 120.0,
    "poll-interval": 0.02,
    THREADS_KEY: 0,
}
"""The app's run-config keys and defaults (``[tool.flwr.app.config]``; Flower accepts only
overrides of keys declared there)."""


def run_config_for(cfg: ExperimentConfig, out_dir: str, **extra: Any) -> dict[str, Any]:
    """The Flower run config that carries an experiment (flat keys, as Flower requires).

    The Flower section of ``cfg`` gives the timeouts and poll interval; ``extra`` overrides.
    The thread count is resolved here, in the submitting process
    (:func:`~vfl_sim.experiment.resolve_threads`), so that every process of the run computes
    with the one a ``local`` run of ``cfg`` would use here.
    """
    config = {
        **APP_CONFIG,
        CONFIG_KEY: json.dumps(cfg.model_dump(mode="json")),
        OUT_KEY: out_dir,
        WORKDIR_KEY: os.getcwd(),
        "connect-timeout": cfg.flower.connect_timeout,
        "round-timeout": cfg.flower.round_timeout,
        "poll-interval": cfg.flower.poll_interval,
        THREADS_KEY: resolve_threads(cfg),
    }
    config.update(extra)
    unknown = set(config) - set(APP_CONFIG)
    if unknown:
        raise KeyError(f"not run-config keys of the app: {sorted(unknown)}")
    return config


def _setting(context: Context, key: str) -> Any:
    # `run_simulation` (and a run started with an app whose config lacks a key) gives no value.
    return context.run_config.get(key, APP_CONFIG[key])


def _apply_threads(context: Context) -> int:
    """Compute with the run's thread count in this process (0, from a run config that lacks
    it: ``threads`` of the run's config, or this process's count); returns the count."""
    threads = int(_setting(context, THREADS_KEY))
    if not threads:
        threads = config_from_dict(json.loads(str(context.run_config[CONFIG_KEY]))).threads
    apply_threads(threads)
    return threads or torch.get_num_threads()


def _import_plugins(context: Context) -> ExperimentConfig:
    """The run's config, after importing its plugin modules (their methods and party ops)."""
    work_dir = str(_setting(context, WORKDIR_KEY))
    if work_dir and work_dir not in sys.path:
        sys.path.insert(0, work_dir)
    cfg = config_from_dict(json.loads(str(context.run_config[CONFIG_KEY])))
    import_plugins(cfg.plugins)
    return cfg


VIEW_CACHE = "vfl-sim-party-views"


@lru_cache(maxsize=8)
def party_view(config_json: str, partition_id: int) -> torch.Tensor:
    """Party ``partition_id``'s columns of every sample for the experiment ``config_json``.

    In a Flower node (``FLWR_HOME`` set) the slice is also kept as a ``.npy`` file under
    ``$FLWR_HOME/vfl-sim-party-views``, keyed by everything it depends on (the data and
    partition sections, the seed, the party, and the size and time of every file under
    ``data.root``), so that a fresh ClientApp process loads it instead of loading and cutting
    the dataset (which costs about a second for digits, mostly importing scikit-learn).
    """
    cfg = config_from_dict(json.loads(config_json))
    if not 0 <= partition_id < cfg.partition.parties:
        raise ValueError(f"partition-id {partition_id} is out of range for {cfg.partition.parties} parties")
    path = _view_path(cfg, partition_id)
    if path is not None and path.is_file():
        return torch.from_numpy(np.load(path))
    dataset = load_dataset(cfg.data, parties=cfg.partition.parties, seed=cfg.seed)
    slices = partition_features(
        cfg.partition, dataset.sample_shape, derive_seed(cfg.seed, "partition"), dataset.column_names
    )
    view = slices[partition_id].take(dataset.features)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial.npy")
        np.save(partial, view)
        os.replace(partial, path)  # atomic: another process of the node may read it meanwhile
    return torch.from_numpy(view)


def _view_path(cfg: ExperimentConfig, partition_id: int) -> Path | None:
    home = os.environ.get("FLWR_HOME")
    if not home:
        return None
    key: dict[str, Any] = {
        "data": cfg.data.model_dump(mode="json"),
        "partition": cfg.partition.model_dump(mode="json"),
        "seed": cfg.seed,
        "party": partition_id,
        "version": __version__,
    }
    if cfg.data.root is not None and Path(cfg.data.root).is_dir():
        key["files"] = sorted(
            (str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in Path(cfg.data.root).rglob("*") if p.is_file()
        )
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return Path(home) / VIEW_CACHE / f"party{partition_id}-{digest}.npy"


def _partition_id(context: Context) -> int:
    if "partition-id" not in context.node_config:
        raise ValueError("this SuperNode has no partition-id; start it with --node-config 'partition-id=K'")
    return int(context.node_config["partition-id"])


# The party this process answered for last, per node, with the state stamps it saved (newest
# last). When the node's Context.state carries the newest, nothing has happened to the party
# elsewhere and it is reused as is. When it carries an older one of ours, the SuperNode did not
# keep the context of a later answer (it drops the output of a task it no longer counts as
# running): the party here is newer than that state, so it is kept, with a warning. Otherwise
# (a new process, another run, a state written elsewhere) the party is rebuilt from the state.
_RESIDENT: dict[tuple[int, int], tuple[deque[int], Party]] = {}
_STAMPS_KEPT = 64


def _party(context: Context) -> Party:
    _apply_threads(context)  # a process may serve several runs (Flower's simulation reuses them)
    key = (context.run_id, context.node_id)
    resident = _RESIDENT.get(key)
    stamp = state_stamp(context.state)
    if resident is not None and stamp in resident[0]:
        if stamp != resident[0][-1]:
            logging.getLogger("vfl_sim").warning(
                "node %d: the SuperNode gave an older state of this party than the one it holds; "
                "going on with the newer one held here",
                context.node_id,
            )
        return resident[1]
    if resident is None:
        _import_plugins(context)  # party ops of plugin methods; once per process and node
    config_json = str(context.run_config[CONFIG_KEY])
    cfg, pid = config_from_dict(json.loads(config_json)), _partition_id(context)
    view = party_view(config_json, pid)
    party = build_party(cfg, party_ids(cfg.partition.parties)[pid], view, torch.device("cpu"), replay_backward=True)
    restore_party(party, context.state)
    return party


def _keep(context: Context, party: Party) -> None:
    save_party(party, context.state)
    key = (context.run_id, context.node_id)
    resident = _RESIDENT.get(key)
    stamps = resident[0] if resident is not None and resident[1] is party else deque(maxlen=_STAMPS_KEPT)
    stamps.append(state_stamp(context.state))
    _RESIDENT[key] = (stamps, party)


client_app = ClientApp()


def _answer(message: Message, context: Context) -> Message:
    party = _party(context)
    reply = party.handle(decode_request(message.metadata.message_type, message.content))
    _keep(context, party)
    return Message(encode_reply(reply), reply_to=message)


@client_app.query("hello")
def hello(message: Message, context: Context) -> Message:
    """Discovery: tell the server which party this node is."""
    return hello_reply(message, _partition_id(context))


@client_app.query("embed")
def embed(message: Message, context: Context) -> Message:
    """``Embed``: this party's embeddings of the requested sample ids."""
    return _answer(message, context)


@client_app.train("backward")
def backward(message: Message, context: Context) -> Message:
    """``Backward``: apply the gradient of this party's embedding (and embed the next batch)."""
    return _answer(message, context)


@client_app.train("local_op")
def local_op(message: Message, context: Context) -> Message:
    """``LocalOp``: a registered party-side operation."""
    return _answer(message, context)


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the experiment in the run config with the parties behind Flower nodes."""
    from vfl_sim.progress import LogProgress

    # Our lines only: the root logger's INFO would relay every HTTP request Flower makes.
    log = logging.getLogger("vfl_sim")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("vfl-sim: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    pace_grid()  # a deployment's grid pulls reply content; a simulation's grid ignores this
    threads = _apply_threads(context)
    cfg = _import_plugins(context)
    exp = prepare(cfg)
    log.info("computing with %d torch threads", threads)
    log.info("waiting for %d parties", cfg.partition.parties)
    transport = FlowerTransport(
        grid,
        party_ids(cfg.partition.parties),
        connect_timeout=float(_setting(context, "connect-timeout")),
        round_timeout=float(_setting(context, "round-timeout")),
        poll_interval=float(_setting(context, "poll-interval")),
    )
    log.info("parties connected: %s", ", ".join(f"{p} = node {n}" for p, n in transport.nodes.items()))
    out = str(_setting(context, OUT_KEY))
    exp.run(
        out,
        transport=transport,
        overwrite=bool(_setting(context, "overwrite")),
        resume=bool(_setting(context, "resume")),
        progress=LogProgress(log.info),
    )
    log.info("run folder written: %s", out)
