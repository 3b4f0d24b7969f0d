"""Boundary Unlearning: Boundary Shrink and Boundary Expanding, as protocols across parties.

Chen, Gao, Liu, Peng, Wang, "Boundary Unlearning: Rapid Forgetting of Deep Networks via
Shifting the Decision Boundary", CVPR 2023 (arXiv 2303.11570). Both shift the decision
boundary of the forgotten data instead of scrubbing parameters: Shrink relabels every forget
sample with its nearest wrong class, found by an adversarial step on the input; Expanding
trains the forget samples into an extra "shadow" class and then cuts that class off.

The party's side of Boundary Shrink is a fast-gradient-sign step on the party's own features
(:func:`boundary_fgsm`). Boundary Shrink finds the nearest wrong class of a forget sample with
one FGSM step on the input of the original model. In VFL the input is cut across the parties.
The loss depends on a party's slice ``x_k`` only through its embedding ``e_k``, so ``dL/dx_k =
(de_k/dx_k)^T dL/de_k``: the server sends each party ``dL/de_k`` of its own embedding, the party
back-propagates it through its bottom model to its own features, perturbs them, and returns the
embedding of the perturbed slice. The parties' signs together are exactly the sign of the full
input gradient, so the split attack equals the monolithic one. The party never sees labels,
logits or another party's data.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from vfl_sim.forget import ForgetKind
from vfl_sim.methods.registry import register_method
from vfl_sim.models.top import fuse
from vfl_sim.parties.party import Party, party_op
from vfl_sim.server.server import Server
from vfl_sim.server.unlearning import PhaseParams, UnlearningContext, UnlearningMethod

# -- party side -------------------------------------------------------------------------------


def feature_range(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature minimum and maximum over every sample the party holds (its valid input box)."""
    return features.amin(dim=0), features.amax(dim=0)


def _eval_embedding(party: Party, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return party.bottom(x)


@party_op("boundary_fgsm")
def boundary_fgsm(
    party: Party,
    bound: float,
    ids: torch.Tensor,
    grad: torch.Tensor,
    next_ids: torch.Tensor | None = None,
) -> dict[str, Any]:
    """One FGSM step on the party's features of ``ids`` along ``grad`` (dLoss/dEmbedding).

    The step is ``bound`` times each feature's range over the party's samples (the paper's
    bound of 0.1 is on images scaled to [0, 1], that is 0.1 of the pixel range), and the result
    is clipped to that range, as the reference clips to [0, 1]. The bottom model runs in eval
    mode (the attacked model is the fixed original) and accumulates no parameter gradient.

    Returns the eval-mode embedding of the perturbed slice (``embedding``) and, when
    ``next_ids`` is given, the clean eval-mode embedding of the next chunk (``next``), so the
    server's next attack step needs no separate round trip.
    """
    if party.bottom.training:
        party.bottom.eval()
    ids = ids.to(party.device)
    x = party.features.index_select(0, ids).detach().requires_grad_(True)
    with torch.enable_grad():
        out = party.bottom(x)
        (g,) = torch.autograd.grad(out, x, grad_outputs=grad.to(out.device, out.dtype))
    lo, hi = feature_range(party.features)
    x_adv = torch.minimum(torch.maximum(x.detach() + bound * (hi - lo) * g.sign(), lo), hi)
    reply: dict[str, Any] = {"embedding": _eval_embedding(party, x_adv)}
    if next_ids is not None:
        reply["next"] = _eval_embedding(party, party.features.index_select(0, next_ids.to(party.device)))
    return reply


# -- server side ------------------------------------------------------------------------------


log = logging.getLogger(__name__)


# -- Boundary Shrink --------------------------------------------------------------------------


class BoundaryShrinkParams(PhaseParams):
    """Boundary Shrink. The attack settings are the reference code's; the fine-tuning phase
    keeps its optimizer (SGD, momentum 0.9, no weight decay, 10 epochs over the forget set) with
    the learning rate chosen on digits (the reference's 1e-5 is for CIFAR-10 models trained far
    longer; on digits it moves nothing)."""

    bound: float = Field(
        0.1,
        gt=0,
        description="FGSM step as a fraction of each feature's range (paper: 0.1 on [0, 1] images)",
    )
    incorrect_only: bool = Field(
        True,
        description="if the attack leaves a sample's prediction at its true class, take the "
        "adversarial logits' best other class (the paper's 'nearest but incorrect' class; the "
        "reference code keeps the failed prediction)",
    )
    epochs: int = Field(10, ge=1, description="passes over the forget set (paper: 10)")
    lr: float = Field(1e-3, gt=0, description="SGD learning rate (paper: 1e-5 on CIFAR-10)")
    weight_decay: float = Field(0.0, ge=0, description="paper: none")


def adversarial_labels(
    server: Server, ids: torch.Tensor, *, bound: float, batch_size: int, incorrect_only: bool = True
) -> torch.Tensor:
    """The class each of ``ids`` falls into after one FGSM step on its input, under the current
    model in eval mode, computed across the parties.

    Per chunk of ids: the server has the clean embeddings, computes the cross-entropy with the
    true labels and its gradient with respect to each party's embedding, and sends each party
    its own gradient; the party perturbs its own features along the sign of its input gradient
    and returns the embedding of the perturbed slice (party op ``boundary_fgsm``), together
    with the clean embedding of the next chunk. The server predicts from the fused perturbed
    embeddings. One round trip per chunk, plus one for the first chunk's clean embeddings.
    """
    ids = ids.to(torch.int64).cpu()
    chunks = list(torch.split(ids, batch_size))
    # Under forget.cover every chunk carries decoys (zero cotangent rows: their FGSM step is
    # zero); the server reads the real rows of every reply.
    sent = server.cover_plan(chunks)
    clean, _ = server.embed(sent[0].ids, cover=False)
    if server.cover is not None:
        for e in clean:
            server.cover.count(sent[0], sent[0].ids, e)
    out: list[torch.Tensor] = []
    server.top.eval()
    for t, chunk in enumerate(chunks):
        leaves = [sent[t].take(e).detach().requires_grad_(True) for e in clean]
        labels = server.labels[chunk.to(server.device)]
        loss = F.cross_entropy(server.top(fuse(leaves, server.fusion)), labels)
        grads = torch.autograd.grad(loss, leaves)
        nxt = sent[t + 1].ids if t + 1 < len(chunks) else None
        tensors = {
            pid: {
                "ids": sent[t].ids,
                "grad": sent[t].scatter(g.detach()),
                **({"next_ids": nxt} if nxt is not None else {}),
            }
            for pid, g in zip(server.party_ids, grads)
        }
        acks = server.party_call(boundary_fgsm.name, {"bound": bound}, tensors)
        if server.cover is not None:
            for pid in server.party_ids:
                server.cover.count(sent[t], sent[t].ids, tensors[pid]["grad"], acks[pid].tensors["embedding"])
                if nxt is not None:
                    server.cover.count(sent[t + 1], nxt, acks[pid].tensors["next"])
        adv = server.logits(
            [sent[t].take(acks[pid].tensors["embedding"].to(server.device)) for pid in server.party_ids]
        )
        pred = adv.argmax(1)
        if incorrect_only:
            others = adv.scatter(1, labels[:, None], float("-inf"))
            pred = torch.where(pred == labels, others.argmax(1), pred)
        out.append(pred)
        if nxt is not None:
            clean = [acks[pid].tensors["next"].to(server.device) for pid in server.party_ids]
    return torch.cat(out)


@register_method("boundary_shrink")
class BoundaryShrink(UnlearningMethod[BoundaryShrinkParams]):
    """Boundary Shrink: fine-tune every forget sample toward its nearest wrong class.

    Chen, Gao, Liu, Peng, Wang, "Boundary Unlearning: Rapid Forgetting of Deep Networks via
    Shifting the Decision Boundary", CVPR 2023 (arXiv 2303.11570). Neighbour search: one FGSM
    step ``x' = x + eps * sign(grad_x CE(f(x), y))`` on the original model (eval mode); the class
    predicted for ``x'`` is the forget sample's new label. Then the whole model (top and every
    bottom) is fine-tuned on the clean forget samples with those labels. The forgotten class's
    region is split among its neighbours, whose boundaries absorb it.

    In VFL the input is cut across parties: the search is :func:`adversarial_labels` (each
    party perturbs only its own features, from the gradient of its own embedding, and the
    server, which alone holds labels, reads the adversarial class). As in the reference, the
    attacked model is the frozen original, so the labels are computed once before fine-tuning
    (the reference recomputes the same deterministic labels every epoch).

    Class requests only, as in the paper ("unlearn an entire class"): on digits, shrinking a
    random 5 % of the training samples cost about 35 points of test accuracy.
    """

    supports = frozenset({ForgetKind.CLASS})

    def unlearn(self, ctx: UnlearningContext) -> None:
        p = self.params
        forget = ctx.forget.forget_ids
        bs = p.batch_size or ctx.train.batch_size
        nearest = adversarial_labels(ctx.server, forget, bound=p.bound, batch_size=bs, incorrect_only=p.incorrect_only)
        true = ctx.server.labels[forget.to(ctx.server.device)]
        log.info(
            "boundary_shrink: the attack moved %.1f%% of the forget samples",
            100 * float((nearest != true).float().mean()),
        )
        targets = ctx.server.labels.clone()
        targets[forget.to(targets.device)] = nearest

        def loss(logits: torch.Tensor, _labels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(logits, targets[ids.to(targets.device)])

        ctx.phase(p, forget, loss_fn=loss)

    def estimated_steps(self, ctx: UnlearningContext) -> int:
        return ctx.steps(ctx.forget.forget_ids, self.params.epochs, self.params.batch_size)


# -- Boundary Expanding -----------------------------------------------------------------------


class BoundaryExpandParams(PhaseParams):
    """Boundary Expanding. The reference's optimizer (SGD, momentum 0.9, no weight decay, 10
    epochs over the forget set) with the learning rate chosen on digits (the reference's 1e-5
    is for CIFAR-10)."""

    epochs: int = Field(10, ge=1, description="passes over the forget set (paper: 10)")
    lr: float = Field(1e-3, gt=0, description="SGD learning rate (paper: 1e-5 on CIFAR-10)")
    weight_decay: float = Field(0.0, ge=0, description="paper: none")


def widen(head: nn.Linear, generator: torch.Generator) -> nn.Linear:
    """``head`` with one more output (the shadow class): the old rows copied, the new row
    initialized as the reference initializes a linear layer (Xavier-normal weight, zero bias)."""
    wide = nn.Linear(head.in_features, head.out_features + 1, bias=head.bias is not None)
    wide = wide.to(head.weight.device, head.weight.dtype)
    with torch.no_grad():
        std = (2.0 / (head.in_features + head.out_features + 1)) ** 0.5
        wide.weight[-1] = torch.randn(head.in_features, generator=generator).to(wide.weight) * std
        wide.weight[:-1] = head.weight
        if head.bias is not None:
            wide.bias[-1] = 0.0
            wide.bias[:-1] = head.bias
    return wide


def prune(wide: nn.Linear) -> nn.Linear:
    """``wide`` without its last output (the shadow class)."""
    head = nn.Linear(wide.in_features, wide.out_features - 1, bias=wide.bias is not None)
    head = head.to(wide.weight.device, wide.weight.dtype)
    with torch.no_grad():
        head.weight.copy_(wide.weight[:-1])
        if wide.bias is not None:
            head.bias.copy_(wide.bias[:-1])
    return head


@register_method("boundary_expand")
class BoundaryExpand(UnlearningMethod[BoundaryExpandParams]):
    """Boundary Expanding: move the forget samples into a shadow class, then prune it.

    Chen, Gao, Liu, Peng, Wang, "Boundary Unlearning: Rapid Forgetting of Deep Networks via
    Shifting the Decision Boundary", CVPR 2023 (arXiv 2303.11570). The server widens the top
    model's classifier head by one output neuron (the shadow class), fine-tunes the widened
    model on the forget samples, all labelled with the shadow class, and then prunes the
    shadow neuron: the forget samples' activations, dispersed into a class that no longer
    exists, fall on the remaining classes. As in the reference, the fine-tuning updates the
    whole widened model, the feature extractor (here every party's bottom model, through the
    gradient of its own embedding) and the classifier. The top model ends with its original
    shape. Parties never learn that a class was added.

    Class requests only, as in the paper: a shadow class for random samples of every class
    drags every class's features toward it (on digits, about 40 points of test accuracy lost).
    """

    supports = frozenset({ForgetKind.CLASS})

    def unlearn(self, ctx: UnlearningContext) -> None:
        top = ctx.server.top
        shadow = int(top.classifier.out_features)
        top.net[-1] = widen(top.classifier, ctx.generator)

        def loss(logits: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(logits, torch.full_like(labels, shadow))

        try:
            ctx.phase(self.params, ctx.forget.forget_ids, loss_fn=loss)
        finally:
            top.net[-1] = prune(top.classifier)
            ctx.server.optimizer = ctx.server.scheduler = None  # they held the widened head

    def estimated_steps(self, ctx: UnlearningContext) -> int:
        return ctx.steps(ctx.forget.forget_ids, self.params.epochs, self.params.batch_size)
