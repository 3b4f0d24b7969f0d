"""Where a run computes and with how many torch threads, the same in every process of the run."""

from __future__ import annotations

import torch

from vfl_sim.config import ExperimentConfig
from vfl_sim.errors import ConfigError


def resolve_threads(cfg: ExperimentConfig) -> int:
    """The torch intra-op thread count of every process that computes for a run of ``cfg``:
    ``threads``, or with 0 this process's count (torch's default unless something set it).

    Results depend on the count (a reduction split over more threads adds in another order),
    so the process that starts a run resolves it once and hands the number to every process
    of the run (Ray actors, Flower's ServerApp and ClientApps): equal configs then give equal
    numbers on every runtime, and ``local`` computes as it always did.
    """
    return cfg.threads or torch.get_num_threads()


def apply_threads(threads: int) -> None:
    """Compute with ``threads`` torch intra-op threads in this process (0: leave it as it is)."""
    if threads and torch.get_num_threads() != threads:  # as it is when equal: local runs compute as before
        torch.set_num_threads(threads)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device is 'cuda' but no CUDA device is available; use cpu or auto")
    return torch.device(name)
