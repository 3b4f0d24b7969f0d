"""Shared fixtures: small experiments that build in well under a second."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from vfl_sim.config import ExperimentConfig, config_from_dict
from vfl_sim.experiment import Experiment, prepare
from vfl_sim.forget import ORIGINAL
from vfl_sim.server.coordinator import UnlearningCoordinator
from vfl_sim.server.server import Server

torch.set_num_threads(1)


def small_config(**sections: Any) -> ExperimentConfig:
    raw: dict[str, Any] = {"train": {"epochs": 2, "batch_size": 64}, "methods": ["retrain", "finetune", "neggrad"]}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return config_from_dict(raw)


@pytest.fixture
def digits_experiment() -> Experiment:
    return prepare(small_config())


@pytest.fixture
def synthetic_experiment() -> Experiment:
    return prepare(
        small_config(
            data={
                "name": "synthetic",
                "synthetic": {"samples": 400, "features": 12, "classes": 3, "informative_per_party": 2},
            },
            partition={"parties": 3},
        )
    )


def trained(exp: Experiment, epochs: int = 2) -> tuple[Server, UnlearningCoordinator]:
    """A server with the original model trained for ``epochs`` (batch 64, seeded) and saved as
    ``original`` everywhere, and a coordinator for the experiment's forget request."""
    server = exp.build_server()
    server.train_epochs(
        torch.from_numpy(exp.dataset.train_ids),
        epochs=epochs,
        batch_size=64,
        optim=exp.cfg.train,
        generator=torch.Generator().manual_seed(0),
    )
    server.save_state(ORIGINAL)
    return server, UnlearningCoordinator(server, exp.forget, exp.cfg.train, seed=0, top_seed=exp.top_seed)


def assert_close(a: Any, b: Any, tol: float = 1e-4, where: str = "") -> None:
    """Two report values (numbers, ``None``, or dicts and lists of them) agree within ``tol``."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_close(a[k], b[k], tol, f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, tol, f"{where}[{i}]")
    elif a is None or isinstance(a, str):
        assert a == b, (where, a, b)
    else:
        assert b is not None and abs(a - b) <= tol, (where, a, b)


def record_requests(server: Server) -> list[tuple[str, Any]]:
    """Every request every in-process party receives from now on, as ``(party_id, request)``."""
    seen: list[tuple[str, Any]] = []
    for pid, party in server.transport.parties.items():  # type: ignore[attr-defined]
        original = party.handle

        def spy(request: Any, _orig: Any = original, _pid: str = pid) -> Any:
            seen.append((_pid, request))
            return _orig(request)

        party.handle = spy
    return seen


def embedded_ids(seen: list[tuple[str, Any]], party: str | None = None) -> list[torch.Tensor]:
    """The ids of every embedding asked for in ``seen`` (an ``Embed``, or the one a ``Backward``
    carries), of one party or of all."""
    from vfl_sim.protocol import Embed

    out = []
    for pid, request in seen:
        embed = request if isinstance(request, Embed) else getattr(request, "then", None)
        if isinstance(embed, Embed) and party in (None, pid):
            out.append(embed.ids)
    return out
