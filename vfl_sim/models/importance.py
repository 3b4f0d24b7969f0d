"""Per-sample gradient statistics of a model, for importance estimates (Fisher information).

Used on both sides of the split: a party for its bottom model (cotangents on its embedding,
sent by the server) and the server for its top model (cotangents on the logits). The model
must be in eval mode, so that every sample's output depends on that sample alone.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, vjp, vmap

_FLOATS_PER_CHUNK = 1 << 24
"""How many per-sample gradient entries one vectorized pass may hold (64 MiB of float32)."""


def per_sample_sq_grads(module: nn.Module, inputs: torch.Tensor, cotangents: torch.Tensor) -> dict[str, torch.Tensor]:
    """``sum_i sum_k (J_i^T c_ik)^2`` for every parameter, elementwise.

    ``J_i`` is the Jacobian of ``module(inputs[i])`` with respect to the parameters and
    ``cotangents`` has shape ``(n, K, *output_shape)``: ``K`` cotangents per sample. With
    ``c_ik = sqrt(p_k(x_i)) * d(-log p_k(x_i)) / d output`` the result is ``n`` times the
    diagonal of the true Fisher information at ``inputs`` (the expectation over the model's
    own predictive distribution), each sample's gradient squared on its own.
    """
    if module.training:
        raise ValueError("per-sample gradients need the module in eval mode")
    params = {name: p.detach() for name, p in module.named_parameters()}
    buffers = {name: b.detach() for name, b in module.named_buffers()}
    n, k = cotangents.shape[:2]

    def one_sample(p: dict[str, torch.Tensor], x: torch.Tensor, c: torch.Tensor) -> dict[str, torch.Tensor]:
        # one forward pass per sample, then its K vector-Jacobian products
        pullback = vjp(lambda q: functional_call(module, (q, buffers), (x.unsqueeze(0),)).squeeze(0), p)[1]
        (per_k,) = vmap(pullback)(c)
        return {name: g.pow(2).sum(0) for name, g in per_k.items()}

    per_sample = vmap(one_sample, in_dims=(None, 0, 0))
    size = max(1, k * sum(p.numel() for p in params.values()))
    chunk = max(1, _FLOATS_PER_CHUNK // size)
    total = {name: torch.zeros_like(p) for name, p in params.items()}
    for start in range(0, n, chunk):
        squares = per_sample(params, inputs[start : start + chunk], cotangents[start : start + chunk])
        for name, sq in squares.items():
            total[name] += sq.sum(0)
    return total


@torch.no_grad()
def ssd_dampen_(param: torch.Tensor, imp_full: torch.Tensor, imp_forget: torch.Tensor, alpha: float, lam: float) -> int:
    """Selective Synaptic Dampening of one parameter tensor, in place; returns how many entries
    were selected.

    Entries whose forget-set importance exceeds ``alpha`` times their full-data importance
    (``I_Df > alpha * I_D``) are multiplied by ``beta = min(lam * I_D / I_Df, 1)``; all others
    are left exactly as they are (Foster, Schoepf, Brintrup, AAAI 2024).
    """
    selected = imp_forget > alpha * imp_full
    beta = torch.clamp(lam * imp_full / imp_forget.clamp_min(torch.finfo(imp_forget.dtype).tiny), max=1.0)
    param[selected] = param[selected] * beta[selected]
    return int(selected.sum())


def fisher_variance(
    fisher: torch.Tensor, *, alpha: float, max_inverse: float, per_output_unit: bool, scale: float = 1.0
) -> torch.Tensor:
    """Variance of the Fisher-forgetting noise of one parameter tensor.

    ``alpha * min(1 / (F + 1e-8), max_inverse)``: covariance proportional to the inverse of the
    diagonal Fisher ``F``, scaled by ``alpha``, with the inverse clamped so that directions the
    retained data does not constrain get bounded noise instead of destroying the model (the
    clamp of Golatkar et al.'s reference implementation: 1e3, 1e2 for the classifier layer).
    ``per_output_unit`` averages the variance over the second axis (the inputs of a weight
    matrix or convolution), one variance per output unit as in that implementation; ``scale``
    multiplies the result (10 for biases, normalization parameters and the classifier layer
    there).
    """
    var = alpha * torch.clamp(1.0 / (fisher + 1e-8), max=max_inverse)
    if per_output_unit and var.ndim > 1:
        var = var.mean(dim=1, keepdim=True).expand_as(var).clone()
    return var * scale


def l1_gamma(gamma: float, epoch: int, epochs: int) -> float:
    """The L1 weight of epoch ``epoch`` (0-based) of ``epochs``: ``gamma * (1 - epoch / epochs)``,
    decaying linearly from ``gamma`` in the first epoch (the schedule of Jia et al., NeurIPS 2023)."""
    return gamma * (1.0 - epoch / epochs)
