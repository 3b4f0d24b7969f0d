"""FedBCD-p local updates (``train.local_steps``): Q updates per round on both sides.

Liu, Kang, Zhang, Li, Cheng, Chen, Hong, Yang, "A Communication-Efficient Collaborative Learning
Framework for Distributed Features" (FedBCD), arXiv 1912.11187 (2019). Q = 1 must be the exact
protocol; Q > 1 must be what the references below compute by hand.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import small_config
from tests.test_flower_state import EphemeralTransport
from vfl_sim.config import ExperimentConfig, ModelConfig, OptimConfig
from vfl_sim.errors import ConfigError
from vfl_sim.experiment import prepare
from vfl_sim.models.top import TopModel, fuse
from vfl_sim.models.zoo import build_bottom, build_top
from vfl_sim.optim import build_optimizer, build_scheduler, clear_grads
from vfl_sim.parties.party import Party
from vfl_sim.protocol import Ack, Backward, Embed, EmbedReply, LocalOp, Reply, Request, tensor_nbytes
from vfl_sim.runtimes.flower_codec import decode_request, encode_request
from vfl_sim.server.server import Server, count_batches, make_batches
from vfl_sim.transport import LocalTransport, Transport

SGD = OptimConfig(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="constant")


def _parties(server: Server) -> list[Party]:
    return list(server.transport.parties.values())  # type: ignore[attr-defined]


# -- (1) Q = 1 is the exact protocol ------------------------------------------------------------


def test_one_local_step_is_the_exact_protocol_bit_for_bit() -> None:
    """``train_epochs`` with the config's ``local_steps: 1`` lands on exactly the weights of the
    plain split-learning loop written out by hand (same kernels, same order: bit-identical)."""
    cfg = small_config()
    assert cfg.train.local_steps == 1
    exp = prepare(cfg)
    server = exp.build_server()
    parties = _parties(server)
    top, bottoms = copy.deepcopy(server.top), [copy.deepcopy(p.bottom) for p in parties]
    ids = torch.from_numpy(exp.dataset.train_ids[:320])
    epochs, optim = 2, cfg.train

    server.train_epochs(ids, epochs=epochs, batch_size=64, optim=optim, generator=torch.Generator().manual_seed(5))

    total = epochs * count_batches(ids.numel(), 64)
    opts = [build_optimizer(m.parameters(), optim) for m in [top, *bottoms]]
    scheds = [build_scheduler(o, optim.schedule, total) for o in opts]
    top.train()
    for b in bottoms:
        b.train()
    gen = torch.Generator().manual_seed(5)
    for _ in range(epochs):
        for batch in make_batches(ids, 64, gen):
            outs = [b(p.features.index_select(0, batch)) for b, p in zip(bottoms, parties, strict=True)]
            leaves = [o.detach().requires_grad_(True) for o in outs]
            loss = F.cross_entropy(top(fuse(leaves, cfg.model.fusion)), server.labels[batch])
            clear_grads(opts[0])
            loss.backward()
            opts[0].step()
            scheds[0].step()  # type: ignore[union-attr]
            for out, leaf, opt, sched in zip(outs, leaves, opts[1:], scheds[1:], strict=True):
                out.backward(leaf.grad)
                opt.step()
                sched.step()  # type: ignore[union-attr]
                clear_grads(opt)

    for ref, model in zip([top, *bottoms], [server.top, *(p.bottom for p in parties)], strict=True):
        for (name, a), b in zip(ref.state_dict().items(), model.state_dict().values(), strict=True):
            assert torch.equal(a, b), name


# -- (2) Q > 1 against hand-computed references ---------------------------------------------------


def _tiny_party(replay: bool) -> Party:
    torch.manual_seed(0)
    features = torch.randn(24, 6)
    bottom = build_bottom(ModelConfig(bottom="mlp", bottom_hidden=[8], embedding_dim=4), (6,))
    return Party("party_0", features, bottom, init_seed=3, replay_backward=replay)


@pytest.mark.parametrize("replay", [False, True], ids=["graph", "replay"])
def test_party_local_updates_equal_hand_computed_sgd(replay: bool) -> None:
    """Q = 3: the first update back-propagates g through the Embed's forward pass, the others
    through fresh forward passes of the same ids, always the same g, one SGD step each."""
    q, ids = 3, torch.tensor([1, 4, 7, 9, 12, 20])
    party = _tiny_party(replay)
    ref = copy.deepcopy(party.bottom)
    g = torch.randn(ids.numel(), 4, generator=torch.Generator().manual_seed(1))

    party.handle(LocalOp("configure", {"optim": SGD.model_dump(mode="json"), "total_steps": q}))
    party.handle(Embed(ids, train=True))
    assert isinstance(party.handle(Backward(g, local_steps=q)), Ack)

    ref.train()
    opt = torch.optim.SGD(ref.parameters(), lr=SGD.lr, momentum=SGD.momentum, weight_decay=SGD.weight_decay)
    x = party.features.index_select(0, ids)
    for _ in range(q):
        opt.zero_grad()
        ref(x).backward(g)
        opt.step()

    one = _tiny_party(replay)  # the same party with a single update, to see Q made a difference
    one.handle(LocalOp("configure", {"optim": SGD.model_dump(mode="json"), "total_steps": 1}))
    one.handle(Embed(ids, train=True))
    one.handle(Backward(g))
    moved = False
    for (name, a), b, c in zip(
        ref.state_dict().items(), party.bottom.state_dict().values(), one.bottom.state_dict().values(), strict=True
    ):
        assert torch.allclose(a.float(), b.float(), atol=1e-6, rtol=1e-5), name  # params and BN buffers
        moved |= not torch.allclose(b.float(), c.float(), atol=1e-4)
    assert moved


class _FixedEmbeddings(Transport):
    """Parties that answer every Embed from a fixed table and record every Backward."""

    def __init__(self, tables: Mapping[str, torch.Tensor]) -> None:
        super().__init__(list(tables))
        self.tables = dict(tables)
        self.backwards: list[tuple[str, Backward]] = []

    def _reply(self, pid: str, request: Request) -> Reply:
        if isinstance(request, Embed):
            return EmbedReply(self.tables[pid][request.ids].clone())
        if isinstance(request, Backward):
            self.backwards.append((pid, request))
            return self._reply(pid, request.then) if request.then is not None else Ack()
        return Ack()

    def _exchange(self, requests: Mapping[str, Request]) -> dict[str, Reply]:
        return {pid: self._reply(pid, r) for pid, r in requests.items()}


def test_server_takes_q_top_steps_and_sends_the_first_gradient() -> None:
    """Q = 3: the top model takes three SGD steps on the same embeddings; each party gets the
    gradient of its embedding from before the first of them, and is told to make Q updates."""
    q, dims, n = 3, [4, 5], 10
    gen = torch.Generator().manual_seed(0)
    tables = {f"party_{k}": torch.randn(n, d, generator=gen) for k, d in enumerate(dims)}
    labels = torch.randint(0, 3, (n,), generator=gen)
    torch.manual_seed(0)
    top = TopModel(sum(dims), 3, [8])
    ref = copy.deepcopy(top)
    transport = _FixedEmbeddings(tables)
    server = Server(labels, top, transport)
    batch = torch.tensor([0, 2, 3, 5, 8, 9])

    server.configure(SGD, q)
    server.run_epoch([batch], local_steps=q)

    embs = [tables[pid][batch] for pid in transport.party_ids]
    leaves = [e.clone().requires_grad_(True) for e in embs]
    ref.train()
    F.cross_entropy(ref(fuse(leaves, "concat")), labels[batch]).backward()
    first_grads = [leaf.grad for leaf in leaves]
    ref.zero_grad()
    opt = torch.optim.SGD(ref.parameters(), lr=SGD.lr, momentum=SGD.momentum, weight_decay=SGD.weight_decay)
    for _ in range(q):
        opt.zero_grad()
        F.cross_entropy(ref(fuse(embs, "concat")), labels[batch]).backward()
        opt.step()

    for (name, a), b in zip(ref.state_dict().items(), server.top.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), name
    assert [pid for pid, _ in transport.backwards] == transport.party_ids
    for (pid, msg), expected in zip(transport.backwards, first_grads, strict=True):
        assert msg.local_steps == q and msg.step and msg.then is None
        assert expected is not None and torch.allclose(msg.grad, expected, atol=1e-7), pid


# -- (3) protocol and codec -----------------------------------------------------------------------


@pytest.mark.parametrize("then", [None, Embed(torch.arange(3), train=True)])
@pytest.mark.parametrize("q", [1, 4])
def test_codec_round_trips_local_steps(q: int, then: Embed | None) -> None:
    msg = Backward(torch.randn(3, 2), then=then, local_steps=q)
    kind, content = encode_request(msg)
    assert content.config_records["config"]["local_steps"] == q
    assert {"step", "then"} <= set(content.config_records["config"])  # the existing keys stay
    out = decode_request(kind, content)
    assert isinstance(out, Backward) and out.local_steps == q and torch.equal(out.grad, msg.grad)
    assert (out.then is None) == (then is None)


def test_codec_reads_a_backward_without_local_steps_as_one_update() -> None:
    kind, content = encode_request(Backward(torch.randn(2, 2), local_steps=3))
    del content.config_records["config"]["local_steps"]
    out = decode_request(kind, content)
    assert isinstance(out, Backward) and out.local_steps == 1


def test_backward_counts_and_checks_local_steps() -> None:
    g = torch.randn(4, 8)
    assert Backward(g, local_steps=5).nbytes() == tensor_nbytes(g) + 1 + 4 == Backward(g).nbytes()
    with pytest.raises(ValueError, match="local_steps"):
        Backward(g, local_steps=0)
    with pytest.raises(ValueError, match="step=True"):
        Backward(g, step=False, local_steps=2)
    with pytest.raises(ConfigError, match="train.local_steps"):
        small_config(train={"local_steps": 0})


# -- (4) replayed forward passes ------------------------------------------------------------------


def _server(cfg: ExperimentConfig, *, replay: bool, ephemeral: bool) -> Server:
    exp = prepare(cfg)

    def factory(k: int, part) -> Callable[[], Party]:
        view = torch.from_numpy(part.take(exp.dataset.features))

        def build() -> Party:
            bottom = build_bottom(cfg.model, tuple(view.shape[1:]))
            return Party(part.party_id, view, bottom, init_seed=k, replay_backward=replay)

        return build

    factories = {p.party_id: factory(k, p) for k, p in enumerate(exp.slices)}
    transport: Transport
    if ephemeral:
        transport = EphemeralTransport(factories)
    else:
        transport = LocalTransport({pid: f() for pid, f in factories.items()})
    torch.manual_seed(0)
    top = build_top(cfg.model, [cfg.model.embedding_dim] * len(factories), exp.dataset.num_classes)
    return Server(torch.from_numpy(exp.dataset.labels), top, transport)


@pytest.mark.parametrize(
    "optimizer, dropout", [("sgd", 0.0), ("adam", 0.0), ("sgd", 0.2)], ids=["sgd", "adam", "sgd-dropout"]
)
def test_replaying_parties_end_on_the_same_weights_with_three_local_steps(optimizer: str, dropout: float) -> None:
    """Q = 3: graph parties and replaying parties end bit-identical (with dropout in the bottoms
    too: the replay restores the RNG, the fresh passes follow it). Without dropout so do
    replaying parties rebuilt from Flower records for every message; with dropout those draw
    from whatever RNG state the rebuilt process has (as for every Embed, not only local steps)."""
    cfg = small_config(
        train={"local_steps": 3, "optimizer": optimizer, "lr": 0.01 if optimizer == "adam" else 0.05},
        model={"bottom": "mlp", "bottom_dropout": dropout},
        data={"name": "synthetic", "synthetic": {"samples": 300, "features": 12, "classes": 3}},
        partition={"parties": 3},
    )
    ids = torch.from_numpy(prepare(cfg).dataset.train_ids[:200])
    digests = []
    variants = [(False, False), (True, False)] + ([(True, True)] if dropout == 0 else [])
    for replay, ephemeral in variants:
        server = _server(cfg, replay=replay, ephemeral=ephemeral)
        torch.manual_seed(1)
        server.train_epochs(ids, epochs=2, batch_size=64, optim=cfg.train, generator=torch.Generator().manual_seed(2))
        digests.append(server.digests())
    assert all(d == digests[0] for d in digests[1:])
    initial = _server(cfg, replay=False, ephemeral=False).digests()
    assert all(digests[0][k] != initial[k] for k in initial)


# -- (5) schedules and rounds ---------------------------------------------------------------------


def test_schedules_count_q_steps_per_batch_and_rounds_stay_the_same() -> None:
    q, epochs = 3, 2
    cfg = small_config(train={"local_steps": q, "schedule": "cosine"})
    exp = prepare(cfg)
    ids = torch.from_numpy(exp.dataset.train_ids[:300])
    steps = count_batches(ids.numel(), 64)
    rounds = {}
    for local_steps in (q, 1):
        server = exp.build_server()
        server.train_epochs(
            ids,
            epochs=epochs,
            batch_size=64,
            optim=cfg.train,
            generator=torch.Generator().manual_seed(0),
            local_steps=None if local_steps == q else 1,  # None: from cfg.train
        )
        total = epochs * steps * local_steps
        assert server.scheduler is not None and server.optimizer is not None
        assert server.scheduler.total_steps == server.scheduler.t == total
        for party in _parties(server):
            assert party.phase is not None and party.phase["total_steps"] == total
            assert party.scheduler is not None and party.scheduler.t == total
            assert party.optimizer is not None and party.optimizer.param_groups[0]["lr"] == pytest.approx(0.0)
        assert server.optimizer.param_groups[0]["lr"] == pytest.approx(0.0)
        rounds[local_steps] = server.transport.stats.rounds
    assert rounds[q] == rounds[1] == 1 + epochs * (steps + 1)  # configure, then per epoch 1 + steps


def test_optimizer_settings_without_local_steps_keep_one_update() -> None:
    """A method's own phase settings (an OptimConfig, no Q) train with one update per batch even
    when the original's recipe has Q = 3, unless the phase asks for local steps itself."""
    exp = prepare(small_config(train={"local_steps": 3}))
    ids = torch.from_numpy(exp.dataset.train_ids[:128])
    for local_steps, expected in [(None, 1), (2, 2)]:
        server = exp.build_server()
        server.train_epochs(
            ids,
            epochs=1,
            batch_size=64,
            optim=OptimConfig(schedule="cosine"),
            generator=torch.Generator().manual_seed(0),
            local_steps=local_steps,
        )
        assert server.scheduler is not None and server.scheduler.t == 2 * expected
        assert all(p.scheduler is not None and p.scheduler.t == 2 * expected for p in _parties(server))
