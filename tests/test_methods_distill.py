"""SCRUB, UNSIR, CMF and few-shot mixup: each checked for what its paper says it does."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.conftest import record_requests, trained
from vfl_sim.experiment import Experiment
from vfl_sim.forget import ORIGINAL
from vfl_sim.methods import build_method
from vfl_sim.methods.cmf import class_mean_weights
from vfl_sim.methods.mixup import pair_mix
from vfl_sim.methods.scrub import Scrub, distill_kl
from vfl_sim.models.top import fuse
from vfl_sim.protocol import Backward, Embed, LocalOp
from vfl_sim.server.coordinator import UnlearningCoordinator
from vfl_sim.server.server import Server, count_batches


def _trained(exp: Experiment, epochs: int = 2) -> tuple[Server, UnlearningCoordinator]:
    return trained(exp, epochs)


def _embedded_ids(seen) -> torch.Tensor:
    ids = []
    for _, request in seen:
        embed = request.then if isinstance(request, Backward) else request
        if isinstance(embed, Embed) and embed.train:
            ids.append(embed.ids)
    return torch.cat(ids)


def _acc(server, ids: torch.Tensor) -> float:
    return float((server.predict(ids) == server.labels[ids]).float().mean())


# -- SCRUB -------------------------------------------------------------------------------------


def test_distill_kl_is_kl_of_softened_outputs() -> None:
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    p_t, p_s = F.softmax(t / 4, 1), F.softmax(s / 4, 1)
    expected = (p_t * (p_t.log() - p_s.log())).sum(1).mean() * 16
    assert torch.allclose(distill_kl(s, t, 4.0), expected, atol=1e-6)
    assert float(distill_kl(t, t, 4.0)) < 1e-6


def test_scrub_max_steps_on_forget_then_min_steps_on_retain(digits_experiment: Experiment) -> None:
    """msteps epochs start with a pass over the forget set; every epoch has a retain pass."""
    exp = digits_experiment
    server, coordinator = _trained(exp)
    seen = record_requests(server)
    coordinator.run(
        build_method("scrub", {"epochs": 3, "msteps": 2, "batch_size": 64, "forget_batch_size": 64}, "class")
    )
    passes: list[str] = []
    n_min = 0
    forget = set(exp.forget.forget_ids.tolist())
    for pid, request in seen:
        embed = request.then if isinstance(request, Backward) else request
        if pid == server.party_ids[0] and isinstance(embed, Embed) and embed.train:
            kind = "max" if set(embed.ids.tolist()) <= forget else "min"
            assert kind == "max" or not set(embed.ids.tolist()) & forget
            n_min += kind == "min"
            if not passes or passes[-1] != kind:
                passes.append(kind)
    assert passes == ["max", "min", "max", "min"]  # the third epoch has no max-step
    assert n_min == 3 * count_batches(exp.forget.retain_ids.numel(), 64)


def test_scrub_losses_match_the_paper(digits_experiment: Experiment) -> None:
    method = build_method("scrub", {"alpha": 0.3, "gamma": 0.7, "kd_T": 2.0}, "class")
    assert isinstance(method, Scrub)
    teacher = torch.randn(10, 10)
    max_loss, min_loss = method.losses(teacher)
    logits, labels, ids = torch.randn(3, 10), torch.tensor([1, 2, 3]), torch.tensor([4, 0, 7])
    assert torch.allclose(max_loss(logits, labels, ids), -distill_kl(logits, teacher[ids], 2.0))
    expected = 0.3 * distill_kl(logits, teacher[ids], 2.0) + 0.7 * F.cross_entropy(logits, labels)
    assert torch.allclose(min_loss(logits, labels, ids), expected)
    # the teacher is the original: at the start, the student's KL to it is zero
    assert float(max_loss(teacher[ids], labels, ids)) > -1e-6


def test_scrub_forgets_the_class_and_keeps_the_rest(digits_experiment: Experiment) -> None:
    exp = digits_experiment
    server, coordinator = _trained(exp, epochs=5)
    forget, retain = exp.forget.forget_ids, exp.forget.retain_ids
    assert _acc(server, forget) > 0.8
    coordinator.run(build_method("scrub", {}, "class"))
    server.load_state("scrub")
    assert _acc(server, forget) < 0.1
    assert _acc(server, retain) > 0.8


# -- UNSIR -------------------------------------------------------------------------------------


def _noise_loss(server, label: int) -> float:
    """Cross-entropy of the class for the noise the parties hold (read from their buffers)."""
    embeddings = []
    for pid in server.party_ids:
        party = server.transport.parties[pid]
        party.bottom.eval()
        with torch.no_grad():
            embeddings.append(party.bottom(party.buffers["unsir/noise"]))
    logits = server.logits(embeddings)
    return float(F.cross_entropy(logits, torch.full((logits.shape[0],), label)))


def test_unsir_noise_raises_the_forget_class_loss_and_lives_only_at_parties(digits_experiment: Experiment) -> None:
    exp = digits_experiment
    server, coordinator = _trained(exp)
    method = build_method("unsir", {"noise_samples": 16}, "class")
    ctx = coordinator.context(method)
    labels = torch.full((16,), exp.forget.classes[0])
    server.party_call("unsir_noise_init", {"rows": 16, "seed": ctx.seed})
    before = _noise_loss(server, exp.forget.classes[0])
    seen = record_requests(server)
    method.learn_noise(server, labels, ctx)  # type: ignore[attr-defined]
    after = _noise_loss(server, exp.forget.classes[0])
    assert after > before + 0.5
    for pid in server.party_ids:
        party = server.transport.parties[pid]
        assert party.buffers["unsir/noise"].shape == (16, *party.features.shape[1:])
    # parties receive gradients of their own embedding and small arguments, never labels or noise
    for _pid, request in seen:
        assert isinstance(request, LocalOp)
        assert set(request.tensors) <= {"grad"}
        for t in request.tensors.values():
            assert t.shape[0] == 16 and t.dim() == 2  # a gradient of the party's noise embedding


def test_unsir_impair_trains_on_noise_and_retain_only(digits_experiment: Experiment) -> None:
    exp = digits_experiment
    server, coordinator = _trained(exp, epochs=5)
    seen = record_requests(server)
    coordinator.run(build_method("unsir", {"noise_samples": 16, "noise_copies": 4, "retain_per_class": 20}, "class"))
    asked = []
    for _, request in seen:
        if isinstance(request, LocalOp) and "next_ids" in request.tensors:
            asked.append(request.tensors["next_ids"])
    ids = torch.cat(asked)
    assert (ids < 0).sum() == 16 * 4 * len(server.party_ids)  # every noise row, every copy, every party
    real = ids[ids >= 0]
    assert not torch.isin(real, exp.forget.forget_ids).any()
    assert torch.isin(_embedded_ids(seen), exp.forget.retain_ids).all()


# -- CMF ---------------------------------------------------------------------------------------


def test_cmf_classifier_weights_are_normalized_class_means(digits_experiment: Experiment) -> None:
    exp = digits_experiment
    server, coordinator = _trained(exp)
    method = build_method("cmf", {"epochs": 1}, "class")
    coordinator.run(method)
    server.load_state("cmf")
    ids = torch.cat([exp.forget.forget_ids, exp.forget.retain_ids])
    embeddings, _ = server.embed(ids)
    server.top.eval()
    with torch.no_grad():
        h = F.normalize(server.top.net[:-1](fuse(embeddings, server.fusion)), dim=1)
    labels = server.labels[ids]
    means = torch.stack([F.normalize(h[labels == c].mean(0), dim=0) for c in range(10)])
    weight = server.top.classifier.weight * method.params.temperature  # type: ignore[attr-defined]
    assert torch.allclose(weight, means, atol=1e-5)
    assert torch.allclose(class_mean_weights(server, ids, 10), means, atol=1e-5)
    assert float(server.top.classifier.bias.detach().abs().max()) == 0.0
    # the exported linear layer predicts exactly what the cosine classifier predicts
    cos = h @ means.t()
    assert torch.equal(server.logits(embeddings).argmax(1), cos.argmax(1))


def test_cmf_wraps_another_method_and_recomputes_means_every_epoch(digits_experiment: Experiment) -> None:
    exp = digits_experiment
    server, coordinator = _trained(exp)
    seen = record_requests(server)
    coordinator.run(build_method("cmf", {"base": "neggrad", "base_params": {"epochs": 2}}, "class"))
    train = set(torch.cat([exp.forget.forget_ids, exp.forget.retain_ids]).tolist())
    forget = set(exp.forget.forget_ids.tolist())
    # eval-mode embeddings of the whole training set before each of neggrad's 2 epochs and at the end
    full = [r for _, r in seen if isinstance(r, Embed) and not r.train and set(r.ids.tolist()) == train]
    assert len(full) == 4 * len(server.party_ids)  # start, 2 epochs, end
    # and neggrad itself still trains on the forget set only
    assert set(_embedded_ids(seen).tolist()) == forget
    server.load_state("cmf")
    assert isinstance(server.top.classifier, torch.nn.Linear)


# -- few-shot mixup ----------------------------------------------------------------------------


def test_pair_mix_covers_every_pair_with_every_lambda() -> None:
    i, j, lam = pair_mix(4, [0.25, 0.5, 0.75])
    assert i.numel() == 6 * 3
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == {(a, b) for a in range(4) for b in range(a + 1, 4)}
    assert sorted(set(lam.tolist())) == [0.25, 0.5, 0.75]


def test_few_shot_mixup_uses_only_the_few_shots(digits_experiment: Experiment) -> None:
    exp = digits_experiment
    server, coordinator = _trained(exp)
    seen = record_requests(server)
    coordinator.run(build_method("few_shot_mixup", {"forget_samples": 10, "retain_per_class": 2, "epochs": 2}, "class"))
    ids = _embedded_ids(seen)
    used = set(ids.tolist())
    f = used & set(exp.forget.forget_ids.tolist())
    r = used - f
    assert len(f) == 10
    labels = server.labels[torch.tensor(sorted(r))]
    assert torch.bincount(labels, minlength=10).tolist() == [0] + [2] * 9


def test_few_shot_mixup_mixes_pairs_with_the_configured_lambdas(digits_experiment: Experiment, monkeypatch) -> None:
    from vfl_sim.methods import mixup

    exp = digits_experiment
    server, coordinator = _trained(exp)
    calls = []
    original = mixup.pair_mix

    def spy(n, lambdas):
        calls.append((n, list(lambdas)))
        return original(n, lambdas)

    monkeypatch.setattr(mixup, "pair_mix", spy)
    coordinator.run(
        build_method(
            "few_shot_mixup", {"forget_samples": 6, "lambdas": [0.1, 0.9], "epochs": 1, "batch_size": 8}, "class"
        )
    )
    assert calls == [(6, [0.1, 0.9])]


def test_few_shot_mixup_drops_forgotten_accuracy(digits_experiment: Experiment) -> None:
    exp = digits_experiment
    server, coordinator = _trained(exp, epochs=5)
    forget, retain = exp.forget.forget_ids, exp.forget.retain_ids
    assert _acc(server, forget) > 0.8
    coordinator.run(build_method("few_shot_mixup", {}, "class"))
    server.load_state("few_shot_mixup")
    assert _acc(server, forget) < 0.2
    assert _acc(server, retain) > 0.7


def test_methods_do_not_mutate_the_original(digits_experiment: Experiment) -> None:
    server, coordinator = _trained(digits_experiment)
    before = server.digests(ORIGINAL)
    for name, params in [
        ("scrub", {"epochs": 1}),
        ("unsir", {"noise_samples": 8, "noise_copies": 2}),
        ("cmf", {"epochs": 1}),
        ("few_shot_mixup", {"epochs": 1}),
    ]:
        coordinator.run(build_method(name, params, "class"))
        assert server.digests(name) != before
    assert server.digests(ORIGINAL) == before
