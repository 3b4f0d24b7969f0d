"""Baseline unlearning methods: exact retraining, fine-tuning and gradient ascent."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from vfl_sim.forget import ForgetKind
from vfl_sim.methods.registry import register_method
from vfl_sim.server.unlearning import (
    MethodParams,
    PhaseParams,
    UnlearningContext,
    UnlearningMethod,
)


class RetrainParams(MethodParams):
    epochs: int | None = Field(None, ge=1, description="default: the original's epochs")


@register_method("retrain")
class Retrain(UnlearningMethod[RetrainParams]):
    """Exact unlearning: train from the original initialization on the retained data only.

    The gold standard every audit compares against (Cao and Yang, "Towards Making Systems
    Forget with Machine Unlearning", IEEE S&P 2015). Same recipe as the original (optimizer,
    schedule, batch size, epochs); the forget samples are never sent to any party. For a party
    or feature request the model trains without that party's embedding (or those columns) from
    the start, as the coordinator has cut them off before the method runs.
    """

    supports = frozenset({ForgetKind.CLASS, ForgetKind.SAMPLES, ForgetKind.PARTY, ForgetKind.FEATURES})

    def unlearn(self, ctx: UnlearningContext) -> None:
        self.initialize(ctx)
        ctx.server.train_epochs(
            ctx.forget.retain_ids,
            epochs=self.params.epochs or ctx.train.epochs,
            batch_size=ctx.train.batch_size,
            optim=ctx.train,
            generator=ctx.generator,
            on_step=ctx.on_step,
        )

    def initialize(self, ctx: UnlearningContext) -> None:
        """Where training starts: the original's initialization."""
        ctx.server.reset(ctx.top_seed)

    def estimated_steps(self, ctx: UnlearningContext) -> int:
        return ctx.steps(ctx.forget.retain_ids, self.params.epochs or ctx.train.epochs)


class FinetuneParams(PhaseParams):
    epochs: int = Field(5, ge=1)
    lr: float = Field(0.01, gt=0)
    freeze_bottoms: bool = Field(False, description="train the top model alone (classifier-only fine-tuning)")
    reset_top: bool = Field(
        False, description="re-initialize the top model first (with freeze_bottoms: head retraining)"
    )


@register_method("finetune")
class Finetune(UnlearningMethod[FinetuneParams]):
    """Fine-tuning (FT) on the retained data, relying on catastrophic forgetting.

    The standard baseline of Warnecke et al. ("Machine Unlearning of Features and Labels",
    NDSS 2023) and Jia et al. ("Model Sparsity Can Simplify Machine Unlearning", NeurIPS 2023):
    a few epochs of ordinary training on the retain set, starting from the original model.
    For a party or feature request: the original with the party (or columns) cut off, fine-tuned
    on every training sample so the rest of the model adapts to their absence.

    ``freeze_bottoms: true`` trains the top model alone, with no gradient sent to any party:
    classifier-only fine-tuning; with ``reset_top: true`` the top model is first re-initialized,
    so the classifier is retrained on the frozen original representations. That drives a
    forgotten class's accuracy to zero while every party's representation stays the original's
    (the feature-classifier misalignment of Gao et al., "An Illusion of Unlearning?", arXiv
    2604.08271): the audits' canonical example of suppression without removal.
    """

    supports = frozenset({ForgetKind.CLASS, ForgetKind.SAMPLES, ForgetKind.PARTY, ForgetKind.FEATURES})

    def unlearn(self, ctx: UnlearningContext) -> None:
        if self.params.reset_top:
            ctx.server.reset_top(ctx.top_seed)
        ctx.phase(self.params, ctx.forget.retain_ids, update_parties=not self.params.freeze_bottoms)

    def estimated_steps(self, ctx: UnlearningContext) -> int:
        return ctx.steps(ctx.forget.retain_ids, self.params.epochs, self.params.batch_size)


class NegGradParams(PhaseParams):
    epochs: int = Field(2, ge=1)
    lr: float = Field(1e-3, gt=0)


def _ascent(logits: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return -F.cross_entropy(logits, labels)


@register_method("neggrad")
class NegGrad(UnlearningMethod[NegGradParams]):
    """Gradient ascent (NegGrad) on the forget set.

    Maximizes the cross-entropy of the forget samples (Golatkar et al., "Eternal Sunshine of
    the Spotless Net", CVPR 2020, as the NegGrad baseline; Thudi et al., "Unrolling SGD", 2022).
    Every party receives the gradient of the negated loss with respect to its own embedding,
    so ascent runs through all bottom models as well as the top model.
    """

    def unlearn(self, ctx: UnlearningContext) -> None:
        ctx.phase(self.params, ctx.forget.forget_ids, loss_fn=_ascent)

    def estimated_steps(self, ctx: UnlearningContext) -> int:
        return ctx.steps(ctx.forget.forget_ids, self.params.epochs, self.params.batch_size)
