"""forget.cover: decoy ids hide the forget set from what a party is asked (vfl_sim.server.cover).

Known answers: without cover, gradient ascent asks only about the forget set and fine-tuning
only about the rest (ids advantage 1 at every party); with cover every party is asked about
every training sample equally often (ids AUC exactly 0.5), while the gradient channel keeps the
method's leakage (decoys get zero rows). Without batch normalization the decoys change nothing
(the unlearned model is the same up to float rounding); the method's own batches and random
draws are the same with and without cover, and cover off is the run it always was.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import record_requests, small_config, trained
from vfl_sim.audits.request_leakage import PartyViewRecorder
from vfl_sim.config import ExperimentConfig, config_from_dict
from vfl_sim.errors import ForgetRequestError
from vfl_sim.experiment import prepare
from vfl_sim.methods import available_methods, build_method, get_method
from vfl_sim.protocol import Backward, Embed, LocalOp
from vfl_sim.server.coordinator import UnlearningCoordinator, request_id
from vfl_sim.server.cover import Cover, Padded
from vfl_sim.server.server import make_batches
from vfl_sim.server.unlearning import UnlearningMethod
from vfl_sim.transport import LocalTransport

NO_BN = {"bottom": "mlp", "batch_norm": False}


def _run(
    cfg: ExperimentConfig, method: str, *, cover: bool, params: dict[str, Any] | None = None
) -> tuple[Any, dict[str, Any], dict[str, Any], list[tuple[str, Any]], torch.Generator]:
    """Train the original, run ``method`` (cover on or off); returns the server, the method's
    run, each party's request leakage, every request the parties got, and the method's
    generator after the run."""
    exp = prepare(cfg)
    server, _ = trained(exp, epochs=1)
    coordinator = UnlearningCoordinator(
        server, exp.forget, cfg.train, seed=cfg.seed, top_seed=exp.top_seed, cover=cover
    )
    m = build_method(method, params or {}, exp.forget.kind)
    ctx = coordinator.context(m)
    view = PartyViewRecorder(server.party_ids, int(server.labels.numel()))
    server.transport.taps.append(view.observe)
    seen = record_requests(server)
    run = coordinator.run(m, ctx).to_dict()
    server.transport.taps.remove(view.observe)
    f = exp.forget
    leak = view.compute(f.forget_ids.numpy(), torch.cat([f.forget_ids, f.retain_ids]).numpy())
    return server, run, leak, seen, ctx.generator


def _state(server: Any) -> dict[str, torch.Tensor]:
    """The top model's and every bottom model's tensors."""
    out = {f"top.{k}": v.detach().clone() for k, v in server.top.state_dict().items()}
    for pid, party in server.transport.parties.items():
        out.update({f"{pid}.{k}": v.detach().clone() for k, v in party.bottom.state_dict().items()})
    return out


# -- the ids channel --------------------------------------------------------------------------


def test_without_cover_gradient_ascent_gives_the_forget_set_away_at_every_party() -> None:
    _, run, leak, _, _ = _run(small_config(), "neggrad", cover=False)
    assert "cover" not in run
    for pid, party in leak.items():
        assert party["ids_advantage"] == pytest.approx(1.0), pid


@pytest.mark.parametrize("method", ["neggrad", "finetune", "retrain"])
def test_with_cover_the_ids_tell_every_party_nothing(method: str) -> None:
    params = {"epochs": 1} if method != "retrain" else {}
    server, run, leak, seen, _ = _run(small_config(), method, cover=True, params=params)
    train = prepare(small_config()).dataset.train_ids
    for pid, party in leak.items():
        assert party["ids_auc"] == pytest.approx(0.5, abs=1e-12), pid
        assert party["ids_advantage"] == pytest.approx(0.0, abs=1e-12), pid
        assert party["asked_train_samples"] == train.size, pid
        # every training sample asked equally often
        counts = np.zeros(int(server.labels.numel()), dtype=np.int64)
        for p, request in seen:
            embed = request if isinstance(request, Embed) else getattr(request, "then", None)
            if p == pid and isinstance(embed, Embed):
                np.add.at(counts, embed.ids.numpy(), 1)
        assert len(set(counts[train].tolist())) == 1 and counts[train][0] > 0, pid
    assert run["cover"]["uncovered_requests"] == 0


def test_with_cover_the_gradient_channel_keeps_the_methods_leakage() -> None:
    """Decoys get zero gradient rows (no fake gradients): gradient ascent's forget samples are
    the rows with a non-zero gradient, and the audit says so."""
    _, _, leak, seen, _ = _run(small_config(), "neggrad", cover=True)
    for party in leak.values():
        assert party["ids_advantage"] == pytest.approx(0.0, abs=1e-12)
        assert party["gradient_norm_advantage"] == pytest.approx(1.0)
        assert party["gradient_samples"] == party["asked_train_samples"]  # decoys got (zero) rows too
    zero_rows = sum(int((r.grad.abs().sum(1) == 0).sum()) for _, r in seen if isinstance(r, Backward))
    assert zero_rows > 0


# -- zero effect ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["neggrad", "finetune"])
def test_without_batch_norm_cover_leaves_the_unlearned_model_as_it_was(method: str) -> None:
    cfg = small_config(model=NO_BN)
    off, _, _, _, _ = _run(cfg, method, cover=False, params={"epochs": 1})
    on, _, _, _, _ = _run(cfg, method, cover=True, params={"epochs": 1})
    a, b = _state(off), _state(on)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), k
    ids = torch.arange(int(off.labels.numel()))
    assert torch.equal(off.predict(ids), on.predict(ids))


def test_with_batch_norm_decoys_shift_the_batch_statistics() -> None:
    """The documented exception: in training mode batch norm normalizes over the padded batch."""
    cfg = small_config()  # digits: a CNN bottom with batch norm
    off, _, _, _, _ = _run(cfg, "finetune", cover=False, params={"epochs": 1})
    on, _, _, _, _ = _run(cfg, "finetune", cover=True, params={"epochs": 1})
    a, b = _state(off), _state(on)
    assert any(not torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5) for k in a if "running_mean" in k)


def test_a_gradient_defense_applies_to_real_rows_only_and_decoys_stay_zero() -> None:
    cfg = small_config(train={"defense": {"gradient_clip": 1.0, "gradient_noise": 0.5}})
    exp = prepare(cfg)
    forget = set(exp.forget.forget_ids.tolist())
    _, _, _, seen, _ = _run(cfg, "retrain", cover=True)
    last: dict[str, torch.Tensor] = {}
    checked = 0
    for pid, r in seen:
        embed = r if isinstance(r, Embed) else getattr(r, "then", None)
        if isinstance(r, Backward) and pid in last:
            decoy = torch.tensor([i in forget for i in last[pid].tolist()])  # retrain: decoys are the forget set
            assert decoy.any() and (r.grad[decoy] == 0).all()
            assert (r.grad[~decoy].abs().sum(1) > 0).all()
            checked += 1
        if isinstance(embed, Embed) and embed.train:
            last[pid] = embed.ids
    assert checked > 0


# -- cost -------------------------------------------------------------------------------------


def test_cover_reports_what_the_decoys_cost() -> None:
    _, off, _, _, _ = _run(small_config(), "neggrad", cover=False)
    _, on, _, _, _ = _run(small_config(), "neggrad", cover=True)
    cost = on["cover"]
    assert set(cost) == {"decoy_rows", "real_rows", "decoy_bytes", "uncovered_requests", "decoy_bytes_share"}
    assert cost["decoy_rows"] > 0 and cost["real_rows"] > 0 and cost["decoy_bytes"] > 0
    assert cost["uncovered_requests"] == 0
    extra = on["communication"]["bytes_total"] - off["communication"]["bytes_total"]
    assert extra == cost["decoy_bytes"]  # every added byte is a decoy's id, embedding or gradient row
    assert 0 < cost["decoy_bytes_share"] < 1


# -- cover off is the run it always was -------------------------------------------------------


def test_the_methods_batches_and_random_draws_are_the_same_with_and_without_cover() -> None:
    cfg = small_config()
    _, _, _, seen_off, gen_off = _run(cfg, "neggrad", cover=False)
    _, _, _, seen_on, gen_on = _run(cfg, "neggrad", cover=True)
    assert torch.equal(gen_off.get_state(), gen_on.get_state())  # cover drew nothing from it

    def train_embeds(seen: list[tuple[str, Any]]) -> list[torch.Tensor]:
        out = []
        for pid, r in seen:
            embed = r if isinstance(r, Embed) else getattr(r, "then", None)
            if pid == "party_0" and isinstance(embed, Embed) and embed.train:
                out.append(embed.ids)
        return out

    off, on = train_embeds(seen_off), train_embeds(seen_on)
    assert len(off) == len(on)
    forget = prepare(cfg).forget.forget_ids
    for real, padded in zip(off, on, strict=True):
        kept = padded[torch.isin(padded, forget)]  # neggrad: the real rows are the forget ids
        assert sorted(kept.tolist()) == sorted(real.tolist())
    # and the batches are the method's own: its seeded generator cut into batches, as before cover
    exp = prepare(cfg)
    coordinator = UnlearningCoordinator(trained(exp, 1)[0], exp.forget, cfg.train, seed=cfg.seed, top_seed=0)
    gen = coordinator.context(build_method("neggrad", {}, "class")).generator
    expected = [b for _ in range(2) for b in make_batches(exp.forget.forget_ids, cfg.train.batch_size, gen)]
    assert [b.tolist() for b in off] == [b.tolist() for b in expected]


def test_an_explicit_cover_false_is_the_same_request_and_the_same_run() -> None:
    base = small_config()
    explicit = small_config(forget={"kind": "class", "classes": [0], "cover": False})
    assert request_id(base.forget) == request_id(explicit.forget)
    assert prepare(base).forget.describe() == prepare(explicit).forget.describe()
    assert "cover" not in prepare(base).forget.describe()
    a, run_a, leak_a, _, _ = _run(base, "neggrad", cover=base.forget.cover)
    b, run_b, leak_b, _, _ = _run(explicit, "neggrad", cover=explicit.forget.cover)
    assert a.digests() == b.digests()
    assert leak_a == leak_b and run_a["communication"] == run_b["communication"]
    covered = small_config(forget={"kind": "class", "classes": [0], "cover": True})
    assert request_id(covered.forget) != request_id(base.forget)
    assert prepare(covered).forget.describe()["cover"] is True


# -- every method -----------------------------------------------------------------------------


def _class_methods() -> list[str]:
    return [n for n in available_methods() if "class" in get_method(n).supports]


def test_every_class_method_is_covered_on_every_channel() -> None:
    """Each built-in method of a class request, with cover: no request names samples without
    the cover's padding, and every party is asked about every training sample equally often."""
    cfg = small_config(
        data={
            "name": "synthetic",
            "synthetic": {"samples": 240, "features": 12, "classes": 3, "informative_per_party": 2},
        },
        partition={"parties": 2},
        model={"embedding_dim": 8, "bottom_hidden": [16], "top_hidden": [16]},
        forget={"kind": "class", "classes": [1]},
    )
    short = {
        "cmf": {"epochs": 1},
        "neggrad_plus": {"epochs": 1},
        "salun": {"epochs": 1},
        "l1_sparse": {"epochs": 1},
        "scrub": {"epochs": 1},
        "unsir": {"noise_epochs": 1, "noise_copies": 2, "repair_epochs": 1},
        "few_shot_mixup": {"epochs": 1, "forget_samples": 4, "retain_per_class": 2},
        "boundary_shrink": {"epochs": 1},
        "boundary_expand": {"epochs": 1},
        "finetune": {"epochs": 1},
        "neggrad": {"epochs": 1},
        "random_label": {"epochs": 1},
    }
    for name in _class_methods():
        _, run, leak, _, _ = _run(cfg, name, cover=True, params=short.get(name, {}))
        assert run["cover"]["uncovered_requests"] == 0, name
        for pid, party in leak.items():
            assert party["ids_auc"] == pytest.approx(0.5, abs=1e-12), (name, pid)


# -- what cannot be covered -------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_", [{"kind": "party", "party": "party_1"}, {"kind": "features", "party": "party_0", "columns": [0]}]
)
def test_party_and_feature_requests_refuse_cover(request_: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="forget.cover"):
        config_from_dict({"forget": {**request_, "cover": True}})


def test_the_coordinator_refuses_cover_without_a_forget_set() -> None:
    exp = prepare(small_config(forget={"kind": "party", "party": "party_1"}, methods=["retrain"]))
    server = exp.build_server()
    with pytest.raises(ForgetRequestError, match="forget.cover"):
        UnlearningCoordinator(server, exp.forget, exp.cfg.train, seed=0, top_seed=0, cover=True)


def test_a_request_the_cover_did_not_pad_is_counted() -> None:
    """A plugin method that sends its own Embed is not covered, and the report says so."""
    exp = prepare(small_config())
    server, coordinator = trained(exp, epochs=1)
    coordinator.cover = True

    class Bare(UnlearningMethod[Any]):  # type: ignore[type-var]
        name = "bare"

        def unlearn(self, ctx: Any) -> None:
            ctx.server.transport.broadcast(Embed(ctx.forget.forget_ids[:5].clone(), train=False))
            ctx.server.embed(ctx.forget.forget_ids[:5])  # covered

    run = coordinator.run(Bare(label="bare")).to_dict()
    assert run["cover"]["uncovered_requests"] == len(server.party_ids)


# -- the pieces -------------------------------------------------------------------------------


def test_a_plan_brings_every_training_id_up_to_the_most_asked_one() -> None:
    cover = Cover(torch.arange(10), seed=0)
    batches = [torch.tensor([0, 1, 2]), torch.tensor([0, 3])]  # 0 twice
    plan = cover.plan(batches)
    sent = torch.cat([p.ids for p in plan])
    assert torch.bincount(sent, minlength=10).tolist() == [2] * 10
    assert [p.ids.numel() for p in plan] == [3 + 8, 2 + 7]  # 15 decoys split 8 / 7
    for real, p in zip(batches, plan, strict=True):
        assert torch.equal(p.take(p.ids), real)
        rows = torch.arange(real.numel(), dtype=torch.float32)[:, None] + 1
        full = p.scatter(rows)
        assert torch.equal(p.take(full), rows) and int((full == 0).all(1).sum()) == p.decoys
    assert cover.decoy_rows == 15 and cover.real_rows == 5
    plain = Padded.plain(batches[0])
    assert plain.take(batches[0]) is batches[0] and plain.decoys == 0


def test_the_cover_generator_is_its_own() -> None:
    a = Cover(torch.arange(50), seed=1).plan([torch.arange(5)])[0].ids
    b = Cover(torch.arange(50), seed=1).plan([torch.arange(5)])[0].ids
    c = Cover(torch.arange(50), seed=2).plan([torch.arange(5)])[0].ids
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[:5], torch.arange(5))  # the real ids are not in front


def test_embed_under_cover_asks_about_every_training_sample_and_returns_the_requested_rows() -> None:
    exp = prepare(small_config())
    server, _ = trained(exp, epochs=1)
    ids = torch.from_numpy(exp.dataset.train_ids[:7])
    plain, _ = server.embed(ids)
    seen = record_requests(server)
    with server.covering(torch.from_numpy(exp.dataset.train_ids), seed=3) as cover:
        covered, _ = server.embed(ids)
    for a, b in zip(plain, covered, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    asked = sorted(int(i) for pid, r in seen if pid == "party_0" for i in r.ids)
    assert asked == sorted(exp.dataset.train_ids.tolist())
    assert cover.decoy_rows == exp.dataset.train_ids.size - 7 and cover.uncovered_requests == 0


def test_the_recorder_counts_decoys_as_asked_and_zero_rows_as_norm_zero() -> None:
    rec = PartyViewRecorder(["p"], 6)
    rec.observe({"p": Embed(torch.tensor([3, 1, 4]), train=True)})
    rec.observe({"p": Backward(torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]]))})
    assert rec.asked["p"].tolist() == [0, 1, 0, 1, 1, 0]
    assert rec.grad_count["p"].tolist() == [0, 1, 0, 1, 1, 0]
    assert rec.grad_norm_sum["p"].tolist() == [0, 5, 0, 0, 0, 0]


def test_the_recorder_reads_the_ids_and_gradients_of_party_operations() -> None:
    rec = PartyViewRecorder(["p"], 6)
    rec.observe({"p": LocalOp("accumulate_grads", {}, {"ids": torch.tensor([0, 2]), "grad": torch.ones(2, 3, 4)})})
    rec.observe({"p": LocalOp("unsir_train_step", {}, {"next_ids": torch.tensor([1, -1, 5])})})  # -1: a noise row
    rec.observe({"p": LocalOp("unsir_train_step", {}, {"grad": torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0]])})})
    rec.observe({"p": LocalOp("unsir_noise_step", {}, {"grad": torch.ones(2, 2)})})  # no ids: not a sample's row
    assert rec.asked["p"].tolist() == [1, 1, 1, 0, 0, 1]
    assert rec.op_grad_count["p"].tolist() == [1, 1, 1, 0, 0, 1]
    assert rec.op_grad_norm_sum["p"].tolist() == pytest.approx([12**0.5, 5, 12**0.5, 0, 0, 0])
    assert rec.grad_count["p"].sum() == 0  # the Backward channel is apart


def test_covering_is_one_method_at_a_time() -> None:
    exp = prepare(small_config())
    server = exp.build_server()
    assert isinstance(server.transport, LocalTransport)
    with server.covering(torch.arange(10), seed=0), pytest.raises(RuntimeError, match="already covering"):
        with server.covering(torch.arange(10), seed=0):
            pass
    assert server.cover is None and server.transport.taps == []
