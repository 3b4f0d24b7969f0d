"""The Flower App's handlers and transport, driven in-process through real Flower messages.

A stand-in Grid delivers each Message to the ClientApp of its node, each node keeping its
own Context (and so its own ``Context.state``), as Flower's runtimes do. The real simulation
and deployment runtimes start the same ``client_app`` and ``server_app``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from flwr.app import Context, Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from tests.conftest import assert_close, small_config
from vfl_sim.experiment import prepare
from vfl_sim.protocol import Backward, Embed, LocalOp
from vfl_sim.runtimes import flower_app
from vfl_sim.runtimes import flower_state as flower_app_state
from vfl_sim.runtimes.flower_handoff import PARTY_DATA_ENV, SERVER_DIR_ENV, take_server_config
from vfl_sim.runtimes.flower_transport import (
    DuplicatePartitionError,
    FlowerTransport,
    PartyUnavailableError,
    assign_parties,
)


class InProcessGrid:
    """Routes messages to ``flower_app.client_app``, one Context per node."""

    def __init__(self, run_config: dict, partitions: list[int], *, drop: set[int] = frozenset()) -> None:
        self.contexts = {
            1000 + i: Context(
                run_id=1, node_id=1000 + i, node_config={"partition-id": p}, state=RecordDict(), run_config=run_config
            )
            for i, p in enumerate(partitions)
        }
        self.drop = set(drop)  # node ids that stop answering
        self.seen: list[Message] = []
        self.replies: dict[str, Message] = {}  # not yet pulled
        self.answers: dict[str, Message] = {}  # every reply, by the id of the message it answers

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = f"m{len(self.seen)}"
            self.seen.append(m)
            ids.append(m.metadata.message_id)
            if m.metadata.dst_node_id in self.drop:
                continue
            try:
                reply = flower_app.client_app(m, self.contexts[m.metadata.dst_node_id])
            except Exception as exc:  # Flower's runtimes turn a handler's exception into an error reply
                reply = Message(Error(code=0, reason=str(exc)), reply_to=m)
            self.replies[m.metadata.message_id] = self.answers[m.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self.replies.pop(mid) for mid in list(message_ids) if mid in self.replies]


@pytest.fixture(autouse=True)
def _task_identity() -> Iterator[None]:
    # Flower's runtimes set the run id of the process before any Message is built.
    previous = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = previous


@pytest.fixture(autouse=True)
def _handoff_folders(tmp_path, monkeypatch) -> None:
    # Where the submitter hands the server its config and each party its columns
    # (vfl_sim.runtimes.flower_handoff); these tests are server and parties in one process.
    monkeypatch.setenv(SERVER_DIR_ENV, str(tmp_path / "handoff-server"))
    monkeypatch.setenv(PARTY_DATA_ENV, str(tmp_path / "handoff-parties"))


def handed(cfg, out: str, **extra) -> dict:
    """The run config of ``cfg``, after handing its server config and party data over."""
    return flower_app.hand_off(
        cfg,
        out,
        server_dir=Path(os.environ[SERVER_DIR_ENV]),
        party_root=Path(os.environ[PARTY_DATA_ENV]),
        **extra,
    )


def _cfg():
    return small_config(
        data={
            "name": "synthetic",
            "synthetic": {"samples": 300, "features": 12, "classes": 3, "informative_per_party": 2},
        },
        partition={"parties": 3},
        train={"epochs": 2},
    )


def test_flower_run_matches_local_run(tmp_path) -> None:
    cfg = _cfg()
    local = prepare(cfg).run(tmp_path / "local")
    grid = InProcessGrid(handed(cfg, str(tmp_path / "flower")), [2, 0, 1])
    transport = FlowerTransport(grid, ["party_0", "party_1", "party_2"], connect_timeout=5)
    assert transport.nodes == {"party_0": 1001, "party_1": 1002, "party_2": 1000}
    flower = prepare(cfg).run(tmp_path / "flower", transport=transport)
    for name, model in local["models"].items():
        assert_close(model["output"], flower["models"][name]["output"], where=name)
        assert flower["models"][name]["representation"]["fused"]["lpr"] == pytest.approx(
            model["representation"]["fused"]["lpr"], abs=1e-4
        )
    assert sum(transport.flower_bytes_to_server.values()) > 0


def test_privacy_of_messages(tmp_path) -> None:
    """Parties receive ids, flags, operation names and gradients; never labels or features."""
    cfg = _cfg()
    exp = prepare(cfg)
    grid = InProcessGrid(handed(cfg, str(tmp_path / "run")), [0, 1, 2])
    transport = FlowerTransport(grid, ["party_0", "party_1", "party_2"], connect_timeout=5)
    server = exp.build_server(transport)
    server.train_epochs(
        exp.forget.retain_ids[:96], epochs=1, batch_size=32, optim=cfg.train, generator=__import__("torch").Generator()
    )
    server.save_state("original")
    for m in grid.seen:
        for rec in m.content.array_records.values():
            assert set(rec.keys()) <= {"ids", "grad", "then_ids"}
        for rec in m.content.config_records.values():
            text = json.dumps({k: str(v) for k, v in rec.items()})
            assert "label" not in text
    kinds = {m.metadata.message_type for m in grid.seen}
    assert kinds <= {"query.hello", "query.embed", "train.backward", "train.local_op"}


def test_privacy_of_every_message_of_a_run(tmp_path) -> None:
    """A whole run (training, the forget request with every method, checkpoints, the audit)
    through Flower messages: parties receive only sample ids, flags, operation names with
    small arguments and gradients for their own embedding; the server receives only
    embeddings (with layer activations for audits) and small metrics."""
    import numpy as np

    from vfl_sim.parties.party import registered_ops

    cfg = _cfg()
    exp = prepare(cfg)
    grid = InProcessGrid(handed(cfg, str(tmp_path / "run")), [0, 1, 2])
    transport = FlowerTransport(grid, ["party_0", "party_1", "party_2"], connect_timeout=5)
    exp.run(tmp_path / "run", transport=transport)
    n = exp.dataset.labels.size
    to_party = [m for m in grid.seen if m.metadata.message_type != "query.hello"]
    assert {m.metadata.message_type for m in to_party} == {"query.embed", "train.backward", "train.local_op"}
    for m in to_party:
        for rec in m.content.array_records.values():
            assert set(rec.keys()) <= {"ids", "grad", "then_ids"}
            for key in ("ids", "then_ids"):
                if key in rec:
                    ids = rec[key].numpy()
                    assert ids.dtype == np.int64 and ids.ndim == 1 and ids.min() >= 0 and ids.max() < n
            if "grad" in rec:  # the gradient of this party's own embedding, nothing wider
                assert rec["grad"].numpy().shape[1] == cfg.model.embedding_dim
        for rec in m.content.config_records.values():
            if "name" in rec:
                assert rec["name"] in registered_ops()
                assert len(str(rec["args"])) < 500  # instructions, not data
            assert "label" not in json.dumps({k: str(v) for k, v in rec.items()})
    # What parties sent back: embeddings of the configured width and, for audits, named layer
    # activations; otherwise small metrics (digests, file sizes). Never labels or raw features.
    answers = [grid.answers[m.metadata.message_id] for m in to_party]
    for reply in answers:
        assert not reply.has_error()
        for rec in reply.content.array_records.values():
            for key in rec.keys():
                assert key == "embedding" or key.startswith("layer/")
                if key == "embedding":
                    assert rec[key].numpy().shape[1] == cfg.model.embedding_dim
        for rec in reply.content.config_records.values():
            assert set(rec.keys()) == {"info"}
            assert len(str(rec["info"])) < 500


def test_missing_party_is_named_after_timeout(tmp_path) -> None:
    grid = InProcessGrid(handed(_cfg(), str(tmp_path)), [0, 2])
    with pytest.raises(PartyUnavailableError, match=r"parties party_1 did not connect within 1s \(2 of 3 connected\)"):
        FlowerTransport(grid, ["party_0", "party_1", "party_2"], connect_timeout=1, poll_interval=0.1)


def test_party_that_stops_answering_is_an_error(tmp_path) -> None:
    grid = InProcessGrid(handed(_cfg(), str(tmp_path)), [0, 1, 2])
    transport = FlowerTransport(grid, ["party_0", "party_1", "party_2"], connect_timeout=5, round_timeout=1)
    grid.drop.add(1001)
    with pytest.raises(PartyUnavailableError, match="no reply from party_1"):
        transport.broadcast(LocalOp("digest"))


def test_node_without_partition_id(tmp_path) -> None:
    grid = InProcessGrid(handed(_cfg(), str(tmp_path)), [0])
    grid.contexts[1000].node_config.clear()
    with pytest.raises(PartyUnavailableError, match="node 1000 answered: this SuperNode has no partition-id"):
        FlowerTransport(grid, ["party_0"], connect_timeout=1, poll_interval=0.1)


def test_protocol_requests_survive_the_app(tmp_path) -> None:
    import torch

    grid = InProcessGrid(handed(_cfg(), str(tmp_path)), [0, 1, 2])
    transport = FlowerTransport(grid, ["party_0", "party_1", "party_2"], connect_timeout=5)
    replies = transport.broadcast(Embed(torch.arange(5), train=False, layers=True))
    assert replies["party_0"].embedding.shape == (5, 32)
    assert set(replies["party_0"].layers) == {"fc1", "embedding"}
    with pytest.raises(PartyUnavailableError, match="answered with an error"):
        transport.exchange({"party_0": Backward(torch.zeros(5, 32))})  # no training Embed before it


def test_party_is_rebuilt_when_state_changed_elsewhere(tmp_path) -> None:
    """A resident party is reused only while the node's state is the one it saved."""
    import torch

    grid = InProcessGrid(handed(_cfg(), str(tmp_path)), [0])
    transport = FlowerTransport(grid, ["party_0"], connect_timeout=5)
    transport.broadcast(LocalOp("save_state", {"name": "a"}))
    context = grid.contexts[1000]
    stale = flower_app._party(context)
    assert flower_app._party(context) is stale  # nothing changed: reused
    other = RecordDict()
    other[flower_app_state.ARRAYS] = context.state[flower_app_state.ARRAYS]
    other[flower_app_state.META] = context.state[flower_app_state.META]
    with torch.no_grad():
        next(stale.bottom.parameters()).add_(1.0)  # diverge the resident copy
    flower_app_state.save_party(flower_app._party(context), other)  # another process saves: new stamp
    context.state = other
    assert flower_app._party(context) is not stale


def test_resident_party_survives_a_context_the_supernode_did_not_keep(tmp_path, caplog) -> None:
    """A SuperNode that dropped the context of a later answer hands back an older state that
    this process wrote: the resident party is newer, so it is kept (with a warning), not
    rebuilt from the stale state."""
    import copy

    import torch

    grid = InProcessGrid(handed(_cfg(), str(tmp_path)), [0])
    transport = FlowerTransport(grid, ["party_0"], connect_timeout=5)
    transport.broadcast(LocalOp("save_state", {"name": "a"}))
    context = grid.contexts[1000]
    older = copy.deepcopy(context.state)
    party = flower_app._party(context)
    with torch.no_grad():
        next(party.bottom.parameters()).add_(1.0)  # the party moves on ...
    flower_app._keep(context, party)  # ... and saves (a newer stamp)
    newest = next(party.bottom.parameters()).detach().clone()
    context.state = older  # the SuperNode did not keep that save
    with caplog.at_level("WARNING", logger="vfl_sim"):
        again = flower_app._party(context)
    assert again is party
    assert torch.equal(next(again.bottom.parameters()), newest)
    assert "older state of this party" in caplog.text


def test_a_party_is_handed_only_its_share_and_its_own_columns(tmp_path, monkeypatch) -> None:
    """What a party reads: the run config (the same for every node) carries no trace of the
    forget request, the methods, the training recipe or the audit; the party's columns come
    from its own file, and the party process never loads the dataset (labels included)."""
    import numpy as np

    cfg = _cfg()
    exp = prepare(cfg)
    other = cfg.model_copy(
        update={
            "name": "secret-request",
            "forget": cfg.forget.model_copy(update={"classes": [2]}),
            "methods": cfg.methods[:1],
            "train": cfg.train.model_copy(update={"lr": 0.123}),
        }
    )
    first, second = handed(cfg, "out"), handed(other, "out")
    tokens = {flower_app.SERVER_KEY, flower_app.DATA_KEY}
    assert {k: v for k, v in first.items() if k not in tokens} == {k: v for k, v in second.items() if k not in tokens}
    assert first[flower_app.SERVER_KEY] != second[flower_app.SERVER_KEY]  # random, not a digest of the config
    assert "secret-request" not in json.dumps(second) and "0.123" not in json.dumps(second)
    # The server gets the whole config once.
    assert take_server_config(second[flower_app.SERVER_KEY])["forget"]["classes"] == [2]
    with pytest.raises(RuntimeError, match="no server config"):
        take_server_config(second[flower_app.SERVER_KEY])
    # Each party file holds that party's columns only.
    folder = Path(os.environ[PARTY_DATA_ENV]) / first[flower_app.DATA_KEY]
    assert sorted(p.name for p in folder.iterdir()) == ["party_0.npy", "party_1.npy", "party_2.npy"]
    for k, s in enumerate(exp.slices):
        assert np.array_equal(np.load(folder / f"party_{k}.npy"), s.take(exp.dataset.features))
    # A party process answers without loading any dataset.
    import vfl_sim.data.loaders as loaders

    monkeypatch.setattr(loaders, "load_dataset", lambda *a, **k: pytest.fail("a party loaded the dataset"))
    grid = InProcessGrid(first, [0, 1, 2])
    FlowerTransport(grid, ["party_0", "party_1", "party_2"], connect_timeout=5).broadcast(LocalOp("digest"))
    context = next(iter(grid.contexts.values()))
    with pytest.raises(ValueError, match="partition-id 3 is out of range for 3 parties"):
        flower_app.party_view(context, flower_app._party_config(context), 3)


def test_handoff_folders_missing_are_named(tmp_path, monkeypatch) -> None:
    from vfl_sim.errors import ConfigError
    from vfl_sim.runtimes.flower_handoff import external_folders, read_party_data

    monkeypatch.delenv(PARTY_DATA_ENV)
    with pytest.raises(ConfigError, match=f"flower.superlink: set {PARTY_DATA_ENV} to"):
        external_folders()
    with pytest.raises(RuntimeError, match=f"{PARTY_DATA_ENV} is not set where this party runs"):
        read_party_data("nothing", 0)
    monkeypatch.setenv(PARTY_DATA_ENV, str(tmp_path))
    with pytest.raises(RuntimeError, match="no data for party 0 at"):
        read_party_data("nothing-either", 0)
    monkeypatch.delenv(SERVER_DIR_ENV)
    with pytest.raises(RuntimeError, match=f"{SERVER_DIR_ENV} is not set where the ServerApp runs"):
        take_server_config("x")


def test_second_node_with_a_taken_partition_id_is_refused(tmp_path) -> None:
    """Two connected SuperNodes with the same partition-id: the run fails naming it, rather
    than using one of them and leaving the other waiting."""
    grid = InProcessGrid(handed(_cfg(), str(tmp_path)), [0, 1, 1, 2])
    with pytest.raises(DuplicatePartitionError, match=r"partition-id 1 \(party_1\): nodes 1001 and 1002"):
        FlowerTransport(grid, ["party_0", "party_1", "party_2"], connect_timeout=5, poll_interval=0.1)


def test_assign_parties_maps_announced_partition_ids() -> None:
    parties = ["party_0", "party_1"]
    assert assign_parties({}, parties, {7: 1, 5: 0}, connected=[5, 7]) == {"party_1": 7, "party_0": 5}
    assert assign_parties({}, parties, {7: 2, 5: -1}, connected=[5, 7]) == {}  # out of range: no party
    # A later node with a taken id is refused while the first is connected...
    with pytest.raises(DuplicatePartitionError, match=r"partition-id 0 \(party_0\): nodes 5 and 9"):
        assign_parties({"party_0": 5}, parties, {9: 0}, connected=[5, 9])
    # ... and so are two new ones at once...
    with pytest.raises(DuplicatePartitionError, match="partition-id 1"):
        assign_parties({}, parties, {3: 1, 4: 1}, connected=[3, 4])
    # ... but a node that left gives its party to the one that replaced it.
    assert assign_parties({"party_0": 5}, parties, {9: 0}, connected=[9]) == {"party_0": 9}
    assert assign_parties({"party_0": 5}, parties, {5: 0}, connected=[5]) == {"party_0": 5}  # asked again


def test_client_and_server_apps_compute_with_the_submitters_threads(tmp_path) -> None:
    """The submitter resolves the thread count once (threads: 0 is its torch count) and every
    ClientApp applies the number from the run config, whatever its own process's default."""
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        run_config = handed(_cfg(), str(tmp_path))
        assert _cfg().threads == 0 and run_config["threads"] == 3
        assert flower_app.run_config_for(_cfg().model_copy(update={"threads": 5}), "x")["threads"] == 5
        torch.set_num_threads(1)  # a ClientApp process of its own, with another default
        grid = InProcessGrid(run_config, [0, 1, 2])
        FlowerTransport(grid, ["party_0", "party_1", "party_2"], connect_timeout=5).broadcast(LocalOp("digest"))
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
