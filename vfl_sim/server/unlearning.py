"""The contract between the coordinator and an unlearning method: the base class of methods,
their params, and what a method gets to work with.

A method is a protocol between the server and the parties: it may train the top model, run
split-learning phases with any loss (through :meth:`vfl_sim.server.Server.train_epochs`), and call
registered party-side operations; it never reads features or bottom-model parameters itself.
The coordinator hands it a copy of the original model (loaded on the server and every party)
and snapshots whatever the method leaves as the unlearned model. The methods themselves, each
with its party-side steps, are :mod:`vfl_sim.methods`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, TypeVar, cast, get_args, get_origin

import torch
from pydantic import BaseModel, ConfigDict, Field

from vfl_sim.config import OptimConfig, TrainConfig
from vfl_sim.forget import ForgetKind
from vfl_sim.server.server import Server, count_batches


@dataclass(frozen=True)
class ForgetSet:
    """A resolved forget request: which training samples go, which stay.

    ``classes`` is set for class requests (the forgotten labels); ``forget_ids`` are always
    training-sample ids, and ``retain_ids`` are the remaining training ids. Party and feature
    requests set ``party`` (and ``columns``, positions in that party's own view) and keep every
    training sample.
    """

    kind: str
    forget_ids: torch.Tensor
    retain_ids: torch.Tensor
    classes: tuple[int, ...] = ()
    request: dict[str, Any] = field(default_factory=dict)
    request_id: str = ""
    party: str | None = None
    columns: tuple[int, ...] = ()

    def describe(self) -> dict[str, Any]:
        return {
            **self.request,
            "kind": self.kind,
            "classes": list(self.classes) if self.kind == ForgetKind.CLASS else None,
            "forget_train_samples": int(self.forget_ids.numel()),
            "retain_train_samples": int(self.retain_ids.numel()),
        }

    @property
    def removes_data_of_a_party(self) -> bool:
        """Party and feature requests: a party's contribution (or some of its columns) goes
        for every sample, rather than some samples for every party."""
        return self.kind in ForgetKind.OF_A_PARTY


@dataclass
class UnlearningContext:
    """Everything a method may use.

    Attributes
    ----------
    server
        The server, with the original model loaded here and at every party.
    forget
        The resolved forget request.
    train
        The recipe the original model was trained with (retraining repeats it).
    generator
        The method's own seeded generator (batch order, random choices).
    seed
        The method's seed, derived from the experiment seed and the method name.
    top_seed
        Seed of the top model's initialization in the original run.
    on_step
        Progress callback, called with the loss after every step.
    apply_removal
        Cuts the request's party (or its columns) out of the current model; the coordinator has
        done so before the method starts. A method that loads another snapshot (the original
        as a teacher, for example) calls it again before training its own model.
    """

    server: Server
    forget: ForgetSet
    train: TrainConfig
    generator: torch.Generator
    seed: int
    top_seed: int
    on_step: Callable[[float], None] | None = None
    apply_removal: Callable[[], None] = lambda: None

    def steps(self, ids: torch.Tensor, epochs: int, batch_size: int | None = None) -> int:
        """Number of optimizer steps of a phase over ``ids`` (for progress bars)."""
        return epochs * count_batches(ids.numel(), batch_size or self.train.batch_size)

    def phase(self, params: PhaseParams, ids: torch.Tensor, **kwargs: Any) -> None:
        """Run one split-learning phase over ``ids`` with a method's optimizer settings."""
        self.server.train_epochs(
            ids,
            epochs=params.epochs,
            batch_size=params.batch_size or self.train.batch_size,
            optim=params.optim(),
            generator=self.generator,
            on_step=self.on_step,
            **kwargs,
        )


class MethodParams(BaseModel):
    """Hyperparameters of a method; subclasses set the paper's defaults."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class PhaseParams(MethodParams):
    """Optimizer settings of one training phase of a method."""

    epochs: int = Field(5, ge=1)
    """Epochs of the phase."""
    lr: float = Field(0.01, gt=0)
    """Learning rate of every role's optimizer."""
    optimizer: Literal["sgd", "adam"] = "sgd"
    """Optimizer of every role."""
    momentum: float = Field(0.9, ge=0, lt=1)
    """SGD momentum."""
    weight_decay: float = Field(5e-4, ge=0)
    """Weight decay."""
    schedule: Literal["constant", "cosine"] = "constant"
    """Learning-rate schedule of the phase (``cosine``: per step)."""
    batch_size: int | None = Field(None, ge=1, description="default: the training batch size")

    def optim(self) -> OptimConfig:
        return OptimConfig(
            optimizer=self.optimizer,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            schedule=self.schedule,
        )


P = TypeVar("P", bound=MethodParams)


class UnlearningMethod(ABC, Generic[P]):
    """Base class of every unlearning method, generic in its params ``P``.

    Subclass it as ``UnlearningMethod[MyParams]`` (``MyParams`` a :class:`MethodParams` with
    the paper's defaults): ``self.params`` is then a ``MyParams`` and ``Params`` is set to it.
    Set ``supports`` (the forget-request kinds it handles), implement :meth:`unlearn`, and
    register it with :func:`vfl_sim.methods.register_method`; then list its name under
    ``methods:``. A subclass may still set ``Params`` itself instead (it must then agree with
    ``P``).

    ``label`` names this instance's model (its snapshot, checkpoint and report entry); it
    defaults to the registered ``name`` and tells two configurations of one method apart.
    """

    name: ClassVar[str] = ""
    supports: ClassVar[frozenset[str]] = frozenset({ForgetKind.CLASS, ForgetKind.SAMPLES})
    Params: ClassVar[type[MethodParams]] = MethodParams

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = _params_argument(cls)
        if declared is None:
            return
        if "Params" not in cls.__dict__:
            cls.Params = declared
        elif not issubclass(cls.Params, declared):
            raise TypeError(
                f"{cls.__name__}: Params is {cls.Params.__name__}, but the class is an "
                f"UnlearningMethod[{declared.__name__}]"
            )

    def __init__(self, params: P | None = None, *, label: str | None = None) -> None:
        # Params is P for every class that declares P (checked in __init_subclass__)
        self.params: P = params if params is not None else cast(P, self.Params())
        self.label = label or self.name

    @abstractmethod
    def unlearn(self, ctx: UnlearningContext) -> None:
        """Turn the loaded original model into the unlearned one, in place."""

    def estimated_steps(self, ctx: UnlearningContext) -> int | None:
        """Number of ``on_step`` calls the method will make, for progress bars (``None``: unknown)."""
        return None


def _params_argument(cls: type) -> type[MethodParams] | None:
    """The params class ``cls`` gives ``UnlearningMethod[...]`` in its own bases, if any."""
    for base in cls.__dict__.get("__orig_bases__", ()):  # its own, not a parent's
        origin = get_origin(base)
        if isinstance(origin, type) and issubclass(origin, UnlearningMethod):
            (arg,) = get_args(base)
            if isinstance(arg, type) and issubclass(arg, MethodParams):
                return arg
    return None
