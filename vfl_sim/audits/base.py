"""What auditors see and how they are registered.

Auditors work on plain arrays gathered by the server: each model's embeddings of a fixed set
of audit samples (fused and per party), its logits, and the labels and forget mask of those
samples. They never drive training, so the same auditors run on a live experiment and on the
``.npz`` embeddings a run saves.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from vfl_sim.registry import Registry


@dataclass(frozen=True)
class ModelEmbeddings:
    """One model's view of the audit samples.

    Attributes
    ----------
    parties
        ``{party_id: (n, d_k)}`` embeddings, in party order.
    logits
        ``(n, C)`` top-model outputs.
    layers
        ``{party_id: {layer: (n, d)}}`` pooled activations of the named layers of each
        party's bottom model before its embedding (empty when not gathered).
    """

    parties: dict[str, np.ndarray]
    logits: np.ndarray
    layers: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def fused(self) -> np.ndarray:
        """The parties' embeddings side by side (what a concatenating top model reads)."""
        return np.concatenate(list(self.parties.values()), axis=1)


@dataclass(frozen=True)
class AuditData:
    """Audit samples and every model's view of them.

    Attributes
    ----------
    kind
        The forget request's kind (``class`` or ``samples``).
    labels
        ``(n,)`` true labels of the audit samples.
    split
        ``(n,)`` strings: ``test``, ``forget_train`` or ``retain_train``.
    forget
        ``(n,)`` booleans: the sample is of a forgotten class (class requests) or is a
        forgotten sample (sample requests).
    models
        ``{model_name: ModelEmbeddings}``; ``original`` and (when run) ``retrain`` included.
    """

    kind: str
    labels: np.ndarray
    split: np.ndarray
    forget: np.ndarray
    models: dict[str, ModelEmbeddings]
    meta: dict[str, Any] = field(default_factory=dict)

    def mask(self, split: str) -> np.ndarray:
        return self.split == split


class Auditor(ABC):
    """Base class of auditors: ``audit`` returns ``{model_name: {key: value}}``.

    ``section`` names where the result goes in ``report.json`` (``models.<name>.<section>``).
    """

    name: str = ""
    section: str = ""

    @abstractmethod
    def audit(self, data: AuditData) -> dict[str, dict[str, Any]]: ...


A = TypeVar("A", bound=type[Auditor])
AUDITORS: Registry[Auditor] = Registry("auditor", Auditor)


def register_auditor(name: str) -> Callable[[A], A]:
    """Class decorator: make an :class:`Auditor` subclass available as ``name``."""

    def wrap(cls: A) -> A:
        AUDITORS.register(name)(cls)
        if not cls.section:
            cls.section = name
        return cls

    return wrap


def available_auditors() -> list[str]:
    return AUDITORS.names()


def get_auditor(name: str) -> type[Auditor]:
    return AUDITORS.get(name)
