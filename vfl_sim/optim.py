"""Optimizers and learning-rate schedules, built the same way for parties and server."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from vfl_sim.config import OptimConfig


class LeanSGD:
    """SGD with momentum and weight decay, the update of ``torch.optim.SGD`` (no dampening, no
    Nesterov), in three multi-tensor kernels:

    ``d = g + wd * p``;  ``b = d`` at the first step, else ``b = momentum * b + d``;  ``p -= lr * b``.

    A split model runs one optimizer per party plus the server's, so the fixed cost of a step
    counts several times per batch; ``torch.optim.Optimizer.step`` spends more on bookkeeping
    (profiler hooks, state lookup, grouping) than on the update for small models. Parameters
    without a gradient are skipped, as in torch.
    """

    def __init__(
        self, params: Iterable[torch.nn.Parameter], *, lr: float, momentum: float, weight_decay: float
    ) -> None:
        self.params: list[torch.Tensor] = list(params)
        self.param_groups: list[dict[str, Any]] = [{"params": self.params, "lr": lr}]
        self.momentum = momentum
        self.weight_decay = weight_decay
        self._buffers: dict[int, torch.Tensor] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def momentum_buffers(self) -> dict[int, torch.Tensor]:
        """Momentum buffers by parameter position (for saving the optimizer elsewhere)."""
        return {k: self._buffers[id(p)] for k, p in enumerate(self.params) if id(p) in self._buffers}

    def load_momentum_buffers(self, buffers: dict[int, torch.Tensor]) -> None:
        self._buffers = {id(self.params[k]): b.clone() for k, b in buffers.items()}

    @torch.no_grad()
    def step(self) -> None:
        params = [p for p in self.params if p.grad is not None]
        if not params:
            return
        grads: list[torch.Tensor] = [p.grad for p in params if p.grad is not None]
        if self.weight_decay:
            grads = list(torch._foreach_add(grads, params, alpha=self.weight_decay))
        if self.momentum:
            known = [self._buffers.get(id(p)) for p in params]
            if all(b is not None for b in known):
                bufs = [b for b in known if b is not None]
                torch._foreach_mul_(bufs, self.momentum)
                torch._foreach_add_(bufs, grads)
            else:  # first step of some parameters: their buffer starts as the gradient
                bufs = []
                for p, g, b in zip(params, grads, known):
                    if b is None:
                        b = self._buffers[id(p)] = g.detach().clone()
                    else:
                        b.mul_(self.momentum).add_(g)
                    bufs.append(b)
            grads = bufs
        lr = float(self.param_groups[0]["lr"])
        torch._foreach_add_(params, grads, alpha=-lr)


Optimizer = torch.optim.Optimizer | LeanSGD


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimConfig) -> Optimizer:
    """SGD (with momentum and weight decay) or Adam, as configured."""
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "sgd":
        return LeanSGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


class CosineSchedule:
    """Cosine annealing per step, from the base rate to 0 over ``total_steps``.

    ``lr_t = lr_0 * (1 + cos(pi * t / T)) / 2``. Stepping per batch rather than per epoch keeps
    parties and server in lockstep without an epoch message. Written out instead of
    ``LambdaLR`` because that class's bookkeeping costs more than the update on small models.
    """

    def __init__(self, optimizer: Optimizer, total_steps: int) -> None:
        self.optimizer = optimizer
        self.total_steps = total_steps
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.t = 0

    def step(self) -> None:
        self.t += 1
        factor = 0.5 * (1.0 + math.cos(math.pi * min(self.t, self.total_steps) / self.total_steps))
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = float(base) * factor


def build_scheduler(optimizer: Optimizer, schedule: str, total_steps: int) -> CosineSchedule | None:
    """The per-step schedule for a phase of ``total_steps`` steps (``None`` for a constant rate)."""
    if schedule == "constant" or total_steps <= 0:
        return None
    return CosineSchedule(optimizer, total_steps)


def clear_grads(optimizer: Optimizer) -> None:
    """``optimizer.zero_grad(set_to_none=True)`` without its profiler bookkeeping."""
    for group in optimizer.param_groups:
        params: list[torch.Tensor] = group["params"]
        for p in params:
            p.grad = None
