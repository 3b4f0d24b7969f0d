"""The relearning attack: no trace on any snapshot, reproducible, top-only leaves the bottoms
alone, a known answer (output-only suppression comes back faster than retrain), and the
array-level summaries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import record_requests, small_config, trained
from vfl_sim.audits.relearning import (
    compare_relearning,
    relearning_area,
    steps_to_recover,
    summarize_relearning,
)
from vfl_sim.config import ForgetConfig, RelearningConfig
from vfl_sim.experiment import Experiment, prepare
from vfl_sim.forget import ORIGINAL
from vfl_sim.methods import build_method
from vfl_sim.protocol import Backward, Embed
from vfl_sim.seeding import derive_seed
from vfl_sim.server.coordinator import UnlearningCoordinator, resolve_forget_request
from vfl_sim.server.relearning import (
    DEFAULT_HEAD_STEPS,
    PHASES,
    RelearningCurve,
    RelearningSplit,
    default_attack_optim,
    default_head_optim,
    relearning_attack,
    relearning_curves,
    relearning_split,
)
from vfl_sim.server.server import Server

SUPPRESSED = "suppressed"
MASKED = "masked"


@dataclass
class Setup:
    exp: Experiment
    server: Server
    coordinator: UnlearningCoordinator
    split: RelearningSplit


def _build(**sections: Any) -> Setup:
    exp = prepare(small_config(**sections))
    server, coordinator = trained(exp, 2)
    split = relearning_split(exp.forget, exp.dataset.labels, exp.dataset.test_ids, seed=0)
    return Setup(exp, server, coordinator, split)


@pytest.fixture(scope="module")
def setup() -> Setup:
    """Digits (forget class 0): the original, ``retrain``, and ``suppressed``, the original with
    the forgotten class's output bias lowered just past its largest margin on the forgotten
    test samples, so no forgotten test sample is predicted and nothing else changed."""
    s = _build()
    s.coordinator.run(build_method("retrain", {}, "class"))
    server, c = s.server, s.exp.forget.classes[0]
    server.load_state(ORIGINAL)
    embeddings, _ = server.embed(s.split.forget_eval_ids)
    logits = server.logits(embeddings)
    others = logits.clone()
    others[:, c] = -torch.inf
    margin = float((logits[:, c] - others.max(1).values).max())
    with torch.no_grad():
        server.top.classifier.bias[c] -= margin + 1.0
    server.save_state(SUPPRESSED)
    return s


@pytest.fixture(scope="module")
def masked(setup: Setup) -> Setup:
    """``setup`` plus ``masked``: the original with the forgotten class's output row masked
    (weight row 0, bias -1e4), an output-only edit that no few SGD steps undo."""
    server, c = setup.server, setup.exp.forget.classes[0]
    server.load_state(ORIGINAL)
    with torch.no_grad():
        server.top.classifier.weight[c] = 0.0
        server.top.classifier.bias[c] = -1e4
    server.save_state(MASKED)
    return setup


def _attack(
    s: Setup, model: str, *, update_parties: bool, seed: int = 0, steps: int = 10, reset_head: bool = False
) -> RelearningCurve:
    return relearning_attack(
        s.server,
        model,
        s.split.attack_ids,
        s.split.forget_eval_ids,
        s.split.retain_eval_ids,
        steps=steps,
        update_parties=update_parties,
        reset_head=reset_head,
        seed=seed,
    )


# -- the split ---------------------------------------------------------------------------------


def test_split_is_class_balanced_disjoint_and_seeded(setup: Setup) -> None:
    exp, split = setup.exp, setup.split
    labels = exp.dataset.labels
    attack = split.attack_ids.numpy()
    counts = np.bincount(labels[attack], minlength=exp.dataset.num_classes)
    assert (counts == 8).all()  # 8 of every class, forgotten and retained
    assert split.n_forget == 8
    assert np.isin(attack[labels[attack] == 0], exp.forget.forget_ids.numpy()).all()
    assert np.isin(attack[labels[attack] != 0], exp.forget.retain_ids.numpy()).all()
    test = exp.dataset.test_ids
    assert set(split.forget_eval_ids.tolist()) == set(test[labels[test] == 0].tolist())
    assert set(split.retain_eval_ids.tolist()) == set(test[labels[test] != 0].tolist())
    assert not np.isin(attack, test).any()
    again = relearning_split(exp.forget, labels, test, seed=0)
    other = relearning_split(exp.forget, labels, test, seed=1)
    assert torch.equal(again.attack_ids, split.attack_ids)
    assert not torch.equal(other.attack_ids, split.attack_ids)
    capped = relearning_split(exp.forget, labels, test, seed=0, per_class=3, max_eval=10)
    assert capped.attack_ids.numel() == 3 * exp.dataset.num_classes
    assert capped.forget_eval_ids.numel() == capped.retain_eval_ids.numel() == 10


def test_split_refuses_requests_other_than_class(setup: Setup) -> None:
    exp = setup.exp
    samples = resolve_forget_request(
        ForgetConfig(kind="samples", fraction=0.1),
        train_ids=exp.dataset.train_ids,
        test_ids=exp.dataset.test_ids,
        labels=exp.dataset.labels,
        num_classes=exp.dataset.num_classes,
        seed=0,
    )
    with pytest.raises(ValueError, match="class requests only, not 'samples'"):
        relearning_split(samples, exp.dataset.labels, exp.dataset.test_ids, seed=0)


# -- the protocol ------------------------------------------------------------------------------


def test_attack_leaves_every_snapshot_and_the_current_model_as_they_were(setup: Setup) -> None:
    server = setup.server
    names = sorted(server.states)
    before = {name: server.digests(name) for name in names}
    rng = torch.get_rng_state()
    server.load_state(ORIGINAL)  # something else current: the attack must end on its own model
    for update_parties in (False, True):
        curve = _attack(setup, "retrain", update_parties=update_parties)
        assert curve.loss[0] != curve.loss[-1]  # the attack did move the model it then put back
        assert {name: server.digests(name) for name in names} == before
        assert server.digests() == before["retrain"]
        assert server.optimizer is None
        assert all(p.requires_grad for p in server.top.parameters())
        for party in server.transport.parties.values():  # type: ignore[attr-defined]
            assert party.optimizer is None
            assert all(p.requires_grad for p in party.bottom.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_attack_is_reproducible_whatever_ran_before() -> None:
    """With dropout on both sides, the curve and the attacker's losses depend on the snapshot
    and the seed only; another seed draws other dropout masks."""
    s = _build(
        data={
            "name": "synthetic",
            "synthetic": {"samples": 400, "features": 12, "classes": 3, "informative_per_party": 2},
        },
        partition={"parties": 3},
        model={"top_dropout": 0.3, "bottom_dropout": 0.3},  # MLP bottoms on flat features: dropout both sides
    )
    first = _attack(s, ORIGINAL, update_parties=True, steps=4)
    s.server.train_epochs(  # something else runs in between and moves every random stream
        s.split.attack_ids, epochs=1, batch_size=8, optim=s.exp.cfg.train, generator=torch.Generator()
    )
    torch.rand(3)
    second = _attack(s, ORIGINAL, update_parties=True, steps=4)
    other_seed = _attack(s, ORIGINAL, update_parties=True, steps=4, seed=1)
    assert first.forget_acc == second.forget_acc and first.retain_acc == second.retain_acc
    assert first.loss == second.loss and len(first.loss) == 4
    assert other_seed.loss != first.loss


@pytest.mark.parametrize("update_parties", [False, True])
def test_top_only_attack_leaves_the_bottoms_alone(
    setup: Setup, update_parties: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = setup.server
    snapshot = server.digests("retrain")
    current: list[dict[str, str]] = []
    load = server.load_state

    def spy(name: str) -> None:
        current.append(server.digests())  # the state the reload is about to replace
        load(name)

    monkeypatch.setattr(server, "load_state", spy)
    seen = record_requests(server)
    _attack(setup, "retrain", update_parties=update_parties, steps=3)
    attacked = current[-1]
    assert attacked["top"] != snapshot["top"]
    parties = list(server.party_ids)
    backwards = [r for _, r in seen if isinstance(r, Backward)]
    train_embeds = [r for _, r in seen if isinstance(r, Embed) and r.train]
    if update_parties:
        assert all(attacked[pid] != snapshot[pid] for pid in parties)
        assert len(backwards) == 3 * len(parties)
    else:
        assert all(attacked[pid] == snapshot[pid] for pid in parties)
        assert not backwards and not train_embeds


def test_attack_checks_its_arguments(setup: Setup) -> None:
    with pytest.raises(KeyError, match="no saved model 'nope'"):
        _attack(setup, "nope", update_parties=False)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        _attack(setup, ORIGINAL, update_parties=False, steps=-1)
    empty = torch.zeros(0, dtype=torch.int64)
    with pytest.raises(ValueError, match="forget_eval_ids is empty"):
        relearning_attack(
            setup.server,
            ORIGINAL,
            setup.split.attack_ids,
            empty,
            setup.split.retain_eval_ids,
            steps=1,
            update_parties=False,
            seed=0,
        )


# -- the known answer --------------------------------------------------------------------------


def test_output_only_suppression_comes_back_faster_than_retrain(setup: Setup) -> None:
    curves = relearning_curves(setup.server, [SUPPRESSED, "retrain"], setup.split, seed=0)
    for phase in ("top", "full"):
        suppressed, retrain = curves[phase][SUPPRESSED], curves[phase]["retrain"]
        summary = compare_relearning(suppressed, retrain)
        assert summary.initial_forget_acc == 0.0  # hidden at the output: nothing predicted
        assert retrain.forget_acc[0] < 0.05
        assert summary.steps_to_recover is not None and summary.steps_to_recover <= 8, (phase, suppressed)
        assert summary.reference_steps_to_recover is None or (
            summary.reference_steps_to_recover > summary.steps_to_recover + 2
        ), (phase, retrain)
        assert summary.area_gap is not None and summary.area_gap > 0.2, (phase, summary)
        # The attack recovers the class, not a prior shift: retained accuracy holds.
        assert summary.final_retain_acc is not None and summary.final_retain_acc > retrain.retain_acc[0] - 0.1


# -- the array-level summaries -----------------------------------------------------------------


def test_steps_to_recover_and_area_on_known_curves() -> None:
    curve = [0.0, 0.1, 0.4, 0.5, 0.9, 1.0]
    assert steps_to_recover(curve) == 3
    assert steps_to_recover(curve, threshold=0.95) == 5
    assert steps_to_recover([0.0, 0.2, 0.3]) is None
    assert steps_to_recover([0.7, 0.0]) == 0  # never forgotten: nothing to recover
    assert relearning_area(curve) == pytest.approx((0.1 + 0.4 + 0.5 + 0.9 + 1.0) / 5)
    assert relearning_area([0.3]) is None
    # Recorded every other update: each accuracy stands for the two updates that led to it.
    assert relearning_area([0.0, 0.5, 1.0], steps=[0, 2, 4]) == pytest.approx(0.75)
    assert relearning_area([0.0, 0.5, 1.0], steps=[0, 1, 4]) == pytest.approx((0.5 + 3 * 1.0) / 4)
    assert steps_to_recover([0.0, 0.5, 1.0], steps=[0, 2, 4]) == 2
    assert relearning_area(np.ones(4)) == 1.0 and relearning_area(torch.zeros(4)) == 0.0


def test_summary_against_a_reference() -> None:
    summary = summarize_relearning(
        [0.0, 0.6, 1.0, 1.0],
        [0.9, 0.85, 0.8, 0.8],
        reference_forget_acc=[0.0, 0.0, 0.2, 0.5],
        reference_retain_acc=[0.9, 0.9, 0.9, 0.88],
    )
    assert summary.steps_to_recover == 1 and summary.reference_steps_to_recover == 3
    assert summary.area == pytest.approx(2.6 / 3) and summary.reference_area == pytest.approx(0.7 / 3)
    assert summary.area_gap == pytest.approx(1.9 / 3)
    assert summary.initial_forget_acc == 0.0 and summary.final_forget_acc == 1.0
    assert summary.final_retain_acc == 0.8 and summary.reference_final_retain_acc == 0.88
    assert summary.budget == 3 and summary.threshold == 0.5
    d = summary.to_dict()
    assert d["area_gap"] == pytest.approx(1.9 / 3) and d["steps_to_recover"] == 1
    assert all(v is None or isinstance(v, (int, float)) for v in d.values())
    alone = summarize_relearning([0.0, 0.0])
    assert alone.area_gap is None and alone.reference_area is None and alone.final_retain_acc is None


def test_compare_takes_curve_objects() -> None:
    audited = RelearningCurve([0, 1, 2], [0.0, 1.0, 1.0], [0.9, 0.9, 0.9], [2.0, 1.0])
    reference = RelearningCurve([0, 1, 2], [0.0, 0.0, 0.5], [0.9, 0.9, 0.9], [2.0, 1.5])
    summary = compare_relearning(audited, reference, threshold=0.5)
    assert summary.steps_to_recover == 1 and summary.reference_steps_to_recover == 2
    assert summary.area_gap == pytest.approx(0.75)
    with pytest.raises(ValueError, match="different steps"):
        compare_relearning(audited, RelearningCurve([0, 2, 4], [0.0, 0.0, 0.5], [0.9] * 3, [1.0, 1.0]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"forget_acc": [0.0, 1.2]}, r"accuracies in \[0, 1\]"),
        ({"forget_acc": [[0.0, 1.0]]}, "1-D"),
        ({"forget_acc": [0.0, 1.0], "steps": [0, 0]}, "increase strictly"),
        ({"forget_acc": [0.0, 1.0], "steps": [1, 2]}, "start at 0"),
        ({"forget_acc": [0.0, 1.0], "reference_forget_acc": [0.0]}, "reference_forget_acc has 1"),
        ({"forget_acc": [0.0, 1.0], "retain_acc": [0.5]}, "retain_acc has 1"),
        ({"forget_acc": [0.0, 1.0], "threshold": 0.0}, "threshold"),
    ],
)
def test_summary_rejects_bad_curves(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        summarize_relearning(**kwargs)


def test_top_only_phase_asks_the_parties_once_and_matches_the_round_by_round_attack(setup: Setup) -> None:
    """Frozen bottoms give the same eval-mode embeddings at every step: two embedding rounds
    (attack batch, evaluation samples) replace 2T + 1, and the curve is the one a server that
    asks the parties at every step gets (checked against that loop, written out here)."""
    server, split = setup.server, setup.split
    seen = record_requests(server)
    curve = _attack(setup, SUPPRESSED, update_parties=False, steps=4)
    embeds = [r for pid, r in seen if isinstance(r, Embed) and pid == server.party_ids[0]]
    assert len(embeds) == 2

    # The round-by-round attack: one split-learning step with frozen bottoms, then a prediction.
    with torch.random.fork_rng():
        server.load_state(SUPPRESSED)
        server.party_op("begin_method", seed=derive_seed(0, "relearning", "parties"))
        torch.manual_seed(derive_seed(0, "relearning", "server"))
        server.configure(default_attack_optim(), 4, parties=False, top=True)
        ids = torch.cat([split.forget_eval_ids, split.retain_eval_ids])
        n = split.forget_eval_ids.numel()
        losses: list[float] = []
        forget = [float((server.predict(ids) == server.labels[ids])[:n].double().mean())]
        for _ in range(4):
            server.run_epoch([split.attack_ids], update_parties=False, on_step=losses.append)
            forget.append(float((server.predict(ids) == server.labels[ids])[:n].double().mean()))
        server.configure(default_attack_optim(), 0, parties=True, top=True)
        server.load_state(SUPPRESSED)
    assert curve.forget_acc == pytest.approx(forget, abs=1e-12)
    assert curve.loss == pytest.approx(losses, rel=1e-6)


# -- the head-reset phase ----------------------------------------------------------------------


def test_head_reset_recovers_a_masked_output_row_that_top_and_full_do_not(masked: Setup) -> None:
    """Known answer: a masked output row hides the class from ``top`` and ``full`` (SGD at lr
    0.01 cannot move a bias of -1e4); the head phase replaces the layer the mask is in, so the
    masked model's head curve is the original's after step 0 and the class comes back."""
    curves = relearning_curves(masked.server, [MASKED, ORIGINAL, "retrain"], masked.split, seed=0)
    assert list(curves) == ["top", "full", "head"]  # every phase by default
    for phase in ("top", "full"):
        assert max(curves[phase][MASKED].forget_acc) == 0.0, phase
    head, original, retrain = (curves["head"][m] for m in (MASKED, ORIGINAL, "retrain"))
    assert head.steps == list(range(DEFAULT_HEAD_STEPS + 1)) and len(head.loss) == DEFAULT_HEAD_STEPS
    assert head.forget_acc[0] == 0.0  # step 0: the model as unlearned, the mask still there
    assert head.forget_acc[0] == curves["top"][MASKED].forget_acc[0]
    assert head.retain_acc[0] == curves["top"][MASKED].retain_acc[0]
    summary = compare_relearning(head, retrain)
    assert summary.final_forget_acc >= 0.5 and summary.steps_to_recover is not None, head
    assert summary.final_retain_acc is not None and summary.final_retain_acc > retrain.retain_acc[0] - 0.1
    # By construction: the same features, the same fresh layer, the same fit.
    assert head.forget_acc[1:] == original.forget_acc[1:] and head.retain_acc[1:] == original.retain_acc[1:]
    assert head.loss == original.loss
    assert head.loss[-1] < head.loss[0] / 10  # the fresh layer fits the attack set


def test_head_reset_reports_retrains_curve(masked: Setup) -> None:
    """``retrain``'s head-phase curve is recorded at the same steps, so it is the reference of
    the summaries. What it reaches is a property of the features: on digits retrain's features
    separate digit 0 too (0.8 or more at the end on the seeds tried), so only the direction of
    the speed gap is asserted (+0.07 to +0.22 on the seeds tried), not its size."""
    curves = relearning_curves(masked.server, [MASKED, "retrain"], masked.split, phases=["head"], seed=0)
    assert list(curves) == ["head"]
    retrain = curves["head"]["retrain"]
    assert retrain.steps == curves["head"][MASKED].steps
    assert retrain.forget_acc[0] < 0.05  # never learned the class
    assert retrain.loss[-1] < retrain.loss[0] / 10  # fitted here too
    summary = compare_relearning(curves["head"][MASKED], retrain)
    d = summary.to_dict()
    assert d["reference_area"] is not None and d["reference_final_retain_acc"] is not None
    assert summary.area_gap is not None and summary.area_gap > 0, summary


def test_head_reset_leaves_no_trace_and_asks_the_parties_once(masked: Setup) -> None:
    server = masked.server
    names = sorted(server.states)
    before = {name: server.digests(name) for name in names}
    rng = torch.get_rng_state()
    server.load_state(ORIGINAL)  # something else current: the attack must end on its own model
    seen = record_requests(server)
    for model in (MASKED, "retrain"):
        curve = _attack(masked, model, update_parties=False, reset_head=True, steps=5)
        assert curve.loss[0] != curve.loss[-1]  # the layer did move before the reload
        assert {name: server.digests(name) for name in names} == before
        assert server.digests() == before[model]
        assert server.optimizer is None
        assert all(p.requires_grad for p in server.top.parameters())
        for party in server.transport.parties.values():  # type: ignore[attr-defined]
            assert party.optimizer is None
            assert all(p.requires_grad for p in party.bottom.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    first = server.party_ids[0]
    assert not [r for _, r in seen if isinstance(r, Backward) or (isinstance(r, Embed) and r.train)]
    assert len([r for pid, r in seen if isinstance(r, Embed) and pid == first]) == 2 * 2  # 2 per attack


def test_head_reset_is_seeded_by_the_attack_seed(masked: Setup) -> None:
    """The fresh layer is drawn from the attack seed, not from the global random state."""
    first = _attack(masked, MASKED, update_parties=False, reset_head=True, steps=3)
    torch.rand(3)
    again = _attack(masked, MASKED, update_parties=False, reset_head=True, steps=3)
    other = _attack(masked, MASKED, update_parties=False, reset_head=True, steps=3, seed=1)
    assert first.loss == again.loss and first.forget_acc == again.forget_acc
    assert other.loss != first.loss


def test_head_phase_spec_config_and_arguments(setup: Setup) -> None:
    assert PHASES["head"].reset_head and not PHASES["head"].update_parties
    assert not PHASES["top"].reset_head and not PHASES["full"].reset_head and PHASES["full"].update_parties
    assert default_head_optim().optimizer == "adam" and default_head_optim().weight_decay == 0.0
    cfg = RelearningConfig()
    assert cfg.phases == ["top", "full", "head"] and cfg.head_steps == DEFAULT_HEAD_STEPS
    assert RelearningConfig(phases=["head"]).phases == ["head"]
    with pytest.raises(ValueError, match="each of top, full and head at most once"):
        RelearningConfig(phases=["head", "head"])
    with pytest.raises(ValueError, match="head_steps"):
        RelearningConfig(head_steps=0)
    with pytest.raises(ValueError, match="update_parties must be False"):
        _attack(setup, ORIGINAL, update_parties=True, reset_head=True)
    short = relearning_curves(
        setup.server, [ORIGINAL], setup.split, phases=["top", "head"], steps=2, head_steps=3, seed=0
    )
    assert short["top"][ORIGINAL].steps == [0, 1, 2] and short["head"][ORIGINAL].steps == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="unknown relearning phase 'tail'"):
        relearning_curves(setup.server, [ORIGINAL], setup.split, phases=["tail"], seed=0)
