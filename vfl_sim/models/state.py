"""Helpers on model state shared by parties and server: snapshots, digests, re-initialization."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch
from torch import nn


def clone_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``module.state_dict()`` (parameters and buffers)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the names and bytes of a state dict: equal digests, identical models."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def reset_parameters(module: nn.Module, seed: int) -> None:
    """Re-initialize every submodule that knows how, from ``seed``, without touching global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for sub in module.modules():
            reset = getattr(sub, "reset_parameters", None)
            if sub is not module and callable(reset):
                reset()
