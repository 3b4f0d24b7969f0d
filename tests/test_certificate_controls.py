"""The certificate never claims removal it cannot show, end to end: built-in controls,
calibration retrains, power, and what a do-nothing or output-only method gets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import small_config
from vfl_sim.config import load_config
from vfl_sim.errors import ConfigError
from vfl_sim.experiment import prepare
from vfl_sim.methods import UnlearningContext, UnlearningMethod, register_method
from vfl_sim.methods.controls import CUT_ONLY, MASK_LOGIT, OUTPUT_MASK, calibration_name, is_reserved
from vfl_sim.methods.registry import METHODS


class DoNothing(UnlearningMethod):
    """Acknowledges the request and changes nothing (a lazy or dishonest method)."""

    supports = frozenset({"class", "samples", "party", "features"})

    def unlearn(self, ctx: UnlearningContext) -> None:
        pass


class OutputBias(UnlearningMethod):
    """An output-only edit: the forgotten classes' classifier bias set to -1e4."""

    supports = frozenset({"class"})

    def unlearn(self, ctx: UnlearningContext) -> None:
        with torch.no_grad():
            ctx.server.top.classifier.bias[list(ctx.forget.classes)] = -1e4


@pytest.fixture(autouse=True, scope="module")
def plugin_methods() -> Iterator[None]:
    """The two methods above, registered while this module's tests run (other modules run
    every registered method)."""
    register_method("test_do_nothing")(DoNothing)
    register_method("test_output_bias")(OutputBias)
    yield
    METHODS.unregister("test_do_nothing")
    METHODS.unregister("test_output_bias")


def certificates(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: m["certificate"] for name, m in {**report["models"], **report["controls"]}.items()}


@pytest.mark.parametrize("epochs", [10, 30])
def test_sample_request_never_certifies_a_model_that_did_nothing(tmp_path: Path, epochs: int) -> None:
    cfg = load_config(
        "configs/digits_samples.yaml",
        [f"train.epochs={epochs}", "methods=[retrain, test_do_nothing]", "audit.plots=false"],
    )
    report = prepare(cfg).run(tmp_path / "run")
    certs = certificates(report)
    for name in ("original", "test_do_nothing"):
        assert not certs[name]["removal"], name
        assert certs[name]["trilemma"] != "removal"
    # Doing nothing is the original, check for check.
    assert certs["test_do_nothing"]["trilemma"] == certs["original"]["trilemma"]
    power = report["audit"]["certificate"]["power"]
    for part in ("output_forgetting", "representation_forgetting"):
        if not power[part]["powered"]:
            # Where the audits cannot tell the original from retrain, the report says so and why.
            assert "what would give power" in power[part]["reason"]
            for name, cert in certs.items():
                assert cert[part]["status"] != "pass", (name, part)
                if cert[part]["status"] == "inconclusive":
                    assert "no power" in (cert[part]["note"] or "") or cert[part]["note"]
    # Controls and calibration: built in, reported apart, and their cost too.
    assert set(report["controls"]) == {calibration_name(1), calibration_name(2)}
    assert {c["role"] for c in report["controls"].values()} == {"calibration"}
    timings = report["audit"]["timings_s"]
    assert timings["calibration"] > 0 and "controls" not in timings
    assert report["audit"]["runtime_s"] == pytest.approx(sum(timings.values()))
    tol = report["audit"]["certificate"]["tolerances"]["lpr_gap.fused"]
    assert tol["source"] in ("calibrated", "floor") and tol["tolerance"] >= tol["floor"] and len(tol["null"]) == 2


@pytest.mark.parametrize(
    "forget",
    [{"kind": "party", "party": "party_1"}, {"kind": "features", "party": "party_0", "columns": [0]}],
)
def test_party_and_feature_requests_credit_nothing_beyond_the_cut(tmp_path: Path, forget: dict[str, Any]) -> None:
    cfg = small_config(
        train={"epochs": 4},
        partition={"parties": 3},
        forget=forget,
        methods=["retrain", "test_do_nothing"],
        audit={"probe_repeats": 3, "plots": False},
    )
    report = prepare(cfg).run(tmp_path / "run")
    assert report["controls"][CUT_ONLY]["role"] == "negative"
    certs = certificates(report)
    nothing, cut = certs["test_do_nothing"], certs[CUT_ONLY]
    # The do-nothing method is the cut: it gets exactly the cut's verdicts, and no removal.
    assert nothing["representation_forgetting"]["status"] == cut["representation_forgetting"]["status"]
    assert nothing["trilemma"] == cut["trilemma"]
    assert not nothing["removal"] and not cut["removal"]
    assert nothing["trilemma"] in ("structural_removal", "no_forgetting", "inconclusive")
    # The top model's own output is one of the views the removed columns are looked for in.
    assert "output" in report["models"]["test_do_nothing"]["feature_recovery"]


def test_output_only_edit_is_suppression_for_every_audit_seed(tmp_path: Path) -> None:
    base = {
        "train": {"epochs": 10},
        "methods": ["retrain", "test_output_bias"],
        "audit": {"plots": False},
    }
    exp = prepare(small_config(**base))
    report = exp.run(tmp_path / "run")
    cert = report["models"]["test_output_bias"]["certificate"]
    assert cert["trilemma"] == "suppression" and not cert["removal"]
    # The head-reset phase of the relearning attack brings the masked class back; retrain's
    # representations never learned it.
    head = report["models"]["test_output_bias"]["relearning"]["head"]
    assert head["initial_forget_acc"] == 0.0 or head["final_forget_acc"] > head["initial_forget_acc"]
    assert head["final_forget_acc"] >= 0.5
    # The verdict does not hang on the probe splits, bootstraps or attack samples: re-audited
    # with ten other audit seeds, it stays suppression.
    regions = []
    for seed in range(1, 11):
        cfg = small_config(**{**base, "audit": {**base["audit"], "seed": seed}})
        again = prepare(cfg).reaudit(tmp_path / "run")
        regions.append(again["models"]["test_output_bias"]["certificate"]["trilemma"])
    assert regions == ["suppression"] * 10


def test_controls_are_built_in_and_their_names_reserved(tmp_path: Path) -> None:
    exp = prepare(small_config(methods=["retrain"], audit={"calibration": {"retrains": 1}}))
    assert exp.control_roles == {OUTPUT_MASK: "suppression", calibration_name(1): "calibration"}
    report = exp.run(tmp_path / "run")
    mask = report["controls"][OUTPUT_MASK]
    assert mask["output"]["forget_test_acc"] == 0.0
    # Only the classifier changed: every party's embedding is the original's.
    assert mask["representation"]["fused"]["cka_original"] == pytest.approx(1.0)
    assert MASK_LOGIT < -1e3
    assert all(is_reserved(n) for n in ("original", CUT_ONLY, OUTPUT_MASK, "retrain_seed3"))
    assert not is_reserved("retrain") and not is_reserved("retrain_seedx")
    with pytest.raises(ConfigError, match="output_mask"):
        prepare(small_config(methods=["retrain", {"name": "finetune", "label": OUTPUT_MASK}]))
    # Calibration off: the configured tolerances apply and the report says so.
    off = prepare(small_config(methods=["retrain"], audit={"calibration": {"retrains": 0}}))
    report = off.run(tmp_path / "off")
    assert set(report["controls"]) == {OUTPUT_MASK}
    cal = report["audit"]["certificate"]["calibration"]
    assert cal["enabled"] is False and cal["retrains"] == []
    assert {t["source"] for t in report["audit"]["certificate"]["tolerances"].values()} <= {"configured"}
    assert "calibration" not in report["audit"]["timings_s"]


def test_a_diverged_run_is_reported_not_certified(tmp_path: Path) -> None:
    cfg = small_config(train={"epochs": 1, "lr": 1e6}, methods=["retrain"], audit={"plots": False})
    report = prepare(cfg).run(tmp_path / "run")
    certs = certificates(report)
    assert certs["original"]["trilemma"] == "diverged" and certs["original"]["diverged"]
    assert not any(c["removal"] for c in certs.values())
    assert "non-finite" in report["models"]["original"]["diverged"]
