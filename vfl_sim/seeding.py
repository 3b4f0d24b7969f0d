"""Reproducible seeds: one experiment seed, derived seeds for every role and purpose."""

from __future__ import annotations

import random
import zlib

import numpy as np
import torch


def derive_seed(seed: int, *names: object) -> int:
    """A seed for one purpose (``derive_seed(s, "init", "party_0")``), stable across processes.

    Python's ``hash`` is salted per process, so names are mixed in with CRC32 instead; the
    result does not depend on where the party runs.
    """
    key = ",".join(str(n) for n in names).encode()
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, zlib.crc32(key)]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch global generators (for code outside our explicit generators)."""
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.manual_seed(seed)


def torch_generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g
