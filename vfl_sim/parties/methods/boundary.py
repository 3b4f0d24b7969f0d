"""The party's side of Boundary Shrink: a fast-gradient-sign step on the party's own features.

Boundary Shrink (Chen, Gao, Liu, Peng, Wang, "Boundary Unlearning: Rapid Forgetting of Deep
Networks via Shifting the Decision Boundary", CVPR 2023, arXiv 2303.11570) finds the nearest
wrong class of a forget sample with one FGSM step on the input of the original model. In VFL
the input is cut across the parties. The loss depends on a party's slice ``x_k`` only through
its embedding ``e_k``, so ``dL/dx_k = (de_k/dx_k)^T dL/de_k``: the server sends each party
``dL/de_k`` of its own embedding, the party back-propagates it through its bottom model to its
own features, perturbs them, and returns the embedding of the perturbed slice. The parties'
signs together are exactly the sign of the full input gradient, so the split attack equals the
monolithic one. The party never sees labels, logits or another party's data.
"""

from __future__ import annotations

from typing import Any

import torch

from vfl_sim.parties.party import Party, party_op


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
