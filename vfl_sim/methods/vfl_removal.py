"""Party and feature removal in VFL: VFU-KD (distillation) and ReMisVFU (representation misdirection).

Both turn the original model into one that no longer reads a leaving party (or some columns of
one party). The coordinator has cut the party (``party_mask``) or the columns (``input_mask``)
before the method starts; the methods differ in how the rest of the model adapts.

The party's side of ReMisVFU is the leaving party's projected update of its bottom model
(:func:`remisvfu_embed`, :func:`remisvfu_step`). ReMisVFU (Wu, He, Liang, Gong, Jiang, Hu,
Cheng, "ReMisVFU: Vertical Federated Unlearning via Representation Misdirection for Intermediate
Output Feature", AAAI 2026, arXiv 2512.10348) pulls the leaving party's embedding to a fixed
anchor ``c u`` (forgetting loss) while the model keeps fitting the labels (retention loss). The
two losses meet in the leaving party's bottom model, whose gradients are aligned per parameter
tensor before the step, as in the authors' code (``vfl/un_core3.py``): where the retention
gradient ``g_r`` points against the forgetting gradient ``g_f`` (``<g_f, g_r> < 0``), its
component along ``g_f`` is removed, and the update direction is ``g_f + alpha * g_r``.

The server computes both losses on the embeddings the party sent and sends back only the two
gradients of the party's own embedding (``dL_r/dh`` and ``dL_f/dh``); the party back-propagates
each through its bottom model, projects, steps, and answers with the next batch's embedding in
the same reply (one round trip per step). It never sees labels, logits or another party's data.

For a feature request the forgetting representation is the bottom model's output on the
removed columns alone (every other column zeroed): the retention loss reads the party's cut
embedding (the removed columns masked), the forgetting loss that "removed-columns" embedding.
It runs in eval mode, so the step can recompute it exactly for the gradient (a party keeps no
autograd graph between messages beyond the one of its pending training ``Embed``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from vfl_sim.config import OptimConfig
from vfl_sim.forget import ORIGINAL, ForgetKind
from vfl_sim.methods.registry import register_method
from vfl_sim.models.top import fuse
from vfl_sim.optim import build_optimizer, clear_grads
from vfl_sim.parties.party import Party, party_op
from vfl_sim.protocol import Ack, Backward, Embed, EmbedReply, LocalOp, Request
from vfl_sim.server.server import Server, make_batches
from vfl_sim.server.unlearning import MethodParams, PhaseParams, UnlearningContext, UnlearningMethod

# -- party side -------------------------------------------------------------------------------


def project_conflicting(g_f: torch.Tensor, g_r: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``g_r`` with its component along ``g_f`` removed where the two conflict.

    PCGrad's rule (Yu, Kumar, Gupta, Levine, Hausman, Finn, "Gradient Surgery for Multi-Task
    Learning", NeurIPS 2020), applied one way as in ReMisVFU: the forgetting gradient keeps its
    direction, the retention gradient is projected onto the normal plane of ``g_f`` when
    ``<g_f, g_r> < 0``. Returns the (possibly) projected ``g_r`` and whether it was projected.
    After projection ``<g_f, g_r'> = 0`` (up to rounding), so it is never negative.
    """
    dot = torch.dot(g_f.flatten(), g_r.flatten())
    if dot >= 0:
        return g_r, False
    return g_r - dot / (g_f.flatten().pow(2).sum() + 1e-12) * g_f, True


@contextmanager
def _only_columns(party: Party, columns: Sequence[int]) -> Iterator[None]:
    """Let the bottom model read ``columns`` of the party's view and nothing else (restored after)."""
    mask = party.bottom.input_mask
    saved = mask.detach().clone()
    only = torch.zeros_like(mask)
    only[..., list(columns)] = 1.0
    with torch.no_grad():
        mask.copy_(only)
    try:
        yield
    finally:
        with torch.no_grad():
            mask.copy_(saved)


def _removed_columns_embedding(party: Party, ids: torch.Tensor, columns: Sequence[int]) -> torch.Tensor:
    """Eval-mode embedding of ``ids`` from the removed ``columns`` alone, with its graph."""
    if party.bottom.training:
        party.bottom.eval()
    x = party.features.index_select(0, ids.to(party.device))
    with _only_columns(party, columns), torch.enable_grad():
        return party.bottom(x)


def _embed_reply(party: Party, ids: torch.Tensor, columns: Sequence[int]) -> dict[str, Any]:
    """Training-mode embedding of ``ids`` (its graph kept for the next step) and, for a feature
    request, the eval-mode embedding of the removed columns alone."""
    out: dict[str, Any] = {"embedding": party.embed(Embed(ids, train=True)).embedding}
    if columns:
        with torch.no_grad():
            out["forget_embedding"] = _removed_columns_embedding(party, ids, columns).detach()
        party.bottom.train()  # back to training mode for the pending forward's Backward
    return out


@party_op("remisvfu_embed")
def remisvfu_embed(party: Party, ids: torch.Tensor, columns: list[int] | None = None) -> dict[str, Any]:
    """The first batch of a ReMisVFU phase: see :func:`_embed_reply`."""
    return _embed_reply(party, ids, columns or [])


@party_op("remisvfu_step")
def remisvfu_step(
    party: Party,
    alpha: float,
    grad_retain: torch.Tensor,
    grad_forget: torch.Tensor,
    ids: torch.Tensor,
    columns: list[int] | None = None,
    next_ids: torch.Tensor | None = None,
) -> dict[str, Any]:
    """One projected update of the leaving party's bottom model, then the next batch's embedding.

    ``grad_retain`` is ``dL_r/dh`` of the embedding of the last training ``Embed``;
    ``grad_forget`` is ``dL_f/dh`` of the same embedding (party request) or of the
    removed-columns embedding of ``ids`` (feature request, ``columns`` given). Per parameter
    tensor the retention gradient is projected off a conflicting forgetting gradient
    (:func:`project_conflicting`) and the step follows ``g_f + alpha * g_r``.

    Returns ``embedding`` (and ``forget_embedding``) of ``next_ids`` when given, and in ``info``
    how many parameter tensors were projected (``projected``, of ``tensors``) and the smallest
    inner product ``<g_f, g_r>`` after projection (``min_dot``).
    """
    if party.optimizer is None:
        raise RuntimeError(f"{party.party_id}: 'remisvfu_step' before 'configure'")
    cols = list(columns or [])
    params = [p for p in party.bottom.parameters() if p.requires_grad]
    _, out = party.take_forward("'remisvfu_step'")
    g_r_all = torch.autograd.grad(
        out, params, grad_outputs=grad_retain.to(out.device, out.dtype), retain_graph=not cols, allow_unused=True
    )
    if cols:
        out_f = _removed_columns_embedding(party, ids, cols)
    else:
        out_f = out
    g_f_all = torch.autograd.grad(out_f, params, grad_outputs=grad_forget.to(out.device, out.dtype), allow_unused=True)
    projected, min_dot = 0, float("inf")
    for p, g_f, g_r in zip(params, g_f_all, g_r_all):
        if g_f is None and g_r is None:
            continue
        if g_f is None:
            p.grad = alpha * g_r
            continue
        if g_r is None:
            p.grad = g_f.clone()
            continue
        g_r, was = project_conflicting(g_f, g_r)
        projected += int(was)
        min_dot = min(min_dot, float(torch.dot(g_f.flatten(), g_r.flatten())))
        p.grad = g_f + alpha * g_r
    party.step()
    reply: dict[str, Any] = {"projected": projected, "tensors": len(params)}
    reply["min_dot"] = min_dot if min_dot != float("inf") else None
    if next_ids is not None:
        reply.update(_embed_reply(party, next_ids, cols))
    return reply


# -- server side ------------------------------------------------------------------------------


# -- VFU-KD ------------------------------------------------------------------------------------


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """``(1 - alpha) CE(z_s, y) + alpha KL(softmax(z_t / T) || softmax(z_s / T))``.

    The KL term is averaged over the batch (``batchmean``) and not rescaled by ``T^2``, as in
    the VFU-KD implementation this method follows (see :class:`VfuKd`).
    """
    ce = F.cross_entropy(student_logits, labels)
    kd = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
    )
    return (1.0 - alpha) * ce + alpha * kd


class VfuKdParams(MethodParams):
    epochs: int = Field(12, ge=1, description="distillation epochs over the stored embeddings")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate of the student top model")
    temperature: float = Field(4.0, gt=0, description="softmax temperature T of both teacher and student")
    alpha: float = Field(0.7, ge=0, le=1, description="weight of the KD term; 1 - alpha weighs the CE on labels")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay (torch's default, 0)")
    batch_size: int | None = Field(None, ge=1, description="default: the training batch size")


def _party_embeddings(server: Server, party: str, ids: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Eval-mode embeddings of ``ids`` from one party only."""
    chunks = []
    for batch in torch.split(ids.to(torch.int64).cpu(), batch_size):
        reply = server.transport.exchange({party: Embed(batch, train=False)})[party]
        if not isinstance(reply, EmbedReply):
            raise RuntimeError(f"{party} answered {type(reply).__name__} where an embedding was expected")
        chunks.append(reply.embedding.to(server.device))
    return torch.cat(chunks)


@register_method("vfu_kd")
class VfuKd(UnlearningMethod[VfuKdParams]):
    """VFU-KD: the model without the party (or columns) distilled from the original.

    Varshney, Vandikas, Torra, "Unlearning Clients, Features and Samples in Vertical Federated
    Learning", PoPETs 2025(2):39-53, arXiv 2501.13683. For a passive-party or feature removal,
    the active party trains a student top model on the embeddings of the remaining parties (or
    of the party's remaining columns), with the original model (all parties, all columns) as a
    frozen teacher: ``(1 - alpha) CE(z_s, y) + alpha KL(softmax(z_t / T) || softmax(z_s / T))``.
    The passive parties do not train; the paper's point is that unlearning needs no
    communication, because the active party stores the embeddings it received in training.

    Defaults (``T = 4``, ``alpha = 0.7``, Adam lr 1e-3, 12 epochs) are those of the public VFU-KD
    implementation in the ReMisVFU authors' repository (github.com/wwhwhu/ReMisVFU,
    ``VFU_KD.py`` and ``vfl/un_core_kd.py``), which also fixes the loss form above (KL with
    ``batchmean``, no ``T^2`` factor); the PoPETs text itself was not available here to check.

    VFL-simulator adaptation: the server stores no embeddings from training, so the method
    gathers them once at the start (one eval-mode pass of every party over the training ids,
    with the original model), computes the teacher logits from them once, and then trains the
    top model alone, with no further message to any party. The student is the original top
    model with the party cut off (it reads zeros in place of that party's embedding; the
    coordinator's cut), warm-started from the teacher's weights rather than re-initializing the
    first layer. For a feature request the owning party embeds the training ids once more with
    the removed columns masked, and only that party's stored embeddings are replaced.
    """

    supports = frozenset({ForgetKind.PARTY, ForgetKind.FEATURES})

    def unlearn(self, ctx: UnlearningContext) -> None:
        p = self.params
        server, forget = ctx.server, ctx.forget
        assert forget.party is not None
        ids = forget.retain_ids.to(torch.int64).cpu()
        k = server.party_ids.index(forget.party)

        # The teacher: the original with every party and column, queried once.
        server.load_state(ORIGINAL)
        embeddings, _ = server.embed(ids)
        teacher_logits = server.logits(embeddings)

        # The student reads what the cut model reads.
        ctx.apply_removal()
        if forget.kind == ForgetKind.PARTY:
            embeddings[k] = torch.zeros_like(embeddings[k])
        else:
            embeddings[k] = _party_embeddings(server, forget.party, ids)

        top = server.top
        for param in top.parameters():
            param.requires_grad_(True)
        optimizer = build_optimizer(
            top.parameters(),
            OptimConfig(optimizer="adam", lr=p.lr, weight_decay=p.weight_decay, schedule="constant"),
        )
        labels = server.labels[ids.to(server.device)]
        top.train()
        positions = torch.arange(ids.numel())
        for _ in range(p.epochs):
            for batch in make_batches(positions, p.batch_size or ctx.train.batch_size, ctx.generator):
                b = batch.to(server.device)
                logits = top(fuse([e[b] for e in embeddings], server.fusion))
                loss = distillation_loss(logits, teacher_logits[b], labels[b], temperature=p.temperature, alpha=p.alpha)
                clear_grads(optimizer)
                loss.backward()
                optimizer.step()
                if ctx.on_step is not None:
                    ctx.on_step(float(loss.detach()))
        clear_grads(optimizer)

    def estimated_steps(self, ctx: UnlearningContext) -> int:
        p = self.params
        return ctx.steps(ctx.forget.retain_ids, p.epochs, p.batch_size)


# -- ReMisVFU ----------------------------------------------------------------------------------


class RemisVfuParams(PhaseParams):
    epochs: int = Field(20, ge=1, description="unlearning epochs over the training ids")
    lr: float = Field(1e-2, gt=0, description="Adam learning rate of every model (top and bottoms)")
    optimizer: Literal["sgd", "adam"] = "adam"
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay (torch's default, 0)")
    schedule: Literal["constant", "cosine"] = "constant"
    anchor_scale: float = Field(2.0, gt=0, description="c: the anchor is c u with u uniform on the unit sphere")
    alpha: float = Field(1e-3, ge=0, description="weight of the retention gradient in the leaving party's update")


def draw_anchor(dim: int, scale: float, generator: torch.Generator) -> torch.Tensor:
    """``c u`` with ``u`` uniform on the unit sphere of ``R^dim`` (a normalized Gaussian draw)."""
    u = torch.randn(dim, generator=generator)
    return scale * u / u.norm()


def _embedding_of(reply: object, key: str = "embedding") -> torch.Tensor:
    if isinstance(reply, EmbedReply) and key == "embedding":
        return reply.embedding
    if isinstance(reply, Ack) and key in reply.tensors:
        return reply.tensors[key]
    raise RuntimeError(f"expected '{key}' in the reply, got {type(reply).__name__}")


def fold_constant_embedding(server: Server, party: str, value: torch.Tensor, dims: list[int]) -> None:
    """Make the top model that reads zeros for ``party`` equal to the one that read ``value``
    (the same vector for every sample) there: fusion and the first layer are linear, so the
    constant's contribution moves into the first layer's bias. ``dims`` are the embedding
    widths in party order."""
    first = server.top.net[0]
    if not isinstance(first, torch.nn.Linear) or first.bias is None:
        raise TypeError("the top model's first layer is not a linear layer with a bias")
    parts = [torch.zeros(1, d, device=server.device) for d in dims]
    parts[server.party_ids.index(party)] = value.reshape(1, -1).to(server.device)
    contribution = fuse(parts, server.fusion)[0]
    with torch.no_grad():
        first.bias.add_(first.weight @ contribution)


@register_method("remisvfu")
class RemisVfu(UnlearningMethod[RemisVfuParams]):
    """ReMisVFU: representation misdirection of the leaving party, with projected gradients.

    Wu, He, Liang, Gong, Jiang, Hu, Cheng, "ReMisVFU: Vertical Federated Unlearning via
    Representation Misdirection for Intermediate Output Feature", AAAI 2026, arXiv 2512.10348.
    A unit vector ``u`` is drawn once, uniformly on the sphere of the embedding space. The
    forgetting loss ``L_f = mean((h_f - c u)^2)`` pulls the leaving party's embedding ``h_f`` to
    the anchor ``c u``; the retention loss ``L_r`` is the cross-entropy of the model on the
    labels. The top model and the remaining parties' bottoms, which ``L_f`` does not reach, take
    ``grad L_r``; the leaving party's bottom, which both losses reach, takes per parameter tensor
    ``g_f + alpha g_r'`` where ``g_r'`` is ``g_r`` projected onto the normal plane of ``g_f``
    when ``<g_f, g_r> < 0`` (PCGrad). The forgetting loss is the per-element mean, ``u`` is drawn
    per the paper (uniform on the sphere), and the defaults (``c = 2``, ``alpha = 1e-3``, Adam
    lr 1e-2, 20 epochs, no weight decay) are those of the authors' code
    (github.com/wwhwhu/ReMisVFU, ``VFU_RMU.py`` and ``vfl/un_core3.py``).

    VFL-simulator adaptation. The model after the method must not read the leaving party, but
    the paper's protocol needs its embeddings: the leaving party takes part in the unlearning
    protocol once before it leaves. It is asked for training embeddings of every batch directly
    through the transport (it is no longer an active party of the cut model), the server
    computes both losses and sends it the two gradients of its own embedding, and the party
    back-propagates each through its bottom model, projects, steps (Adam), and returns the next
    batch's embedding in the same reply (party operation ``remisvfu_step``; one round trip per
    step for every party). During the phase the top model reads ``h_f``, as in the authors'
    code; at the end ``h_f`` is replaced by the anchor itself, folded into the first layer's bias
    of the top model (exact when ``h_f = c u``), and the party is cut off again. The server knows
    ``u`` (a random vector, no data); it never sees the party's parameters or features.

    For a feature request (not in the paper, which removes whole parties) the owning party stays
    in the model with its removed columns masked; its forgetting representation is its bottom
    model's (eval-mode) output on the removed columns alone, pulled to the anchor, while the
    retention loss reads its cut embedding, so both losses meet in that party's bottom model
    and are projected there in the same way. The cut model reads no removed column, so no
    folding is needed.
    """

    supports = frozenset({ForgetKind.PARTY, ForgetKind.FEATURES})

    def unlearn(self, ctx: UnlearningContext) -> None:
        p = self.params
        server, forget = ctx.server, ctx.forget
        leaving = forget.party
        assert leaving is not None
        ids = forget.retain_ids.to(torch.int64).cpu()
        bs = p.batch_size or ctx.train.batch_size
        columns = list(forget.columns) if forget.kind == ForgetKind.FEATURES else []
        others = [pid for pid in server.active_party_ids if pid != leaving]
        k = server.party_ids.index(leaving)

        steps_per_epoch = len(make_batches(ids, bs, None))
        server.configure(p.optim(), p.epochs * steps_per_epoch)  # every party, the leaving one too
        anchor: torch.Tensor | None = None
        dims: list[int] | None = None
        top = server.top
        for _ in range(p.epochs):
            batches = make_batches(ids, bs, ctx.generator)
            requests: dict[str, Request] = {pid: Embed(batches[0], train=True) for pid in others}
            requests[leaving] = LocalOp(remisvfu_embed.name, {"columns": columns}, {"ids": batches[0]})
            replies = server.transport.exchange(requests)
            top.train()
            for t, batch in enumerate(batches):
                embs = [_embedding_of(replies[pid]).to(server.device) for pid in [*others, leaving]]
                by_party = dict(zip([*others, leaving], embs))
                if dims is None:
                    width = int(by_party[leaving].shape[1])
                    dims = [int(by_party[pid].shape[1]) if pid in by_party else width for pid in server.party_ids]
                if anchor is None:
                    anchor = draw_anchor(dims[k], p.anchor_scale, ctx.generator).to(server.device)
                leaves = {pid: e.detach().requires_grad_(True) for pid, e in by_party.items()}
                fused_in = [
                    leaves[pid] if pid in leaves else torch.zeros_like(leaves[leaving]) for pid in server.party_ids
                ]
                if columns:
                    h_f = _embedding_of(replies[leaving], "forget_embedding").to(server.device)
                else:
                    h_f = leaves[leaving].detach()
                grad_forget = 2.0 * (h_f - anchor) / h_f.numel()  # d/dh of mean((h - c u)^2)
                logits = top(fuse(fused_in, server.fusion))
                loss_r = F.cross_entropy(logits, server.labels[batch.to(server.device)])
                assert server.optimizer is not None
                clear_grads(server.optimizer)
                loss_r.backward()
                server.optimizer.step()
                if server.scheduler is not None:
                    server.scheduler.step()
                nxt = batches[t + 1] if t + 1 < len(batches) else None
                requests = {
                    pid: Backward(
                        leaves[pid].grad,  # type: ignore[arg-type]
                        then=Embed(nxt, train=True) if nxt is not None else None,
                    )
                    for pid in others
                }
                grad_retain = leaves[leaving].grad
                assert grad_retain is not None
                tensors = {"grad_retain": grad_retain, "grad_forget": grad_forget, "ids": batch}
                if nxt is not None:
                    tensors["next_ids"] = nxt
                requests[leaving] = LocalOp(remisvfu_step.name, {"alpha": p.alpha, "columns": columns}, tensors)
                replies = server.transport.exchange(requests)
                if ctx.on_step is not None:  # the paper's objective L_f + alpha L_r
                    ctx.on_step(float(((h_f - anchor) ** 2).mean()) + p.alpha * float(loss_r.detach()))
        assert anchor is not None and dims is not None
        if forget.kind == ForgetKind.PARTY:
            fold_constant_embedding(server, leaving, anchor, dims)
        ctx.apply_removal()

    def estimated_steps(self, ctx: UnlearningContext) -> int:
        p = self.params
        return ctx.steps(ctx.forget.retain_ids, p.epochs, p.batch_size)
