"""The party's side of ReMisVFU: the leaving party's projected update of its bottom model.

ReMisVFU (Wu, He, Liang, Gong, Jiang, Hu, Cheng, "ReMisVFU: Vertical Federated Unlearning via
Representation Misdirection for Intermediate Output Feature", AAAI 2026, arXiv 2512.10348)
pulls the leaving party's embedding to a fixed anchor ``c u`` (forgetting loss) while the
model keeps fitting the labels (retention loss). The two losses meet in the leaving party's
bottom model, whose gradients are aligned per parameter tensor before the step, as in the
authors' code (``vfl/un_core3.py``): where the retention gradient ``g_r`` points against the
forgetting gradient ``g_f`` (``<g_f, g_r> < 0``), its component along ``g_f`` is removed, and
the update direction is ``g_f + alpha * g_r``.

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
from typing import Any

import torch

from vfl_sim.parties.party import Party, party_op
from vfl_sim.protocol import Embed


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
