"""The protocol between the server and the passive parties.

Requests go from the server to one party; each has one reply. The server sees only what the
replies carry (embeddings, named layer activations of the embedding path, small metrics), and a
party sees only sample ids, instructions and the gradient of the loss with respect to its own
embedding. Every message knows its size in bytes so that communication is counted the same way
on every transport.

``Backward`` can carry the ``Embed`` of the next batch, so a training step costs one round
trip per party instead of two; it also says how many local updates (FedBCD) the party makes
with the gradient it carries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


def tensor_nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def _value_nbytes(v: Any) -> int:
    if isinstance(v, torch.Tensor):
        return tensor_nbytes(v)
    if isinstance(v, (bytes, str)):
        return len(v)
    if isinstance(v, dict):
        return sum(len(str(k)) + _value_nbytes(x) for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return sum(_value_nbytes(x) for x in v)
    return 8


@dataclass(frozen=True)
class Embed:
    """Compute the embedding of samples ``ids``.

    ``train=True`` runs the bottom model in training mode and keeps the autograd graph for the
    ``Backward`` that follows; ``train=False`` runs it in eval mode without a graph.
    ``layers=True`` also returns every named layer's pooled activations (for audits).
    """

    ids: torch.Tensor
    train: bool = True
    layers: bool = False

    def nbytes(self) -> int:
        return tensor_nbytes(self.ids) + 2


@dataclass(frozen=True)
class Backward:
    """Back-propagate ``grad`` (dLoss/dEmbedding for the last training ``Embed``) and update.

    ``step=False`` accumulates the gradient without an optimizer step; ``then`` asks for the
    next batch's embedding in the same round trip.

    ``local_steps`` (Q) is the number of local updates the party makes with this one gradient,
    as in FedBCD (Liu, Kang, Zhang, Li, Cheng, Chen, Hong, Yang, "A Communication-Efficient
    Collaborative Learning Framework for Distributed Features", arXiv 1912.11187, 2019): the
    first back-propagates ``grad`` through the forward pass of the ``Embed``; each further one
    runs a fresh training forward pass of the same ids and back-propagates the same (stale)
    ``grad``. ``1`` is exact split learning. It travels as a 4-byte count.
    """

    grad: torch.Tensor
    step: bool = True
    then: Embed | None = None
    local_steps: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.local_steps, bool) or not isinstance(self.local_steps, int) or self.local_steps < 1:
            raise ValueError(f"Backward.local_steps must be an integer >= 1, got {self.local_steps!r}")
        if self.local_steps > 1 and not self.step:
            raise ValueError("Backward.local_steps > 1 needs step=True (each local update is an optimizer step)")

    def nbytes(self) -> int:
        then = self.then.nbytes() if self.then is not None else 0
        return tensor_nbytes(self.grad) + 1 + 4 + then


@dataclass(frozen=True)
class LocalOp:
    """Run a named party-side operation (state snapshots, resets, a method's local step).

    ``args`` are small JSON values; ``tensors`` carry what a method's party-side step needs
    from the server (sample ids, gradients of the party's own embedding). The operation gets
    both as keyword arguments.
    """

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clash = set(self.args) & set(self.tensors)
        if clash:
            raise ValueError(f"LocalOp '{self.name}': {sorted(clash)} given both as argument and as tensor")

    def nbytes(self) -> int:
        return len(self.name) + _value_nbytes(self.args) + _value_nbytes(self.tensors)


Request = Embed | Backward | LocalOp


class CoreStep:
    """Names of the core party-side steps (:class:`LocalOp` names that every party answers,
    registered in :mod:`vfl_sim.parties.party`): the server, the experiment and the runtimes
    name them through these constants, never as bare strings. A method's own party-side steps
    are named in the method's module.
    """

    CONFIGURE = "configure"
    """A fresh optimizer (and schedule) for the next training phase."""
    BEGIN_METHOD = "begin_method"
    """A method starts: drop its predecessor's tensors, restart the party's random stream."""
    CLEAR_BUFFERS = "clear_buffers"
    """Drop the previous method's party-side tensors."""
    SAVE_STATE = "save_state"
    """Keep the current bottom model under a name (in memory)."""
    LOAD_STATE = "load_state"
    """Make a saved state current; answers whether it is finite."""
    RESET = "reset"
    """Re-initialize the bottom model (from a seed)."""
    CHECKPOINT = "checkpoint"
    """Write a saved (or the current) state to a file."""
    LOAD_CHECKPOINT = "load_checkpoint"
    """Read a state file back under a name."""
    DIGEST = "digest"
    """SHA-256 of the current (or a saved) state."""
    MASK_COLUMNS = "mask_columns"
    """Stop the current model from reading some of the party's columns."""
    MASKED_COLUMNS = "masked_columns"
    """Which columns the current model no longer reads."""


CORE_STEPS: tuple[str, ...] = tuple(v for k, v in vars(CoreStep).items() if k.isupper())
"""Every core party-side step name."""


@dataclass(frozen=True)
class EmbedReply:
    """A party's embedding of the requested ids, and its named layer activations if asked."""

    embedding: torch.Tensor
    layers: dict[str, torch.Tensor] | None = None

    def nbytes(self) -> int:
        extra = sum(tensor_nbytes(t) for t in self.layers.values()) if self.layers else 0
        return tensor_nbytes(self.embedding) + extra


@dataclass(frozen=True)
class Ack:
    """The operation ran; ``info`` holds small results (metrics), ``tensors`` what a method's
    party-side step returns to the server (embeddings of perturbed inputs, for example)."""

    info: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def nbytes(self) -> int:
        return 1 + _value_nbytes(self.info) + _value_nbytes(self.tensors)


Reply = EmbedReply | Ack
