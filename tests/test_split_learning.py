"""Split learning must be exact: the protocol delivers the monolithic model's gradients."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import small_config
from vfl_sim.config import OptimConfig
from vfl_sim.experiment import Experiment, prepare
from vfl_sim.models.monolithic import MonolithicModel
from vfl_sim.models.top import fuse
from vfl_sim.parties.party import Party
from vfl_sim.protocol import Backward, Embed, EmbedReply
from vfl_sim.server.server import make_batches


def _parties(exp_server) -> list[Party]:
    return list(exp_server.transport.parties.values())


def _twin(exp: Experiment):
    server = exp.build_server()
    parties = _parties(server)
    mono = MonolithicModel([copy.deepcopy(p.bottom) for p in parties], copy.deepcopy(server.top), exp.cfg.model.fusion)
    return server, parties, mono


CASES = {
    "digits-cnn-concat": {},
    "digits-4-parties-mirage-sum": {"partition": {"parties": 4}, "model": {"bottom": "mirage", "fusion": "sum"}},
    "synthetic-mlp-3-parties": {
        "data": {
            "name": "synthetic",
            "synthetic": {"samples": 300, "features": 12, "classes": 3, "informative_per_party": 2},
        },
        "partition": {"parties": 3},
    },
    "wine-columns-mean": {
        "data": {"name": "wine"},
        "partition": {"scheme": "columns", "columns": [[0, 5, 7], [1, 2, 3, 4]]},
        "model": {"fusion": "mean"},
    },
}


@pytest.mark.parametrize("case", list(CASES))
def test_protocol_gradients_equal_monolithic(case: str) -> None:
    exp = prepare(small_config(**CASES[case]))
    server, parties, mono = _twin(exp)
    batch = torch.from_numpy(exp.dataset.train_ids[:48])
    labels = server.labels[batch]

    mono.train()
    torch.manual_seed(0)  # same dropout masks on both sides (the mirage top has dropout 0.5)
    loss = F.cross_entropy(mono([p.features.index_select(0, batch) for p in parties]), labels)
    loss.backward()

    # The split path, message by message: parties embed, server fuses and back-propagates,
    # each party receives only the gradient of its own embedding.
    server.top.train()
    torch.manual_seed(0)
    replies = server.transport.broadcast(Embed(batch, train=True))
    leaves = [replies[pid].embedding.requires_grad_(True) for pid in server.party_ids]
    split_loss = F.cross_entropy(server.top(fuse(leaves, exp.cfg.model.fusion)), labels)
    split_loss.backward()
    server.transport.exchange(
        {pid: Backward(leaf.grad, step=False) for pid, leaf in zip(server.party_ids, leaves, strict=True)}
    )

    assert torch.allclose(split_loss, loss, atol=1e-6)
    for (name, p_mono), p_split in zip(mono.top.named_parameters(), server.top.parameters(), strict=True):
        assert torch.allclose(p_split.grad, p_mono.grad, atol=1e-6, rtol=1e-5), f"top.{name}"
    for k, party in enumerate(parties):
        for (name, p_mono), p_split in zip(mono.bottoms[k].named_parameters(), party.bottom.parameters(), strict=True):
            assert torch.allclose(p_split.grad, p_mono.grad, atol=1e-6, rtol=1e-5), f"{party.party_id}.{name}"


def test_training_epoch_matches_monolithic_training() -> None:
    """Several steps through Server.run_epoch (combined backward+next-embed messages) land on
    the same weights as the monolithic model trained on the same batches."""
    exp = prepare(small_config())
    server, parties, mono = _twin(exp)
    optim = OptimConfig(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine")
    batches = make_batches(torch.from_numpy(exp.dataset.train_ids[:320]), 64, None)

    server.configure(optim, len(batches))
    server.run_epoch(batches)

    from vfl_sim.optim import build_optimizer, build_scheduler

    opt = build_optimizer(mono.parameters(), optim)
    sched = build_scheduler(opt, "cosine", len(batches))
    mono.train()
    for batch in batches:
        loss = F.cross_entropy(mono([p.features.index_select(0, batch) for p in parties]), server.labels[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()

    for a, b in zip(mono.top.state_dict().values(), server.top.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    for k, party in enumerate(parties):
        for a, b in zip(mono.bottoms[k].state_dict().values(), party.bottom.state_dict().values(), strict=True):
            assert torch.allclose(a.float(), b.float(), atol=1e-5)


def test_one_round_trip_per_party_per_step(digits_experiment: Experiment) -> None:
    server = digits_experiment.build_server()
    batches = make_batches(torch.from_numpy(digits_experiment.dataset.train_ids[:256]), 64, None)
    server.configure(digits_experiment.cfg.train, len(batches))
    before = server.transport.stats.rounds
    server.run_epoch(batches)
    # one initial Embed round, then one Backward(+next Embed) round per step
    assert server.transport.stats.rounds - before == len(batches) + 1


def test_parties_see_ids_and_gradients_only(digits_experiment: Experiment) -> None:
    """What reaches a party: int64 ids and a gradient shaped like its own embedding."""
    server = digits_experiment.build_server()
    seen: list[object] = []
    for party in _parties(server):
        original = party.handle

        def spy(request, _orig=original, _pid=party.party_id):
            seen.append((_pid, request))
            return _orig(request)

        party.handle = spy  # type: ignore[method-assign]
    batches = make_batches(torch.from_numpy(digits_experiment.dataset.train_ids[:128]), 64, None)
    server.configure(digits_experiment.cfg.train, len(batches))
    server.run_epoch(batches)
    dims = {p.party_id: p.bottom.embedding_dim for p in _parties(server)}
    for pid, req in seen:
        if isinstance(req, Embed):
            assert req.ids.dtype == torch.int64
        elif isinstance(req, Backward):
            assert req.grad.shape[1] == dims[pid]
            assert req.then is None or req.then.ids.dtype == torch.int64
    assert any(isinstance(r, Backward) for _, r in seen)


def test_embed_reply_is_detached(digits_experiment: Experiment) -> None:
    server = digits_experiment.build_server()
    reply = server.transport.broadcast(Embed(torch.arange(8), train=True))["party_0"]
    assert isinstance(reply, EmbedReply)
    assert reply.embedding.grad_fn is None


@pytest.mark.parametrize("n", [1, 2, 63, 64, 65, 66, 127, 128, 129, 1438])
def test_count_batches_matches_make_batches(n: int) -> None:
    from vfl_sim.server.server import count_batches

    batches = make_batches(torch.arange(n), 64, None)
    assert count_batches(n, 64) == len(batches)
    assert all(b.numel() > 1 for b in batches) or n == 1
    assert torch.equal(torch.cat(batches), torch.arange(n))


def test_batches_own_their_ids() -> None:
    """A batch is not a view of the epoch's id tensor: pickled for a remote party it must
    carry its own ids only."""
    from vfl_sim.server.server import make_batches

    batches = make_batches(torch.arange(1000), 64, torch.Generator().manual_seed(0))
    assert all(b.untyped_storage().nbytes() == b.numel() * b.element_size() for b in batches)
    assert torch.equal(torch.cat(batches).sort().values, torch.arange(1000))
