"""Fisher forgetting, SSD, SalUn and l1-sparse: each does what its paper says, across the split."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import record_requests, trained
from vfl_sim.experiment import Experiment
from vfl_sim.forget import ORIGINAL
from vfl_sim.methods import build_method
from vfl_sim.methods.importance import accumulate_statistics
from vfl_sim.methods.saliency import SalUn, global_threshold
from vfl_sim.models.importance import fisher_variance, l1_gamma, ssd_dampen_
from vfl_sim.models.top import fuse
from vfl_sim.protocol import LocalOp
from vfl_sim.server.coordinator import UnlearningCoordinator
from vfl_sim.server.server import Server


def _trained(exp: Experiment, epochs: int = 2) -> tuple[Server, UnlearningCoordinator]:
    return trained(exp, epochs)


def _parties(server):
    return server.transport.parties


def _bottom_state(server, name: str | None = None) -> dict[str, dict[str, torch.Tensor]]:
    out = {}
    for pid, party in _parties(server).items():
        state = party.states[name] if name is not None else party.bottom.state_dict()
        out[pid] = {k: v.clone() for k, v in state.items()}
    return out


def _accuracy(server, ids: torch.Tensor) -> float:
    return float((server.predict(ids) == server.labels[ids]).float().mean())


def _monolithic_logits(server, ids: torch.Tensor) -> torch.Tensor:
    """The split model evaluated as one autograd graph (test-only: reads every party)."""
    embeddings = [p.bottom(p.features[ids]) for p in _parties(server).values()]
    return server.top(fuse(embeddings, server.fusion))


def _eval_all(server) -> None:
    server.top.eval()
    for p in _parties(server).values():
        p.bottom.eval()


# -- SSD ---------------------------------------------------------------------------------------


def test_ssd_dampening_rule_on_known_importances() -> None:
    """Entries with I_Df > alpha * I_D are scaled by min(lam * I_D / I_Df, 1); others stay bit-equal."""
    w = torch.tensor([1.0, -2.0, 3.0, 4.0, 5.0, 6.0])
    i_d = torch.tensor([1.0, 1.0, 1.0, 0.0, 2.0, 1.0])
    i_f = torch.tensor([5.0, 20.0, 100.0, 0.0, 20.0, 10.0])
    out = w.clone()
    n = ssd_dampen_(out, i_d, i_f, alpha=10.0, lam=1.0)
    # selected: 20 > 10 and 100 > 10 (entries 1, 2); 20 > 20 is not, 10 > 10 is not, 0 > 0 is not
    assert n == 2
    expected = torch.tensor([1.0, -2.0 * (1 / 20), 3.0 * (1 / 100), 4.0, 5.0, 6.0])
    assert torch.equal(out[[0, 3, 4, 5]], w[[0, 3, 4, 5]])
    assert torch.allclose(out, expected)
    # lam large enough that beta would exceed 1: capped at 1, the weight never grows
    out = w.clone()
    ssd_dampen_(out, i_d, i_f, alpha=10.0, lam=50.0)
    assert torch.allclose(out[2], w[2] * 0.5) and torch.equal(out[1], w[1])


def test_batch_importances_equal_the_monolithic_model(digits_experiment: Experiment) -> None:
    """The per-batch protocol gives each party exactly the squared minibatch gradients of the
    whole model's loss with respect to its own parameters (and the server the top's)."""
    server, _ = _trained(digits_experiment, epochs=1)
    ids = digits_experiment.forget.forget_ids[:100]
    top_stats, batches = accumulate_statistics(server, ids, name="t", kind="batch_sq", batch_size=40)
    assert batches == 3
    _eval_all(server)
    expected_top = {n: torch.zeros_like(p) for n, p in server.top.named_parameters()}
    expected = {
        pid: {n: torch.zeros_like(p) for n, p in q.bottom.named_parameters()} for pid, q in _parties(server).items()
    }
    for batch in torch.split(ids, 40):
        server.top.zero_grad()
        for q in _parties(server).values():
            q.bottom.zero_grad()
        F.cross_entropy(_monolithic_logits(server, batch), server.labels[batch]).backward()
        for n, p in server.top.named_parameters():
            expected_top[n] += p.grad**2
        for pid, q in _parties(server).items():
            for n, p in q.bottom.named_parameters():
                expected[pid][n] += p.grad**2
    for n in expected_top:
        assert torch.allclose(top_stats[n], expected_top[n], rtol=1e-4, atol=1e-10)
    for pid, q in _parties(server).items():
        for n in expected[pid]:
            assert torch.allclose(q.buffers[f"t/{n}"], expected[pid][n], rtol=1e-4, atol=1e-10), (pid, n)


def test_ssd_changes_only_selected_parameters(digits_experiment: Experiment) -> None:
    server, coordinator = _trained(digits_experiment)
    before = _bottom_state(server, ORIGINAL)
    coordinator.run(build_method("ssd", {}, "class"))
    after = _bottom_state(server, "ssd")
    n_full = math.ceil(digits_experiment.dataset.train_ids.size / 64)
    n_forget = math.ceil(digits_experiment.forget.forget_ids.numel() / 64)
    changed_total = 0
    for pid, party in _parties(server).items():
        for name, _w0 in party.bottom.named_parameters():
            i_d = party.buffers[f"ssd_full/{name}"] / n_full
            i_f = party.buffers[f"ssd_forget/{name}"] / n_forget
            selected = i_f > 10.0 * i_d
            old, new = before[pid][name], after[pid][name]
            assert torch.equal(new[~selected], old[~selected]), (pid, name)
            beta = torch.clamp(i_d / i_f, max=1.0)
            assert torch.allclose(new[selected], old[selected] * beta[selected], atol=1e-7)
            changed_total += int((new != old).sum())
        # importances are taken in eval mode: batch-norm statistics do not move
        for name, _buf in party.bottom.named_buffers():
            assert torch.equal(after[pid][name], before[pid][name]), (pid, name)
    assert changed_total > 0
    # forgetting the class: the forget set's accuracy falls, the retained set's mostly stays
    server.load_state("ssd")
    forget, retain = digits_experiment.forget.forget_ids, digits_experiment.forget.retain_ids
    assert _accuracy(server, forget) < 0.2
    assert _accuracy(server, retain) > 0.7


# -- Fisher forgetting -------------------------------------------------------------------------


def test_per_sample_fisher_equals_brute_force(digits_experiment: Experiment) -> None:
    """sample_sq accumulates sum_x sum_k p_k(x) (d log p_k(x) / dw)^2 on every side of the split."""
    server, _ = _trained(digits_experiment, epochs=1)
    ids = digits_experiment.forget.retain_ids[:6]
    top_stats, _ = accumulate_statistics(server, ids, name="fi", kind="sample_sq", batch_size=4)
    _eval_all(server)
    top_params = dict(server.top.named_parameters())
    expected_top = {n: torch.zeros_like(p) for n, p in top_params.items()}
    expected = {
        pid: {n: torch.zeros_like(p) for n, p in q.bottom.named_parameters()} for pid, q in _parties(server).items()
    }
    for i in ids:
        logp = torch.log_softmax(_monolithic_logits(server, i.view(1)), dim=1)[0]
        for k in range(logp.numel()):
            weight = float(logp[k].detach().exp())
            names = list(top_params) + [
                (pid, n) for pid, q in _parties(server).items() for n, _ in q.bottom.named_parameters()
            ]
            tensors = list(top_params.values()) + [p for q in _parties(server).values() for p in q.bottom.parameters()]
            grads = torch.autograd.grad(logp[k], tensors, retain_graph=True)
            for key, g in zip(names, grads, strict=True):
                if isinstance(key, tuple):
                    expected[key[0]][key[1]] += weight * g**2
                else:
                    expected_top[key] += weight * g**2
    for n in expected_top:
        assert torch.allclose(top_stats[n], expected_top[n], rtol=1e-3, atol=1e-9), n
    for pid, q in _parties(server).items():
        for n in expected[pid]:
            assert torch.allclose(q.buffers[f"fi/{n}"], expected[pid][n], rtol=1e-3, atol=1e-9), (pid, n)


def test_fisher_variance_formula() -> None:
    fisher = torch.tensor([[1e-9, 1.0], [10.0, 1e-2]])
    var = fisher_variance(fisher, alpha=1e-6, max_inverse=1e3, per_output_unit=False)
    assert torch.allclose(var, 1e-6 * torch.tensor([[1e3, 1.0], [0.1, 100.0]]), rtol=1e-5)
    per_unit = fisher_variance(fisher, alpha=1e-6, max_inverse=1e3, per_output_unit=True, scale=10.0)
    assert torch.allclose(per_unit, 10.0 * var.mean(dim=1, keepdim=True).expand(2, 2))


def test_party_fisher_noise_follows_the_formula(digits_experiment: Experiment) -> None:
    """A party's noise is sqrt(var) * N(0, 1) with var from its Fisher buffers, reproducible per seed."""
    server, _ = _trained(digits_experiment, epochs=1)
    party = next(iter(_parties(server).values()))
    gen = torch.Generator().manual_seed(1)
    for name, p in party.bottom.named_parameters():
        party.buffers[f"fi/{name}"] = (
            7 * torch.rand(p.shape, generator=gen) * 10.0 ** torch.randint(-5, 2, p.shape, generator=gen)
        )
    before = {n: p.detach().clone() for n, p in party.bottom.named_parameters()}
    party.handle(LocalOp("fisher_noise", {"name": "fi", "samples": 7, "alpha": 1e-6, "max_inverse": 1e3, "seed": 3}))
    zs = []
    for name, p in party.bottom.named_parameters():
        var = fisher_variance(
            party.buffers[f"fi/{name}"] / 7,
            alpha=1e-6,
            max_inverse=1e3,
            per_output_unit=True,
            scale=10.0 if p.ndim == 1 else 1.0,
        )
        zs.append(((p.detach() - before[name]) / var.sqrt()).flatten())
    z = torch.cat(zs)
    assert z.numel() > 5000
    assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1.0) < 0.05
    # same seed, same noise
    noisy = {n: p.detach().clone() for n, p in party.bottom.named_parameters()}
    with torch.no_grad():
        for n, p in party.bottom.named_parameters():
            p.copy_(before[n])
    party.handle(LocalOp("fisher_noise", {"name": "fi", "samples": 7, "alpha": 1e-6, "max_inverse": 1e3, "seed": 3}))
    assert all(torch.equal(p, noisy[n]) for n, p in party.bottom.named_parameters())


def test_fisher_forgets_the_class_and_keeps_retained_accuracy(digits_experiment: Experiment) -> None:
    server, coordinator = _trained(digits_experiment)
    forget, retain = digits_experiment.forget.forget_ids, digits_experiment.forget.retain_ids
    retain_before = _accuracy(server, retain)
    coordinator.run(build_method("fisher", {}, "class"))
    server.load_state("fisher")
    assert _accuracy(server, retain) > retain_before - 0.05
    assert _accuracy(server, forget) < 0.1
    classifier = [m for m in server.top.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert float(classifier.weight[0].detach().abs().max()) < 0.2  # the class row: mean 0, std sqrt(1e-3)
    assert server.digests("fisher") != server.digests(ORIGINAL)


# -- SalUn -------------------------------------------------------------------------------------


def test_global_threshold_selects_the_requested_fraction(digits_experiment: Experiment) -> None:
    server, _ = _trained(digits_experiment, epochs=1)
    top, _ = accumulate_statistics(
        server, digits_experiment.forget.forget_ids, name="salun_grad", kind="sum", batch_size=64
    )
    everything = torch.cat(
        [s.abs().flatten() for s in top.values()]
        + [
            q.buffers[f"salun_grad/{n}"].abs().flatten()
            for q in _parties(server).values()
            for n, _ in q.bottom.named_parameters()
        ]
    )
    for fraction in (0.5, 0.2):
        t = global_threshold(server, top, fraction)
        k = math.ceil(fraction * everything.numel())
        kth_largest = torch.sort(everything.double(), descending=True)[0][k - 1]
        assert int((everything.double() >= t).sum()) == k
        assert t <= kth_largest


@pytest.mark.parametrize("threshold", [0.5, 0.2])
def test_salun_updates_only_salient_weights(digits_experiment: Experiment, threshold: float) -> None:
    server, coordinator = _trained(digits_experiment)
    before = _bottom_state(server, ORIGINAL)
    top_before = {k: v.clone() for k, v in server.states[ORIGINAL].items()}
    method = build_method("salun", {"epochs": 1, "threshold": threshold}, "class")
    assert isinstance(method, SalUn)
    coordinator.run(method)
    after = _bottom_state(server, "salun")
    kept = total = moved = 0
    for pid, party in _parties(server).items():
        for name, _ in party.bottom.named_parameters():
            mask = party.buffers[f"salun_mask/{name}"].bool()
            changed = after[pid][name] != before[pid][name]
            assert not changed[~mask].any(), (pid, name)
            kept += int(mask.sum())
            total += mask.numel()
            moved += int(changed.sum())
    for name, mask in method.top_mask.items():
        changed = server.states["salun"][name] != top_before[name]
        assert not changed[~mask.bool()].any(), name
        kept += int(mask.sum())
        total += mask.numel()
        moved += int(changed.sum())
    assert kept == math.ceil(threshold * total)
    assert moved > 0.9 * kept  # the salient weights do train


def test_salun_forgets_the_class(digits_experiment: Experiment) -> None:
    server, coordinator = _trained(digits_experiment)
    forget, retain = digits_experiment.forget.forget_ids, digits_experiment.forget.retain_ids
    coordinator.run(build_method("salun", {"epochs": 3}, "class"))
    server.load_state("salun")
    assert _accuracy(server, forget) < 0.1
    assert _accuracy(server, retain) > 0.8


# -- l1-sparse ---------------------------------------------------------------------------------


def test_l1_gamma_decays_linearly() -> None:
    assert [l1_gamma(1e-4, t, 4) for t in range(4)] == pytest.approx([1e-4, 0.75e-4, 0.5e-4, 0.25e-4])


def test_l1_hook_adds_the_scheduled_subgradient(digits_experiment: Experiment) -> None:
    """The party hook adds gamma_t * sign(w) with gamma_t of the current epoch, counting its own steps."""
    server = digits_experiment.build_server()
    party = next(iter(_parties(server).values()))
    party.handle(
        LocalOp(
            "configure",
            {
                "optim": {"optimizer": "sgd", "lr": 1e-3, "momentum": 0.0, "weight_decay": 0.0, "schedule": "constant"},
                "grad_hook": "l1_sparse",
                "hook_args": {"gamma": 0.1, "epochs": 2, "steps_per_epoch": 3},
            },
        )
    )
    w = next(party.bottom.parameters())
    seen = []
    for _ in range(7):
        for p in party.bottom.parameters():
            p.grad = torch.zeros_like(p)
        party._run_grad_hook(True)
        ratio = w.grad[w.detach() != 0] / torch.sign(w.detach()[w.detach() != 0])
        assert torch.allclose(ratio, ratio[0].expand_as(ratio))
        seen.append(round(float(ratio[0]), 6))
    assert seen == [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05]  # epoch 0, then epoch 1 (and it stays there)
    assert int(party.buffers["l1_sparse/step"]) == 7


def test_l1_sparse_shrinks_weights(digits_experiment: Experiment) -> None:
    server, coordinator = _trained(digits_experiment)
    coordinator.run(build_method("l1_sparse", {"epochs": 2, "gamma": 0.0, "weight_decay": 0.0}, "class"))

    def l1(name: str) -> float:
        bottoms = sum(
            float(v.abs().sum())
            for pid in _parties(server)
            for k, v in _bottom_state(server, name)[pid].items()
            if "weight" in k or "bias" in k
        )
        return bottoms + sum(float(v.abs().sum()) for v in server.states[name].values())

    plain = l1("l1_sparse")
    coordinator.run(build_method("l1_sparse", {"epochs": 2, "gamma": 1e-3, "weight_decay": 0.0}, "class"))
    sparse = l1("l1_sparse")
    assert sparse < 0.95 * plain
    server.load_state("l1_sparse")
    assert _accuracy(server, digits_experiment.forget.retain_ids) > 0.8
    for party in _parties(server).values():
        assert int(party.buffers["l1_sparse/step"]) == 2 * math.ceil(digits_experiment.forget.retain_ids.numel() / 64)


# -- the protocol ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fisher", "ssd", "salun", "l1_sparse"])
def test_parties_get_ids_gradients_and_small_arguments_only(digits_experiment: Experiment, name: str) -> None:
    server, coordinator = _trained(digits_experiment, epochs=1)
    requests = record_requests(server)
    params = {"epochs": 1} if name in ("salun", "l1_sparse") else {}
    coordinator.run(build_method(name, params, "class"))
    seen = [r for _, r in requests if isinstance(r, LocalOp)]
    for op in seen:
        assert set(op.tensors) <= {"ids", "grad"}, op.name
        for v in op.args.values():
            assert not isinstance(v, torch.Tensor)
            if isinstance(v, list):
                assert len(v) < 300  # candidate thresholds at most
        if "ids" in op.tensors:
            assert op.tensors["grad"].shape[0] == op.tensors["ids"].numel()
    assert any(op.name in ("accumulate_grads", "configure") for op in seen)
