"""Importance-based unlearning: Fisher forgetting and Selective Synaptic Dampening.

Both need per-parameter statistics of the loss gradients of the whole split model. The server
gathers every party's eval-mode embeddings of the samples once, then for each minibatch
computes the loss on its top model, keeps the top model's statistics itself, and sends each
party the gradient of that loss with respect to its own embedding (one round trip per batch,
:func:`accumulate_statistics`); the party back-propagates it through its bottom model and
accumulates the statistics in its buffers (:func:`_accumulate_grads`). The edit
(noise, dampening) is then made by every party on its own parameters, and by the server on
the top model. Labels stay on the server; parties see ids and embedding gradients only.

Why not ``Embed(train=True)`` + ``Backward(step=False)`` with a gradient hook: the papers
compute importances with the model in eval mode, and a training-mode forward pass would
normalize with batch statistics and move the batch-norm running statistics of the model being
unlearned (towards the forget set, for SSD's second pass).

Party side: gradient statistics of the bottom model, and the edits they drive (Fisher
forgetting's noise, Selective Synaptic Dampening). Statistics accumulate in
:attr:`Party.buffers` under ``<name>/<parameter>``, so they survive a party that is rebuilt for
every message (Flower ClientApps). The server sends, per batch, the sample ids and the gradient
of a loss with respect to this party's embedding of them (what a ``Backward`` would carry); the
party back-propagates it through its bottom model in eval mode (no batch-norm statistics move,
no dropout), as the papers compute importances with ``model.eval()``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from vfl_sim.forget import ForgetKind
from vfl_sim.methods.registry import register_method
from vfl_sim.models.importance import fisher_variance, per_sample_sq_grads, ssd_dampen_
from vfl_sim.models.top import fuse
from vfl_sim.parties.party import Party, party_op
from vfl_sim.seeding import derive_seed
from vfl_sim.server.server import Server, make_batches
from vfl_sim.server.unlearning import MethodParams, UnlearningContext, UnlearningMethod

# -- party side -------------------------------------------------------------------------------


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


# -- server side ------------------------------------------------------------------------------


Statistic = Literal["batch_sq", "sum", "sample_sq"]


def accumulate_statistics(
    server: Server,
    ids: torch.Tensor,
    *,
    name: str,
    kind: Statistic,
    batch_size: int,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, torch.Tensor], int]:
    """Accumulate a gradient statistic of the cross-entropy loss over ``ids`` on every party
    (in its buffers ``name/*``) and on the top model (returned, by parameter name).

    ``kind`` is ``batch_sq`` (squared minibatch gradients, summed over batches), ``sum``
    (minibatch gradients, summed) or ``sample_sq`` (each sample's gradient of ``-log p_k(x)``
    squared and weighted by ``p_k(x)``, summed over classes ``k`` and samples: ``n`` times the
    diagonal of the true Fisher information). Returns the top model's sums and the number of
    minibatches. Everything runs in eval mode; no parameter changes.
    """
    ids = ids.to(torch.int64).cpu()
    server.top.eval()
    embeddings, _ = server.embed(ids)
    named = list(server.top.named_parameters())
    params = [p for _, p in named]
    for p in params:
        p.requires_grad_(True)
    stats = {n: torch.zeros_like(p) for n, p in named}
    batches = make_batches(torch.arange(ids.numel()), batch_size, generator)
    # Under forget.cover each round's ids carry decoys, with zero cotangent rows (no effect on
    # the party's sums; the rows are in eval mode, so no batch statistics either).
    sent = server.cover_plan([ids[pos] for pos in batches])
    for pos, padded in zip(batches, sent):
        batch = ids[pos]
        leaves = [e[pos.to(e.device)].detach().requires_grad_(True) for e in embeddings]
        fused = fuse(leaves, server.fusion)
        logits = server.top(fused)
        if kind == "sample_sq":
            cotangents = _sample_sq_top(server, stats, fused.detach(), logits, leaves)
        else:
            loss = F.cross_entropy(logits, server.labels[batch.to(server.device)])
            grads = torch.autograd.grad(loss, params + leaves)
            for (n, _), g in zip(named, grads[: len(params)]):
                stats[n] += g.pow(2) if kind == "batch_sq" else g
            cotangents = [g.detach() for g in grads[len(params) :]]
        tensors = {
            pid: {"ids": padded.ids, "grad": padded.scatter(c.cpu())} for pid, c in zip(server.party_ids, cotangents)
        }
        if server.cover is not None:
            for t in tensors.values():
                server.cover.count(padded, t["ids"], t["grad"])
        server.party_call(_accumulate_grads.name, {"name": name, "kind": kind}, tensors)
    return stats, len(batches)


def _sample_sq_top(
    server: Server,
    stats: dict[str, torch.Tensor],
    fused: torch.Tensor,
    logits: torch.Tensor,
    leaves: list[torch.Tensor],
) -> list[torch.Tensor]:
    """The true Fisher's per-sample terms: for every class ``k``, the cotangent on the logits
    ``sqrt(p_k) * (p - e_k)`` (the gradient of ``-log p_k``, weighted so that squares sum to
    the expectation over ``k ~ p``). Adds the top model's squared per-sample gradients to
    ``stats`` and returns each party's ``(n, K, d)`` cotangents on its embedding."""
    probs = torch.softmax(logits.detach(), dim=1)
    k = probs.shape[1]
    eye = torch.eye(k, device=probs.device, dtype=probs.dtype)
    cot = probs.sqrt()[:, :, None] * (probs[:, None, :] - eye[None])  # (n, K, K): sample, class k, logit
    for n, sq in per_sample_sq_grads(server.top, fused, cot).items():
        stats[n] += sq
    per_class = [torch.autograd.grad((logits * cot[:, c, :]).sum(), leaves, retain_graph=True) for c in range(k)]
    return [torch.stack([g[j] for g in per_class], dim=1) for j in range(len(leaves))]


def _classifier(server: Server) -> torch.nn.Linear:
    """The top model's last linear layer (one row per class)."""
    linears = [m for m in server.top.modules() if isinstance(m, torch.nn.Linear)]
    return linears[-1]


class FisherParams(MethodParams):
    alpha: float = Field(
        1e-6,
        gt=0,
        description="noise scale: variance = alpha * min(1 / F, max_inverse) (the authors' code: 1e-6)",
    )
    max_inverse: float = Field(1e3, gt=0, description="clamp of 1 / F (the reference code's 1e3)")
    classifier_max_inverse: float = Field(
        1e2, gt=0, description="clamp of 1 / F on the top model's last layer (the reference code's 1e2)"
    )
    forget_class_rows: bool = Field(
        True,
        description="class requests: set the forgotten classes' rows of the last layer to mean 0, "
        "variance 1e-4 (the reference code's class-removal step)",
    )
    batch_size: int | None = Field(None, ge=1, description="samples per round trip; default: the training batch size")


@register_method("fisher")
class FisherForgetting(UnlearningMethod[FisherParams]):
    """Fisher forgetting: Gaussian noise shaped by the inverse Fisher information of the
    retained data.

    Golatkar, Achille, Soatto, "Eternal Sunshine of the Spotless Net: Selective Forgetting in
    Deep Networks", CVPR 2020 (arXiv 1911.04933). Parameters the retained data constrains
    (large Fisher) get little noise; those it does not constrain, and which may carry
    information about the forget set, get more: ``w <- w + sqrt(var) * n``, ``n ~ N(0, I)``,
    ``var = alpha * min(1 / (F + 1e-8), max_inverse)``, with ``F`` the diagonal of the true
    Fisher on the retained data. As in the authors' implementation (``get_mean_var``), the
    variance of a weight tensor is averaged per output unit, biases and normalization
    parameters and the classifier layer get ten times the variance, the classifier's inverse is
    clamped at ``classifier_max_inverse``, and for class requests the forgotten classes' rows
    of the classifier are set to 0 with variance 1e-4. Without the ``alpha`` scaling and the
    clamp the noise destroys the model.

    **The Fisher in VFL.** ``F = E_x E_{y ~ p(y|x)} [(d log p(y|x) / dw)^2]`` is estimated per
    sample, as in the paper's code (batch size 1): a squared minibatch gradient would estimate
    the square of the mean gradient, about ``F / B`` at a converged model, and inflate the
    noise by the batch size. For each minibatch of retained samples the server computes, from
    the parties' eval-mode embeddings and its top model, every sample's gradient of
    ``-log p_k`` with respect to each party's embedding for every class ``k``, weighted by
    ``sqrt(p_k)``, and sends each party its own ``(B, K, d)`` tensor in one round trip; the
    party computes the per-sample gradients of its bottom parameters (``torch.func.vmap``) and
    accumulates their squares. No labels are involved (the expectation is over the model's own
    predictions), and the noise at each party comes from a generator seeded with the method's
    seed and the party's id.
    """

    def unlearn(self, ctx: UnlearningContext) -> None:
        prm = self.params
        server = ctx.server
        retain = ctx.forget.retain_ids
        stats, _ = accumulate_statistics(
            server, retain, name="fisher", kind="sample_sq", batch_size=prm.batch_size or ctx.train.batch_size
        )
        n = int(retain.numel())
        server.party_call(
            _fisher_noise.name,
            {"name": "fisher", "samples": n, "alpha": prm.alpha, "max_inverse": prm.max_inverse, "seed": ctx.seed},
        )
        classifier = {id(p) for p in _classifier(server).parameters()}
        gen = torch.Generator(device=server.device).manual_seed(derive_seed(ctx.seed, "fisher-noise", "top"))
        rows = list(ctx.forget.classes) if ctx.forget.kind == ForgetKind.CLASS and prm.forget_class_rows else []
        with torch.no_grad():
            for name, p in server.top.named_parameters():
                last = id(p) in classifier
                var = fisher_variance(
                    stats[name] / n,
                    alpha=prm.alpha,
                    max_inverse=prm.classifier_max_inverse if last else prm.max_inverse,
                    per_output_unit=True,
                    scale=10.0 if last or p.ndim == 1 else 1.0,
                )
                if last and rows:
                    p[rows] = 0.0
                    var[rows] = 1e-4 * 10.0  # the reference's 1e-4, times its 10 for the last layer
                p.add_(var.sqrt() * torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype))


class SSDParams(MethodParams):
    alpha: float = Field(10.0, gt=0, description="selection weighting: dampen where I_Df > alpha * I_D (paper: 10)")
    lam: float = Field(1.0, gt=0, description="dampening constant: beta = min(lam * I_D / I_Df, 1) (paper: 1)")
    batch_size: int | None = Field(
        None, ge=1, description="minibatch of the importances; default: the training batch size"
    )


@register_method("ssd")
class SelectiveSynapticDampening(UnlearningMethod[SSDParams]):
    """Selective Synaptic Dampening (SSD).

    Foster, Schoepf, Brintrup, "Fast Machine Unlearning Without Retraining Through Selective
    Synaptic Dampening", AAAI 2024 (arXiv 2308.07707). Importances are the diagonal of the
    (empirical) Fisher, estimated as in the authors' code by the mean over minibatches of the
    squared minibatch gradient of the cross-entropy, once on the full training data ``D`` and
    once on the forget set ``Df``. Parameters specialized to the forget set
    (``I_Df > alpha * I_D``) are multiplied by ``beta = min(lam * I_D / I_Df, 1)``; all others
    stay exactly as they are. No training.

    **In VFL** each minibatch costs one round trip: the server sends every party the gradient
    of the minibatch loss with respect to its own embedding (what a ``Backward`` carries), the
    party back-propagates it in eval mode and accumulates the squared gradients of its bottom
    parameters; every party then dampens its own parameters and the server its top model. The
    rule is elementwise, so the split changes nothing: the result equals SSD on the
    monolithic model.
    """

    def unlearn(self, ctx: UnlearningContext) -> None:
        prm = self.params
        server = ctx.server
        bs = prm.batch_size or ctx.train.batch_size
        full_ids = torch.cat([ctx.forget.retain_ids, ctx.forget.forget_ids])
        full, n_full = accumulate_statistics(
            server, full_ids, name="ssd_full", kind="batch_sq", batch_size=bs, generator=ctx.generator
        )
        forget, n_forget = accumulate_statistics(
            server, ctx.forget.forget_ids, name="ssd_forget", kind="batch_sq", batch_size=bs, generator=ctx.generator
        )
        server.party_call(
            _ssd_dampen.name,
            {
                "alpha": prm.alpha,
                "lam": prm.lam,
                "full_batches": n_full,
                "forget_batches": n_forget,
                "full": "ssd_full",
                "forget": "ssd_forget",
            },
        )
        for name, p in server.top.named_parameters():
            ssd_dampen_(p.data, full[name] / n_full, forget[name] / n_forget, prm.alpha, prm.lam)
