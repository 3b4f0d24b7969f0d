"""The server (active party): owns the labels and the top model, drives split learning.

For each minibatch the server asks every party for the embedding of the batch ids, fuses the
embeddings, computes the loss with the labels it alone holds, steps the top model, and sends
each party only the gradient of the loss with respect to that party's embedding. The gradient
message for batch ``t`` carries the request for batch ``t + 1``, so a step costs one round
trip per party.

With ``local_steps`` Q > 1 each round does Q updates on both sides, as FedBCD-p does (Liu, Kang,
Zhang, Li, Cheng, Chen, Hong, Yang, "A Communication-Efficient Collaborative Learning Framework
for Distributed Features", arXiv 1912.11187, 2019): the server steps the top model Q times on
the same (stale) party embeddings, and sends each party the gradient of its embedding computed
before the first of those steps; the party makes Q updates with that stale gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from vfl_sim.config import DefenseConfig, OptimConfig
from vfl_sim.defenses import defend
from vfl_sim.models.state import clone_state, reset_parameters, state_digest
from vfl_sim.models.top import TopModel, fuse
from vfl_sim.optim import (
    CosineSchedule,
    Optimizer,
    build_optimizer,
    build_scheduler,
    clear_grads,
)
from vfl_sim.protocol import Ack, Backward, CoreStep, Embed, EmbedReply, LocalOp, Reply, Request
from vfl_sim.seeding import derive_seed, torch_generator
from vfl_sim.server.cover import Cover, Padded
from vfl_sim.transport import Transport

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss(logits, labels, ids) -> scalar``; ids let a loss treat forget samples differently."""


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels)


StepCallback = Callable[[float], None]
"""Called with the loss after every step (progress bars)."""


def make_batches(ids: torch.Tensor, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    """Shuffle ``ids`` (when a generator is given) and cut them into minibatches.

    A trailing batch of one sample is merged into the previous batch: batch normalization
    cannot normalize a single sample in training mode.
    """
    order = ids[torch.randperm(ids.numel(), generator=generator)] if generator is not None else ids
    # Own storage per batch: a view would carry the whole id tensor wherever a request is
    # pickled (Ray ships a view's full storage), n ids per message instead of a batch's.
    batches = [b.clone() for b in torch.split(order, batch_size)]
    if len(batches) > 1 and batches[-1].numel() == 1:
        last = batches.pop()  # pop before indexing: the assignment target must be the new last batch
        batches[-1] = torch.cat([batches[-1], last])
    return batches


def count_batches(n: int, batch_size: int) -> int:
    """How many minibatches :func:`make_batches` cuts ``n`` samples into (steps per epoch)."""
    full, rest = divmod(n, batch_size)
    if rest == 1 and full > 0:
        return full  # the single leftover sample joins the last full batch
    return full + (rest > 0)


class Server:
    """The active party.

    Parameters
    ----------
    labels
        Labels of all samples, by sample id. Never sent to a party.
    top
        The top model over the fused embeddings.
    transport
        How requests reach the parties.
    fusion
        How party embeddings are fused (``concat``, ``sum``, ``mean``).
    """

    def __init__(
        self,
        labels: torch.Tensor,
        top: TopModel,
        transport: Transport,
        *,
        fusion: str = "concat",
        device: torch.device | str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.labels = labels.to(self.device)
        self.top = top.to(self.device)
        self.transport = transport
        self.fusion = fusion
        self.party_ids = list(transport.party_ids)
        self.states: dict[str, dict[str, torch.Tensor]] = {}
        self.optimizer: Optimizer | None = None
        self.scheduler: CosineSchedule | None = None
        # The phase's defense of the gradients sent to parties (configure) and its noise stream.
        self.defense: DefenseConfig | None = None
        self.defense_generator: torch.Generator | None = None
        # Decoy ids while a method runs under forget.cover (covering).
        self.cover: Cover | None = None

    # -- parties -------------------------------------------------------------------------------

    def party_op(self, op: str, /, **args: Any) -> dict[str, dict[str, Any]]:
        """Run a registered party-side operation on every party; returns each party's info."""
        return {pid: ack.info for pid, ack in self.party_call(op, args).items()}

    def party_call(
        self,
        op: str,
        args: dict[str, Any] | None = None,
        tensors: Mapping[str, dict[str, torch.Tensor]] | None = None,
    ) -> dict[str, Ack]:
        """Run party-side operation ``op`` on every party in one round trip, with the same
        ``args`` for all and each party's own ``tensors[party_id]`` (for example the gradient
        of its own embedding); returns each party's :class:`~vfl_sim.protocol.Ack`."""
        tensors = tensors or {}
        replies = self.transport.exchange(
            {pid: LocalOp(op, dict(args or {}), tensors.get(pid, {})) for pid in self.party_ids}
        )
        out: dict[str, Ack] = {}
        for pid, reply in replies.items():
            if not isinstance(reply, Ack):
                raise RuntimeError(f"{pid} answered {type(reply).__name__} to '{op}'")
            out[pid] = reply
        return out

    @property
    def active_party_ids(self) -> list[str]:
        """The parties whose embeddings the current top model reads (all but those that left)."""
        mask = self.top.party_mask
        if mask.numel() == 0:
            return list(self.party_ids)
        return [pid for pid, m in zip(self.party_ids, mask.tolist()) if m > 0]

    def remove_party(self, party_id: str) -> None:
        """Make the current model one without ``party_id``: the top model reads zeros in place
        of its embedding, and the party is no longer asked for embeddings or sent gradients."""
        if party_id not in self.party_ids:
            raise KeyError(f"unknown party '{party_id}'; parties: {self.party_ids}")
        if self.top.party_mask.numel() != len(self.party_ids):
            raise RuntimeError("the top model has no party mask for these parties")
        with torch.no_grad():
            self.top.party_mask[self.party_ids.index(party_id)] = 0.0

    # -- cover -------------------------------------------------------------------------------

    @contextmanager
    def covering(self, pool: torch.Tensor, seed: int) -> Iterator[Cover]:
        """Pad every message that names samples with decoys while the context is open
        (``forget.cover``, :mod:`vfl_sim.server.cover`): each party is asked about every id of
        ``pool`` (the training ids) equally often. Yields the :class:`Cover`, which counts
        what the decoys cost."""
        if self.cover is not None:
            raise RuntimeError("the server is already covering")
        cover = Cover(pool, seed)
        self.cover = cover
        self.transport.taps.append(cover.check)
        try:
            yield cover
        finally:
            self.transport.taps.remove(cover.check)
            self.cover = None
            cover.close()

    def cover_plan(self, batches: Sequence[torch.Tensor]) -> list[Padded]:
        """The messages of one pass over ``batches``: each batch padded with its share of the
        pass's decoys when the server is covering, else as it is (:class:`Padded.plain`).

        A method that sends its own requests naming samples sends ``padded.ids``, reads the
        real rows of a reply with ``padded.take`` and sends ``padded.scatter(rows)`` (zero rows
        for decoys) where a tensor has one row per id."""
        if self.cover is None:
            return [Padded.plain(b) for b in batches]
        return self.cover.plan(batches)

    def _ask(self, request: Request) -> dict[str, Reply]:
        return self.transport.exchange({pid: request for pid in self.active_party_ids})

    def _embeddings(self, replies: dict[str, Reply]) -> list[torch.Tensor]:
        """Embeddings in party order; zeros for a party that left (it sent none)."""
        out: list[torch.Tensor | None] = []
        for pid in self.party_ids:
            reply = replies.get(pid)
            if reply is None:
                out.append(None)
                continue
            if not isinstance(reply, EmbedReply):
                raise RuntimeError(f"{pid} answered {type(reply).__name__} where an embedding was expected")
            out.append(reply.embedding.to(self.device))
        present = next(e for e in out if e is not None)
        return [e if e is not None else torch.zeros_like(present) for e in out]

    # -- training ------------------------------------------------------------------------------

    def configure(
        self,
        optim: OptimConfig,
        total_steps: int,
        *,
        parties: bool = True,
        top: bool = True,
        party_hook: tuple[str, dict[str, Any]] | None = None,
        defense: DefenseConfig | None = None,
        defense_seed: int = 0,
    ) -> None:
        """Fresh optimizers for the next phase on the top model and (if ``parties``) every bottom.

        ``party_hook`` is ``(name, args)`` of a registered party gradient hook
        (:func:`vfl_sim.parties.party.grad_hook`) that every party runs after each backward.
        ``defense`` (:class:`~vfl_sim.config.DefenseConfig`) clips, noises and sparsifies the
        gradients sent to the parties during the phase (noise drawn from a stream seeded with
        ``defense_seed``) and is passed to the parties for their embeddings. A defense that
        does nothing is not sent, so undefended runs exchange exactly what they always did.
        """
        if defense is not None and not defense.active:
            defense = None
        self.defense = defense
        self.defense_generator = torch_generator(defense_seed) if defense is not None else None
        for p in self.top.parameters():
            p.requires_grad_(top)
        self.optimizer = build_optimizer(self.top.parameters(), optim) if top else None
        self.scheduler = build_scheduler(self.optimizer, optim.schedule, total_steps) if self.optimizer else None
        phase: dict[str, Any] = {}  # what else the parties' 'configure' gets for this phase
        if party_hook is not None:
            phase.update(grad_hook=party_hook[0], hook_args=party_hook[1])
        if defense is not None and defense.on_embeddings:
            phase.update(defense={"clip": defense.embedding_clip, "noise": defense.embedding_noise})
        self.party_op(
            CoreStep.CONFIGURE,
            optim=optim.model_dump(mode="json", include=set(OptimConfig.model_fields)),
            total_steps=total_steps,
            trainable="all" if parties else "none",
            **phase,
        )

    def train_epochs(
        self,
        ids: torch.Tensor,
        *,
        epochs: int,
        batch_size: int,
        optim: OptimConfig,
        generator: torch.Generator,
        loss_fn: LossFn = cross_entropy,
        update_parties: bool = True,
        update_top: bool = True,
        on_step: StepCallback | None = None,
        local_steps: int | None = None,
        party_hook: tuple[str, dict[str, Any]] | None = None,
    ) -> None:
        """Split learning over ``ids`` for ``epochs`` epochs.

        The top model and (if ``update_parties``) every bottom model get fresh optimizers from
        ``optim`` with a per-step schedule over the whole phase.

        ``local_steps`` (Q) is the number of FedBCD local updates per round (see
        :meth:`run_epoch`); by default ``optim.local_steps`` when ``optim`` is a
        :class:`~vfl_sim.config.TrainConfig` (the original's training and retraining), else 1
        (exact split learning; the optimizer settings a method builds carry no Q). The
        schedule counts Q steps per batch; ``on_step`` is still called once per batch.
        ``party_hook`` names a party gradient hook for the phase (see :meth:`configure`).
        """
        ids = ids.to(torch.int64).cpu()
        if ids.numel() == 0:
            raise ValueError("no samples to train on")
        q = local_steps if local_steps is not None else int(getattr(optim, "local_steps", 1))
        if q < 1:
            raise ValueError(f"local_steps must be >= 1, got {q}")
        steps_per_epoch = count_batches(ids.numel(), batch_size)
        defense: DefenseConfig | None = getattr(optim, "defense", None)
        # Only a defended phase draws from the batch stream: undefended runs keep their batches.
        defended = defense is not None and defense.active
        seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if defended else 0
        self.configure(
            optim,
            epochs * steps_per_epoch * q,
            parties=update_parties,
            top=update_top,
            party_hook=party_hook,
            defense=defense,
            defense_seed=seed,
        )
        for _ in range(epochs):
            self.run_epoch(
                make_batches(ids, batch_size, generator),
                loss_fn=loss_fn,
                update_parties=update_parties,
                update_top=update_top,
                on_step=on_step,
                local_steps=q,
            )

    def run_epoch(
        self,
        batches: Sequence[torch.Tensor],
        *,
        loss_fn: LossFn = cross_entropy,
        update_parties: bool = True,
        update_top: bool = True,
        on_step: StepCallback | None = None,
        local_steps: int = 1,
    ) -> None:
        """One pass over ``batches`` with the optimizers set by :meth:`configure`.

        One round trip per party per batch. With ``local_steps`` Q > 1 (FedBCD-p, arXiv
        1912.11187) the top model takes Q steps per batch on the same detached embeddings, the
        gradient sent to each party is the one from the first of them (before any top update),
        and each party makes Q updates with it; ``configure`` must have been given Q steps per
        batch for the schedules. ``on_step`` gets the loss of the first step of each batch.
        """
        if local_steps < 1:
            raise ValueError(f"local_steps must be >= 1, got {local_steps}")
        # Under cover each batch travels with decoys: the top model and the loss read the real
        # rows only, and the decoys' gradient rows are zero.
        sent = self.cover_plan(batches)
        self.top.train()  # once per epoch; parties switch their own mode per request
        replies = self._ask(Embed(sent[0].ids, train=update_parties))
        for t, batch in enumerate(batches):
            leaves = [e.requires_grad_(update_parties) for e in self._embeddings(replies)]
            real = [sent[t].take(leaf) for leaf in leaves]
            logits = self.top(fuse(real, self.fusion))
            labels = self.labels[batch.to(self.device)]
            loss = loss_fn(logits, labels, batch)
            if self.optimizer is not None:
                clear_grads(self.optimizer)
            loss.backward()
            if self.optimizer is not None:
                self.optimizer.step()
                if self.scheduler is not None:
                    self.scheduler.step()
                if local_steps > 1:
                    self._local_top_steps(real, labels, batch, loss_fn, local_steps - 1)
            nxt = Embed(sent[t + 1].ids, train=update_parties) if t + 1 < len(batches) else None
            active = set(self.active_party_ids)
            grads = {
                pid: sent[t].scatter(self._defended(sent[t].take(self._grad(leaf))))
                for pid, leaf in zip(self.party_ids, leaves)
                if pid in active and update_parties
            }
            if self.cover is not None:
                for pid, leaf in zip(self.party_ids, leaves):
                    if pid in active:
                        self.cover.count(sent[t], sent[t].ids, leaf, grads.get(pid))
            if update_parties:
                replies = self.transport.exchange(
                    {pid: Backward(g, then=nxt, local_steps=local_steps) for pid, g in grads.items()}
                )
            elif nxt is not None:
                replies = self._ask(nxt)
            if on_step is not None:
                on_step(float(loss.detach()))

    @staticmethod
    def _grad(leaf: torch.Tensor) -> torch.Tensor:
        if leaf.grad is None:
            raise RuntimeError("no gradient for a party's embedding (was it detached?)")
        return leaf.grad

    def _defended(self, grad: torch.Tensor) -> torch.Tensor:
        """The gradient a party is sent: ``grad`` under the phase's gradient defense."""
        d = self.defense
        if d is None or not d.on_gradients:
            return grad
        # Rows of the batch-mean loss's gradient are each sample's own gradient over the batch
        # size: clip and noise the per-sample gradients, so that the clip means the same at
        # every batch size, and send them back at the batch-mean scale.
        n = grad.shape[0]
        defended = defend(
            grad * n,
            clip=d.gradient_clip,
            noise=d.gradient_noise,
            sparsity=d.gradient_sparsity,
            generator=self.defense_generator,
        )
        return defended / n

    def _local_top_steps(
        self, embeddings: Sequence[torch.Tensor], labels: torch.Tensor, ids: torch.Tensor, loss_fn: LossFn, n: int
    ) -> None:
        """``n`` more top-model steps on the same (stale) embeddings: FedBCD's local updates of
        the active party. The embeddings are detached, so the gradients already computed for
        the parties stay as they were."""
        self.top_steps(embeddings, ids, n, loss_fn=loss_fn)

    def top_steps(
        self, embeddings: Sequence[torch.Tensor], ids: torch.Tensor, n: int = 1, *, loss_fn: LossFn = cross_entropy
    ) -> list[float]:
        """``n`` steps of the top model alone on fixed party embeddings of ``ids`` (no party
        is asked anything), with the optimizer set by :meth:`configure`; returns each loss."""
        if self.optimizer is None:
            raise RuntimeError("configure the top model's optimizer first (configure(..., top=True))")
        self.top.train()
        labels = self.labels[ids.to(self.device)]
        fused = fuse([e.detach() for e in embeddings], self.fusion)
        losses = []
        for _ in range(n):
            loss = loss_fn(self.top(fused), labels, ids)
            clear_grads(self.optimizer)
            loss.backward()
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            losses.append(float(loss.detach()))
        return losses

    # -- inference -----------------------------------------------------------------------------

    def embed(
        self, ids: torch.Tensor, *, layers: bool = False, batch_size: int = 4096, cover: bool = True
    ) -> tuple[list[torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
        """Eval-mode embeddings of ``ids`` from every party, in party order, and (if ``layers``)
        each party's named layer activations ``{party_id: {layer: (n, d)}}``.

        While the server is covering, the request is padded so that it asks about every
        training sample (:meth:`Cover.pad`) and only the rows of ``ids`` are returned;
        ``cover=False`` sends ``ids`` as they are (the caller padded them already, as the
        ``ids`` of a :meth:`cover_plan`)."""
        ids = ids.to(torch.int64).cpu()
        padded = self.cover.pad(ids) if self.cover is not None and cover else Padded.plain(ids)
        chunks: list[list[torch.Tensor]] = [[] for _ in self.party_ids]
        layer_chunks: dict[str, dict[str, list[torch.Tensor]]] = {pid: {} for pid in self.party_ids}
        for batch in (b.clone() for b in torch.split(padded.ids, batch_size)):  # own storage, as in make_batches
            if self.cover is not None:
                self.cover.vouch(batch)
            replies = self._ask(Embed(batch, train=False, layers=layers))
            for k, embedding in enumerate(self._embeddings(replies)):
                chunks[k].append(embedding)
            for pid, reply in replies.items():
                assert isinstance(reply, EmbedReply)
                for name, t in (reply.layers or {}).items():
                    layer_chunks[pid].setdefault(name, []).append(t)
        sent = [torch.cat(c) for c in chunks]
        per_layer_sent = {pid: {n: torch.cat(ts) for n, ts in d.items()} for pid, d in layer_chunks.items()}
        if self.cover is not None:
            for pid, e in zip(self.party_ids, sent):
                if pid in self.active_party_ids:
                    self.cover.count(padded, padded.ids, e, *per_layer_sent[pid].values())
        embeddings = [padded.take(e) for e in sent]
        per_layer = {pid: {n: padded.take(t) for n, t in d.items()} for pid, d in per_layer_sent.items()}
        return embeddings, per_layer

    def logits(self, embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
        self.top.eval()
        with torch.no_grad():
            return self.top(fuse(list(embeddings), self.fusion))

    def predict(self, ids: torch.Tensor) -> torch.Tensor:
        """Predicted labels of ``ids`` under the current models."""
        embeddings, _ = self.embed(ids)
        return self.logits(embeddings).argmax(1)

    # -- state ---------------------------------------------------------------------------------

    def save_state(self, name: str) -> None:
        """Snapshot the top model here and every bottom model at its party under ``name``."""
        self.states[name] = clone_state(self.top)
        self.party_op(CoreStep.SAVE_STATE, name=name)

    def load_state(self, name: str) -> dict[str, dict[str, Any]]:
        """Make the snapshot ``name`` current on the server and every party; returns each
        party's answer (``finite``: whether its bottom model's tensors are all finite, and
        ``tensor``, the first that is not)."""
        self.top.load_state_dict(self.states[name])
        self.optimizer = self.scheduler = None
        return self.party_op(CoreStep.LOAD_STATE, name=name)

    def reset(self, top_seed: int, party_seed: int | None = None) -> None:
        """Fresh initialization everywhere: the top from ``top_seed``, each bottom from its
        party's own initialization seed (the same initialization the original started from),
        or, with ``party_seed``, from a seed derived from it and the party's id (another
        initialization, for independently seeded retrains)."""
        self.reset_top(top_seed)
        if party_seed is None:
            self.party_op(CoreStep.RESET)
        else:
            self.transport.exchange(
                {pid: LocalOp(CoreStep.RESET, {"seed": derive_seed(party_seed, "init", pid)}) for pid in self.party_ids}
            )

    def reset_top(self, top_seed: int) -> None:
        """Fresh initialization of the top model alone (the bottoms keep their weights)."""
        reset_parameters(self.top, top_seed)
        self.optimizer = self.scheduler = None

    def digests(self, name: str | None = None) -> dict[str, str]:
        """SHA-256 of the top model (key ``top``) and of every bottom, current or saved as ``name``."""
        state = self.states[name] if name is not None else self.top.state_dict()
        out = {"top": state_digest(state)}
        out.update({pid: info["sha256"] for pid, info in self.party_op(CoreStep.DIGEST, name=name).items()})
        return out
