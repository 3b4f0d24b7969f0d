"""Party side of the sparsity- and saliency-based methods: SalUn's weight-saliency mask and
masked updates, and l1-sparse unlearning's L1 subgradient.

The saliency (the forget loss's summed gradients) is accumulated by the ``accumulate_grads``
operation of :mod:`vfl_sim.parties.methods.importance`. The global threshold over every party's and
the server's parameters is found by counting: the party reports, for candidate thresholds,
how many of its entries reach each, and never sends the gradients themselves.
"""

from __future__ import annotations

from typing import Any

import torch

from vfl_sim.models.importance import l1_gamma
from vfl_sim.parties.party import Party, grad_hook, party_op


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
