"""Defenses of split learning's training messages, and what they guarantee.

Two messages cross the cut in every training round: each party's **embedding** of the batch
goes to the server, and the **gradient** of that embedding comes back. Each can leak: the
embedding carries the party's features (model completion, feature inference), the gradient the
sample's label (Li, Sun, Yang, Gao, Zhang, Xie, Smith and Wang, "Label Leakage and Protection
in Two-party Split Learning", ICLR 2022, arXiv 2102.08504: gradient norms and directions
reveal labels, and isotropic Gaussian noise is their baseline defense; Fu et al., "Label
Inference Attacks Against Vertical Federated Learning", USENIX Security 2022, which also
evaluates gradient sparsification). The defenses below apply per sample (per row) of a
message; for gradients the rows are each sample's own loss gradient (the server's batch-mean
gradient times the batch size, and divided by it again once defended), so a clip means the
same at every batch size:

- **clipping** to L2 norm ``C``: ``x_i <- x_i * min(1, C / ||x_i||)``;
- **Gaussian noise** with standard deviation ``sigma * C`` (``sigma`` alone without clipping);
- **sparsification** (gradients only): in each row, the ``fraction`` of entries smallest in
  magnitude are set to zero (the sparsification defense Fu et al. evaluate).

Privacy accounting (documented analytic bound, not a library): a clipped row with Gaussian
noise is the Gaussian mechanism. Under *replace-one* neighbouring (one sample's features, or
its label, changed) a row moves by at most ``2C``, so the noise multiplier is ``z = sigma / 2``.
Each training sample's row is released once per epoch, ``T`` times in all; with no
amplification by subsampling claimed, the Rényi DP of the composition is
``eps_RDP(alpha) = T * alpha / (2 z^2)`` (Mironov, "Rényi Differential Privacy", CSF 2017,
Prop. 1 and 7), and Prop. 3 converts it to ``(eps, delta)``-DP:
``eps = min_{alpha > 1} T alpha / (2 z^2) + log(1/delta) / (alpha - 1)``, which is
``eps = T / (2 z^2) + sqrt(2 T log(1/delta)) / z`` at the best ``alpha``. It covers the
training of one model; the messages of inference and of the audits are not noised (they model
the auditor's access), and a top model with batch normalization makes each gradient row depend
on the whole batch, outside this bound. Sparsification after noise is post-processing and
keeps the bound; sparsification alone has none (``None``).
"""

from __future__ import annotations

import math

import torch


def clip_rows(x: torch.Tensor, max_norm: float) -> torch.Tensor:
    """``x`` with every row scaled down to L2 norm at most ``max_norm`` (differentiable)."""
    flat = x.reshape(x.shape[0], -1)
    norms = flat.norm(dim=1, keepdim=True)
    scale = (max_norm / norms.clamp_min(1e-12)).clamp(max=1.0)
    return (flat * scale).reshape(x.shape)


def sparsify_rows(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """``x`` with the ``fraction`` smallest-magnitude entries of every row set to zero."""
    flat = x.reshape(x.shape[0], -1)
    drop = int(math.floor(fraction * flat.shape[1]))
    if drop <= 0:
        return x
    smallest = flat.abs().topk(drop, dim=1, largest=False).indices
    return flat.scatter(1, smallest, 0.0).reshape(x.shape)


def gaussian_noise(
    x: torch.Tensor, sigma: float, clip: float | None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``x`` plus Gaussian noise of standard deviation ``sigma * clip`` (``sigma`` without a
    clip), drawn on the CPU (from ``generator``, else the current CPU stream) so that every
    device draws the same numbers."""
    if sigma <= 0:
        return x
    std = sigma * (clip if clip is not None else 1.0)
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float32) * std
    return x + noise.to(device=x.device, dtype=x.dtype)


def defend(
    x: torch.Tensor,
    *,
    clip: float | None = None,
    noise: float = 0.0,
    sparsity: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Clip the rows of ``x`` (if ``clip``), add Gaussian noise (if ``noise``), then sparsify
    (if ``sparsity``): the order under which the noise's guarantee survives."""
    if clip is not None:
        x = clip_rows(x, clip)
    x = gaussian_noise(x, noise, clip, generator)
    if sparsity > 0:
        x = sparsify_rows(x, sparsity)
    return x


def gaussian_epsilon(sigma: float, clip: float | None, releases: int, delta: float) -> float | None:
    """The ``(eps, delta)`` bound of the module's description for ``releases`` releases of a
    row clipped to ``clip`` with noise multiplier ``sigma``; ``None`` where no bound holds
    (no noise or no clipping)."""
    if sigma <= 0 or clip is None or releases < 1:
        return None
    z = sigma / 2.0  # replace-one neighbours: the row moves by up to 2C
    return releases / (2 * z * z) + math.sqrt(2 * releases * math.log(1 / delta)) / z


def gaussian_epsilon_numeric(sigma: float, clip: float | None, releases: int, delta: float) -> float | None:
    """The same bound minimized over a grid of RDP orders: the functional twin the closed form
    is checked against (and what to use when changing the composition)."""
    if sigma <= 0 or clip is None or releases < 1:
        return None
    z = sigma / 2.0
    orders = torch.logspace(-4, 6, 200_001, dtype=torch.float64) + 1.0
    eps = releases * orders / (2 * z * z) + math.log(1 / delta) / (orders - 1)
    return float(eps.min())
