"""Built-in controls: models with a known answer, run beside the methods of every request.

A certificate that says "removal" must show that its checks can fail on this run. The
controls are that evidence (the positive and negative controls of an experiment):

- **negative control**: a model that certainly did not forget. For class and sample requests
  it is ``original`` itself. For party and feature requests every model is cut off from the
  removed party or columns before its method runs, so the negative control is
  :class:`CutOnly` (``cut_only``): the original with the cut and nothing else. A method is
  credited only with what it adds beyond that cut.
- **known suppression** (class requests): :class:`OutputMask` (``output_mask``), the
  original with only the classifier rows of the forgotten classes masked (weights 0, bias
  :data:`MASK_LOGIT`), so the classes vanish from the outputs while every representation stays
  the original's: the canonical output-only edit ("An Illusion of Unlearning?", Gao et al.,
  arXiv 2604.08271; Cooper et al., arXiv 2412.06966).
- **calibration retrains**: :class:`CalibrationRetrain` (``retrain_seed1``, ...), retrained
  like ``retrain`` but from their own initialization and batch order. Their deviations from
  ``retrain`` are the null distribution of every check: how far a model that never saw the
  data may land from the reference by chance alone (initialization, batch order, and the
  floating-point reduction order of the machine).

:mod:`vfl_sim.audits.certificate` reads them: a verdict that the negative control passes (or, for
representation forgetting, that ``output_mask`` passes) has no power on the run and cannot
support a pass for any model.

Controls are not registered methods (``methods: all`` never selects them) and their names are
reserved: a method label may not take one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from vfl_sim.forget import ORIGINAL, RETRAIN, ForgetKind
from vfl_sim.methods.baselines import Retrain
from vfl_sim.server.unlearning import MethodParams, UnlearningContext, UnlearningMethod

CUT_ONLY = "cut_only"
OUTPUT_MASK = "output_mask"
CALIBRATION_PREFIX = "retrain_seed"
MASK_LOGIT = -1e4
"""Bias of a masked classifier row: finite (the loss stays finite), far below any real logit."""

ControlRole = Literal["negative", "suppression", "calibration"]


def calibration_name(index: int) -> str:
    """The model name of calibration retrain ``index`` (1-based)."""
    return f"{CALIBRATION_PREFIX}{index}"


def is_reserved(name: str) -> bool:
    """Whether ``name`` belongs to the original, a control or a calibration retrain."""
    if name in (ORIGINAL, CUT_ONLY, OUTPUT_MASK):
        return True
    suffix = name.removeprefix(CALIBRATION_PREFIX)
    return suffix != name and suffix.isdigit()


class CutOnly(UnlearningMethod[MethodParams]):
    """The negative control of party and feature requests: the coordinator's cut, nothing more."""

    name = CUT_ONLY
    supports = frozenset({ForgetKind.PARTY, ForgetKind.FEATURES})

    def unlearn(self, ctx: UnlearningContext) -> None:
        """Nothing: the coordinator cut the party (or columns) off before the method started."""


class OutputMask(UnlearningMethod[MethodParams]):
    """The known-suppression control of class requests: mask the forgotten classes' rows of the
    top model's classifier (weights 0, bias :data:`MASK_LOGIT`) and change nothing else."""

    name = OUTPUT_MASK
    supports = frozenset({ForgetKind.CLASS})

    def unlearn(self, ctx: UnlearningContext) -> None:
        head = ctx.server.top.classifier
        rows = list(ctx.forget.classes)
        with torch.no_grad():
            head.weight[rows] = 0.0
            if head.bias is not None:
                head.bias[rows] = MASK_LOGIT


class CalibrationRetrain(Retrain):
    """``retrain``'s recipe from another initialization and batch order (its own seed, derived
    from its label): one draw of the null distribution the certificate calibrates on."""

    name = RETRAIN

    def initialize(self, ctx: UnlearningContext) -> None:
        # ctx.seed is derived from this model's label, so every calibration retrain differs from
        # retrain (which starts from the original's initialization) and from the others.
        ctx.server.reset(ctx.seed, party_seed=ctx.seed)


@dataclass(frozen=True)
class Control:
    """A control model to run: its method (whose ``label`` names the model) and its role."""

    method: UnlearningMethod[Any]
    role: ControlRole


def build_controls(kind: str, *, calibration_retrains: int, retrain: UnlearningMethod[Any] | None) -> list[Control]:
    """The controls of a request of ``kind``.

    ``retrain`` is the run's retrain method (its params are copied into the calibration
    retrains); without it there is no reference to calibrate against and no calibration
    retrain is built.
    """
    controls: list[Control] = []
    if kind in ForgetKind.OF_A_PARTY:
        controls.append(Control(CutOnly(), "negative"))
    if kind == ForgetKind.CLASS:
        controls.append(Control(OutputMask(), "suppression"))
    if retrain is not None:
        for i in range(1, calibration_retrains + 1):
            controls.append(Control(CalibrationRetrain(retrain.params, label=calibration_name(i)), "calibration"))
    return controls
