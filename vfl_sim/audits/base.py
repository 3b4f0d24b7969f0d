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
from typing import Any, ClassVar, TypeVar

import numpy as np

from vfl_sim.config import AuditConfig
from vfl_sim.forget import ForgetKind
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


#: What an auditor may ask the run to gather besides labels, logits and embeddings
#: (:attr:`Auditor.needs`); each names a field of :class:`AuditData`.
LAYERS = "layers"
INPUTS = "inputs"
REMOVED_FEATURES = "removed_features"
SHUFFLED_PARTY_LOGITS = "shuffled_party_logits"
NEEDS = frozenset({LAYERS, INPUTS, REMOVED_FEATURES, SHUFFLED_PARTY_LOGITS})


@dataclass(frozen=True)
class AuditData:
    """Audit samples and every model's view of them.

    The run fills the optional fields an auditor of the run declares in :attr:`Auditor.needs`
    (where the forget request makes them exist); the others stay empty.

    Attributes
    ----------
    kind
        The forget request's kind (a :class:`~vfl_sim.forget.ForgetKind`).
    labels
        ``(n,)`` true labels of the audit samples.
    split
        ``(n,)`` strings: ``test``, ``forget_train`` or ``retain_train``.
    forget
        ``(n,)`` booleans: the sample is of a forgotten class (class requests) or is a
        forgotten sample (sample requests); all False for party and feature requests.
    models
        ``{model_name: ModelEmbeddings}``; ``original`` and (when run) ``retrain`` included.
        :attr:`ModelEmbeddings.layers` is filled where an auditor needs ``layers``.
    ids
        ``(n,)`` dataset ids of the audit samples (None for arrays from elsewhere).
    inputs
        ``(n, d)`` raw features of the audit samples, flattened (need ``inputs``).
    removed_party
        The party whose data a party or feature request removes.
    removed_features
        ``(n, m)`` raw values of what a party or feature request removes: every column of the
        party that leaves, or the removed columns, flattened (need ``removed_features``).
    shuffled_party_logits
        ``{model: (n, C)}`` logits with the departed party's embedding rows permuted across
        samples (party requests; need ``shuffled_party_logits``).
    diverged
        ``{model: reason}`` of models with non-finite weights, embeddings or outputs; their
        arrays were replaced by zeros and they are reported, never certified.
    """

    kind: str
    labels: np.ndarray
    split: np.ndarray
    forget: np.ndarray
    models: dict[str, ModelEmbeddings]
    ids: np.ndarray | None = None
    inputs: np.ndarray | None = None
    removed_party: str | None = None
    removed_features: np.ndarray | None = None
    shuffled_party_logits: dict[str, np.ndarray] = field(default_factory=dict)
    diverged: dict[str, str] = field(default_factory=dict)

    def mask(self, split: str) -> np.ndarray:
        return self.split == split


class Auditor(ABC):
    """Base class of auditors: ``audit`` returns ``{model_name: {key: value}}``.

    Attributes
    ----------
    name
        The name it is registered under (set by :func:`register_auditor`).
    section
        Where its result goes in ``report.json`` (``models.<name>.<section>``); the name
        unless set.
    kinds
        The forget-request kinds it audits; the run skips it for the others.
    needs
        What the run must gather for it besides labels, logits and embeddings (a subset of
        :data:`NEEDS`: ``layers``, ``inputs``, ``removed_features``, ``shuffled_party_logits``).
    """

    name: ClassVar[str] = ""
    section: ClassVar[str] = ""
    kinds: ClassVar[frozenset[str]] = frozenset(ForgetKind.ALL)
    needs: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def from_config(cls, audit: AuditConfig, seed: Callable[[str], int]) -> Auditor | None:
        """The auditor as the ``audit`` section of a config sets it up, None when that turns it
        off. Built-in auditors read their settings there; ``seed(purpose)`` derives a seed of
        the audit's randomness. Others are built from ``audit.auditors`` entries instead."""
        raise NotImplementedError(f"auditor '{cls.name}' is configured through audit.auditors")

    @abstractmethod
    def audit(self, data: AuditData) -> dict[str, dict[str, Any]]: ...


A = TypeVar("A", bound=type[Auditor])
AUDITORS: Registry[Auditor] = Registry("auditor", Auditor)


def register_auditor(name: str) -> Callable[[A], A]:
    """Class decorator: make an :class:`Auditor` subclass available as ``name``."""

    def wrap(cls: A) -> A:
        unknown = sorted(set(cls.needs) - NEEDS)
        if unknown:
            raise TypeError(
                f"auditor '{name}' ({cls.__qualname__}) needs {unknown[0]!r}, which no run gathers; "
                f"it may need {', '.join(sorted(NEEDS))}"
            )
        AUDITORS.register(name)(cls)
        if not cls.section:
            cls.section = name
        return cls

    return wrap


def available_auditors() -> list[str]:
    return AUDITORS.names()


def get_auditor(name: str) -> type[Auditor]:
    return AUDITORS.get(name)
