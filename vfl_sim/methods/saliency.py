"""Saliency- and sparsity-based unlearning: SalUn and l1-sparse fine-tuning.

Both are fine-tuning phases whose update is changed per parameter: SalUn masks it to the
salient weights, l1-sparse adds an L1 subgradient. Each party changes its own update in a
registered gradient hook (:func:`_salun_mask`, :func:`_l1_sparse`); the server changes the top
model's with tensor hooks on its parameters for the length of the phase.

Party side: SalUn's weight-saliency mask and masked updates, and l1-sparse unlearning's L1
subgradient. The saliency (the forget loss's summed gradients) is accumulated by the
``accumulate_grads`` operation of :mod:`vfl_sim.methods.importance`. The global threshold over
every party's and the server's parameters is found by counting: the party reports, for candidate
thresholds, how many of its entries reach each, and never sends the gradients themselves.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from pydantic import Field

from vfl_sim.methods.importance import accumulate_statistics
from vfl_sim.methods.registry import register_method
from vfl_sim.models.importance import l1_gamma
from vfl_sim.parties.party import Party, grad_hook, party_op
from vfl_sim.server.server import Server, count_batches, make_batches
from vfl_sim.server.unlearning import PhaseParams, UnlearningContext, UnlearningMethod

# -- party side -------------------------------------------------------------------------------


@party_op("saliency_counts")
def _saliency_counts(party: Party, name: str, thresholds: list[float]) -> dict[str, Any]:
    """How many entries of ``|name/*|`` reach each threshold, and how many entries there are."""
    t = torch.tensor(thresholds, dtype=torch.float64)
    counts = torch.zeros(len(thresholds), dtype=torch.int64)
    total = 0
    for pname, p in party.bottom.named_parameters():
        sal = party.buffers.get(f"{name}/{pname}", torch.zeros_like(p)).abs().flatten().double().cpu()
        sal, _ = torch.sort(sal)
        # entries >= t: everything from the first position where t could be inserted on the left
        counts += sal.numel() - torch.searchsorted(sal, t, right=False)
        total += p.numel()
    return {"counts": counts.tolist(), "total": total}


@party_op("saliency_mask")
def _saliency_mask(party: Party, name: str, threshold: float, mask: str) -> dict[str, Any]:
    """Keep ``mask/*`` = 1 where ``|name/*| >= threshold`` (the salient weights), else 0, and
    drop the saliency itself."""
    kept = 0
    for pname, p in party.bottom.named_parameters():
        sal = party.buffers.pop(f"{name}/{pname}", torch.zeros_like(p))
        m = (sal.abs().double() >= threshold).to(p.dtype)
        party.buffers[f"{mask}/{pname}"] = m
        kept += int(m.sum())
    return {"salient": kept}


@grad_hook("salun_mask")
def _salun_mask(party: Party, stepping: bool, mask: str, weight_decay: float = 0.0) -> None:
    """Masked update: the gradient plus ``weight_decay * w``, times the saliency mask, so the
    optimizer (built without weight decay) moves only the salient weights."""
    with torch.no_grad():
        for pname, p in party.bottom.named_parameters():
            if p.grad is None:
                continue
            m = party.buffers[f"{mask}/{pname}"]
            if weight_decay:
                p.grad.add_(p, alpha=weight_decay)
            p.grad.mul_(m)


@grad_hook("l1_sparse")
def _l1_sparse(party: Party, stepping: bool, gamma: float, epochs: int, steps_per_epoch: int) -> None:
    """Add the subgradient of ``gamma_t * ||w||_1`` (``gamma_t * sign(w)``), with ``gamma_t``
    decaying linearly per epoch (:func:`vfl_sim.models.importance.l1_gamma`); the step count
    lives in the party's buffers, so the schedule survives a party rebuilt per message."""
    step = party.buffers.setdefault("l1_sparse/step", torch.zeros(1, dtype=torch.int64))
    g = l1_gamma(gamma, min(int(step.item()) // steps_per_epoch, epochs - 1), epochs)
    with torch.no_grad():
        for p in party.bottom.parameters():
            if p.grad is not None and g:
                p.grad.add_(torch.sign(p), alpha=g)
    if stepping:
        step += 1


# -- server side ------------------------------------------------------------------------------


_SALIENCY = "salun_grad"
_MASK = "salun_mask"


@contextmanager
def _top_grad_hooks(server: Server, fn: Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace every top-model gradient ``g`` of parameter ``p`` by ``fn(name, p, g)`` while
    the context is open."""
    handles = [
        p.register_hook(lambda g, name=name, p=p: fn(name, p.detach(), g)) for name, p in server.top.named_parameters()
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def global_threshold(server: Server, top_saliency: dict[str, torch.Tensor], fraction: float, rounds: int = 4) -> float:
    """The magnitude ``t`` such that ``|saliency| >= t`` holds for ``fraction`` of all entries
    of the split model (every party's bottom and the top), found without moving the saliency:
    each round the server asks every party how many of its entries reach each of 257
    log-spaced candidate thresholds, adds its own counts, and narrows to the bracket where the
    count crosses the target. Four rounds narrow 40 decades to about 1e-8 of a decade."""
    top_abs = torch.sort(torch.cat([s.abs().flatten() for s in top_saliency.values()]).double().cpu())[0]

    def counts(thresholds: list[float]) -> tuple[list[int], int]:
        replies = server.party_op(_saliency_counts.name, name=_SALIENCY, thresholds=thresholds)
        t = torch.tensor(thresholds, dtype=torch.float64)
        total = (top_abs.numel() - torch.searchsorted(top_abs, t)).clone()
        size = top_abs.numel()
        for info in replies.values():
            total += torch.tensor(info["counts"], dtype=torch.int64)
            size += int(info["total"])
        return total.tolist(), size

    lo, hi = -30.0, 10.0  # log10 of the bracket
    chosen = 10.0**lo
    for _ in range(rounds):
        grid = [10.0 ** (lo + (hi - lo) * i / 256) for i in range(257)]
        c, size = counts(grid)
        target = max(1, math.ceil(fraction * size))
        reached = [i for i, ci in enumerate(c) if ci >= target]
        if not reached:  # fewer non-zero entries than the target: every non-zero entry is salient
            return grid[0]
        j = reached[-1]
        chosen = grid[j]
        if j == len(grid) - 1:
            break
        lo, hi = math.log10(grid[j]), math.log10(grid[j + 1])
    return chosen


class SalUnParams(PhaseParams):
    epochs: int = Field(10, ge=1, description="random-label fine-tuning epochs (paper: 10)")
    lr: float = Field(
        0.05, gt=0, description="SGD learning rate (tuned per task in the paper; 0.05, the digits training rate, here)"
    )
    threshold: float = Field(0.5, gt=0, le=1, description="fraction of weights that are salient (paper: 50 %)")


@register_method("salun")
class SalUn(UnlearningMethod[SalUnParams]):
    """SalUn: random-label fine-tuning of the salient weights only.

    Fan, Liu, Zhang, Wei, Wong, Liu, "SalUn: Empowering Machine Unlearning via Gradient-based
    Weight Saliency in Both Image Classification and Generation", ICLR 2024 (arXiv
    2310.12508). The weight saliency is ``|grad of the forget loss|``, summed over minibatches
    of the forget set with the model in eval mode; the mask keeps the ``threshold`` fraction of
    weights with the largest saliency, ranked over the whole model (here: every bottom and the
    top together, :func:`global_threshold`). Then ``epochs`` epochs of random labeling, each a
    pass over the forget set with labels drawn uniformly at random per batch followed by a
    pass over the retained data with true labels (the authors' ``RL`` for class-wise
    forgetting), updating only the salient weights: the gradient and the weight decay are
    multiplied by the mask before the optimizer step, so non-salient weights stay exactly at
    the original's values (the authors' code restores them after every step).

    **In VFL** the saliency uses the ``accumulate_grads`` party operation (one round trip per
    batch), the threshold a few rounds of counts (no gradient leaves a party), and the masked
    updates a party gradient hook and top-model tensor hooks.
    """

    top_mask: dict[str, torch.Tensor]

    def unlearn(self, ctx: UnlearningContext) -> None:
        prm = self.params
        server = ctx.server
        bs = prm.batch_size or ctx.train.batch_size
        forget, retain = ctx.forget.forget_ids, ctx.forget.retain_ids
        saliency, _ = accumulate_statistics(server, forget, name=_SALIENCY, kind="sum", batch_size=bs)
        t = global_threshold(server, saliency, prm.threshold)
        server.party_op(_saliency_mask.name, name=_SALIENCY, threshold=t, mask=_MASK)
        mask = {n: (s.abs().double() >= t).to(s.dtype) for n, s in saliency.items()}
        self.top_mask = mask  # the top model's share of the mask, for inspection

        wd = prm.weight_decay
        optim = prm.optim().model_copy(update={"weight_decay": 0.0})  # decay goes through the mask
        steps = count_batches(forget.numel(), bs) + count_batches(retain.numel(), bs)
        server.configure(optim, prm.epochs * steps, party_hook=(_salun_mask.name, {"mask": _MASK, "weight_decay": wd}))

        def relabel(logits: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            is_forget = torch.isin(ids, forget).to(labels.device)
            random = torch.randint(0, logits.shape[1], labels.shape, generator=ctx.generator).to(labels.device)
            return torch.nn.functional.cross_entropy(logits, torch.where(is_forget, random, labels))

        with _top_grad_hooks(server, lambda name, p, g: (g + wd * p) * mask[name]):
            for _ in range(prm.epochs):
                batches = make_batches(forget, bs, ctx.generator) + make_batches(retain, bs, ctx.generator)
                server.run_epoch(batches, loss_fn=relabel, on_step=ctx.on_step)

    def estimated_steps(self, ctx: UnlearningContext) -> int:
        bs = self.params.batch_size or ctx.train.batch_size
        per_epoch = count_batches(ctx.forget.forget_ids.numel(), bs) + count_batches(ctx.forget.retain_ids.numel(), bs)
        return self.params.epochs * per_epoch


class L1SparseParams(PhaseParams):
    epochs: int = Field(10, ge=1, description="fine-tuning epochs (paper: 10)")
    lr: float = Field(0.01, gt=0, description="SGD learning rate (paper: 0.01)")
    gamma: float = Field(
        1e-4,
        ge=0,
        description="L1 weight at the first epoch, decaying linearly per epoch (paper's range: 5e-5 to 1e-4)",
    )


@register_method("l1_sparse")
class L1Sparse(UnlearningMethod[L1SparseParams]):
    """l1-sparse unlearning: fine-tuning on the retained data with an L1 penalty on the weights.

    Jia, Liu, Ram, Yao, Liu, Liu, Sharma, Liu, "Model Sparsity Can Simplify Machine
    Unlearning", NeurIPS 2023 (arXiv 2304.04934), "sparsity-aware unlearning": minimize
    ``L(w; D_r) + gamma_t * ||w||_1`` for ``epochs`` epochs, with ``gamma_t = gamma * (1 -
    t / epochs)`` in epoch ``t`` (the linearly decaying schedule the paper found best: strong
    sparsity early, plain fine-tuning at the end). The penalty covers every parameter of the
    split model: each party adds ``gamma_t * sign(w)`` to its bottom's gradients in a gradient
    hook (counting its own steps for the schedule), the server to the top model's.
    """

    def unlearn(self, ctx: UnlearningContext) -> None:
        prm = self.params
        server = ctx.server
        bs = prm.batch_size or ctx.train.batch_size
        retain = ctx.forget.retain_ids
        per_epoch = count_batches(retain.numel(), bs)
        hook = {"gamma": prm.gamma, "epochs": prm.epochs, "steps_per_epoch": per_epoch}
        server.configure(prm.optim(), prm.epochs * per_epoch, party_hook=(_l1_sparse.name, hook))
        current = {"gamma": prm.gamma}
        with _top_grad_hooks(server, lambda name, p, g: g + current["gamma"] * torch.sign(p)):
            for epoch in range(prm.epochs):
                current["gamma"] = l1_gamma(prm.gamma, epoch, prm.epochs)
                server.run_epoch(make_batches(retain, bs, ctx.generator), on_step=ctx.on_step)

    def estimated_steps(self, ctx: UnlearningContext) -> int:
        return ctx.steps(ctx.forget.retain_ids, self.params.epochs, self.params.batch_size)
