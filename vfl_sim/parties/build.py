"""Building parties from a config: each party's bottom model, freshly seeded, over its columns.

Every runtime builds its parties here (in this process, in Ray actors, in Flower ClientApps), so
a party is the same object with the same initial weights wherever it runs.
"""

from __future__ import annotations

import numpy as np
import torch

from vfl_sim.config import ExperimentConfig
from vfl_sim.data.dataset import VflDataset
from vfl_sim.data.partition import PartySlice
from vfl_sim.models.zoo import build_bottom
from vfl_sim.parties.party import Party
from vfl_sim.seeding import derive_seed
from vfl_sim.transport import LocalTransport


def build_party(
    cfg: ExperimentConfig,
    party_id: str,
    view: torch.Tensor,
    device: torch.device,
    *,
    replay_backward: bool = False,
) -> Party:
    """A party holding ``view`` (its columns of every sample, row ``i`` being sample id ``i``)
    with a freshly seeded bottom model."""
    bottom = build_bottom(cfg.model, tuple(view.shape[1:]))
    return Party(
        party_id,
        view,
        bottom,
        init_seed=derive_seed(cfg.seed, "init", party_id),
        device=device,
        replay_backward=replay_backward,
        behaviour=cfg.parties[party_id].behaviour if party_id in cfg.parties else "honest",
    )


def local_transport(
    cfg: ExperimentConfig, dataset: VflDataset, slices: list[PartySlice], device: torch.device
) -> LocalTransport:
    # Each party's slice is cut from the dataset once; batches are gathered from it by id.
    return LocalTransport(
        {p.party_id: build_party(cfg, p.party_id, torch.from_numpy(p.take(dataset.features)), device) for p in slices}
    )


def party_shapes(dataset: VflDataset, slices: list[PartySlice]) -> list[tuple[int, ...]]:
    """Per-party sample shapes without materializing the slices."""
    probe = dataset.features[:1]
    return [tuple(np.asarray(p.take(probe)).shape[1:]) for p in slices]
