"""VFU-KD and ReMisVFU: party and feature removal as protocols across parties."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import small_config

import vfl_sim.methods.vfl_removal as vr
from tests.conftest import trained
from vfl_sim.experiment import Experiment, prepare
from vfl_sim.forget import ORIGINAL
from vfl_sim.methods import build_method
from vfl_sim.methods.vfl_removal import project_conflicting
from vfl_sim.protocol import Ack, Backward, Embed, LocalOp
from vfl_sim.server.coordinator import UnlearningCoordinator
from vfl_sim.server.server import Server

PARTY = {"kind": "party", "party": "party_1"}
SYNTHETIC = {
    "name": "synthetic",
    "synthetic": {"samples": 600, "features": 12, "classes": 3, "informative_per_party": 2},
}


def _experiment(forget: dict[str, Any], data: dict[str, Any] | None = None, parties: int = 3) -> Experiment:
    sections: dict[str, Any] = {"forget": forget, "partition": {"parties": parties}, "methods": ["retrain"]}
    if data is not None:
        sections["data"] = data
    return prepare(small_config(**sections))


def _trained(exp: Experiment, epochs: int = 2) -> tuple[Server, UnlearningCoordinator]:
    return trained(exp, epochs)


def _spy(server, party: str) -> list[tuple[int, Any]]:
    """Every request ``party`` receives, with the number of cuts applied so far."""
    seen: list[tuple[int, Any]] = []
    target = server.transport.parties[party]
    original = target.handle

    def spy(request, _orig=original):
        seen.append((server._cuts, request))
        return _orig(request)

    target.handle = spy
    return seen


def _count_cuts(server, coordinator) -> None:
    server._cuts = 0
    original = coordinator.apply_removal

    def counted():
        server._cuts += 1
        original()

    coordinator.apply_removal = counted


def _test_acc(server, exp: Experiment) -> float:
    ids = torch.from_numpy(exp.dataset.test_ids)
    return float((server.predict(ids) == server.labels[ids]).float().mean())


def _asks_embeddings(request) -> bool:
    return isinstance(request, Embed | Backward) or (
        isinstance(request, LocalOp) and request.name.startswith("remisvfu")
    )


def test_vfu_kd_never_asks_the_removed_party_after_the_cut() -> None:
    exp = _experiment(PARTY)
    server, coordinator = _trained(exp, epochs=1)
    _count_cuts(server, coordinator)
    seen = _spy(server, "party_1")
    coordinator.run(build_method("vfu_kd", {"epochs": 2}, "party"))
    assert server._cuts == 2  # the coordinator's cut, and the method's after the teacher pass
    embeds = [(cuts, r) for cuts, r in seen if _asks_embeddings(r)]
    # one eval-mode pass of the teacher over the training ids, between the two cuts
    assert embeds and all(cuts == 1 and isinstance(r, Embed) and not r.train for cuts, r in embeds)
    asked = torch.cat([r.ids for _, r in embeds])
    assert sorted(asked.tolist()) == sorted(exp.forget.retain_ids.tolist())
    # the unlearned model does not read party_1
    before = len(seen)
    server.predict(torch.from_numpy(exp.dataset.test_ids))
    assert len(seen) == before


def test_remisvfu_leaving_party_takes_part_once_then_is_cut() -> None:
    exp = _experiment(PARTY)
    server, coordinator = _trained(exp, epochs=1)
    _count_cuts(server, coordinator)
    seen = _spy(server, "party_1")
    coordinator.run(build_method("remisvfu", {"epochs": 2}, "party"))
    assert server._cuts == 2  # cut before the method and again at its end
    asks = [r for _, r in seen if _asks_embeddings(r)]
    # only the protocol's messages: a first training embedding per epoch and one step per batch
    assert {type(r).__name__ if not isinstance(r, LocalOp) else r.name for r in asks} == {
        "remisvfu_embed",
        "remisvfu_step",
    }
    before = len(seen)
    server.predict(torch.from_numpy(exp.dataset.test_ids))
    assert len(seen) == before
    assert "party_1" not in server.active_party_ids


def test_distillation_loss_matches_the_formula() -> None:
    zs = torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]])
    zt = torch.tensor([[3.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    y = torch.tensor([0, 2])
    t, alpha = 2.0, 0.7
    ce = -(zs.log_softmax(1)[torch.arange(2), y]).mean()
    p = torch.exp(zt / t) / torch.exp(zt / t).sum(1, keepdim=True)
    log_q = zs / t - torch.logsumexp(zs / t, 1, keepdim=True)
    kl = (p * (p.log() - log_q)).sum() / 2
    expected = (1 - alpha) * ce + alpha * kl
    got = vr.distillation_loss(zs, zt, y, temperature=t, alpha=alpha)
    assert torch.allclose(got, expected, atol=1e-6)
    # alpha = 0 is plain cross-entropy, alpha = 1 plain distillation
    assert torch.allclose(vr.distillation_loss(zs, zt, y, temperature=t, alpha=0.0), F.cross_entropy(zs, y))
    assert torch.allclose(vr.distillation_loss(zs, zt, y, temperature=t, alpha=1.0), kl, atol=1e-6)


def test_projection_removes_only_conflicting_components() -> None:
    gen = torch.Generator().manual_seed(0)
    projected_any = False
    for _ in range(200):
        g_f, g_r = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
        out, was = project_conflicting(g_f, g_r)
        dot = float((g_f * g_r).sum())
        assert was == (dot < 0)
        if was:
            projected_any = True
            assert float((g_f * out).sum()) == pytest.approx(0.0, abs=1e-5)
            # only the component along g_f changed
            assert torch.allclose(out - g_r, (out - g_r).flatten() @ g_f.flatten() / g_f.norm() ** 2 * g_f, atol=1e-5)
        else:
            assert torch.equal(out, g_r)
    assert projected_any


def _step_infos(server, party: str) -> list[dict[str, Any]]:
    infos: list[dict[str, Any]] = []
    target = server.transport.parties[party]
    original = target.handle

    def spy(request, _orig=original):
        reply = _orig(request)
        if isinstance(request, LocalOp) and request.name == "remisvfu_step":
            assert isinstance(reply, Ack)
            infos.append(reply.info)
        return reply

    target.handle = spy
    return infos


@pytest.mark.parametrize(
    "forget",
    [PARTY, {"kind": "features", "party": "party_0", "columns": [0]}],
    ids=["party", "features"],
)
def test_remisvfu_projected_gradients_never_conflict(forget: dict[str, Any]) -> None:
    exp = _experiment(forget)
    server, coordinator = _trained(exp, epochs=1)
    infos = _step_infos(server, forget["party"])
    coordinator.run(build_method("remisvfu", {"epochs": 2}, forget["kind"]))
    assert infos
    assert sum(i["projected"] for i in infos) > 0  # conflicts do occur and get projected
    for info in infos:
        assert info["min_dot"] >= -1e-6


def test_remisvfu_pulls_the_leaving_party_to_the_anchor(monkeypatch: pytest.MonkeyPatch) -> None:
    exp = _experiment(PARTY)
    server, coordinator = _trained(exp, epochs=1)
    anchors: list[torch.Tensor] = []

    draw = vr.draw_anchor

    def recording(*args, **kwargs):
        a = draw(*args, **kwargs)
        anchors.append(a)
        return a

    monkeypatch.setattr(vr, "draw_anchor", recording)
    ids = exp.forget.retain_ids[:300]

    def distance() -> float:
        h = server.transport.exchange({"party_1": Embed(ids, train=False)})["party_1"].embedding
        return float(((h - anchors[0]) ** 2).sum(1).mean())

    coordinator.run(build_method("remisvfu", {"epochs": 3}, "party"))
    assert len(anchors) == 1 and float(anchors[0].norm()) == pytest.approx(2.0)
    after = distance()
    server.load_state(ORIGINAL)
    before = distance()
    assert after < 0.05 * before


def test_fold_keeps_the_model_that_read_the_anchor() -> None:
    exp = _experiment(PARTY)
    server = exp.build_server()
    gen = torch.Generator().manual_seed(1)
    embs = [torch.randn(7, 32, generator=gen) for _ in server.party_ids]
    anchor = torch.randn(32, generator=gen)
    with_anchor = [e if i != 1 else anchor.expand(7, -1) for i, e in enumerate(embs)]
    without = [e if i != 1 else torch.zeros(7, 32) for i, e in enumerate(embs)]
    expected = server.logits(with_anchor)
    assert not torch.allclose(server.logits(without), expected, atol=1e-3)  # the anchor matters
    vr.fold_constant_embedding(server, "party_1", anchor, [32] * len(embs))
    assert torch.allclose(server.logits(without), expected, atol=1e-5)


@pytest.mark.parametrize(
    "forget",
    [PARTY, {"kind": "features", "party": "party_0", "columns": [0, 1, 2]}],
    ids=["party", "features"],
)
def test_utility_close_to_retrain(forget: dict[str, Any]) -> None:
    exp = _experiment(forget, data=SYNTHETIC)
    server, coordinator = _trained(exp, epochs=8)
    accs = {}
    for name, params in [("retrain", {"epochs": 8}), ("vfu_kd", {}), ("remisvfu", {"epochs": 5})]:
        coordinator.run(build_method(name, params, forget["kind"]))
        accs[name] = _test_acc(server, exp)
    assert accs["retrain"] > 0.6
    assert accs["vfu_kd"] >= accs["retrain"] - 0.06, accs
    assert accs["remisvfu"] >= accs["retrain"] - 0.06, accs
