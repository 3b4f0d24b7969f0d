"""The relearning attack: how fast does a few-shot fine-tune bring a forgotten class back?

After a class was unlearned, an attacker holding a handful of labeled samples of that class
fine-tunes the model for a few steps and watches the forgotten class's accuracy on unseen
samples. A model that only hides the class at its output (a suppressed logit, a shifted
decision boundary) still carries the features that recognize it, and recovers within a few
steps; a model that never learned the class (``retrain``) has to learn it from those few
samples. How fast forgotten knowledge comes back, against the retrained reference, is the
"relearn time" readout of Golatkar, Achille and Soatto ("Eternal Sunshine of the Spotless
Net: Selective Forgetting in Deep Networks", CVPR 2020); fine-tuning on a small part of the
forgotten data is also one of the robustness tests of Lynch, Guo, Ewart, Casper and
Hadfield-Menell ("Eight Methods to Evaluate Robust Unlearning in LLMs", arXiv 2402.16835).

In vertical federated learning the attacker may be the server alone, which holds the labels
and the top model but not the bottoms (``update_parties=False``: the parties only answer
eval-mode embedding requests), or the server with every party's cooperation (full split
learning, ``update_parties=True``). Every phase starts from the same snapshot and each is run
separately, so the first measures what the top model alone can recover from the frozen party
embeddings, the second what the whole federation can (the third, ``head``, is below).

The attack set holds ``per_class`` labeled training samples of every class, forgotten and
retained alike: a small sample of the task as the training set had it. With forgotten samples
alone (or forgotten samples plus as many retained ones, half the batch being the forgotten
class) the cross-entropy is lowered fastest by predicting the forgotten class more often
everywhere, which a model that never saw the class does as quickly as one that hides it; on
digits (a 2-epoch original, top-only, the default optimizer), 8 forgotten plus 8 retained
samples brought ``retrain``'s forgotten-class accuracy from 0 to 1.0 in 5 steps while its
retained accuracy fell from 0.91 to 0.24: a shift of the label prior, not recovered knowledge.
With the classes in their training proportions the prior stays put, so the forgotten class
only comes back where the model can tell its samples from the rest, and the retained
accuracy of the curve shows what the attack cost.

The third phase, ``head`` (a head reset), is one that output masking cannot hide from. An
output-only edit (the forgotten class's row of the last layer zeroed and its bias set to -1e4)
is out of reach of the other two: the cross-entropy's gradient on that bias is at most the
forgotten share of the batch (0.1 on digits), and ten SGD steps at lr 0.01 moved it by about 2
on digits, mostly weight decay's pull. A bias lowered by 20 does come back on digits (``full``
within 10 steps, ``top`` too with a 10-epoch original: the class's logit grows through the
features and weights it reads), but no few steps undo -1e4 on a zeroed row. The head phase
throws the output layer away: the server alone (bottoms frozen, the parties asked once for
eval-mode embeddings, as in ``top``) re-initializes the top model's last linear layer from a
seed derived from the attack seed and fits that layer alone on the attack samples' penultimate
features (the input of that layer, in eval mode; the rest of the top is frozen), so whatever an
edit did to the output layer is gone by construction and what comes back is what the features
still carry. A fresh layer needs more than ten small steps, so the phase has its own budget and
optimizer (:data:`DEFAULT_HEAD_STEPS`, :func:`default_head_optim`: full-batch Adam, lr 0.1, no
weight decay, 50 steps, the accuracy recorded after every step; step 0 is still the model as
unlearned, before the reset). By step 50 the attack set is fitted (training loss below 0.08 on
digits, every seed below) for the original's features and ``retrain``'s alike, so the final
accuracy is that of a converged head.

Measured on digits (forget class 0; 3 split seeds x 2 attack seeds), with the forgotten class's
output row masked (weight 0, bias -1e4): ``top`` and ``full`` leave its forgotten accuracy at 0
(at or below ``retrain``'s), ``head`` brings it back. With a 2-epoch original (the tests'
setup) the masked model's head curve reaches 0.86 to 0.97 (area 0.77 to 0.92, recovered after 2
to 4 steps) and ``retrain``'s 0.81 to 1.00 (area 0.66 to 0.86, after 4 to 8 steps): area gap
+0.07 to +0.22, mean +0.12. With a 10-epoch original the masked model reaches 0.94 to 1.00
(area 0.96 to 0.99, after 1 or 2 steps) and ``retrain`` 0.72 to 0.94 (area 0.61 to 0.84): gap
+0.13 to +0.36. So on digits a re-fitted head recognizes the forgotten class on ``retrain``'s
features too (digit 0 is separable in features learned from the other nine): the head phase's
final accuracy says what a fresh head can read from the features, not whether the class was
learned, and its gap to ``retrain`` is one of speed (the area), which shrinks as ``head_steps``
grows. A masked model's head curve is the unmasked model's after step 0, whatever the mask (the
layer it edited is replaced).

The attack is defined for class requests only (:func:`relearning_split` refuses other
kinds): a sample request has no held-out samples of "its" data to measure recovery on, and
a party or feature request removes inputs that no fine-tuning of the remaining model can
bring back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vfl_sim.config import OptimConfig
from vfl_sim.forget import ForgetKind
from vfl_sim.optim import build_optimizer, build_scheduler, clear_grads
from vfl_sim.protocol import CoreStep
from vfl_sim.seeding import derive_seed
from vfl_sim.server.server import Server
from vfl_sim.server.unlearning import ForgetSet

DEFAULT_PER_CLASS = 8
"""Labeled training samples per class (forgotten and retained) in the attack set."""
DEFAULT_STEPS = 10
"""Full-batch attack updates; accuracy is recorded before the first and after every one."""
DEFAULT_HEAD_STEPS = 50
"""Full-batch updates of the re-initialized output layer in the ``head`` phase."""


@dataclass(frozen=True)
class AttackPhase:
    """How one phase of the attack fine-tunes.

    Attributes
    ----------
    update_parties
        The bottoms are fine-tuned too (full split learning); otherwise they stay frozen and
        the parties only answer eval-mode embedding requests.
    reset_head
        The top model's output layer is re-initialized and fitted alone (the rest of the top
        frozen), with the head budget and optimizer; needs ``update_parties`` false.
    """

    update_parties: bool
    reset_head: bool = False


PHASES: dict[str, AttackPhase] = {
    "top": AttackPhase(update_parties=False),
    "full": AttackPhase(update_parties=True),
    "head": AttackPhase(update_parties=False, reset_head=True),
}
"""Attack phases by name: the server alone (top model), top plus every bottom, and the output
layer re-fitted from scratch by the server alone (a head reset)."""


def default_attack_optim() -> OptimConfig:
    """The attacker's optimizer: the fine-tuning recipe of the methods (SGD, lr 0.01, momentum
    0.9, weight decay 5e-4, as :class:`vfl_sim.methods.baselines.Finetune`) without a schedule,
    so every one of the few steps is a full step."""
    return OptimConfig(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, schedule="constant")


def default_head_optim() -> OptimConfig:
    """The optimizer of the ``head`` phase: full-batch Adam, lr 0.1, no weight decay, constant
    rate. Adam's per-coordinate steps do not depend on the scale of the penultimate features,
    and at this rate a fresh output layer fits the attack set within :data:`DEFAULT_HEAD_STEPS`
    (on digits, 2-epoch original: every attack sample classified by step 50 on the original's
    features and on ``retrain``'s; Adam at lr 0.01 needs about 100 steps for that, and SGD at
    lr 0.01 with momentum 0.9 still misclassifies about 2 % of them after 100)."""
    return OptimConfig(optimizer="adam", lr=0.1, momentum=0.0, weight_decay=0.0, schedule="constant")


@dataclass(frozen=True)
class RelearningSplit:
    """The samples of one relearning attack.

    Attributes
    ----------
    attack_ids
        Training ids the attacker fine-tunes on (one full batch), sorted: ``n_forget`` of
        them are forgotten samples, the rest retained ones.
    forget_eval_ids
        Test ids of the forgotten classes: recovery is measured here, on samples neither the
        original nor the attacker trained on.
    retain_eval_ids
        Test ids of the retained classes: what the attack costs the rest of the task.
    n_forget
        How many of ``attack_ids`` are forgotten samples.
    """

    attack_ids: torch.Tensor
    forget_eval_ids: torch.Tensor
    retain_eval_ids: torch.Tensor
    n_forget: int

    def describe(self) -> dict[str, int]:
        return {
            "attack_samples": int(self.attack_ids.numel()),
            "attack_forget_samples": self.n_forget,
            "forget_eval_samples": int(self.forget_eval_ids.numel()),
            "retain_eval_samples": int(self.retain_eval_ids.numel()),
        }


def _as_int_array(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.int64).ravel()


def relearning_split(
    forget: ForgetSet,
    labels: Any,
    test_ids: Any,
    *,
    per_class: int = DEFAULT_PER_CLASS,
    max_eval: int | None = None,
    seed: int,
) -> RelearningSplit:
    """Pick the attack set and the evaluation samples of a class request, reproducibly.

    The attack set takes ``per_class`` training samples of every class (all of a class's
    samples when it has fewer): from the forgotten training samples for a forgotten class,
    from the retained ones for the others, so the classes keep about their training
    proportions (see the module notes for why). Evaluation uses the test samples, split by
    whether their label was forgotten, each group capped at ``max_eval`` (a seeded draw;
    ``None``: every test sample). Attack and evaluation samples are disjoint: one comes from
    the training ids, the other from the test ids.

    Parameters
    ----------
    forget
        The resolved forget request; must be a class request.
    labels
        Labels of all samples, by sample id (array or tensor).
    test_ids
        The test sample ids.
    per_class
        Training samples per class in the attack set.
    max_eval
        Cap on each evaluation group (``None``: no cap).
    seed
        Seed of the draws (the same seed, the same split).

    Raises
    ------
    ValueError
        A request that is not a class request, ``per_class < 1``, ``max_eval < 1``, or no test
        sample of the forgotten (or of the retained) classes.
    """
    if forget.kind != ForgetKind.CLASS:
        raise ValueError(
            f"the relearning attack is defined for class requests only, not '{forget.kind}': it measures "
            "how fast held-out samples of a forgotten class are recognized again"
        )
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    if max_eval is not None and max_eval < 1:
        raise ValueError(f"max_eval must be >= 1 or None, got {max_eval}")
    y = _as_int_array(labels)
    test = _as_int_array(test_ids)
    rng = np.random.default_rng(derive_seed(seed, "relearning-split"))

    def draw(pool: np.ndarray) -> tuple[np.ndarray, int]:
        picked = [rng.choice(rows, min(per_class, rows.size), replace=False) for rows in _by_class(pool, y)]
        ids = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
        return ids, int(ids.size)

    attack_forget, n_forget = draw(_as_int_array(forget.forget_ids))
    attack_retain, _ = draw(_as_int_array(forget.retain_ids))
    if n_forget == 0:
        raise ValueError("the forgotten classes have no training samples to attack with")

    is_forget = np.isin(y[test], list(forget.classes))
    evals: list[np.ndarray] = []
    for what, ids in (("forgotten", test[is_forget]), ("retained", test[~is_forget])):
        if ids.size == 0:
            raise ValueError(f"no test samples of the {what} classes to measure relearning on")
        if max_eval is not None and ids.size > max_eval:
            ids = np.sort(rng.choice(ids, max_eval, replace=False))
        evals.append(ids)
    return RelearningSplit(
        attack_ids=torch.from_numpy(np.sort(np.concatenate([attack_forget, attack_retain]))),
        forget_eval_ids=torch.from_numpy(evals[0].copy()),
        retain_eval_ids=torch.from_numpy(evals[1].copy()),
        n_forget=n_forget,
    )


def _by_class(ids: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
    """``ids`` grouped by label, in label order."""
    return [ids[labels[ids] == c] for c in np.unique(labels[ids])]


@dataclass(frozen=True)
class RelearningCurve:
    """Accuracy of the attacked model on held-out samples as the attack goes on.

    ``forget_acc[i]`` and ``retain_acc[i]`` are measured after ``steps[i]`` updates (``steps``
    is ``0, 1, ..., T``; entry 0 is the model as unlearned). ``loss[t]`` is the attacker's
    cross-entropy on the attack batch at update ``t + 1``, before that update (``T`` values).
    ``runtime_s`` is the wall time of the whole attack, evaluations and the final reload
    included.
    """

    steps: list[int]
    forget_acc: list[float]
    retain_acc: list[float]
    loss: list[float]
    runtime_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": list(self.steps),
            "forget_acc": list(self.forget_acc),
            "retain_acc": list(self.retain_acc),
            "loss": list(self.loss),
            "runtime_s": self.runtime_s,
        }


def _accuracies(server: Server, forget_ids: torch.Tensor, retain_ids: torch.Tensor) -> tuple[float, float]:
    # One embedding request per evaluation instead of two: a round trip per party is the cost
    # that grows with the number of steps.
    ids = torch.cat([forget_ids, retain_ids])
    hit = (server.predict(ids) == server.labels[ids.to(server.device)]).double()
    n = forget_ids.numel()
    return float(hit[:n].mean()), float(hit[n:].mean())


def relearning_attack(
    server: Server,
    model: str,
    attack_ids: torch.Tensor,
    forget_eval_ids: torch.Tensor,
    retain_eval_ids: torch.Tensor,
    *,
    steps: int = DEFAULT_STEPS,
    optim: OptimConfig | None = None,
    update_parties: bool,
    reset_head: bool = False,
    seed: int,
) -> RelearningCurve:
    """Fine-tune snapshot ``model`` on ``attack_ids`` and record how accuracy comes back.

    The protocol, driven by the server:

    1. load snapshot ``model`` on the server and at every party; restart every party's random
       stream from ``seed`` (``begin_method``, which also drops a previous method's party-side
       tensors) and the server's from ``seed`` too, so the curve depends on the snapshot and
       the seed only, not on what ran before;
    2. fresh optimizers from ``optim`` (default :func:`default_attack_optim`) for the top model
       and, if ``update_parties``, every bottom; otherwise the bottoms stay frozen and the
       parties only answer eval-mode embedding requests. With ``reset_head`` (the ``head``
       phase) the top model's output layer is re-initialized instead, from a seed derived
       from ``seed``, and is the only thing the optimizer (default :func:`default_head_optim`)
       updates (see :func:`_head_reset`);
    3. ``steps`` split-learning updates, each one full batch of ``attack_ids`` with the
       cross-entropy of the true labels; accuracy on ``forget_eval_ids`` and
       ``retain_eval_ids`` (eval mode) before the first update and after every one (with
       ``reset_head``, "before the first update" is the model as unlearned, before the reset);
    4. reload snapshot ``model``, leaving every parameter trainable and no optimizer (the
       state of a freshly loaded model), so the attack leaves no trace in any snapshot or in
       the current model. The process-wide torch random state is restored as well.

    Call it with the same ``attack_ids``, ``optim`` and ``seed`` for every model compared (the
    audited one and ``retrain``), so they face the same attack.

    Parameters
    ----------
    server
        The server, with snapshot ``model`` saved here and at every party.
    model
        Name of the snapshot to attack (a method name, ``original``).
    attack_ids
        Training ids of the attacker's labeled samples (see :func:`relearning_split`).
    forget_eval_ids, retain_eval_ids
        Held-out ids of the forgotten and of the retained classes.
    steps
        Number of updates (>= 0).
    optim
        Optimizer settings of the attack; the schedule, if any, spans the ``steps`` updates.
    update_parties
        Whether the parties' bottom models are fine-tuned too (full split learning) or frozen
        (the server alone attacks).
    reset_head
        Re-initialize the top model's output layer and fit it alone (needs ``update_parties``
        false).
    seed
        Seed of the attack's randomness (party streams, dropout, the re-initialized layer).

    Raises
    ------
    KeyError
        ``model`` is not a saved snapshot.
    ValueError
        ``steps < 0``, no attack or evaluation ids, or ``reset_head`` with ``update_parties``.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if reset_head and update_parties:
        raise ValueError("reset_head re-fits the top model's output layer alone: update_parties must be False")
    named = {"attack_ids": attack_ids, "forget_eval_ids": forget_eval_ids, "retain_eval_ids": retain_eval_ids}
    for name, ids in named.items():
        if ids.numel() == 0:
            raise ValueError(f"{name} is empty")
    if model not in server.states:
        raise KeyError(f"no saved model '{model}'; saved: {sorted(server.states)}")
    optim = optim or (default_head_optim() if reset_head else default_attack_optim())
    batch = attack_ids.to(torch.int64).cpu()
    forget_eval = forget_eval_ids.to(torch.int64).cpu()
    retain_eval = retain_eval_ids.to(torch.int64).cpu()

    start = time.perf_counter()
    devices = [server.device] if server.device.type == "cuda" else []
    forget_acc: list[float] = []
    retain_acc: list[float] = []
    loss: list[float] = []
    with torch.random.fork_rng(devices=devices):
        try:
            server.load_state(model)
            server.party_op(CoreStep.BEGIN_METHOD, seed=derive_seed(seed, "relearning", "parties"))
            torch.manual_seed(derive_seed(seed, "relearning", "server"))
            server.configure(optim, steps, parties=update_parties, top=not reset_head)
            if reset_head:
                head_seed = derive_seed(seed, "relearning", "head")
                _head_reset(
                    server, batch, forget_eval, retain_eval, steps, optim, head_seed, forget_acc, retain_acc, loss
                )
            elif update_parties:
                f, r = _accuracies(server, forget_eval, retain_eval)
                forget_acc.append(f)
                retain_acc.append(r)
                for _ in range(steps):
                    server.run_epoch([batch], update_parties=True, on_step=loss.append)
                    f, r = _accuracies(server, forget_eval, retain_eval)
                    forget_acc.append(f)
                    retain_acc.append(r)
            else:
                _top_only(server, batch, forget_eval, retain_eval, steps, forget_acc, retain_acc, loss)
        finally:
            _restore(server, model, optim)
    return RelearningCurve(list(range(steps + 1)), forget_acc, retain_acc, loss, time.perf_counter() - start)


def _top_only(
    server: Server,
    batch: torch.Tensor,
    forget_eval: torch.Tensor,
    retain_eval: torch.Tensor,
    steps: int,
    forget_acc: list[float],
    retain_acc: list[float],
    loss: list[float],
) -> None:
    """The top-only phase: frozen bottoms give the same eval-mode embeddings at every step, so
    the parties are asked once for the attack batch and the evaluation samples, and the server
    attacks alone. The same curve as asking them every step, with 2 rounds instead of 2T + 1."""
    attack, _ = server.embed(batch)
    ids = torch.cat([forget_eval, retain_eval])
    evaluation, _ = server.embed(ids)
    labels = server.labels[ids.to(server.device)]
    n = forget_eval.numel()

    def record() -> None:
        hit = (server.logits(evaluation).argmax(1) == labels).double()
        forget_acc.append(float(hit[:n].mean()))
        retain_acc.append(float(hit[n:].mean()))

    record()
    for _ in range(steps):
        loss.extend(server.top_steps(attack, batch))
        record()


def _penultimate(server: Server, embeddings: list[torch.Tensor]) -> torch.Tensor:
    """The input of the top model's output layer for ``embeddings``, in eval mode: what the
    rest of the top model makes of them (captured on the way into the layer, so whatever the
    hidden layers are)."""
    captured: list[torch.Tensor] = []
    handle = server.top.classifier.register_forward_pre_hook(lambda _, args: captured.append(args[0].detach()))
    try:
        server.logits(embeddings)
    finally:
        handle.remove()
    return captured[0]


def _head_reset(
    server: Server,
    batch: torch.Tensor,
    forget_eval: torch.Tensor,
    retain_eval: torch.Tensor,
    steps: int,
    optim: OptimConfig,
    head_seed: int,
    forget_acc: list[float],
    retain_acc: list[float],
    loss: list[float],
) -> None:
    """The head-reset phase: the server alone re-fits the top model's output layer from scratch.

    The parties are asked once for eval-mode embeddings of the attack batch and of the
    evaluation samples (bottoms frozen, as in :func:`_top_only`); the frozen rest of the top
    model turns them into penultimate features once, in eval mode (no dropout: a fixed feature
    map). Entry 0 of the curve is the model as unlearned. Then the output layer (the last
    ``nn.Linear``, :attr:`~vfl_sim.models.top.TopModel.classifier`) is re-initialized with the
    distribution ``nn.Linear`` starts from (weight and bias uniform in ``+-1/sqrt(fan_in)``),
    drawn on the CPU from a generator seeded with ``head_seed`` (the same draw on every device
    and whatever the global random state), and ``steps`` full-batch updates of that layer alone
    (``optim``, by default :func:`default_head_optim`: Adam, lr 0.1, no weight decay) minimize
    the cross-entropy of the attack batch's true labels, the accuracy recorded after every one.
    The caller configured the top model frozen (``requires_grad`` false) and reloads the
    snapshot afterwards; only this layer is made trainable here.
    """
    attack, _ = server.embed(batch)
    ids = torch.cat([forget_eval, retain_eval])
    evaluation, _ = server.embed(ids)
    attack_features = _penultimate(server, attack)
    eval_features = _penultimate(server, evaluation)
    attack_labels = server.labels[batch.to(server.device)]
    labels = server.labels[ids.to(server.device)]
    n = forget_eval.numel()
    head = server.top.classifier

    def record() -> None:
        with torch.no_grad():
            hit = (head(eval_features).argmax(1) == labels).double()
        forget_acc.append(float(hit[:n].mean()))
        retain_acc.append(float(hit[n:].mean()))

    record()
    generator = torch.Generator().manual_seed(head_seed)
    bound = 1.0 / math.sqrt(head.in_features)
    with torch.no_grad():
        for p in (head.weight, head.bias):
            p.copy_(torch.empty(p.shape, dtype=p.dtype).uniform_(-bound, bound, generator=generator))
            p.requires_grad_(True)
    optimizer = build_optimizer(head.parameters(), optim)
    scheduler = build_scheduler(optimizer, optim.schedule, steps)
    for _ in range(steps):
        step_loss = torch.nn.functional.cross_entropy(head(attack_features), attack_labels)
        clear_grads(optimizer)
        step_loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss.append(float(step_loss.detach()))
        record()


def _restore(server: Server, model: str, optim: OptimConfig) -> None:
    # A top-only phase marks every bottom parameter frozen (requires_grad False), and party ops
    # such as build_optimizer and remisvfu_step pick parameters by that flag; configure with
    # everything trainable first, so the reload leaves the flags as a fresh model has them.
    server.configure(optim, 0, parties=True, top=True)
    server.load_state(model)


def relearning_curves(
    server: Server,
    models: Sequence[str],
    split: RelearningSplit,
    *,
    steps: int = DEFAULT_STEPS,
    optim: OptimConfig | None = None,
    phases: Sequence[str] = tuple(PHASES),
    head_steps: int = DEFAULT_HEAD_STEPS,
    head_optim: OptimConfig | None = None,
    seed: int,
) -> dict[str, dict[str, RelearningCurve]]:
    """Every attack phase on every model: ``{phase: {model: curve}}``.

    ``phases`` are names of :data:`PHASES` (``top``: the server alone, bottoms frozen;
    ``full``: top and every bottom; ``head``: the server alone re-fits the top model's output
    layer from scratch). ``top`` and ``full`` take ``steps`` updates with ``optim`` (default
    :func:`default_attack_optim`), ``head`` takes ``head_steps`` with ``head_optim`` (default
    :func:`default_head_optim`). Every model faces the same attack (same ids, optimizer and
    seed), each phase from the model's snapshot.
    """
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        raise ValueError(f"unknown relearning phase '{unknown[0]}'; phases: {', '.join(PHASES)}")
    curves: dict[str, dict[str, RelearningCurve]] = {}
    for phase in phases:
        spec = PHASES[phase]
        curves[phase] = {
            name: relearning_attack(
                server,
                name,
                split.attack_ids,
                split.forget_eval_ids,
                split.retain_eval_ids,
                steps=head_steps if spec.reset_head else steps,
                optim=head_optim if spec.reset_head else optim,
                update_parties=spec.update_parties,
                reset_head=spec.reset_head,
                seed=seed,
            )
            for name in models
        }
    return curves
