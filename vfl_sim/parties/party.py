"""The passive party: owns a feature slice and a bottom model, answers protocol requests.

A party never sees labels or other parties' features. It answers three kinds of request
(:mod:`vfl_sim.protocol`): ``Embed`` (compute embeddings of sample ids), ``Backward`` (apply the
gradient of the loss with respect to its last embedding and step its optimizer, once or, with
FedBCD local updates, ``local_steps`` times) and
``LocalOp`` (named party-side operations: optimizer set-up, state snapshots, resets and the
party's side of unlearning methods). Party-side operations are functions registered with
:func:`party_op`, so a method's local step is added without touching this class; a method
declares its steps in its own module (:mod:`vfl_sim.methods`), which every process that hosts
parties imports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, ParamSpec, TypeVar

import torch

from vfl_sim.config import HONEST, IGNORE_UNLEARNING, OptimConfig, PartyBehaviour
from vfl_sim.defenses import clip_rows, gaussian_noise
from vfl_sim.models.bottoms import BottomModel
from vfl_sim.models.state import clone_state, reset_parameters, state_digest
from vfl_sim.optim import (
    CosineSchedule,
    LeanSGD,
    Optimizer,
    build_optimizer,
    build_scheduler,
    clear_grads,
)
from vfl_sim.protocol import Ack, Backward, CoreStep, Embed, EmbedReply, LocalOp, Reply, Request
from vfl_sim.seeding import derive_seed

OpFn = Callable[..., dict[str, Any] | None]
HookFn = Callable[..., None]
_OPS: dict[str, OpFn] = {}
_GRAD_HOOKS: dict[str, HookFn] = {}

Args = ParamSpec("Args")
R = TypeVar("R", covariant=True)


class PartyFunction(Generic[Args, R]):
    """A registered party-side function (an operation or a gradient hook) and ``name``, the
    name the server sends it by. Calling it calls the function.

    The server reaches the party only through the transport, by name; a method refers to
    its own step as ``step.name``, so the name is written once, where the step is registered.
    """

    def __init__(self, name: str, fn: Callable[Args, R]) -> None:
        self.name = name
        self.fn = fn
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __call__(self, *args: Args.args, **kwargs: Args.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<party function '{self.name}'>"


def party_op(
    name: str,
) -> Callable[[Callable[Args, dict[str, Any] | None]], PartyFunction[Args, dict[str, Any] | None]]:
    """Register ``fn(party, **args) -> dict | None`` as the party-side operation ``name``.

    The decorated name is a :class:`PartyFunction`: the server side calls the operation with
    ``server.party_op(fn.name, ...)`` or ``server.party_call(fn.name, ...)``.
    """

    def wrap(fn: Callable[Args, dict[str, Any] | None]) -> PartyFunction[Args, dict[str, Any] | None]:
        if name in _OPS and _OPS[name] is not fn:
            raise ValueError(f"party operation '{name}' is already registered")
        _OPS[name] = fn
        return PartyFunction(name, fn)

    return wrap


def registered_ops() -> list[str]:
    return sorted(_OPS)


def grad_hook(name: str) -> Callable[[Callable[Args, None]], PartyFunction[Args, None]]:
    """Register ``fn(party, stepping, **args)`` as the gradient hook ``name``.

    A phase configured with ``grad_hook=name`` calls it after every back-propagation, with the
    bottom model's gradients in ``.grad``, before the optimizer step (``stepping`` is False for
    a ``Backward`` with ``step=False``). Methods use it to mask or regularize the party's update
    (a saliency mask, an L1 subgradient) or to accumulate statistics of its gradients
    (importances) in :attr:`Party.buffers`, without a further round trip. The server side
    names it as ``server.configure(..., party_hook=(fn.name, args))``.
    """

    def wrap(fn: Callable[Args, None]) -> PartyFunction[Args, None]:
        if name in _GRAD_HOOKS and _GRAD_HOOKS[name] is not fn:
            raise ValueError(f"gradient hook '{name}' is already registered")
        _GRAD_HOOKS[name] = fn
        return PartyFunction(name, fn)

    return wrap


@dataclass(frozen=True)
class _Replay:
    ids: torch.Tensor
    rng: torch.Tensor
    buffers: dict[str, torch.Tensor]


def _buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.detach().clone() for name, b in module.named_buffers()}


class Party:
    """One passive party.

    Parameters
    ----------
    party_id
        The party's name (``party_0`` ...).
    features
        This party's columns of every sample, row ``i`` being sample id ``i``. Kept as one
        tensor; a batch is one ``index_select``.
    bottom
        The party's bottom model.
    init_seed
        Seed of the bottom model's initialization; ``reset`` without a seed returns to it.
    device
        Where the bottom model and the features live.
    replay_backward
        Keep no autograd graph between ``Embed`` and ``Backward``; instead remember the batch
        ids, the RNG state and the buffers (batch-norm statistics) from before the forward pass,
        and replay that forward pass when the gradient arrives. Gives the same gradients at the
        cost of a second forward pass, and is what a party needs when it does not stay in
        memory between messages (Flower ClientApps), since a graph cannot be stored.
    behaviour
        ``honest`` follows the protocol. ``ignore_unlearning`` (a lazy or malicious party,
        ``parties.<id>.behaviour``) acknowledges every unlearning instruction but keeps its
        pre-unlearning bottom model: from a method's ``begin_method`` (which names the model the
        method makes) until that model is saved, the party answers every request as usual and
        then puts back the bottom model it held when the method began, so its gradient steps,
        resets and method-specific operations change nothing, the top model trains against its
        old embeddings, and the saved model holds its old bottom. It lives in the party object,
        so every runtime (local, Ray actors, Flower ClientApps, whose state it exports) gets it.
    """

    def __init__(
        self,
        party_id: str,
        features: torch.Tensor,
        bottom: BottomModel,
        *,
        init_seed: int,
        device: torch.device | str = "cpu",
        replay_backward: bool = False,
        behaviour: PartyBehaviour = HONEST,
    ) -> None:
        if behaviour not in (HONEST, IGNORE_UNLEARNING):
            raise ValueError(f"{party_id}: unknown behaviour {behaviour!r}; expected {HONEST} or {IGNORE_UNLEARNING}")
        self.party_id = party_id
        self.replay_backward = replay_backward
        self.behaviour = behaviour
        # ignore_unlearning: the bottom model kept while a method runs, and the model it makes
        self.kept: dict[str, torch.Tensor] | None = None
        self.kept_for: str | None = None
        self.device = torch.device(device)
        self.features = features.to(self.device)
        self.bottom = bottom.to(self.device)
        self.init_seed = init_seed
        self.optimizer: Optimizer | None = None
        self.scheduler: CosineSchedule | None = None
        self.states: dict[str, dict[str, torch.Tensor]] = {}
        # (ids, embedding) of the training Embed whose graph awaits a Backward
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self._replay: _Replay | None = None  # what replays the forward pass, with replay_backward
        self.phase: dict[str, Any] | None = None  # the arguments of the last 'configure'
        # A method's party-side tensors (importances, masks, learned noise): exported with the
        # party's state, cleared when a method starts ('clear_buffers').
        self.buffers: dict[str, torch.Tensor] = {}
        self.rng: torch.Tensor  # the state of the party's own random stream (set by reset_parameters)
        self.reset_parameters(init_seed)

    # -- protocol -----------------------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        """Answer one protocol request."""
        if self.kept is None or isinstance(request, Embed):
            return self._handle(request)
        # ignore_unlearning, inside a method: answer, then put the kept bottom model back.
        saving = isinstance(request, LocalOp) and request.name == CoreStep.SAVE_STATE
        if saving:
            self._restore_kept()
        reply = self._handle(request)
        if saving and isinstance(request, LocalOp) and request.args.get("name") == self.kept_for:
            self.kept = self.kept_for = None  # the method's model is saved: its instructions end
        elif self._pending is None:  # never under a live autograd graph
            self._restore_kept()
        return reply

    def _restore_kept(self) -> None:
        if self.kept is not None:
            self.bottom.load_state_dict(self.kept)

    def _handle(self, request: Request) -> Reply:
        if isinstance(request, Embed):
            return self.embed(request)
        if isinstance(request, Backward):
            self.backward(request.grad, step=request.step, local_steps=request.local_steps)
            return self.embed(request.then) if request.then is not None else Ack()
        if isinstance(request, LocalOp):
            op = _OPS.get(request.name)
            if op is None:
                raise KeyError(f"{self.party_id}: unknown party operation '{request.name}'; known: {registered_ops()}")
            out = op(self, **request.args, **request.tensors) or {}
            tensors = {k: v.detach() for k, v in out.items() if isinstance(v, torch.Tensor)}
            return Ack({k: v for k, v in out.items() if k not in tensors}, tensors)
        raise TypeError(f"{self.party_id}: unsupported request {type(request).__name__}")

    @contextmanager
    def _own_randomness(self) -> Iterator[None]:
        """Draw from this party's own random stream (dropout masks), not the process's.

        Parties that live in other processes (Flower ClientApps, Ray actors) draw from their own
        stream anyway; keeping it in the party, and in its exported state, makes every runtime
        draw the same masks, and keeps the server's stream its own in a local run.
        """
        outer = torch.get_rng_state()
        torch.set_rng_state(self.rng)
        try:
            yield
        finally:
            self.rng = torch.get_rng_state()
            torch.set_rng_state(outer)

    def embed(self, request: Embed) -> EmbedReply:
        x = self.features.index_select(0, request.ids.to(self.device))
        if request.train:
            self._set_mode(True)
            with self._own_randomness():
                if self.replay_backward:
                    self._replay = _Replay(request.ids.clone(), torch.get_rng_state(), _buffers(self.bottom))
                    with torch.no_grad():
                        out = self._clipped(self.bottom(x))
                else:
                    out = self._clipped(self.bottom(x))
                    self._pending = (request.ids, out)
                sent = self._noised(out.detach())  # after the forward pass, from the party's stream
            return EmbedReply(sent)
        self._set_mode(False)
        with torch.no_grad():
            if request.layers:
                out, layers = self.bottom.forward_layers(x)
                return EmbedReply(out, layers)
            return EmbedReply(self.bottom(x))

    # The phase's defense of the embeddings sent (train.defense, via 'configure'). Clipping is
    # part of the forward pass the gradient flows back through; the noise is a constant to it.
    def _clipped(self, out: torch.Tensor) -> torch.Tensor:
        defense = self.phase.get("defense") if self.phase else None
        if defense is None or defense["clip"] is None:
            return out
        return clip_rows(out, float(defense["clip"]))

    def _noised(self, out: torch.Tensor) -> torch.Tensor:
        defense = self.phase.get("defense") if self.phase else None
        if defense is None or not defense["noise"]:
            return out
        return gaussian_noise(out, float(defense["noise"]), defense["clip"])

    def _set_mode(self, train: bool) -> None:
        # Module.train() walks every submodule; on small models that walk costs as much as the
        # forward pass, so switch only when the mode changes.
        if self.bottom.training != train:
            self.bottom.train(train)

    def backward(self, grad: torch.Tensor, *, step: bool = True, local_steps: int = 1) -> None:
        """Back-propagate ``grad`` through the last training forward pass and (if ``step``) step.

        ``local_steps`` (Q) > 1 makes FedBCD's local updates (Liu, Kang, Zhang, Li, Cheng, Chen,
        Hong, Yang, "A Communication-Efficient Collaborative Learning Framework for Distributed
        Features", arXiv 1912.11187, 2019): after the first update, each of the Q - 1 others runs
        a fresh training forward pass of the same ids with the current parameters and
        back-propagates the same stale ``grad`` (fresh Jacobian, stale dLoss/dEmbedding), one
        optimizer step each. Batch-norm statistics and dropout masks follow those forward passes.
        """
        if local_steps < 1:
            raise ValueError(f"{self.party_id}: local_steps must be >= 1, got {local_steps}")
        if local_steps > 1 and not step:
            raise ValueError(f"{self.party_id}: local_steps > 1 needs step=True")
        ids, out = self.take_forward("Backward")
        g = grad.to(self.device)
        out.backward(g)
        self._run_grad_hook(step)
        if step:
            self.step()
        for _ in range(local_steps - 1):
            self._set_mode(True)
            with self._own_randomness():
                out = self._clipped(self.bottom(self.features.index_select(0, ids.to(self.device))))
            out.backward(g)
            self._run_grad_hook(True)
            self.step()

    def _run_grad_hook(self, stepping: bool) -> None:
        hook = self.phase.get("grad_hook") if self.phase else None
        if hook is not None:
            _GRAD_HOOKS[hook](self, stepping, **(self.phase.get("hook_args") or {}))  # type: ignore[union-attr]

    def take_forward(self, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The ids and output (with its autograd graph) of the last training ``Embed``, which a
        backward pass consumes: the kept graph, or the replayed forward pass under
        ``replay_backward``. ``what`` names the caller in the error when there is none."""
        if self._replay is not None:
            replay, self._replay = self._replay, None
            return replay.ids, self._replay_forward(replay)
        if self._pending is not None:
            pending, self._pending = self._pending, None
            return pending
        raise RuntimeError(f"{self.party_id}: {what} without a preceding training Embed")

    def step(self, what: str = "Backward with step") -> None:
        """One step of the phase's optimizer (and schedule) with the gradients in ``.grad``,
        which it then clears; ``what`` names the caller in the error before ``configure``."""
        if self.optimizer is None:
            raise RuntimeError(f"{self.party_id}: {what} before 'configure'")
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        clear_grads(self.optimizer)

    def _replay_forward(self, replay: _Replay) -> torch.Tensor:
        """The training forward pass of ``replay.ids`` again, from the state it started in."""
        after_rng = torch.get_rng_state()
        with torch.no_grad():
            for name, buf in self.bottom.named_buffers():
                buf.copy_(replay.buffers[name])
        torch.set_rng_state(replay.rng)
        self._set_mode(True)
        out = self._clipped(self.bottom(self.features.index_select(0, replay.ids.to(self.device))))
        torch.set_rng_state(after_rng)
        return out

    # -- state ---------------------------------------------------------------------------------

    def export_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything the party needs to go on later, as named tensors and JSON-ready metadata.

        Covers the bottom model, saved snapshots, the optimizer and schedule of the current
        phase, and a pending replayed forward pass. A live autograd graph cannot be exported:
        a party that is stored between messages must use ``replay_backward``.
        """
        if self._pending is not None:
            raise RuntimeError(f"{self.party_id}: cannot export a pending autograd graph; use replay_backward")
        tensors = {f"model/{k}": v for k, v in self.bottom.state_dict().items()}
        tensors["rng"] = self.rng
        for name, state in self.states.items():
            tensors.update({f"snapshot/{name}/{k}": v for k, v in state.items()})
        tensors.update({f"buffer/{k}": v for k, v in self.buffers.items()})
        meta: dict[str, Any] = {"snapshots": list(self.states), "phase": self.phase, "buffers": list(self.buffers)}
        if isinstance(self.optimizer, LeanSGD):
            tensors.update({f"optim/buf/{k}": b for k, b in self.optimizer.momentum_buffers().items()})
        elif self.optimizer is not None:
            sd = self.optimizer.state_dict()
            for k, st in sd["state"].items():
                tensors.update({f"optim/state/{k}/{name}": v for name, v in st.items()})
        if self.optimizer is not None:
            meta["lr"] = [g["lr"] for g in self.optimizer.param_groups]
        if self.scheduler is not None:
            meta["schedule_step"] = self.scheduler.t
        if self._replay is not None:
            tensors["replay/ids"], tensors["replay/rng"] = self._replay.ids, self._replay.rng
            tensors.update({f"replay/buf/{k}": v for k, v in self._replay.buffers.items()})
        if self.kept is not None:
            tensors.update({f"kept/{k}": v for k, v in self.kept.items()})
            meta["kept_for"] = self.kept_for
        return tensors, meta

    def import_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Restore what :meth:`export_state` produced (on a party built the same way)."""

        def group(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

        self.bottom.load_state_dict(group("model/"))
        self.rng = tensors["rng"].to(torch.uint8)
        self.states = {name: group(f"snapshot/{name}/") for name in meta["snapshots"]}
        self.buffers = {name: tensors[f"buffer/{name}"] for name in meta.get("buffers", [])}
        self.end_phase()
        if meta.get("phase") is not None:
            _configure(self, **meta["phase"])
        if self.optimizer is not None:
            if isinstance(self.optimizer, LeanSGD):
                self.optimizer.load_momentum_buffers({int(k): v for k, v in group("optim/buf/").items()})
            else:
                sd = self.optimizer.state_dict()
                state: dict[int, dict[str, torch.Tensor]] = {}
                for key, v in group("optim/state/").items():
                    idx, name = key.split("/", 1)
                    state.setdefault(int(idx), {})[name] = v
                sd["state"] = state
                self.optimizer.load_state_dict(sd)
            for g, lr in zip(self.optimizer.param_groups, meta["lr"]):
                g["lr"] = lr
        if self.scheduler is not None:
            self.scheduler.t = int(meta["schedule_step"])
        if "replay/ids" in tensors:
            self._replay = _Replay(tensors["replay/ids"], tensors["replay/rng"], group("replay/buf/"))
        self.kept = group("kept/") if "kept_for" in meta else None
        self.kept_for = meta.get("kept_for")

    def reset_parameters(self, seed: int) -> None:
        """Re-initialize the bottom model as a fresh model seeded with ``seed``, and restart
        the party's random stream from it."""
        reset_parameters(self.bottom, seed)
        self.rng = torch.Generator().manual_seed(derive_seed(seed, "party-rng")).get_state()
        self.end_phase()

    def end_phase(self) -> None:
        """Drop the optimizer, schedule and any pending backward of the current phase: the
        model changed under them (a reset, a loaded snapshot), or a new phase starts."""
        self.optimizer = self.scheduler = None
        self.phase = None
        self._pending = self._replay = None


@party_op(CoreStep.CONFIGURE)
def _configure(
    party: Party,
    optim: dict[str, Any],
    total_steps: int = 0,
    trainable: str = "all",
    grad_hook: str | None = None,
    hook_args: dict[str, Any] | None = None,
    defense: dict[str, Any] | None = None,
) -> None:
    """Set up a fresh optimizer (and schedule over ``total_steps``) for the next phase, with
    an optional registered gradient hook (:func:`grad_hook`) called after every backward and
    an optional defense of the embeddings sent in training (``{"clip": C or None, "noise":
    sigma}``, :mod:`vfl_sim.defenses`)."""
    if grad_hook is not None and grad_hook not in _GRAD_HOOKS:
        raise KeyError(f"{party.party_id}: unknown gradient hook '{grad_hook}'; known: {sorted(_GRAD_HOOKS)}")
    cfg = OptimConfig.model_validate(optim)
    party.end_phase()
    for p in party.bottom.parameters():
        p.requires_grad_(trainable == "all")
    party.optimizer = build_optimizer(party.bottom.parameters(), cfg) if trainable == "all" else None
    party.scheduler = build_scheduler(party.optimizer, cfg.schedule, total_steps) if party.optimizer else None
    party.phase = {"optim": optim, "total_steps": total_steps, "trainable": trainable}
    if grad_hook is not None:
        party.phase.update(grad_hook=grad_hook, hook_args=hook_args or {})
    if defense is not None:
        party.phase["defense"] = {"clip": defense.get("clip"), "noise": float(defense.get("noise", 0.0))}


@party_op(CoreStep.BEGIN_METHOD)
def _begin_method(party: Party, seed: int, model: str | None = None) -> None:
    """A method starts: drop the previous method's tensors and restart the party's random
    stream from the method's seed, so each method draws the same masks whatever ran before it
    (or whether it runs in a resumed run). ``model`` names the model the method makes (the
    coordinator's methods): a party that ignores unlearning keeps its current bottom model
    until that model is saved."""
    party.buffers = {}
    party.rng = torch.Generator().manual_seed(derive_seed(seed, "party-rng", party.party_id)).get_state()
    if party.behaviour == IGNORE_UNLEARNING and model is not None:
        party.kept, party.kept_for = clone_state(party.bottom), model


@party_op(CoreStep.CLEAR_BUFFERS)
def _clear_buffers(party: Party) -> None:
    """Forget the previous method's party-side tensors (called when a method starts)."""
    party.buffers = {}


@party_op(CoreStep.SAVE_STATE)
def _save_state(party: Party, name: str) -> None:
    party.states[name] = clone_state(party.bottom)


@party_op(CoreStep.LOAD_STATE)
def _load_state(party: Party, name: str) -> dict[str, Any]:
    """Make a saved state current; answers whether it is finite (:func:`_finite`), so the
    server learns of a diverged bottom without another round trip."""
    if name not in party.states:
        raise KeyError(f"{party.party_id}: no saved state '{name}'")
    party.bottom.load_state_dict(party.states[name])
    party.end_phase()
    return _finite(party)


@party_op(CoreStep.RESET)
def _reset(party: Party, seed: int | None = None) -> None:
    party.reset_parameters(party.init_seed if seed is None else seed)


@party_op(CoreStep.CHECKPOINT)
def _checkpoint(party: Party, path: str, name: str | None = None) -> dict[str, Any]:
    """Write a saved state (or the current one) to ``path``; the party writes its own file."""
    state = party.states[name] if name is not None else party.bottom.state_dict()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, target)
    return {"bytes": target.stat().st_size}


@party_op(CoreStep.LOAD_CHECKPOINT)
def _load_checkpoint(party: Party, path: str, name: str) -> None:
    party.states[name] = torch.load(path, map_location=party.device, weights_only=True)


@party_op(CoreStep.DIGEST)
def _digest(party: Party, name: str | None = None) -> dict[str, Any]:
    """SHA-256 of the current (or a saved) state: lets the server check nothing changed."""
    state = party.states[name] if name is not None else party.bottom.state_dict()
    return {"sha256": state_digest(state)}


def _finite(party: Party) -> dict[str, Any]:
    """Whether every parameter and buffer of the current bottom model is finite, and the first
    that is not: a diverged model is reported, never audited as if it were one."""
    state = party.bottom.state_dict()
    bad = next((k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
    return {"finite": bad is None, "tensor": bad}


@party_op(CoreStep.MASK_COLUMNS)
def _mask_columns(party: Party, columns: list[int]) -> None:
    """Stop the current model from reading ``columns`` of this party's view (feature
    unlearning): their entries of the bottom model's input mask become zero."""
    mask = party.bottom.input_mask
    width = mask.shape[-1]
    bad = [c for c in columns if not 0 <= c < width]
    if bad:
        raise IndexError(f"{party.party_id}: column {bad[0]} is outside its {width} columns")
    with torch.no_grad():
        mask[..., columns] = 0.0


@party_op(CoreStep.MASKED_COLUMNS)
def _masked_columns(party: Party) -> dict[str, Any]:
    """The columns the current model does not read."""
    mask = party.bottom.input_mask.reshape(-1, party.bottom.input_mask.shape[-1])[0]
    return {"columns": [int(c) for c in torch.nonzero(mask == 0).flatten().tolist()]}
