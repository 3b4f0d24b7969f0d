"""The certificate: verdicts from hand-made audit results, the trilemma table, and end to end
on digits (retrain passes its own representation check, the original fails output forgetting,
retraining only the classifier passes output forgetting and fails representation forgetting)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import small_config
from vfl_sim.audits.certificate import CertificateThresholds, certify, certify_run, trilemma_region
from vfl_sim.experiment import prepare
from vfl_sim.report import write_markdown


def view(gap: float, *, cka_orig: float = 0.9, cka_retrain: float = 0.95) -> dict[str, Any]:
    return {
        "lpr": 0.9 + gap,
        "lpr_gap": gap,
        "lpr_gap_mean": gap,
        "lpr_gap_interval": [gap - 0.02, gap + 0.02],
        "cka_original": cka_orig,
        "cka_retrain": cka_retrain,
    }


def model(
    retain: float = 0.97,
    forget: float = 0.0,
    gap: float = 0.0,
    auc: float = 0.5,
    *,
    party_gap: float | None = None,
    layer_gap: float = 0.0,
    cka_orig: float = 0.9,
    cka_retrain: float = 0.95,
    recovery: float = 0.9,
) -> dict[str, Any]:
    return {
        "output": {
            "retain_test_acc": retain,
            "forget_test_acc": forget,
            "retain_train_acc": 1.0,
            "forget_train_acc": forget,
            "membership": {"auc": auc, "auc_ci": [auc - 0.01, auc + 0.01]},
        },
        "representation": {
            "fused": view(gap, cka_orig=cka_orig, cka_retrain=cka_retrain),
            "parties": {"party_0": view(gap if party_gap is None else party_gap), "party_1": view(gap)},
            "layers": {"party_0": {"block1": {"lpr": 0.9, "lpr_gap": layer_gap}}},
            "class_recovery": {"probe_accuracy": recovery},
        },
    }


def models(**audited: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        "original": model(forget=1.0, gap=0.1, auc=0.7, cka_orig=1.0, cka_retrain=0.9, recovery=1.0),
        "retrain": model(cka_orig=0.9, cka_retrain=1.0),
        **audited,
    }


def test_reference_models_get_the_expected_verdicts() -> None:
    certs = certify(models(), "class")
    retrain, original = certs["retrain"], certs["original"]
    assert (retrain.utility.status, retrain.output_forgetting.status, retrain.representation_forgetting.status) == (
        "pass",
        "pass",
        "pass",
    )
    assert retrain.trilemma == "removal" and retrain.removal
    assert original.output_forgetting.status == "fail"
    assert original.representation_forgetting.status == "fail"
    assert original.trilemma == "no_forgetting" and not original.removal
    failed = {c.name for c in original.output_forgetting.failed}
    assert failed == {"forget_test_acc", "forget_train_acc", "membership_auc"}


def test_output_suppression_never_passes_for_removal() -> None:
    # Forgotten at the output exactly like retrain, but the class is still in the embeddings.
    suppressed = model(gap=0.12, cka_orig=1.0, cka_retrain=0.9)
    cert = certify(models(suppressed=suppressed), "class")["suppressed"]
    assert cert.output_forgetting.status == "pass"
    assert cert.representation_forgetting.status == "fail"
    assert cert.trilemma == "suppression" and not cert.removal
    failed = {c.name for c in cert.representation_forgetting.failed}
    assert {"lpr_gap.fused", "cka_closer_to_retrain"} <= failed


@pytest.mark.parametrize(
    ("audited", "failing"),
    [
        (model(party_gap=0.08), "lpr_gap.party_0"),
        (model(layer_gap=0.15), "layer_lpr_gap.party_0.block1"),
        (model(cka_orig=0.97, cka_retrain=0.96), "cka_closer_to_retrain"),
        (model(recovery=0.95), None),  # within retrain's 0.9 + 0.1
        (model(recovery=1.05), "class_recovery"),
    ],
)
def test_each_representation_check_can_fail_on_its_own(audited: dict[str, Any], failing: str | None) -> None:
    cert = certify(models(m=audited), "class")["m"]
    failed = [c.name for c in cert.representation_forgetting.failed]
    assert failed == ([failing] if failing else [])
    assert cert.output_forgetting.status == "pass" and cert.utility.status == "pass"


def test_utility_is_one_sided_and_output_two_sided() -> None:
    better = model(retain=0.99)
    worse = model(retain=0.90)
    certs = certify(models(better=better, worse=worse), "class")
    assert certs["better"].utility.status == "pass"
    assert certs["worse"].utility.status == "fail"
    assert certs["worse"].trilemma == "destructive_removal"
    # A sample request: forgetting far more than retrain marks the samples too (two-sided).
    sample_models = {
        "original": model(forget=1.0, auc=0.6),
        "retrain": model(forget=0.95),
        "over": model(forget=0.20),
        "near": model(forget=0.93),
    }
    for m in sample_models.values():
        m["output"]["forget_test_acc"] = None
        del m["representation"]["class_recovery"]
    certs = certify(sample_models, "samples")
    assert certs["over"].output_forgetting.status == "fail"
    assert certs["near"].output_forgetting.status == "pass"
    assert certs["original"].output_forgetting.status == "fail"
    # CKA is not judged for sample requests (retrain differs from the original by its own noise).
    assert all(
        "cka_closer_to_retrain" not in {c.name for c in c_.representation_forgetting.checks} for c_ in certs.values()
    )


def with_membership_diff(m: dict[str, Any], lo: float, hi: float) -> dict[str, Any]:
    auc = m["output"]["membership"]["auc"]
    m["output"]["vs_retrain"] = {"membership_auc": {"diff": auc - 0.5, "interval": [lo, hi], "n": 100}}
    return m


def test_a_check_passes_only_when_its_whole_interval_is_within_tolerance() -> None:
    # Retrain's AUC is 0.5; the tolerance 0.05. A sample request, where membership decides.
    def sample(m: dict[str, Any]) -> dict[str, Any]:
        m["output"]["forget_test_acc"] = None
        m["output"]["forget_train_acc"] = 1.0
        del m["representation"]["class_recovery"]
        return m

    noisy = sample(with_membership_diff(model(auc=0.47), -0.14, 0.08))  # within at the point only
    confident = sample(with_membership_diff(model(auc=0.47), -0.04, -0.02))
    far = sample(with_membership_diff(model(auc=0.44), -0.08, -0.04))  # beyond at the point
    ms = {"original": sample(model(auc=0.7)), "retrain": sample(model())}
    certs = certify({**ms, "noisy": noisy, "confident": confident, "far": far}, "samples")
    assert certs["noisy"].output_forgetting.status == "inconclusive"
    assert certs["noisy"].trilemma == "inconclusive" and not certs["noisy"].removal
    check = next(c for c in certs["noisy"].output_forgetting.checks if c.name == "membership_auc")
    assert check.status == "inconclusive" and check.interval == pytest.approx((0.36, 0.58))
    assert check.mde == pytest.approx(0.05 + 0.11) and not check.supporting
    assert certs["confident"].output_forgetting.status == "pass"
    assert certs["far"].output_forgetting.status == "fail"


def test_an_undecided_supporting_check_leaves_the_verdict_to_the_others() -> None:
    # In a class request the forgotten-class accuracy decides; membership supports it.
    noisy = with_membership_diff(model(auc=0.47), -0.14, 0.08)
    far = with_membership_diff(model(auc=0.40), -0.14, -0.06)
    certs = certify(models(noisy=noisy, far=far), "class")
    out = certs["noisy"].output_forgetting
    assert out.status == "pass" and "membership_auc" in (out.note or "")
    assert next(c for c in out.checks if c.name == "membership_auc").supporting
    assert certs["far"].output_forgetting.status == "fail"  # a supporting check still fails its verdict


def test_without_retrain_no_removal_can_be_claimed() -> None:
    ms = models(head=model())
    del ms["retrain"]
    certs = certify(ms, "class")
    for cert in certs.values():
        assert cert.representation_forgetting.status == "n/a"
        assert cert.trilemma == "unverified" and not cert.removal
    # Output forgetting still has its references by construction (a never-seen class scores 0).
    assert certs["head"].output_forgetting.status == "pass"
    assert certs["original"].output_forgetting.status == "fail"
    assert "original" in (certs["head"].utility.note or "")


def test_party_requests_have_no_output_part_and_judge_feature_recovery() -> None:
    def party_model(gap: float) -> dict[str, Any]:
        return {
            "output": {"retain_test_acc": 0.95, "forget_test_acc": None, "membership": None},
            "feature_recovery": {
                "fused": {"r2": 0.5 + gap, "recovery_gap": gap, "recovery_gap_mean": gap},
                "parties": {"party_0": {"r2": 0.4, "recovery_gap": 0.0, "recovery_gap_mean": 0.0}},
            },
        }

    ms = {"original": party_model(0.3), "retrain": party_model(0.0), "kd": party_model(0.01)}
    roles = {"cut_only": "negative"}
    certs = certify({**ms, "cut_only": party_model(0.2)}, "party", controls=roles)
    assert certs["kd"].output_forgetting.status == "n/a"
    assert certs["kd"].trilemma == "removal" and certs["kd"].removal
    assert certs["cut_only"].trilemma == "no_forgetting"
    assert certs["original"].trilemma == "no_forgetting"
    assert [c.name for c in certs["original"].representation_forgetting.failed] == ["feature_recovery_gap.fused"]
    # The cut alone passes: nothing shows that kd removed more than the cut.
    certs = certify({**ms, "cut_only": party_model(0.0)}, "party", controls=roles)
    assert certs["kd"].representation_forgetting.status == "inconclusive"
    assert certs["kd"].trilemma == "structural_removal" and not certs["kd"].removal
    assert "cut_only" in (certs["kd"].representation_forgetting.note or "")
    # Without the negative control no removal can be shown either.
    assert certify(ms, "party")["kd"].trilemma == "structural_removal"


def test_thresholds_are_configurable_and_validated() -> None:
    audited = model(gap=0.07)
    assert certify(models(m=audited), "class")["m"].representation_forgetting.status == "fail"
    loose = CertificateThresholds(lpr_gap=0.1)
    assert certify(models(m=audited), "class", loose)["m"].representation_forgetting.status == "pass"
    with pytest.raises(ValueError, match="lpr_gap"):
        CertificateThresholds(lpr_gap=-0.1)
    with pytest.raises(ValueError, match="original"):
        certify({"retrain": model()}, "class")
    with pytest.raises(ValueError, match="kind"):
        certify(models(), "rows")


def test_a_verdict_the_negative_control_passes_has_no_power() -> None:
    # An original that the representation checks cannot tell from retrain.
    ms = models(m=model())
    ms["original"] = model(forget=1.0, auc=0.7)
    certs = certify(ms, "class")
    for name in ("retrain", "m"):
        assert certs[name].representation_forgetting.status == "inconclusive"
        assert certs[name].trilemma == "inconclusive" and not certs[name].removal
        note = certs[name].representation_forgetting.note or ""
        assert "original" in note and "what would give power" in note
    # Output forgetting keeps its power: the original fails it.
    assert certs["m"].output_forgetting.status == "pass"


def test_a_suppression_control_that_passes_representation_removes_its_power() -> None:
    ms = models(output_mask=model(), m=model())
    certs = certify(ms, "class", controls={"output_mask": "suppression"})
    assert certs["m"].representation_forgetting.status == "inconclusive"
    assert "output_mask" in (certs["m"].representation_forgetting.note or "")
    ms["output_mask"] = model(gap=0.12, cka_orig=1.0, cka_retrain=0.9)
    certs = certify(ms, "class", controls={"output_mask": "suppression"})
    assert certs["m"].trilemma == "removal" and certs["output_mask"].trilemma == "suppression"


def test_calibration_retrains_set_tolerances_above_the_floor() -> None:
    ms = models(m=model(gap=0.07), r1=model(gap=0.04), r2=model(gap=0.06))
    run = certify_run(ms, "class", controls={"r1": "calibration", "r2": "calibration"})
    tol = run.tolerances["lpr_gap.fused"]
    # The far ends of the calibration retrains' intervals are 0.06 and 0.08; "higher" quantile: 0.08.
    assert tol.source == "calibrated" and tol.value == pytest.approx(0.08)
    assert tol.null == pytest.approx((0.06, 0.08)) and tol.floor == 0.05
    assert run.certificates["m"].representation_forgetting.status == "inconclusive"  # 0.07 <= 0.08 < 0.09
    assert run.tolerances["retain_test_acc"].source == "floor"  # no spread above the floor
    assert run.tolerances["cka_closer_to_retrain"].source == "floor"  # their CKA is closer to retrain
    # Without calibration retrains the floors are the tolerances.
    plain = certify_run(ms, "class")
    assert plain.tolerances["lpr_gap.fused"].source == "configured"
    assert plain.certificates["m"].representation_forgetting.status == "fail"


def test_a_diverged_model_is_never_certified() -> None:
    ms = models(m=model())
    ms["m"]["diverged"] = "non-finite bottom-model tensor net.0.weight at party_0"
    cert = certify(ms, "class")["m"]
    assert cert.trilemma == "diverged" and not cert.removal and cert.diverged
    assert cert.utility.status == cert.representation_forgetting.status == "n/a"
    # A diverged retrain is no reference: no removal for anyone.
    ms = models(m=model())
    ms["retrain"]["diverged"] = "non-finite outputs"
    certs = certify(ms, "class")
    assert certs["retrain"].trilemma == "diverged"
    assert certs["m"].representation_forgetting.status == "n/a" and not certs["m"].removal


def test_trilemma_table() -> None:
    assert trilemma_region("pass", "pass", "pass") == "removal"
    assert trilemma_region("pass", "pass", "fail") == "suppression"
    assert trilemma_region("pass", "fail", "pass") == "output_leak"
    assert trilemma_region("pass", "fail", "fail") == "no_forgetting"
    assert trilemma_region("fail", "pass", "pass") == "destructive_removal"
    assert trilemma_region("fail", "pass", "fail") == "destructive"
    assert trilemma_region("fail", "fail", "pass") == "failed"
    assert trilemma_region("pass", "pass", "n/a") == "unverified"
    assert trilemma_region("pass", "n/a", "fail") == "no_forgetting"
    assert trilemma_region("fail", "n/a", "pass") == "destructive_removal"
    assert trilemma_region("pass", "inconclusive", "pass") == "inconclusive"
    assert trilemma_region("pass", "pass", "inconclusive") == "inconclusive"
    assert trilemma_region("pass", "pass", "inconclusive", data_of_a_party=True) == "structural_removal"
    assert trilemma_region("pass", "n/a", "inconclusive", data_of_a_party=True) == "structural_removal"


def test_end_to_end_on_digits(tmp_path: Any) -> None:
    cfg = small_config(
        train={"epochs": 8},
        forget={"kind": "class", "classes": [0]},
        methods=[
            "retrain",
            {"name": "finetune", "label": "head_retrain", "params": {"freeze_bottoms": True, "reset_top": True}},
        ],
        audit={"probe_repeats": 3},
    )
    report = prepare(cfg).run(tmp_path / "run")
    cert = {name: m["certificate"] for name, m in report["models"].items()}
    assert cert["retrain"]["representation_forgetting"]["status"] == "pass"
    assert cert["original"]["output_forgetting"]["status"] == "fail"
    head = cert["head_retrain"]
    assert report["models"]["head_retrain"]["output"]["forget_test_acc"] == 0.0
    assert head["output_forgetting"]["status"] == "pass"
    assert head["representation_forgetting"]["status"] == "fail"
    assert head["trilemma"] == "suppression" and head["removal"] is False
    # The relearning attack ran before the certificate and is one of its removal checks.
    names = {c["name"] for c in cert["original"]["representation_forgetting"]["checks"]}
    assert {"relearning_gap.top", "relearning_gap.full"} <= names
    assert report["models"]["original"]["relearning"]["top"]["area_gap"] > 0.5
    # The bottoms never moved, so the fused embedding is the original's.
    cka = next(c for c in head["representation_forgetting"]["checks"] if c["name"] == "cka_closer_to_retrain")
    fused = report["models"]["head_retrain"]["representation"]["fused"]
    assert fused["cka_original"] == pytest.approx(1.0)
    assert not cka["passed"] and cka["value"] == pytest.approx(1.0 - fused["cka_retrain"])
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["models"]["head_retrain"]["certificate"] == head
    assert saved["audit"]["certificate_thresholds"]["lpr_gap"] == 0.05
    md = write_markdown(saved)
    assert "## Certificate" in md and "| head_retrain | pass | pass | FAIL | suppression | no |" in md


def test_party_and_feature_requests_end_to_end(tmp_path: Any) -> None:
    party = small_config(
        train={"epochs": 4},
        partition={"parties": 3},
        forget={"kind": "party", "party": "party_1"},
        methods=["retrain", "finetune"],
        audit={"probe_repeats": 3},
    )
    report = prepare(party).run(tmp_path / "party")
    models = report["models"]
    # The original still reads the departed party; unlearned models no longer do, by any measure.
    assert models["original"]["output"]["party_dependence"] > 0.05
    for name in ("retrain", "finetune"):
        assert models[name]["output"]["party_dependence"] == 0.0
        assert models[name]["certificate"]["output_forgetting"]["status"] == "pass"
    assert models["original"]["certificate"]["output_forgetting"]["status"] == "fail"
    rec = models["finetune"]["feature_recovery"]
    assert sorted(rec["parties"]) == ["party_0", "party_2"] and rec["excluded_party"] == "party_1"
    assert rec["fused"]["recovery_gap"] is not None
    # Retrain passes its own checks; whether that counts depends on the cut alone failing them.
    retrain = models["retrain"]["certificate"]["representation_forgetting"]["status"]
    cut = report["controls"]["cut_only"]["certificate"]["representation_forgetting"]["status"]
    assert retrain == ("pass" if cut == "fail" else "inconclusive")
    assert "relearning" not in models["original"] and "reference_free" not in models["original"]

    features = small_config(
        train={"epochs": 2},
        forget={"kind": "features", "party": "party_0", "columns": [0, 1]},
        methods=["retrain"],
        audit={"probe_repeats": 2},
    )
    report = prepare(features).run(tmp_path / "features")
    cert = report["models"]["original"]["certificate"]
    assert cert["output_forgetting"]["status"] == "n/a"
    target = report["models"]["original"]["feature_recovery"]["target"]
    assert target["columns"] == 2 * 8  # two pixel columns of an 8-row strip


def test_relearning_faster_than_retrain_fails_removal() -> None:
    def with_relearning(area_gap: float) -> dict[str, Any]:
        m = model()
        m["relearning"] = {"attack": {"n": 80}, "top": {"area_gap": area_gap}, "full": {"area_gap": 0.0}}
        return m

    certs = certify(models(quick=with_relearning(0.35), slow=with_relearning(0.05)), "class")
    assert [c.name for c in certs["quick"].representation_forgetting.failed] == ["relearning_gap.top"]
    assert certs["quick"].trilemma == "suppression"
    assert certs["slow"].representation_forgetting.status == "pass"
