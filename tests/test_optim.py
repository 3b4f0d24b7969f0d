"""The optimizers and schedules parties and server share."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vfl_sim.config import OptimConfig
from vfl_sim.optim import LeanSGD, build_optimizer, build_scheduler, clear_grads


@pytest.mark.parametrize("momentum,wd", [(0.0, 0.0), (0.9, 0.0), (0.9, 5e-4), (0.5, 1e-2)])
def test_lean_sgd_matches_torch_sgd(momentum: float, wd: float) -> None:
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    b = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    b.load_state_dict(a.state_dict())
    ours = LeanSGD(a.parameters(), lr=0.1, momentum=momentum, weight_decay=wd)
    ref = torch.optim.SGD(b.parameters(), lr=0.1, momentum=momentum, weight_decay=wd)
    for step in range(6):
        x = torch.randn(8, 6)
        for model, opt in ((a, ours), (b, ref)):
            loss = model(x).pow(2).mean()
            clear_grads(opt) if opt is ours else opt.zero_grad()
            loss.backward()
            opt.step()
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.allclose(pa, pb, atol=1e-6), f"step {step}"


def test_lean_sgd_skips_parameters_without_gradients() -> None:
    w, v = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))
    opt = LeanSGD([w, v], lr=0.5, momentum=0.9, weight_decay=0.0)
    w.grad = torch.ones(3)
    opt.step()
    assert torch.allclose(w, torch.full((3,), 0.5)) and torch.equal(v, torch.ones(3))
    v.grad, w.grad = torch.ones(3), torch.ones(3)
    opt.step()  # w: buffer 0.9 + 1 = 1.9; v: first step, buffer 1
    assert torch.allclose(w, torch.full((3,), 0.5 - 0.95)) and torch.allclose(v, torch.full((3,), 0.5))


def test_cosine_schedule_anneals_to_zero() -> None:
    opt = build_optimizer([nn.Parameter(torch.zeros(1))], OptimConfig(lr=0.2))
    sched = build_scheduler(opt, "cosine", 10)
    lrs = []
    for _ in range(10):
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[4] == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 5 / 10)))
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert build_scheduler(opt, "constant", 10) is None


def test_adam_is_torch_adam() -> None:
    opt = build_optimizer([nn.Parameter(torch.zeros(2))], OptimConfig(optimizer="adam", lr=1e-3))
    assert isinstance(opt, torch.optim.Adam)
