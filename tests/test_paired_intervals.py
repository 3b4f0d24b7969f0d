"""Paired intervals of each audit statistic's difference to the retrained model, with known
answers: retrain against itself (and a model identical to it) gives 0 and [0, 0], a model that
gets every forgotten sample right where retrain gets none gives 1, and the interval of a
difference always covers it."""

from __future__ import annotations

import numpy as np
import pytest

from vfl_sim.audits import AuditData, ModelEmbeddings
from vfl_sim.audits.class_recovery import forgotten_class_recovery
from vfl_sim.audits.feature_recovery import FeatureRecoveryAuditor
from vfl_sim.audits.membership import auc_by_ranks, membership_inference, membership_scores, paired_auc_difference
from vfl_sim.audits.output import OutputAuditor, paired_accuracy_difference
from vfl_sim.audits.probe import probe_many
from vfl_sim.audits.representation import RepresentationAuditor, probe_samples

CLASSES = 3
ACC_KEYS = ("retain_test_acc", "forget_test_acc", "retain_train_acc", "forget_train_acc")


# --------------------------------------------------------------------------------------------
# The two interval functions on plain arrays
# --------------------------------------------------------------------------------------------


def test_paired_accuracy_of_identical_correctness_is_exactly_zero() -> None:
    c = np.array([1, 0, 1, 1, 0, 1], dtype=bool)
    assert paired_accuracy_difference(c, c) == {"diff": 0.0, "interval": [0.0, 0.0], "n": 6}


def test_paired_accuracy_all_right_against_all_wrong_is_one_with_no_width() -> None:
    assert paired_accuracy_difference(np.ones(40), np.zeros(40)) == {"diff": 1.0, "interval": [1.0, 1.0], "n": 40}
    assert paired_accuracy_difference(np.zeros(40), np.ones(40))["interval"] == [-1.0, -1.0]


def test_paired_accuracy_matches_the_formula_and_covers_the_diff() -> None:
    c = np.array([1, 1, 1, 0, 1, 0, 1, 1, 1, 0])
    r = np.array([1, 0, 1, 0, 0, 0, 1, 0, 1, 1])
    d = c - r
    half = 1.96 * np.std(d, ddof=1) / np.sqrt(d.size)
    out = paired_accuracy_difference(c, r)
    assert out["diff"] == pytest.approx(c.mean() - r.mean()) and out["n"] == 10
    assert out["interval"] == pytest.approx([d.mean() - half, d.mean() + half])
    assert out["interval"][0] <= out["diff"] <= out["interval"][1]


def test_paired_accuracy_clips_to_minus_one_one_and_handles_one_sample() -> None:
    c, r = np.ones(4), np.array([0, 0, 0, 1])  # diff 0.75, half-width 0.49
    assert paired_accuracy_difference(c, r)["interval"][1] == 1.0
    assert paired_accuracy_difference([True], [False]) == {"diff": 1.0, "interval": [1.0, 1.0], "n": 1}
    with pytest.raises(ValueError, match="same non-empty samples"):
        paired_accuracy_difference([], [])


def test_paired_auc_difference_known_answers() -> None:
    rng = np.random.default_rng(0)
    member = np.r_[np.ones(30, bool), np.zeros(50, bool)]
    s = rng.normal(size=80) + member
    same = paired_auc_difference(s, s.copy(), member)
    assert same.to_dict() == {"diff": 0.0, "interval": [0.0, 0.0], "n": 80}
    # members always score higher in one, always lower in the other: AUC 1 against AUC 0
    perfect = np.where(member, 1.0, 0.0)
    flipped = paired_auc_difference(perfect, -perfect, member)
    assert flipped.diff == 1.0 and flipped.interval == (1.0, 1.0)
    other = rng.normal(size=80)
    res = paired_auc_difference(s, other, member, seed=3)
    assert res.diff == pytest.approx(auc_by_ranks(s, member) - auc_by_ranks(other, member))
    assert res.interval[0] <= res.diff <= res.interval[1]


# --------------------------------------------------------------------------------------------
# Output auditor
# --------------------------------------------------------------------------------------------


def _class_data(*, kind: str = "class") -> AuditData:
    """Class 0 is forgotten. ``original`` classifies every sample right; ``retrain`` never
    predicts class 0 and errs on 20 % of the other samples; ``twin`` is retrain's copy."""
    rng = np.random.default_rng(1)
    n_ret, n_fgt, n_test = 240, 60, 180
    split = np.array(["retain_train"] * n_ret + ["forget_train"] * n_fgt + ["test"] * n_test)
    if kind == "class":
        labels = np.r_[rng.integers(1, CLASSES, n_ret), np.zeros(n_fgt, int), rng.integers(0, CLASSES, n_test)]
        forget = labels == 0
    else:  # samples: forgotten training samples of every class, no forgotten test sample
        labels = rng.integers(0, CLASSES, split.size)
        forget = split == "forget_train"
    n = labels.size
    centers = rng.normal(0, 3, (CLASSES, 8))
    emb = centers[labels] + rng.normal(0, 1, (n, 8))
    # Confidence varies per sample, so membership scores are not all tied.
    conf = rng.uniform(1.0, 6.0, n)
    original = np.eye(CLASSES)[labels] * conf[:, None]
    wrong = rng.random(n) < 0.2
    retrain_pred = np.where(forget | wrong, (labels + 1) % CLASSES, labels)
    if kind == "class":
        retrain_pred = np.where(retrain_pred == 0, 1, retrain_pred)
    retrain = np.eye(CLASSES)[retrain_pred] * rng.uniform(1.0, 6.0, n)[:, None]

    def model(logits: np.ndarray, e: np.ndarray) -> ModelEmbeddings:
        return ModelEmbeddings(parties={"party_0": e[:, :4], "party_1": e[:, 4:]}, logits=logits)

    collapsed = emb.copy()
    collapsed[forget] = centers[1] + rng.normal(0, 1, (int(forget.sum()), 8))
    return AuditData(
        kind=kind,
        labels=labels,
        split=split,
        forget=forget,
        models={
            "original": model(original, emb),
            "retrain": model(retrain, collapsed),
            "twin": model(retrain.copy(), collapsed.copy()),
        },
    )


@pytest.fixture(scope="module")
def class_output() -> dict:
    return OutputAuditor(seed=0).audit(_class_data())


def test_output_vs_retrain_is_zero_for_retrain_and_its_twin(class_output: dict) -> None:
    for name in ("retrain", "twin"):
        vs = class_output[name]["vs_retrain"]
        assert set(vs) == {*ACC_KEYS, "membership_auc"}
        for key, entry in vs.items():
            assert entry["diff"] == 0.0 and entry["interval"] == [0.0, 0.0], (name, key)


def test_output_vs_retrain_forgotten_accuracy_one_against_zero(class_output: dict) -> None:
    orig, ret = class_output["original"], class_output["retrain"]
    assert orig["forget_test_acc"] == 1.0 and ret["forget_test_acc"] == 0.0
    vs = orig["vs_retrain"]
    assert vs["forget_test_acc"] == {"diff": 1.0, "interval": [1.0, 1.0], "n": int(_n("test", forget=True))}
    assert vs["forget_train_acc"]["diff"] == 1.0 and vs["forget_train_acc"]["interval"] == [1.0, 1.0]
    for key in ACC_KEYS:
        entry = vs[key]
        assert entry["diff"] == pytest.approx(orig[key] - ret[key])
        lo, hi = entry["interval"]
        assert -1.0 <= lo <= entry["diff"] <= hi <= 1.0
    # retained accuracy: 1 against about 0.8, an interval of a few points around the diff
    retain = vs["retain_test_acc"]
    assert 0.1 < retain["diff"] < 0.3 and 0.0 < retain["interval"][1] - retain["interval"][0] < 0.2


def _n(split: str, *, forget: bool) -> int:
    data = _class_data()
    return int(((data.split == split) & (data.forget == forget)).sum())


def test_output_vs_retrain_membership_auc_pairs_the_existing_bootstrap(class_output: dict) -> None:
    orig, ret = class_output["original"], class_output["retrain"]
    entry = orig["vs_retrain"]["membership_auc"]
    assert entry["diff"] == pytest.approx(orig["membership"]["auc"] - ret["membership"]["auc"])
    assert entry["n"] == orig["membership"]["n_member"] + orig["membership"]["n_nonmember"]
    assert entry["interval"][0] <= entry["diff"] <= entry["interval"][1]
    # The same resamples as membership.auc_ci: scoring retrain against a constant reference
    # shifts nothing, so its replicates are exactly those behind auc_ci.
    data = _class_data()
    groups = np.where(data.split == "forget_train", "m", np.where(data.split == "test", "u", "o"))
    groups[(data.split == "test") & ~data.forget] = "o"
    keep = groups != "o"
    raw = membership_scores(data.models["retrain"].logits, data.labels)[keep]
    plain = membership_inference(data.models["retrain"].logits, data.labels, groups, member="m", nonmember="u")
    shifted = paired_auc_difference(raw, np.zeros_like(raw), (groups == "m")[keep])
    assert shifted.diff == pytest.approx(plain.auc - 0.5)
    assert np.allclose(np.asarray(shifted.interval), np.asarray(plain.auc_ci) - 0.5)


def test_output_vs_retrain_does_not_depend_on_other_models(class_output: dict) -> None:
    data = _class_data()
    alone = AuditData(
        data.kind, data.labels, data.split, data.forget, {k: data.models[k] for k in ("original", "retrain")}
    )
    assert OutputAuditor(seed=0).audit(alone)["original"] == class_output["original"]


def test_output_without_retrain_has_no_vs_retrain() -> None:
    data = _class_data()
    data.models.pop("retrain")
    out = OutputAuditor(seed=0).audit(data)
    assert all("vs_retrain" not in out[name] for name in out)


def test_output_sample_request_skips_the_missing_accuracy() -> None:
    out = OutputAuditor(seed=0).audit(_class_data(kind="samples"))
    assert out["original"]["forget_test_acc"] is None
    assert set(out["original"]["vs_retrain"]) == {
        "retain_test_acc",
        "retain_train_acc",
        "forget_train_acc",
        "membership_auc",
    }
    assert out["retrain"]["vs_retrain"]["membership_auc"] == {
        "diff": 0.0,
        "interval": [0.0, 0.0],
        "n": out["retrain"]["membership"]["n_member"] + out["retrain"]["membership"]["n_nonmember"],
    }


# --------------------------------------------------------------------------------------------
# Representation auditor: layers and class recovery
# --------------------------------------------------------------------------------------------


def _with_layers(data: AuditData) -> AuditData:
    rng = np.random.default_rng(2)
    proj = {pid: rng.normal(size=(4, 6)) for pid in ("party_0", "party_1")}
    models = {
        name: ModelEmbeddings(
            parties=m.parties,
            logits=m.logits,
            layers={pid: {"h1": np.tanh(e @ proj[pid])} for pid, e in m.parties.items()},
        )
        for name, m in data.models.items()
    }
    return AuditData(data.kind, data.labels, data.split, data.forget, models)


@pytest.fixture(scope="module")
def rep_data() -> AuditData:
    return _with_layers(_class_data())


@pytest.fixture(scope="module")
def rep_out(rep_data: AuditData) -> dict:
    return RepresentationAuditor(seed=0, repeats=4).audit(rep_data)


def test_layers_gain_means_and_intervals_and_keep_split_zero(rep_data: AuditData, rep_out: dict) -> None:
    rows = probe_samples(rep_data, 0)
    is_forget = rep_data.forget[rows]
    for name in rep_data.models:
        for pid in ("party_0", "party_1"):
            entry = rep_out[name]["layers"][pid]["h1"]
            assert set(entry) == {"lpr", "lpr_gap", "lpr_mean", "lpr_gap_mean", "lpr_gap_interval"}
            # split 0 is what the single-split probe gave before
            single = probe_many([rep_data.models[name].layers[pid]["h1"][rows]], is_forget, seed=0)[0]
            assert entry["lpr"] == single.balanced_accuracy
            lo, hi = entry["lpr_gap_interval"]
            assert lo <= entry["lpr_gap_mean"] <= hi
    for name in ("retrain", "twin"):
        for pid in ("party_0", "party_1"):
            entry = rep_out[name]["layers"][pid]["h1"]
            assert entry["lpr_gap"] == 0.0 and entry["lpr_gap_mean"] == 0.0 and entry["lpr_gap_interval"] == [0.0, 0.0]
    # original keeps class 0 apart where retrain collapsed it onto class 1
    assert rep_out["original"]["layers"]["party_0"]["h1"]["lpr_gap_mean"] > 0.1


def test_layers_without_retrain_have_no_gap_interval(rep_data: AuditData) -> None:
    models = {k: v for k, v in rep_data.models.items() if k != "retrain"}
    out = RepresentationAuditor(seed=0, repeats=2).audit(
        AuditData(rep_data.kind, rep_data.labels, rep_data.split, rep_data.forget, models)
    )
    entry = out["original"]["layers"]["party_0"]["h1"]
    assert entry["lpr_gap"] is None and entry["lpr_gap_mean"] is None and entry["lpr_gap_interval"] is None
    assert isinstance(entry["lpr_mean"], float)
    assert "vs_retrain" not in out["original"]["class_recovery"]


def test_class_recovery_vs_retrain_is_paired_per_sample(rep_data: AuditData, rep_out: dict) -> None:
    for name in ("retrain", "twin"):
        vs = rep_out[name]["class_recovery"]["vs_retrain"]
        assert vs["diff"] == 0.0 and vs["interval"] == [0.0, 0.0]
    orig, ret = rep_out["original"]["class_recovery"], rep_out["retrain"]["class_recovery"]
    vs = orig["vs_retrain"]
    assert vs["n"] == orig["n_forget_test"]
    assert vs["diff"] == pytest.approx(orig["probe_accuracy"] - ret["probe_accuracy"])
    assert vs["diff"] > 0.2 and vs["interval"][0] <= vs["diff"] <= vs["interval"][1]
    assert "probe_hits" not in orig


def test_class_recovery_hits_are_the_probe_accuracy() -> None:
    rng = np.random.default_rng(4)
    y_tr, y_te = rng.integers(0, 3, 150), rng.integers(0, 3, 90)
    centers = rng.normal(0, 3, (3, 5))
    res = forgotten_class_recovery(
        centers[y_tr] + rng.normal(size=(150, 5)), y_tr, centers[y_te] + rng.normal(size=(90, 5)), y_te, [0]
    )
    assert res.probe_hits is not None and res.probe_hits.shape == (res.n_forget_test,)
    assert res.probe_accuracy == float(np.mean(res.probe_hits))
    assert "probe_hits" not in res.to_dict()


# --------------------------------------------------------------------------------------------
# Feature recovery: the output view
# --------------------------------------------------------------------------------------------


def _party_data(*, logits_leak: bool) -> AuditData:
    """party_2 leaves; the original top model's logits carry its columns, retrain's do not."""
    rng = np.random.default_rng(5)
    n = 400
    kept = rng.normal(size=(n, 4))
    removed = kept[:, :1] @ rng.normal(size=(1, 5)) + rng.normal(size=(n, 5))
    split = np.array(["retain_train"] * 300 + ["test"] * 100)

    def model(carries: bool) -> ModelEmbeddings:
        e0 = kept[:, :2] @ rng.normal(size=(2, 4))
        e1 = kept[:, 2:] @ rng.normal(size=(2, 4))
        e2 = removed @ rng.normal(size=(5, 3)) if carries else np.zeros((n, 3))
        noise = rng.normal(size=(n, 5))  # drawn either way, so the embeddings do not depend on logits_leak
        source = removed if carries and logits_leak else noise
        logits = np.c_[kept[:, :1], source] @ rng.normal(size=(6, 6))
        return ModelEmbeddings(parties={"party_0": e0, "party_1": e1, "party_2": e2}, logits=logits)

    models = {"original": model(True), "retrain": model(False)}
    return AuditData(
        kind="party",
        labels=np.zeros(n, dtype=int),
        split=split,
        forget=np.zeros(n, dtype=bool),
        models=models,
        removed_party="party_2",
        removed_features=removed,
    )


def test_feature_recovery_output_view_for_a_party_request() -> None:
    auditor = FeatureRecoveryAuditor(n_components=3, repeats=4)
    out = auditor.audit(_party_data(logits_leak=True))
    orig, ret = out["original"]["output"], out["retrain"]["output"]
    assert set(orig) == set(out["original"]["fused"]) == {"r2", "r2_interval", "recovery_gap", "recovery_gap_interval"}
    assert ret["recovery_gap"] == 0.0 and ret["recovery_gap_interval"] == [0.0, 0.0]
    assert orig["r2"] > 0.9 and orig["recovery_gap"] > 0.3 and orig["recovery_gap_interval"][0] > 0.3
    lo, hi = orig["recovery_gap_interval"]
    assert lo <= orig["recovery_gap"] <= hi
    # The embedding views do not change with the logits.
    other = auditor.audit(_party_data(logits_leak=False))
    for name in ("original", "retrain"):
        assert other[name]["fused"] == out[name]["fused"] and other[name]["parties"] == out[name]["parties"]
    assert abs(other["original"]["output"]["recovery_gap"]) < 0.1
