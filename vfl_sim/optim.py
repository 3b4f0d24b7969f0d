"""Optimizers and learning-rate schedules, built the same way for parties and server."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from vfl_sim.config import OptimConfig


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (with momentum and weight decay) or Adam, as configured.

    The fused implementations are used: a split model runs one optimizer per party plus the
    server's, so the fixed cost of each step matters more than in a monolithic model.
    """
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=True)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


class CosineSchedule:
    """Cosine annealing per step, from the base rate to 0 over ``total_steps``.

    ``lr_t = lr_0 * (1 + cos(pi * t / T)) / 2``. Stepping per batch rather than per epoch keeps
    parties and server in lockstep without an epoch message. Written out instead of
    ``LambdaLR`` because that class's bookkeeping costs more than the update on small models.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int) -> None:
        self.optimizer = optimizer
        self.total_steps = total_steps
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.t = 0

    def step(self) -> None:
        self.t += 1
        factor = 0.5 * (1.0 + math.cos(math.pi * min(self.t, self.total_steps) / self.total_steps))
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int) -> CosineSchedule | None:
    """The per-step schedule for a phase of ``total_steps`` steps (``None`` for a constant rate)."""
    if schedule == "constant" or total_steps <= 0:
        return None
    return CosineSchedule(optimizer, total_steps)


def clear_grads(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.zero_grad(set_to_none=True)`` without its profiler bookkeeping."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = None
