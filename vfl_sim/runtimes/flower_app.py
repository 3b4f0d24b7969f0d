"""The Flower App: each passive party is a ClientApp node, the server is the ServerApp.

The ClientApp has one handler per protocol message type. Flower builds it anew for every
message, so each handler rebuilds the party from the parties' share of the config and the
node's ``partition-id`` (or reuses the one this process keeps), restores its state from
``Context.state``, answers, and saves the state back (:mod:`vfl_sim.runtimes.flower_state`).

The run config, which every node reads, carries only the parties' share of the experiment's
config (``vfl-config``) and two random tokens: one names the whole config that the submitter
handed to the ServerApp (``server-config``), the other the folder of each party's own columns
(``party-data``); :mod:`vfl_sim.runtimes.flower_handoff` explains the hand-off. Beside them
travel the run folder (``out-dir``), the timeouts, the submitter's working directory (for
plugin modules) and the torch thread count that the submitter resolved (``threads``, applied by
the ServerApp and every ClientApp alike): :data:`APP_CONFIG` lists the keys and their defaults.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections import deque
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

import vfl_sim.methods  # noqa: F401  (the built-in methods' party-side steps, in each ClientApp's process)
from vfl_sim.config import ExperimentConfig, config_from_dict
from vfl_sim.data.dataset import VflDataset
from vfl_sim.data.partition import PartySlice, party_ids
from vfl_sim.experiment import apply_threads, prepare, resolve_threads
from vfl_sim.parties.build import build_party
from vfl_sim.parties.party import Party
from vfl_sim.plugins import import_plugins
from vfl_sim.runtimes.flower_codec import decode_request, encode_reply
from vfl_sim.runtimes.flower_handoff import (
    hand_to_server,
    new_token,
    party_share,
    read_party_data,
    take_server_config,
    write_party_data,
)
from vfl_sim.runtimes.flower_pace import pace_grid
from vfl_sim.runtimes.flower_state import restore_party, save_party, state_stamp
from vfl_sim.runtimes.flower_transport import FlowerTransport, hello_reply

CONFIG_KEY, OUT_KEY, WORKDIR_KEY, THREADS_KEY = "vfl-config", "out-dir", "work-dir", "threads"
SERVER_KEY, DATA_KEY = "server-config", "party-data"

APP_CONFIG: dict[str, Any] = {
    CONFIG_KEY: "{}",
    SERVER_KEY: "",
    DATA_KEY: "",
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


def run_config_for(
    cfg: ExperimentConfig, out_dir: str, *, server_token: str = "", data_token: str = "", **extra: Any
) -> dict[str, Any]:
    """The Flower run config of an experiment (flat keys, as Flower requires): the parties'
    share of ``cfg`` and the tokens of what :func:`hand_off` wrote.

    The Flower section of ``cfg`` gives the timeouts and poll interval; ``extra`` overrides.
    The thread count is resolved here, in the submitting process
    (:func:`~vfl_sim.experiment.resolve_threads`), so that every process of the run computes
    with the one a ``local`` run of ``cfg`` would use here.
    """
    config = {
        **APP_CONFIG,
        CONFIG_KEY: json.dumps(party_share(cfg)),
        SERVER_KEY: server_token,
        DATA_KEY: data_token,
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


def hand_off(
    cfg: ExperimentConfig,
    out_dir: str,
    *,
    server_dir: Path,
    party_root: Path,
    data: tuple[VflDataset, list[PartySlice]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Write the whole config for the ServerApp into ``server_dir`` and each party's columns
    into a new folder under ``party_root``; returns the run config that names both.

    ``data`` is the dataset and party slices of ``cfg`` where the caller has them (loaded
    here otherwise)."""
    if data is None:
        exp = prepare(cfg)
        data = exp.dataset, exp.slices
    server_token, data_token = new_token(), new_token()
    write_party_data(data[0], data[1], party_root / data_token)
    hand_to_server(cfg, server_dir, server_token)
    return run_config_for(cfg, out_dir, server_token=server_token, data_token=data_token, **extra)


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


def _import_plugins(context: Context, cfg: ExperimentConfig) -> None:
    """Import the run's plugin modules (their methods and party ops)."""
    work_dir = str(_setting(context, WORKDIR_KEY))
    if work_dir and work_dir not in sys.path:
        sys.path.insert(0, work_dir)
    import_plugins(cfg.plugins)


def _party_config(context: Context) -> ExperimentConfig:
    """The parties' share of the run's config (server-only sections at their defaults)."""
    return config_from_dict(json.loads(str(context.run_config[CONFIG_KEY])))


def party_view(context: Context, cfg: ExperimentConfig, partition_id: int) -> torch.Tensor:
    """Party ``partition_id``'s own columns of every sample, as the submitter handed them over."""
    if not 0 <= partition_id < cfg.partition.parties:
        raise ValueError(f"partition-id {partition_id} is out of range for {cfg.partition.parties} parties")
    return torch.from_numpy(read_party_data(str(_setting(context, DATA_KEY)), partition_id))


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
    cfg, pid = _party_config(context), _partition_id(context)
    if resident is None:
        _import_plugins(context, cfg)  # party ops of plugin methods; once per process and node
    view = party_view(context, cfg, pid)
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
    cfg = config_from_dict(take_server_config(str(_setting(context, SERVER_KEY))))
    _import_plugins(context, cfg)
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
