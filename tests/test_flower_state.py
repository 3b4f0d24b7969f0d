"""A party rebuilt for every message from Flower records behaves like one that stays in memory.

This is what a Flower ClientApp does: nothing survives between messages but ``Context.state``.
The transport below rebuilds every party from scratch for each request, restores it from a
``RecordDict``, and sends requests and replies through the Flower record codec.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest
import torch
from flwr.app import RecordDict

from tests.conftest import small_config
from vfl_sim.config import ExperimentConfig
from vfl_sim.experiment import prepare
from vfl_sim.forget import ORIGINAL
from vfl_sim.methods import build_method
from vfl_sim.models.zoo import build_bottom, build_top
from vfl_sim.parties.party import Party
from vfl_sim.protocol import Reply, Request
from vfl_sim.runtimes.flower_codec import decode_reply, decode_request, encode_reply, encode_request
from vfl_sim.runtimes.flower_state import restore_party, save_party
from vfl_sim.server.coordinator import UnlearningCoordinator
from vfl_sim.server.server import Server
from vfl_sim.transport import LocalTransport, Transport


class EphemeralTransport(Transport):
    """Every request: encode, build a fresh party, restore it, answer, save it, encode the reply."""

    def __init__(self, factories: Mapping[str, Callable[[], Party]]) -> None:
        super().__init__(list(factories))
        self.factories = dict(factories)
        self.states = {pid: RecordDict() for pid in factories}

    def _exchange(self, requests: Mapping[str, Request]) -> dict[str, Reply]:
        replies = {}
        for pid, request in requests.items():
            kind, content = encode_request(request)
            party = self.factories[pid]()
            restore_party(party, self.states[pid])
            reply = party.handle(decode_request(kind, content))
            save_party(party, self.states[pid])
            replies[pid] = decode_reply(encode_reply(reply))
        return replies


def _servers(cfg: ExperimentConfig) -> tuple[Server, Server]:
    exp = prepare(cfg)

    def factory(k: int, part) -> Callable[[], Party]:
        view = torch.from_numpy(part.take(exp.dataset.features))

        def build() -> Party:
            return Party(
                part.party_id, view, build_bottom(cfg.model, tuple(view.shape[1:])), init_seed=k, replay_backward=True
            )

        return build

    factories = {p.party_id: factory(k, p) for k, p in enumerate(exp.slices)}
    servers = []
    for transport in (LocalTransport({pid: f() for pid, f in factories.items()}), EphemeralTransport(factories)):
        torch.manual_seed(0)
        top = build_top(cfg.model, [cfg.model.embedding_dim] * len(factories), exp.dataset.num_classes)
        servers.append(Server(torch.from_numpy(exp.dataset.labels), top, transport))
    return servers[0], servers[1]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_ephemeral_parties_train_and_unlearn_like_resident_ones(optimizer: str) -> None:
    cfg = small_config(train={"optimizer": optimizer, "lr": 0.01 if optimizer == "adam" else 0.05})
    exp = prepare(cfg)
    digests = []
    for server in _servers(cfg):
        torch.manual_seed(1)
        server.train_epochs(
            torch.from_numpy(exp.dataset.train_ids[:384]),
            epochs=2,
            batch_size=64,
            optim=cfg.train,
            generator=torch.Generator().manual_seed(2),
        )
        server.save_state(ORIGINAL)
        coordinator = UnlearningCoordinator(server, exp.forget, cfg.train, seed=0, top_seed=0)
        coordinator.run(build_method("neggrad", {"epochs": 1}, "class"))
        digests.append((server.digests(ORIGINAL), server.digests("neggrad"), server.digests()))
    assert digests[0] == digests[1]
    assert digests[0][0] != digests[0][1]


def test_first_message_finds_no_state() -> None:
    cfg = small_config()
    exp = prepare(cfg)
    part = exp.slices[0]
    view = torch.from_numpy(part.take(exp.dataset.features))
    party = Party(part.party_id, view, build_bottom(cfg.model, tuple(view.shape[1:])), init_seed=0)
    assert restore_party(party, RecordDict()) is False


def test_graph_mode_party_refuses_export() -> None:
    local, _ = _servers(small_config())
    party = next(iter(local.transport.parties.values()))  # type: ignore[attr-defined]
    party.replay_backward = False
    from vfl_sim.protocol import Embed

    party.handle(Embed(torch.arange(4), train=True))
    with pytest.raises(RuntimeError, match="cannot export a pending autograd graph"):
        save_party(party, RecordDict())


@pytest.fixture()
def in_process_state():
    from vfl_sim.runtimes import flower_state

    flower_state.keep_state_in_process()
    try:
        yield
    finally:
        flower_state.keep_state_in_process(False)


def _party() -> Party:
    cfg = small_config()
    exp = prepare(cfg)
    part = exp.slices[0]
    view = torch.from_numpy(part.take(exp.dataset.features))
    return Party(part.party_id, view, build_bottom(cfg.model, tuple(view.shape[1:])), init_seed=0, replay_backward=True)


def test_a_resident_party_process_saves_a_stamp_and_no_arrays(in_process_state) -> None:
    from vfl_sim.runtimes.flower_state import ARRAYS, PartyStateLostError, state_stamp

    state = RecordDict()
    save_party(_party(), state)
    assert ARRAYS not in state.array_records and state_stamp(state) != 0
    first = state_stamp(state)
    save_party(_party(), state)
    assert state_stamp(state) not in (0, first)
    # Another process (a rebuilt party) cannot go on from a stamp: it says so instead of
    # training from freshly initialised weights.
    with pytest.raises(PartyStateLostError, match=r"kept only in its party process \(pid \d+\)"):
        restore_party(_party(), state)


def test_switching_to_in_process_state_drops_the_arrays(in_process_state) -> None:
    from vfl_sim.runtimes import flower_state

    state = RecordDict()
    flower_state.keep_state_in_process(False)
    save_party(_party(), state)
    assert flower_state.ARRAYS in state.array_records
    flower_state.keep_state_in_process()
    save_party(_party(), state)
    assert flower_state.ARRAYS not in state.array_records
    assert restore_party(_party(), RecordDict()) is False  # a node's first message: nothing saved yet
