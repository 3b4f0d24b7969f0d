"""Few-shot label unlearning with manifold mixup of party embeddings (Gu et al., ICLR 2026)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from vfl_sim.config import OptimConfig
from vfl_sim.forget import ForgetKind
from vfl_sim.methods.registry import register_method
from vfl_sim.models.top import fuse
from vfl_sim.optim import clear_grads
from vfl_sim.protocol import Backward, Embed, EmbedReply, Reply
from vfl_sim.server.cover import Padded
from vfl_sim.server.server import Server, count_batches, make_batches
from vfl_sim.server.unlearning import MethodParams, UnlearningContext, UnlearningMethod


class FewShotMixupParams(MethodParams):
    """Defaults of the authors' code (``configs.py``, ``unlearn.py``), the learning rate tuned."""

    forget_samples: int = Field(40, ge=2, description="labeled forget samples per forgotten class")
    retain_per_class: int = Field(3, ge=1, description="labeled retained samples per retained class (recovery)")
    lambdas: list[float] = Field(
        default_factory=lambda: [0.25, 0.5, 0.75], description="mixing coefficients of every forget pair"
    )
    recovery_beta: float = Field(1.0, gt=0, description="within-class mixup draws lambda ~ Beta(b, b) (recovery)")
    epochs: int = Field(16, ge=1, description="rounds of forgetting followed by recovery")
    lr: float = Field(8e-6, gt=0, description="SGD learning rate of the top and every bottom (code default 2e-7)")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: int = Field(32, ge=2, description="samples per batch, and mixed embeddings per top-model step")


def _embeddings(server: Server, replies: dict[str, Reply]) -> list[torch.Tensor]:
    out = []
    for pid in server.party_ids:
        reply = replies[pid]
        if not isinstance(reply, EmbedReply):
            raise RuntimeError(f"{pid} answered {type(reply).__name__} where an embedding was expected")
        out.append(reply.embedding.to(server.device))
    return out


def _grad(t: torch.Tensor) -> torch.Tensor:
    assert t.grad is not None
    return t.grad


def _count(server: Server, padded: Padded, sent: list[torch.Tensor], grads: dict[str, torch.Tensor]) -> None:
    """Add one round's decoy bytes (ids, embeddings, gradients) to the cover's count."""
    if server.cover is not None:
        for pid, e in zip(server.party_ids, sent):
            server.cover.count(padded, padded.ids, e, grads[pid])


def pair_mix(n: int, lambdas: list[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every pair ``i < j`` of ``n`` samples mixed with every ``lambda``: indices ``(i, j)`` and
    the coefficient of ``i`` for each mixed embedding ``lambda * h_i + (1 - lambda) * h_j``."""
    i, j = torch.triu_indices(n, n, offset=1)
    lam = torch.tensor(lambdas, dtype=torch.float32)
    return i.repeat_interleave(len(lambdas)), j.repeat_interleave(len(lambdas)), lam.repeat(i.numel())


@register_method("few_shot_mixup")
class FewShotMixup(UnlearningMethod[FewShotMixupParams]):
    """Few-shot label unlearning in VFL by manifold mixup (Gu, Tae, Fan, Chan, "Towards
    Privacy-Guaranteed Label Unlearning in Vertical Federated Learning: Few-Shot Forgetting
    without Disclosure", ICLR 2026, arXiv 2410.10922).

    The active party (server) uses only ``forget_samples`` labeled samples of each forgotten
    class and ``retain_per_class`` labeled samples of each retained class. Every epoch:

    1. **Forgetting.** Per batch of forget samples, every party sends its embeddings (a
       training forward pass). For every pair ``i < j`` of the batch (samples of the same
       forgotten class) and every ``lambda`` in ``lambdas`` the server mixes each party's
       embeddings, ``lambda * h_i + (1 - lambda) * h_j``, the same pair and coefficient for
       every party, and runs gradient ascent on the cross-entropy of the forgotten label
       through the top model, one top-model step per ``batch_size`` mixed embeddings. The
       gradient of each mixed embedding is kept; the gradient a party receives for its sample
       ``i`` is the average of the gradients of the mixed embeddings ``i`` takes part in, and
       each party back-propagates it through its bottom model and steps.
    2. **Recovery.** The retained few-shot samples are embedded, mixed within their class (a
       random partner of the same class, ``lambda ~ Beta(1, 1)`` per sample) and trained with
       the cross-entropy of their labels; the top model steps and each party receives the
       gradient of its mixed embedding for the sample the mixture was built from.

    SGD with momentum 0.9 and weight decay 5e-4 on the top and every bottom, one optimizer
    each for the whole run, no schedule; 16 epochs; batches of 32. As in the authors' code
    the recovery sends the gradient of the mixed embedding itself (not its chain-rule share).
    Their code sums top-model gradients over the chunks of one forget batch; here each chunk's
    step uses its own gradient. The learning rate (code default 2e-7 for ResNet-18) is set per
    dataset in the paper; tuned on digits (2 and 4 parties): 8e-6. The ascent is unbounded and
    takes a top-model step per 32 mixtures (47 per full forget batch), so 5e-5 already
    collapses the model and 3e-6 leaves half of the forgotten class.

    Privacy: parties receive only the ids of the few-shot samples, and gradients of their own
    embeddings; labels and the mixing stay at the server.
    """

    supports = frozenset({ForgetKind.CLASS})

    def select(self, ctx: UnlearningContext) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The few-shot forget ids (one tensor per forgotten class) and retained ids, drawn with
        the method's generator."""
        p = self.params
        labels = ctx.server.labels.cpu()
        forget = ctx.forget.forget_ids
        per_class = []
        for c in ctx.forget.classes:
            ids = forget[labels[forget] == c]
            per_class.append(ids[torch.randperm(ids.numel(), generator=ctx.generator)[: p.forget_samples]])
        retain = ctx.forget.retain_ids
        chosen = []
        for c in torch.unique(labels[retain]).tolist():
            ids = retain[labels[retain] == c]
            chosen.append(ids[torch.randperm(ids.numel(), generator=ctx.generator)[: p.retain_per_class]])
        return per_class, torch.cat(chosen)

    def unlearn(self, ctx: UnlearningContext) -> None:
        p = self.params
        server = ctx.server
        forget_sets, retain = self.select(ctx)
        optim = OptimConfig(optimizer="sgd", lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
        server.configure(optim.model_copy(update={"schedule": "constant"}), 0)
        server.top.train()
        for _ in range(p.epochs):
            # The epoch's batches, drawn in the order the steps use them (the steps draw
            # nothing from the generator before the recovery batches are cut); under
            # forget.cover they travel with the epoch's decoys.
            forget_batches = [b for ids in forget_sets for b in make_batches(ids, p.batch_size, ctx.generator)]
            retain_batches = make_batches(retain, p.batch_size, ctx.generator)
            sent = server.cover_plan(forget_batches + retain_batches)
            for batch, padded in zip(forget_batches, sent):
                self.forget_step(server, batch, ctx, padded)
            for batch, padded in zip(retain_batches, sent[len(forget_batches) :]):
                self.recovery_step(server, batch, ctx, padded)

    def forget_step(
        self, server: Server, batch: torch.Tensor, ctx: UnlearningContext, padded: Padded | None = None
    ) -> None:
        """Mix every pair of the batch's embeddings, ascend through the top, send averaged gradients
        (``padded``: the batch as sent, with decoys under ``forget.cover``)."""
        p = self.params
        assert server.optimizer is not None
        padded = padded or Padded.plain(batch)
        sent = _embeddings(server, server.transport.broadcast(Embed(padded.ids, train=True)))
        embeddings = [padded.take(e) for e in sent]
        i, j, lam = pair_mix(batch.numel(), p.lambdas)
        lam = lam.to(server.device).unsqueeze(1)
        mixed = [(lam * e[i] + (1 - lam) * e[j]).detach().requires_grad_(True) for e in embeddings]
        labels = server.labels[batch.to(server.device)][i]
        losses = []
        for chunk in torch.split(torch.arange(i.numel()), p.batch_size):
            clear_grads(server.optimizer)
            logits = server.top(fuse([m[chunk] for m in mixed], server.fusion))
            loss = -F.cross_entropy(logits, labels[chunk])
            loss.backward()
            server.optimizer.step()
            losses.append(float(loss.detach()))
        # each sample's gradient: the mean of the gradients of the mixtures it takes part in
        count = torch.bincount(torch.cat([i, j]), minlength=batch.numel()).clamp_min(1).to(server.device)
        grads = {}
        for pid, m in zip(server.party_ids, mixed):
            assert m.grad is not None
            g = torch.zeros(batch.numel(), m.shape[1], device=server.device)
            g.index_add_(0, i.to(server.device), m.grad)
            g.index_add_(0, j.to(server.device), m.grad)
            grads[pid] = padded.scatter(g / count.unsqueeze(1))
        _count(server, padded, sent, grads)
        server.transport.exchange({pid: Backward(grads[pid]) for pid in server.party_ids})
        if ctx.on_step is not None:
            ctx.on_step(sum(losses) / len(losses))

    def recovery_step(
        self, server: Server, batch: torch.Tensor, ctx: UnlearningContext, padded: Padded | None = None
    ) -> None:
        """Within-class mixup of the retained few-shot embeddings, descent on their labels."""
        p = self.params
        assert server.optimizer is not None
        padded = padded or Padded.plain(batch)
        sent = _embeddings(server, server.transport.broadcast(Embed(padded.ids, train=True)))
        embeddings = [padded.take(e) for e in sent]
        labels = server.labels[batch.to(server.device)]
        partner = torch.arange(batch.numel())
        lam = torch.ones(batch.numel())
        beta = torch.distributions.Beta(p.recovery_beta, p.recovery_beta)
        for c in torch.unique(labels).tolist():
            idx = torch.nonzero(labels.cpu() == c).flatten()
            if idx.numel() < 2:
                continue
            partner[idx] = idx[torch.randperm(idx.numel(), generator=ctx.generator)]
            lam[idx] = beta.sample((idx.numel(),))
        lam_d = lam.to(server.device).unsqueeze(1)
        mixed = [(lam_d * e + (1 - lam_d) * e[partner]).detach().requires_grad_(True) for e in embeddings]
        clear_grads(server.optimizer)
        loss = F.cross_entropy(server.top(fuse(mixed, server.fusion)), labels)
        loss.backward()
        server.optimizer.step()
        grads = {pid: padded.scatter(_grad(m)) for pid, m in zip(server.party_ids, mixed)}
        _count(server, padded, sent, grads)
        server.transport.exchange({pid: Backward(grads[pid]) for pid in server.party_ids})
        if ctx.on_step is not None:
            ctx.on_step(float(loss.detach()))

    def estimated_steps(self, ctx: UnlearningContext) -> int:
        p = self.params
        classes = torch.unique(ctx.server.labels[ctx.forget.retain_ids.to(ctx.server.device)]).numel()
        n_forget = len(ctx.forget.classes) * count_batches(p.forget_samples, p.batch_size)
        return p.epochs * (n_forget + count_batches(p.retain_per_class * classes, p.batch_size))
