"""What each Flower process of a run is handed, and nothing more.

Flower gives the run config to every node, so whatever it carries, every party reads. A party
needs the sections that build its bottom model and its own columns; it must not learn the forget
request (which samples or classes go, which methods run), the labels, or other parties'
columns. So the submitter splits what it hands over three ways:

- **The run config** carries the parties' share of the experiment's config
  (:func:`party_share`: data and partition names, model, seed, threads, plugins, party
  behaviours) and two random tokens, one per hand-off below. Two configs that differ only in
  their forget request, methods, training recipe, audit or name give the same share.
- **The server's config**, whole, goes to a folder that only the submitter and the SuperLink's
  ServerApp share (``$VFL_SIM_SERVER_DIR``), as ``<token>.json`` (:func:`hand_to_server`); the
  ServerApp reads and deletes it (:func:`take_server_config`). The token is random, not a
  digest: a party that knows everything else could otherwise test candidate requests against
  a digest.
- **Each party's columns**, cut and standardized by the submitter exactly as every runtime
  does, go to ``$VFL_SIM_PARTY_DATA/<token>/party_<k>.npy`` (:func:`write_party_data`); party
  ``k``'s process reads its own file only (:func:`read_party_data`) and never loads the dataset.
  In a real deployment each party brings its own columns; the simulator cuts them from one
  dataset, so it hands each party its own file instead.

Runs whose processes :mod:`vfl_sim.runtimes.flower_launch` starts get both folders in a
temporary folder of the run (the SuperLink's environment names the server's, each SuperNode's
the parties'); a SuperLink started elsewhere (``flower.superlink``, the docker-compose demo)
needs the two variables set to folders that the submitter shares with the ServerApp and with
the SuperNodes respectively.
"""

from __future__ import annotations

import json
import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from vfl_sim.config import ExperimentConfig
from vfl_sim.data.dataset import VflDataset
from vfl_sim.data.partition import PartySlice
from vfl_sim.errors import ConfigError

SERVER_DIR_ENV = "VFL_SIM_SERVER_DIR"
"""The folder the submitter writes the server's config to and the ServerApp reads it from."""
PARTY_DATA_ENV = "VFL_SIM_PARTY_DATA"
"""The folder the submitter writes each party's columns to and each party process reads its own from."""

SERVER_ONLY = ("name", "train", "forget", "methods", "audit")
"""Sections of the experiment's config that only the server reads: parties get their optimizer
settings and defenses with each phase's ``configure`` message, and never the request."""


class HandoffError(RuntimeError):
    """A Flower process did not find what the submitter handed it."""


def party_share(cfg: ExperimentConfig) -> dict[str, Any]:
    """The sections of ``cfg`` that a party may read (all but :data:`SERVER_ONLY`), as JSON data."""
    return {k: v for k, v in cfg.model_dump(mode="json").items() if k not in SERVER_ONLY}


def new_token() -> str:
    return secrets.token_hex(16)


def _folder(env: str) -> Path | None:
    value = os.environ.get(env, "")
    return Path(value) if value else None


def hand_to_server(cfg: ExperimentConfig, folder: Path, token: str) -> Path:
    """Write the whole config for the ServerApp as ``folder/<token>.json`` (owner-only)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{token}.json"
    partial = folder / f".{token}.partial"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(cfg.model_dump(mode="json"), f)
    os.replace(partial, path)
    return path


def take_server_config(token: str) -> dict[str, Any]:
    """The ServerApp's side of :func:`hand_to_server`: read ``<token>.json`` from
    ``$VFL_SIM_SERVER_DIR`` and delete it (each submission writes its own)."""
    folder = _folder(SERVER_DIR_ENV)
    if folder is None:
        raise HandoffError(
            f"{SERVER_DIR_ENV} is not set where the ServerApp runs: start the SuperLink with it set to the "
            "folder the submitter writes the server's config to (docs/runtimes.md)"
        )
    path = folder / f"{token}.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise HandoffError(
            f"no server config {path}: the submitter writes it to its own {SERVER_DIR_ENV}, which must be "
            "the same folder as the SuperLink's"
        ) from None
    path.unlink(missing_ok=True)
    return data


def write_party_data(dataset: VflDataset, slices: list[PartySlice], folder: Path) -> None:
    """Write each party's columns of every sample (row ``i`` = sample id ``i``) as
    ``folder/party_<k>.npy``."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, s in enumerate(slices):
        np.save(folder / f"party_{k}.npy", np.ascontiguousarray(s.take(dataset.features)))


def party_data_folder(token: str) -> Path:
    """``$VFL_SIM_PARTY_DATA/<token>``, where a run's party files are."""
    root = _folder(PARTY_DATA_ENV)
    if root is None:
        raise HandoffError(
            f"{PARTY_DATA_ENV} is not set where this party runs: start the SuperNode with it set to the folder "
            "the submitter writes the parties' data to (docs/runtimes.md)"
        )
    return root / token


@lru_cache(maxsize=8)
def read_party_data(token: str, partition_id: int) -> np.ndarray:
    """Party ``partition_id``'s own columns, handed over by the submitter (cached per process)."""
    path = party_data_folder(token) / f"party_{partition_id}.npy"
    if not path.is_file():
        raise HandoffError(
            f"no data for party {partition_id} at {path}: the submitter writes it to its own {PARTY_DATA_ENV}, "
            "which must be the same folder as this SuperNode's"
        )
    view: np.ndarray = np.load(path)
    return view


def external_folders(what: str = "flower.superlink") -> tuple[Path, Path]:
    """The two hand-off folders of a run on a SuperLink started elsewhere, from the submitter's
    environment; a :class:`~vfl_sim.errors.ConfigError` (starting with ``what``) names what is
    missing."""
    server, parties = _folder(SERVER_DIR_ENV), _folder(PARTY_DATA_ENV)
    missing = [env for env, f in ((SERVER_DIR_ENV, server), (PARTY_DATA_ENV, parties)) if f is None]
    if missing:
        raise ConfigError(
            f"{what}: set {' and '.join(missing)} to the folder(s) this submitter shares with the "
            "SuperLink (server config) and the SuperNodes (party data); parties never see the forget request "
            "(docs/runtimes.md)"
        )
    assert server is not None and parties is not None
    return server, parties
