"""Party and feature forget requests: the unlearned model no longer reads the party or columns."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import embedded_ids, record_requests, small_config, trained
from vfl_sim.errors import ConfigError
from vfl_sim.experiment import Experiment, prepare
from vfl_sim.forget import ORIGINAL
from vfl_sim.methods import UnlearningContext, UnlearningMethod, build_method
from vfl_sim.protocol import Embed


def _trained(forget: dict, parties: int = 3):
    exp = prepare(small_config(forget=forget, partition={"parties": parties}, methods=["retrain"]))
    return (exp, *trained(exp, epochs=1))


@pytest.mark.parametrize("method", ["retrain", "finetune"])
def test_a_party_that_left_is_never_asked_for_embeddings(method: str) -> None:
    exp, server, coordinator = _trained({"kind": "party", "party": "party_1"})
    seen = record_requests(server)
    coordinator.run(build_method(method, {"epochs": 1}, "party"))
    asked = {pid: len(embedded_ids(seen, pid)) for pid in ("party_0", "party_1", "party_2")}
    assert asked["party_1"] == 0 and asked["party_0"] > 0 and asked["party_2"] > 0
    assert server.states[method]["party_mask"].tolist() == [1.0, 0.0, 1.0]
    assert server.states[ORIGINAL]["party_mask"].tolist() == [1.0, 1.0, 1.0]
    # The unlearned model's predictions do not depend on the removed party at all.
    server.load_state(method)
    ids = torch.from_numpy(exp.dataset.test_ids[:50])
    embeddings, _ = server.embed(ids)
    assert torch.count_nonzero(embeddings[1]) == 0


def test_retrain_for_a_feature_request_ignores_those_columns() -> None:
    exp, server, coordinator = _trained({"kind": "features", "party": "party_0", "columns": [0, 1]}, parties=2)
    coordinator.run(build_method("retrain", {"epochs": 1}, "features"))
    party = server.transport.parties["party_0"]
    server.load_state("retrain")
    ids = torch.arange(20)
    before = party.handle(Embed(ids, train=False)).embedding  # type: ignore[union-attr]
    party.features[:, ..., :2] += 5.0  # change only the removed columns (pixel columns 0 and 1)
    after = party.handle(Embed(ids, train=False)).embedding  # type: ignore[union-attr]
    assert torch.allclose(before, after)
    server.load_state(ORIGINAL)  # the original still reads them
    assert not torch.allclose(party.handle(Embed(ids, train=False)).embedding, after)  # type: ignore[union-attr]


class _Undo(UnlearningMethod):
    name = "undo"
    supports = frozenset({"party"})

    def unlearn(self, ctx: UnlearningContext) -> None:
        ctx.server.load_state(ORIGINAL)  # brings the party back and does not cut it again


def test_a_method_that_restores_the_removed_party_fails() -> None:
    _, _, coordinator = _trained({"kind": "party", "party": "party_2"})
    with pytest.raises(RuntimeError, match="reads the removed party party_2"):
        coordinator.run(_Undo())


def test_methods_that_do_not_support_party_requests_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="method 'neggrad' does not support forget requests of kind 'party'"):
        prepare(small_config(forget={"kind": "party", "party": "party_1"}, methods=["neggrad"]))


def test_a_party_request_runs_end_to_end(tmp_path) -> None:
    exp: Experiment = prepare(
        small_config(forget={"kind": "party", "party": "party_1", "id": "leave-1"}, methods=["retrain", "finetune"])
    )
    report = exp.run(tmp_path / "run")
    assert report["forget_request"]["id"] == "leave-1" and report["forget_request"]["party"] == "party_1"
    retrain = report["models"]["retrain"]
    assert retrain["output"]["retain_test_acc"] > 0.5
    assert retrain["communication"]["bytes_to_server"]["party_1"] < 100  # only acks of set-up operations
    assert (tmp_path / "run" / "report.md").read_text().count("party_1 leaves") == 1
