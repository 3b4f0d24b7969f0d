"""The party role on its own: replayed backward passes, state operations, unknown requests."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import small_config
from vfl_sim.config import ExperimentConfig
from vfl_sim.experiment import prepare
from vfl_sim.models.zoo import build_bottom, build_top
from vfl_sim.parties.party import Party, registered_ops
from vfl_sim.protocol import CORE_STEPS, Backward, CoreStep, LocalOp
from vfl_sim.server.server import Server, make_batches
from vfl_sim.transport import LocalTransport


def _server(cfg: ExperimentConfig, *, replay: bool) -> Server:
    exp = prepare(cfg)
    parties = {}
    for k, part in enumerate(exp.slices):
        view = torch.from_numpy(part.take(exp.dataset.features))
        parties[part.party_id] = Party(
            part.party_id, view, build_bottom(cfg.model, tuple(view.shape[1:])), init_seed=k, replay_backward=replay
        )
    torch.manual_seed(0)
    top = build_top(cfg.model, [cfg.model.embedding_dim] * len(parties), exp.dataset.num_classes)
    return Server(torch.from_numpy(exp.dataset.labels), top, LocalTransport(parties))


@pytest.mark.parametrize(
    "sections",
    [
        {},  # CNN bottoms with batch norm
        {"model": {"bottom": "mlp", "bottom_dropout": 0.3}, "partition": {"scheme": "contiguous"}},  # dropout: RNG
    ],
)
def test_replayed_backward_is_exact(sections) -> None:
    """A party that keeps no graph between messages trains to the same weights."""
    cfg = small_config(**sections)
    ids = torch.from_numpy(prepare(cfg).dataset.train_ids[:256])
    results = []
    for replay in (False, True):
        server = _server(cfg, replay=replay)
        torch.manual_seed(1)
        server.train_epochs(ids, epochs=2, batch_size=64, optim=cfg.train, generator=torch.Generator().manual_seed(3))
        results.append(server.digests())
    assert results[0] == results[1]


def test_backward_without_embed_is_an_error(digits_experiment) -> None:
    server = digits_experiment.build_server()
    server.configure(digits_experiment.cfg.train, 1)
    with pytest.raises(RuntimeError, match="Backward without a preceding training Embed"):
        server.transport.exchange({"party_0": Backward(torch.zeros(2, 32))})


def test_unknown_party_operation(digits_experiment) -> None:
    server = digits_experiment.build_server()
    with pytest.raises(KeyError, match="unknown party operation 'nope'"):
        server.transport.broadcast(LocalOp("nope"))


def test_save_load_and_reset_states(digits_experiment) -> None:
    server = digits_experiment.build_server()
    fresh = server.digests()
    batches = make_batches(torch.from_numpy(digits_experiment.dataset.train_ids[:128]), 64, None)
    server.save_state("start")
    server.configure(digits_experiment.cfg.train, len(batches))
    server.run_epoch(batches)
    trained = server.digests()
    assert trained != fresh
    server.load_state("start")
    assert server.digests() == fresh
    server.reset(digits_experiment.top_seed)
    assert server.digests() == fresh  # reset returns every role to its initialization


def test_core_steps_are_named_once_and_registered() -> None:
    # The server, the experiment and the runtimes name core party steps through CoreStep; each
    # name is registered by the party module (and LocalOp sizes stay those of the plain names).
    assert len(set(CORE_STEPS)) == len(CORE_STEPS)
    assert set(CORE_STEPS) <= set(registered_ops())
    assert CoreStep.SAVE_STATE == "save_state" and type(CoreStep.SAVE_STATE) is str
