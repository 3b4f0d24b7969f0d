"""The centralized twin of a split model: every bottom and the top in one module.

Used as the reference that split learning must match (gradients in tests, epoch time in the
benchmark). It is not a VFL runtime: one process sees every party's features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vfl_sim.models.bottoms import BottomModel
from vfl_sim.models.top import TopModel, fuse


class MonolithicModel(nn.Module):
    """``top(fuse(bottom_k(x_k) for k))`` as one autograd graph."""

    def __init__(self, bottoms: Sequence[BottomModel], top: TopModel, fusion: str = "concat") -> None:
        super().__init__()
        self.bottoms = nn.ModuleList(bottoms)
        self.top = top
        self.fusion = fusion

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.top(fuse([b(x) for b, x in zip(self.bottoms, xs)], self.fusion))
