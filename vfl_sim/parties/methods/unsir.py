"""The party's side of UNSIR: error-maximizing noise over the party's own feature columns.

UNSIR (Tarun, Chundawat, Mandal, Kankanhalli, "Fast Yet Effective Machine Unlearning", IEEE
TNNLS 2023, arXiv 2111.08947) learns a batch of noise inputs that maximizes the loss of the
forgotten class, then trains on it. In VFL an input is cut across the parties, so each party
holds the noise for its own columns in ``party.buffers`` (``unsir/noise``, one block of rows per
noise set) and learns it from the gradient of its own embedding, with its own Adam state and
its share of the paper's L2 penalty (the penalty is a sum over all columns, so it splits exactly
across parties). The party never learns which class a noise set stands for: the server keeps
the labels.

Training on batches that mix real samples and noise rows uses the op ``unsir_train_step``: a
batch names real samples by id and noise rows as ``-1 - row``. A party cannot keep an autograd
graph between messages, so, like ``Party(replay_backward=True)``, it stores the batch, its random
state and its batch-norm buffers with the embedding it returns, and replays that forward pass
when the gradient arrives (in the same message as the next batch's request).
"""

from __future__ import annotations

from typing import Any

import torch

from vfl_sim.parties.party import Party, party_op
from vfl_sim.seeding import derive_seed

_NOISE = "unsir/noise"
_BETAS = (0.9, 0.999)
_EPS = 1e-8


def _noise_embedding(party: Party) -> torch.Tensor:
    party.bottom.eval()
    with torch.no_grad():
        return party.bottom(party.buffers[_NOISE])


@party_op("unsir_noise_init")
def unsir_noise_init(party: Party, rows: int, seed: int) -> dict[str, Any]:
    """Draw ``rows`` standard-normal noise rows of this party's feature shape (seeded by ``seed``
    and the party's id) and return their eval-mode embedding."""
    gen = torch.Generator().manual_seed(derive_seed(seed, "unsir-noise", party.party_id))
    noise = torch.randn((rows, *party.features.shape[1:]), generator=gen).to(party.device)
    party.buffers[_NOISE] = noise
    party.buffers["unsir/m"] = torch.zeros_like(noise)
    party.buffers["unsir/v"] = torch.zeros_like(noise)
    party.buffers["unsir/t"] = torch.zeros(())
    return {"embedding": _noise_embedding(party)}


@party_op("unsir_noise_step")
def unsir_noise_step(party: Party, grad: torch.Tensor, lr: float, penalty: float, set_size: int) -> dict[str, Any]:
    """One Adam step on the noise: back-propagate ``grad`` (the gradient of the server's loss
    with respect to this party's noise embedding) to the noise, add the gradient of the party's
    share of ``penalty * mean over noise samples of their squared norm``, update, and return
    the embedding of the new noise."""
    noise = party.buffers[_NOISE].clone().requires_grad_(True)
    party.bottom.eval()
    out = party.bottom(noise)
    g_noise = torch.autograd.grad(out, noise, grad.to(party.device))[0]
    g_noise = g_noise + penalty * 2.0 * noise.detach() / set_size
    m = _BETAS[0] * party.buffers["unsir/m"] + (1 - _BETAS[0]) * g_noise
    v = _BETAS[1] * party.buffers["unsir/v"] + (1 - _BETAS[1]) * g_noise.square()
    t = float(party.buffers["unsir/t"]) + 1
    m_hat, v_hat = m / (1 - _BETAS[0] ** t), v / (1 - _BETAS[1] ** t)
    party.buffers[_NOISE] = noise.detach() - lr * m_hat / (v_hat.sqrt() + _EPS)
    party.buffers["unsir/m"], party.buffers["unsir/v"] = m, v
    party.buffers["unsir/t"] = torch.tensor(t)
    return {"embedding": _noise_embedding(party)}


def _inputs(party: Party, ids: torch.Tensor) -> torch.Tensor:
    """Feature rows of real samples (``id >= 0``) and noise rows (``id = -1 - row``), in order."""
    ids = ids.to(party.device)
    real = ids >= 0
    x = torch.empty((ids.numel(), *party.features.shape[1:]), dtype=party.features.dtype, device=party.device)
    if real.any():
        x[real] = party.features.index_select(0, ids[real])
    if (~real).any():
        x[~real] = party.buffers[_NOISE].index_select(0, -1 - ids[~real]).to(x.dtype)
    return x


@party_op("unsir_train_step")
def unsir_train_step(
    party: Party, grad: torch.Tensor | None = None, next_ids: torch.Tensor | None = None
) -> dict[str, Any]:
    """Apply ``grad`` to the last batch (replaying its training forward pass) and step the
    phase's optimizer; then return the training-mode embedding of ``next_ids``."""
    if grad is not None:
        ids, rng = party.buffers.pop("unsir/replay_ids"), party.buffers.pop("unsir/replay_rng")
        bn = {
            k[len("unsir/replay_bn/") :]: party.buffers.pop(k)
            for k in list(party.buffers)
            if k.startswith("unsir/replay_bn/")
        }
        with torch.no_grad():
            for name, buf in party.bottom.named_buffers():
                buf.copy_(bn[name])
        outer = torch.get_rng_state()
        torch.set_rng_state(rng.to(torch.uint8))
        party.bottom.train()
        out = party.bottom(_inputs(party, ids))
        torch.set_rng_state(outer)
        out.backward(grad.to(party.device))
        party.step("unsir_train_step")
    if next_ids is None:
        return {}
    party.buffers["unsir/replay_ids"] = next_ids.clone()
    for name, buf in party.bottom.named_buffers():
        party.buffers[f"unsir/replay_bn/{name}"] = buf.detach().clone()
    with party._own_randomness():
        party.buffers["unsir/replay_rng"] = torch.get_rng_state()
        party.bottom.train()
        with torch.no_grad():
            out = party.bottom(_inputs(party, next_ids))
    return {"embedding": out}
