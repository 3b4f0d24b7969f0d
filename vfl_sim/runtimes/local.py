"""The in-process runtime: parties are objects, requests are direct calls."""

from __future__ import annotations

import numpy as np
import torch

from parties.party import Party
from vfl_sim.config import ExperimentConfig
from vfl_sim.data.dataset import VflDataset
from vfl_sim.data.partition import PartySlice
from vfl_sim.models.zoo import build_bottom
from vfl_sim.seeding import derive_seed
from vfl_sim.transport import LocalTransport


def build_party(
    cfg: ExperimentConfig,
    dataset: VflDataset,
    part: PartySlice,
    device: torch.device,
    *,
    view: torch.Tensor | None = None,
    replay_backward: bool = False,
) -> Party:
    """A party holding its slice of every sample, with a freshly seeded bottom model.

    The slice is cut from the dataset once (or given as ``view``, already cut); batches are
    gathered from it by id.
    """
    if view is None:
        view = torch.from_numpy(part.take(dataset.features))
    bottom = build_bottom(cfg.model, tuple(view.shape[1:]))
    return Party(
        part.party_id,
        view,
        bottom,
        init_seed=derive_seed(cfg.seed, "init", part.party_id),
        device=device,
        replay_backward=replay_backward,
    )


def local_transport(
    cfg: ExperimentConfig, dataset: VflDataset, slices: list[PartySlice], device: torch.device
) -> LocalTransport:
    return LocalTransport({p.party_id: build_party(cfg, dataset, p, device) for p in slices})


def party_shapes(dataset: VflDataset, slices: list[PartySlice]) -> list[tuple[int, ...]]:
    """Per-party sample shapes without materializing the slices."""
    probe = dataset.features[:1]
    return [tuple(np.asarray(p.take(probe)).shape[1:]) for p in slices]
