"""Every registered method, for every request kind it supports, as a protocol over Flower
messages with ephemeral parties (rebuilt from ``Context.state`` for every message): the same
results as the local runtime, and the privacy invariant on every message of the run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import assert_close, small_config
from tests.test_flower_app import (  # noqa: F401  (autouse: Flower's run id, the hand-off folders)
    InProcessGrid,
    _handoff_folders,
    _task_identity,
    handed,
)
from vfl_sim.experiment import prepare
from vfl_sim.methods import available_methods, get_method
from vfl_sim.parties.party import registered_ops
from vfl_sim.runtimes.flower_transport import FlowerTransport

REQUESTS = {
    "class": {"kind": "class", "classes": [1]},
    "samples": {"kind": "samples", "fraction": 0.1, "stratified": True},
    "party": {"kind": "party", "party": "party_1"},
    "features": {"kind": "features", "party": "party_0", "columns": [0]},
}
PARTIES = ["party_0", "party_1", "party_2"]


def _methods(kind: str) -> list[str]:
    return [name for name in available_methods() if kind in get_method(name).supports]


def _config(kind: str):
    return small_config(
        data={
            "name": "synthetic",
            "synthetic": {"samples": 360, "features": 12, "classes": 3, "informative_per_party": 2},
        },
        partition={"parties": 3},
        model={"embedding_dim": 8, "bottom_hidden": [16], "top_hidden": [16]},
        train={"epochs": 2, "batch_size": 64},
        forget=REQUESTS[kind],
        methods=_methods(kind),
        audit={"max_samples": 300},
    )


def _keys(rec) -> Iterator[str]:
    """Every key of a config record, including those of its JSON-encoded arguments."""

    def walk(value: object) -> Iterator[str]:
        if isinstance(value, dict):
            for k, v in value.items():
                yield str(k)
                yield from walk(v)
        elif isinstance(value, list):
            for v in value:
                yield from walk(v)

    for key, value in rec.items():
        yield key
        if key in ("args", "info"):
            yield from walk(json.loads(str(value)))


def assert_private(grid: InProcessGrid, n_samples: int, embedding_dim: int) -> None:
    """Parties receive only sample ids, flags, registered operation names with small arguments,
    and tensors shaped like their own embedding (its gradient); they answer with embeddings
    (and layer activations) and small metrics. No labels, no raw features."""
    to_party = [m for m in grid.seen if m.metadata.message_type != "query.hello"]
    for m in to_party:
        for rec in m.content.array_records.values():
            for key in rec.keys():
                a = rec[key].numpy()
                if a.dtype == np.int64:  # sample ids; -1 - k names row k of noise the party made (UNSIR)
                    assert a.ndim == 1 and (a.size == 0 or a.max() < n_samples), key
                else:  # gradients of this party's own embedding (per sample, or per sample and class)
                    assert a.ndim in (2, 3) and a.shape[-1] == embedding_dim, (m.metadata.message_type, key, a.shape)
        for rec in m.content.config_records.values():
            if "name" in rec:
                assert rec["name"] in registered_ops()
                # Instructions, not data: far smaller than any party's features (a threshold grid
                # for a global saliency quantile is the largest).
                assert len(str(rec["args"])) < 10_000
            assert not any("label" in k for k in _keys(rec)), list(_keys(rec))
    for m in to_party:
        reply = grid.answers[m.metadata.message_id]
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        for rec in reply.content.array_records.values():
            for key in rec.keys():
                a = rec[key].numpy()
                if not key.startswith("layer/"):
                    assert a.ndim == 2 and a.shape[1] == embedding_dim, (key, a.shape)
        for rec in reply.content.config_records.values():
            assert set(rec.keys()) == {"info"} and len(str(rec["info"])) < 10_000


@pytest.mark.parametrize("kind", list(REQUESTS))
def test_every_method_runs_over_flower_like_local_and_keeps_data_private(kind: str, tmp_path: Path) -> None:
    cfg = _config(kind)
    assert cfg.methods, f"no method supports {kind} requests"
    local = prepare(cfg).run(tmp_path / "local")
    grid = InProcessGrid(handed(cfg, str(tmp_path / "flower")), [0, 1, 2])
    transport = FlowerTransport(grid, PARTIES, connect_timeout=5)
    exp = prepare(cfg)
    flower = exp.run(tmp_path / "flower", transport=transport)
    for name, model in local["models"].items():
        assert model["communication"]["bytes_total"] > 0 and model["runtime_s"] > 0, name
        assert_close(model["output"], flower["models"][name]["output"], where=name)
        assert model["communication"] == flower["models"][name]["communication"], name
    assert_private(grid, exp.dataset.labels.size, cfg.model.embedding_dim)


def test_methods_all_expands_to_the_methods_that_take_the_request() -> None:
    from vfl_sim.config import config_from_dict
    from vfl_sim.errors import ConfigError

    exp = prepare(small_config(forget=REQUESTS["party"], partition={"parties": 3}, methods="all"))
    names = [m.name for m in exp.methods]
    assert names[0] == "retrain" and set(names) == set(_methods("party"))
    exp = prepare(small_config(methods=[{"name": "finetune", "params": {"epochs": 1}}, "all"]))
    names = [m.name for m in exp.methods]
    assert names[0] == "finetune" and names.count("finetune") == 1 and exp.methods[0].params.epochs == 1
    assert set(names) == set(_methods("class"))
    with pytest.raises(ConfigError, match="'all' stands alone"):
        prepare(config_from_dict({"methods": [{"name": "all", "params": {"x": 1}}]}))
