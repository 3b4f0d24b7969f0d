"""Optimizers and learning-rate schedules, built the same way for parties and server."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from vfl_sim.config import OptimConfig


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, foreach=True)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Per-step schedule; ``cosine`` anneals from the base rate to 0 over ``total_steps``.

    Stepping per batch rather than per epoch keeps parties and server in lockstep without an
    epoch message, and gives the same curve a per-epoch cosine approximates.
    """
    if schedule == "constant" or total_steps <= 0:
        return None
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )
