"""Party side of the importance-based methods: gradient statistics of the bottom model, and
the edits they drive (Fisher forgetting's noise, Selective Synaptic Dampening).

Statistics accumulate in :attr:`Party.buffers` under ``<name>/<parameter>``, so they survive a
party that is rebuilt for every message (Flower ClientApps). The server sends, per batch, the
sample ids and the gradient of a loss with respect to this party's embedding of them (what a
``Backward`` would carry); the party back-propagates it through its bottom model in eval mode
(no batch-norm statistics move, no dropout), as the papers compute importances with
``model.eval()``.
"""

from __future__ import annotations

from typing import Any

import torch

from vfl_sim.models.importance import fisher_variance, per_sample_sq_grads, ssd_dampen_
from vfl_sim.parties.party import Party, party_op
from vfl_sim.seeding import derive_seed


def _named(party: Party) -> list[tuple[str, torch.nn.Parameter]]:
    return list(party.bottom.named_parameters())


def _stat(party: Party, name: str, param: str, like: torch.Tensor) -> torch.Tensor:
    key = f"{name}/{param}"
    if key not in party.buffers:
        party.buffers[key] = torch.zeros_like(like)
    return party.buffers[key]


@party_op("accumulate_grads")
def _accumulate_grads(party: Party, name: str, kind: str, ids: torch.Tensor, grad: torch.Tensor) -> None:
    """Add a statistic of the bottom model's gradients at ``ids`` to the buffers ``name/*``.

    ``grad`` is the server's cotangent on this party's embedding of ``ids``:

    - ``kind="batch_sq"``: ``grad`` is ``(n, d)``, the gradient of one minibatch loss; adds the
      squared minibatch gradient of every parameter (SSD's importance).
    - ``kind="sum"``: the same, adds the gradient itself (SalUn's saliency).
    - ``kind="sample_sq"``: ``grad`` is ``(n, K, d)``, K cotangents per sample; adds
      ``sum_i sum_k (J_i^T grad[i, k])^2``, each sample's gradient squared on its own
      (Fisher information: diagonal of the true Fisher when the server weights the class
      gradients by the square roots of the model's probabilities).
    """
    party._set_mode(False)
    x = party.features.index_select(0, ids.to(party.device))
    g = grad.to(party.device)
    named = _named(party)
    if kind == "sample_sq":
        squares = per_sample_sq_grads(party.bottom, x, g)
        for pname, p in named:
            _stat(party, name, pname, p).add_(squares[pname])
        return
    if kind not in ("batch_sq", "sum"):
        raise ValueError(f"{party.party_id}: unknown statistic '{kind}'")
    params = [p for _, p in named]
    with torch.enable_grad():
        for p in params:
            p.requires_grad_(True)
        out = party.bottom(x)
        grads = torch.autograd.grad(out, params, g, allow_unused=True)
    for (pname, p), gp in zip(named, grads):
        if gp is None:
            continue
        _stat(party, name, pname, p).add_(gp.pow(2) if kind == "batch_sq" else gp)


@party_op("ssd_dampen")
def _ssd_dampen(
    party: Party, alpha: float, lam: float, full_batches: int, forget_batches: int, full: str, forget: str
) -> dict[str, Any]:
    """Selective Synaptic Dampening of the bottom model from the importances in the buffers
    ``full/*`` (summed over ``full_batches`` minibatches of the training data) and ``forget/*``
    (over ``forget_batches`` minibatches of the forget set)."""
    selected = total = 0
    for pname, p in _named(party):
        imp_full = party.buffers.get(f"{full}/{pname}", torch.zeros_like(p)) / full_batches
        imp_forget = party.buffers.get(f"{forget}/{pname}", torch.zeros_like(p)) / forget_batches
        selected += ssd_dampen_(p.data, imp_full, imp_forget, alpha, lam)
        total += p.numel()
    return {"selected": selected, "parameters": total}


@party_op("fisher_noise")
def _fisher_noise(party: Party, name: str, samples: int, alpha: float, max_inverse: float, seed: int) -> dict[str, Any]:
    """Fisher forgetting on the bottom model: ``w + sqrt(var) * n`` with ``n ~ N(0, I)`` drawn
    from a generator seeded with ``seed`` and this party's id, and ``var`` from the diagonal
    Fisher ``name/*`` summed over ``samples`` samples (:func:`fisher_variance`; biases and
    normalization parameters get ten times the variance, as in the reference implementation).
    """
    gen = torch.Generator(device=party.device).manual_seed(derive_seed(seed, "fisher-noise", party.party_id))
    sq_std = count = 0.0
    with torch.no_grad():
        for pname, p in _named(party):
            fisher = party.buffers.get(f"{name}/{pname}", torch.zeros_like(p)) / samples
            var = fisher_variance(
                fisher, alpha=alpha, max_inverse=max_inverse, per_output_unit=True, scale=10.0 if p.ndim == 1 else 1.0
            )
            p.add_(var.sqrt() * torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype))
            sq_std += float(var.sum())
            count += p.numel()
    return {"noise_rms": (sq_std / max(count, 1.0)) ** 0.5}
