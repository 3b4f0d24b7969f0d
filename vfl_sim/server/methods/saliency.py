"""Saliency- and sparsity-based unlearning: SalUn and l1-sparse fine-tuning.

Both are fine-tuning phases whose update is changed per parameter: SalUn masks it to the
salient weights, l1-sparse adds an L1 subgradient. Each party changes its own update in a
registered gradient hook (:mod:`vfl_sim.parties.methods.saliency`); the server changes the top
model's with tensor hooks on its parameters for the length of the phase.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from pydantic import Field

from vfl_sim.models.importance import l1_gamma
from vfl_sim.server.methods.base import PhaseParams, UnlearningContext, UnlearningMethod
from vfl_sim.server.methods.importance import accumulate_statistics
from vfl_sim.server.methods.registry import register_method
from vfl_sim.server.server import Server, count_batches, make_batches

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
        replies = server.party_op("saliency_counts", name=_SALIENCY, thresholds=thresholds)
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
class SalUn(UnlearningMethod):
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

    Params = SalUnParams
    top_mask: dict[str, torch.Tensor]

    def unlearn(self, ctx: UnlearningContext) -> None:
        assert isinstance(self.params, SalUnParams)
        prm = self.params
        server = ctx.server
        bs = prm.batch_size or ctx.train.batch_size
        forget, retain = ctx.forget.forget_ids, ctx.forget.retain_ids
        saliency, _ = accumulate_statistics(server, forget, name=_SALIENCY, kind="sum", batch_size=bs)
        t = global_threshold(server, saliency, prm.threshold)
        server.party_op("saliency_mask", name=_SALIENCY, threshold=t, mask=_MASK)
        mask = {n: (s.abs().double() >= t).to(s.dtype) for n, s in saliency.items()}
        self.top_mask = mask  # the top model's share of the mask, for inspection

        wd = prm.weight_decay
        optim = prm.optim().model_copy(update={"weight_decay": 0.0})  # decay goes through the mask
        steps = count_batches(forget.numel(), bs) + count_batches(retain.numel(), bs)
        server.configure(optim, prm.epochs * steps, party_hook=("salun_mask", {"mask": _MASK, "weight_decay": wd}))

        def relabel(logits: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            is_forget = torch.isin(ids, forget).to(labels.device)
            random = torch.randint(0, logits.shape[1], labels.shape, generator=ctx.generator).to(labels.device)
            return torch.nn.functional.cross_entropy(logits, torch.where(is_forget, random, labels))

        with _top_grad_hooks(server, lambda name, p, g: (g + wd * p) * mask[name]):
            for _ in range(prm.epochs):
                batches = make_batches(forget, bs, ctx.generator) + make_batches(retain, bs, ctx.generator)
                server.run_epoch(batches, loss_fn=relabel, on_step=ctx.on_step)

    def estimated_steps(self, ctx: UnlearningContext) -> int:
        assert isinstance(self.params, SalUnParams)
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
class L1Sparse(UnlearningMethod):
    """l1-sparse unlearning: fine-tuning on the retained data with an L1 penalty on the weights.

    Jia, Liu, Ram, Yao, Liu, Liu, Sharma, Liu, "Model Sparsity Can Simplify Machine
    Unlearning", NeurIPS 2023 (arXiv 2304.04934), "sparsity-aware unlearning": minimize
    ``L(w; D_r) + gamma_t * ||w||_1`` for ``epochs`` epochs, with ``gamma_t = gamma * (1 -
    t / epochs)`` in epoch ``t`` (the linearly decaying schedule the paper found best: strong
    sparsity early, plain fine-tuning at the end). The penalty covers every parameter of the
    split model: each party adds ``gamma_t * sign(w)`` to its bottom's gradients in a gradient
    hook (counting its own steps for the schedule), the server to the top model's.
    """

    Params = L1SparseParams

    def unlearn(self, ctx: UnlearningContext) -> None:
        assert isinstance(self.params, L1SparseParams)
        prm = self.params
        server = ctx.server
        bs = prm.batch_size or ctx.train.batch_size
        retain = ctx.forget.retain_ids
        per_epoch = count_batches(retain.numel(), bs)
        hook = {"gamma": prm.gamma, "epochs": prm.epochs, "steps_per_epoch": per_epoch}
        server.configure(prm.optim(), prm.epochs * per_epoch, party_hook=("l1_sparse", hook))
        current = {"gamma": prm.gamma}
        with _top_grad_hooks(server, lambda name, p, g: g + current["gamma"] * torch.sign(p)):
            for epoch in range(prm.epochs):
                current["gamma"] = l1_gamma(prm.gamma, epoch, prm.epochs)
                server.run_epoch(make_batches(retain, bs, ctx.generator), on_step=ctx.on_step)

    def estimated_steps(self, ctx: UnlearningContext) -> int:
        assert isinstance(self.params, L1SparseParams)
        return ctx.steps(ctx.forget.retain_ids, self.params.epochs, self.params.batch_size)
