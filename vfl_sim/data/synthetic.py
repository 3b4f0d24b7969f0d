"""Seeded synthetic classification data with class structure spread across parties."""

from __future__ import annotations

import numpy as np

from vfl_sim.config import SyntheticConfig
from vfl_sim.data.partition import contiguous_groups
from vfl_sim.errors import ConfigError


def make_synthetic(cfg: SyntheticConfig, parties: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``(features, labels)`` with ``informative_per_party`` informative columns per party.

    The columns are laid out for a contiguous partition into ``parties`` groups; inside each
    group the first ``informative_per_party`` columns carry class signal and the rest is noise.

    ``planted``: class ``c`` owns the informative columns ``j`` with ``j % classes == c`` in
    every party and shifts them by ``+separation`` (``x = separation * 1[y = c] + noise``), so
    every class, the forgotten one included, is linearly separable in every party's view and
    audits have a known answer. ``mixed``: each class gets a random mean of norm
    ``separation`` in the informative columns of each party (a Gaussian mixture).

    Labels are balanced: ``samples // classes`` per class, the remainder to the first classes.
    """
    if parties > cfg.features:
        raise ConfigError(
            f"partition.parties is {parties} but data.synthetic.features is {cfg.features}: "
            "every party needs at least one column"
        )
    groups = contiguous_groups(cfg.features, parties)
    smallest = min(len(g) for g in groups)
    if cfg.informative_per_party > smallest:
        raise ConfigError(
            f"data.synthetic.informative_per_party is {cfg.informative_per_party} but the smallest "
            f"party holds only {smallest} of the {cfg.features} columns"
        )
    rng = np.random.default_rng(seed)
    labels = np.arange(cfg.samples, dtype=np.int64) % cfg.classes
    labels = rng.permutation(labels)
    x = rng.normal(0.0, cfg.noise, size=(cfg.samples, cfg.features)).astype(np.float32)
    onehot = np.eye(cfg.classes, dtype=np.float32)[labels]
    for group in groups:
        informative = np.asarray(group[: cfg.informative_per_party])
        if cfg.structure == "planted":
            owner = np.arange(informative.size) % cfg.classes
            shift = cfg.separation * onehot[:, owner]
        else:
            means = rng.normal(size=(cfg.classes, informative.size))
            means *= cfg.separation / np.linalg.norm(means, axis=1, keepdims=True)
            shift = onehot @ means.astype(np.float32)
        x[:, informative] += shift
    return x, labels
