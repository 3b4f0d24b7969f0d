"""The top model: what the server runs on the fused party embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def fuse(embeddings: Sequence[torch.Tensor], mode: str) -> torch.Tensor:
    """Fuse the parties' embeddings, in party order, into the top model's input."""
    if mode == "concat":
        return torch.cat(list(embeddings), dim=1)
    stacked = torch.stack(list(embeddings), dim=0)
    return stacked.sum(0) if mode == "sum" else stacked.mean(0)


def fused_dim(embedding_dims: Sequence[int], mode: str) -> int:
    if mode == "concat":
        return sum(embedding_dims)
    if len(set(embedding_dims)) != 1:
        raise ValueError(f"fusion '{mode}' needs equal embedding sizes, got {list(embedding_dims)}")
    return embedding_dims[0]


class TopModel(nn.Module):
    """Linear or MLP classifier over the fused embedding.

    ``hidden=[]`` is a linear top. The Mirage top is ``hidden=[512, 256]`` with dropout 0.5
    after the first hidden layer only. ``num_parties`` sizes the ``party_mask`` buffer.
    """

    party_mask: torch.Tensor

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: Sequence[int] = (),
        *,
        dropout: float = 0.0,
        dropout_first_only: bool = False,
        num_parties: int = 0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for i, h in enumerate(hidden):
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0 and (i == 0 or not dropout_first_only):
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)
        # 1 for every party whose embedding the model reads, 0 for a party that left (a party
        # unlearning request); a buffer, so it is part of every snapshot of the model. Empty
        # (num_parties=0) when the caller does not track parties: every embedding is read.
        self.register_buffer("party_mask", torch.ones(num_parties))

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.net(fused)

    @property
    def classifier(self) -> nn.Linear:
        """The last linear layer (the classifier head that output-only edits touch)."""
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        return last
