"""The auditors on constructed representations with known answers: a model that only hides the
forgotten class at its output, against one that no longer encodes it (retrain)."""

from __future__ import annotations

import numpy as np
import pytest

from vfl_sim.audits import AuditData, ModelEmbeddings
from vfl_sim.audits.output import OutputAuditor
from vfl_sim.audits.representation import RepresentationAuditor

CLASSES, D = 4, 12


def _data() -> AuditData:
    rng = np.random.default_rng(0)
    split = np.array(["retain_train"] * 300 + ["forget_train"] * 100 + ["test"] * 200)
    labels = np.concatenate([rng.integers(1, CLASSES, 300), np.zeros(100, int), rng.integers(0, CLASSES, 200)])
    forget = labels == 0
    centers = rng.normal(0, 3, (CLASSES, D))
    encoded = centers[labels] + rng.normal(0, 1, (labels.size, D))  # every class, class 0 included
    collapsed = encoded.copy()
    collapsed[forget] = centers[1] + rng.normal(0, 1, (int(forget.sum()), D))  # class 0 looks like class 1
    logits = np.eye(CLASSES)[labels] * 5.0
    suppressed = logits.copy()
    suppressed[:, 0] = -10.0  # the output never says class 0, the embedding still has it
    retrain_logits = np.eye(CLASSES)[np.where(forget, 1, labels)] * 5.0

    def model(emb: np.ndarray, lg: np.ndarray) -> ModelEmbeddings:
        # One earlier layer per party: a random projection of what the party embeds.
        layers = {
            pid: {"h1": np.tanh(part @ rng.normal(size=(6, 8)))}
            for pid, part in (("party_0", emb[:, :6]), ("party_1", emb[:, 6:]))
        }
        return ModelEmbeddings(parties={"party_0": emb[:, :6], "party_1": emb[:, 6:]}, logits=lg, layers=layers)

    return AuditData(
        kind="class",
        labels=labels,
        split=split,
        forget=forget,
        models={
            "original": model(encoded, logits),
            "retrain": model(collapsed, retrain_logits),
            "suppressed": model(encoded, suppressed),
        },
    )


@pytest.fixture(scope="module")
def audited() -> tuple[dict, dict]:
    data = _data()
    return OutputAuditor(seed=0).audit(data), RepresentationAuditor(seed=0, repeats=5).audit(data)


def test_output_suppression_is_seen_at_the_output(audited) -> None:
    output, _ = audited
    assert output["suppressed"]["forget_test_acc"] == 0.0 and output["original"]["forget_test_acc"] == 1.0
    assert output["suppressed"]["retain_test_acc"] == 1.0
    # Forgotten training samples against unseen test samples of the class: all equally confident
    # here, so the attack is at chance, with an interval around it.
    m = output["suppressed"]["membership"]
    assert m["n_member"] == 100 and m["n_nonmember"] == int((_data().split == "test")[_data().forget].sum())
    assert m["auc_ci"][0] <= 0.5 <= m["auc_ci"][1] and m["calibrated_auc"] is not None


def test_the_representation_still_holds_what_the_output_hides(audited) -> None:
    _, rep = audited
    sup, ret = rep["suppressed"], rep["retrain"]
    recovery = sup["class_recovery"]
    assert recovery["output_accuracy"] == 0.0 and recovery["probe_accuracy"] > 0.9 and recovery["ncm_accuracy"] > 0.9
    # retrain embeds class 0 on top of class 1: a probe can only guess between the two
    assert ret["class_recovery"]["probe_accuracy"] < 0.8
    fused = sup["fused"]
    assert fused["lpr"] > 0.95 and fused["lpr_gap"] > 0.2 and fused["lpr_gap_interval"][0] > 0.2
    assert ret["fused"]["lpr_gap_interval"] == [0.0, 0.0]  # paired splits: identical models, no gap
    assert fused["cka_original"] == pytest.approx(1.0) and fused["cka_original_unbiased"] == pytest.approx(1.0)
    assert fused["separability"]["knn_purity"] > 0.9 > ret["fused"]["separability"]["knn_purity"]
    assert fused["separability"]["fisher_ratio"] > ret["fused"]["separability"]["fisher_ratio"]
    c = fused["consistency"]
    assert (
        c["forget_residual"] > 0.5 > 0.05 > c["retain_residual"]
    )  # retained samples map onto retrain, forgotten do not
    assert ret["fused"]["consistency"]["forget_residual"] < 1e-6
    assert set(sup["parties"]) == {"party_0", "party_1"}
    assert sup["parties"]["party_0"]["lpr_interval"][0] <= sup["parties"]["party_0"]["lpr"] <= 1.0


def test_layer_wise_recovery_per_party(audited) -> None:
    _, rep = audited
    sup, ret = rep["suppressed"]["layers"], rep["retrain"]["layers"]
    assert set(sup) == {"party_0", "party_1"} and set(sup["party_0"]) == {"h1"}
    for pid in sup:
        assert ret[pid]["h1"]["lpr_gap"] == 0.0
        assert sup[pid]["h1"]["lpr"] > 0.8 and sup[pid]["h1"]["lpr_gap"] > 0.1  # the earlier layer still holds it
