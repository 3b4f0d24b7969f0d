"""Auditors declare what they need gathered and which requests they audit; the run provides
exactly that, for built-in and plugin auditors alike."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vfl_sim.audits.base import AUDITORS, INPUTS, LAYERS, NEEDS, AuditData, Auditor, register_auditor
from vfl_sim.cli import EXIT_INPUT_ERROR, main
from vfl_sim.config import config_from_dict
from vfl_sim.experiment import BUILT_IN_AUDITORS, prepare
from vfl_sim.forget import ForgetKind

DATA = "data: {name: synthetic, synthetic: {samples: 300, features: 8, classes: 3, informative_per_party: 2}}\n"
BASE = DATA + "train: {epochs: 1}\nmethods: [retrain]\naudit: {plots: false, calibration: {retrains: 0}}\n"

PLUGIN = '''
import numpy as np
from vfl_sim.audits import AuditData, Auditor, register_auditor

@register_auditor("input_echo")
class InputEcho(Auditor):
    """Reports the shape of the raw inputs the run gathered for it."""
    needs = frozenset({"inputs"})
    kinds = frozenset({"class"})

    def audit(self, data: AuditData) -> dict[str, dict[str, object]]:
        assert data.inputs is not None
        return {name: {"inputs": list(data.inputs.shape), "n": int(len(data.labels))} for name in data.models}
'''


def _tiny(**extra: object) -> dict[str, object]:
    return {
        "data": {"name": "synthetic", "synthetic": {"samples": 300, "features": 8, "classes": 3}},
        "train": {"epochs": 1},
        "methods": ["retrain"],
        **extra,
    }


def test_the_built_in_auditors_come_from_the_registry_with_their_kinds() -> None:
    for name in BUILT_IN_AUDITORS:
        cls = AUDITORS.get(name)
        assert cls.needs <= NEEDS and set(cls.kinds) <= set(ForgetKind.ALL)
    for kind, expect in [
        (ForgetKind.CLASS, ["output", "representation", "reference_free"]),
        (ForgetKind.PARTY, ["output", "feature_recovery"]),
    ]:
        forget = {"kind": kind, **({"classes": [0]} if kind == ForgetKind.CLASS else {"party": "party_1"})}
        exp = prepare(config_from_dict(_tiny(forget=forget)))
        assert [a.name for a in exp.auditors()] == expect
    off = prepare(config_from_dict(_tiny(audit={"reference_free": {"enabled": False}})))
    assert [a.name for a in off.auditors()] == ["output", "representation"]  # turned off in the config
    assert off.audit_needs() == {LAYERS, "shuffled_party_logits"} and INPUTS not in off.audit_needs()


def test_the_run_gathers_only_what_its_auditors_need() -> None:
    exp = prepare(config_from_dict(_tiny(audit={"reference_free": {"enabled": False}})))
    frame = exp.audit_frame()
    assert frame.ids is not None and frame.inputs is None and frame.removed_features is None
    frame = prepare(config_from_dict(_tiny())).audit_frame()  # the reference-free audit reads inputs
    assert frame.inputs is not None and frame.inputs.shape == (frame.labels.shape[0], 8)
    party = prepare(config_from_dict(_tiny(forget={"kind": "party", "party": "party_1"})))
    frame = party.audit_frame()
    assert frame.removed_party == "party_1" and frame.removed_features is not None
    assert frame.removed_features.shape[0] == frame.labels.shape[0]


def test_a_plugin_auditor_gets_what_it_needs_and_runs_for_its_kinds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "echo_plugin.py").write_text(PLUGIN)
    (tmp_path / "class.yaml").write_text(
        "plugins: [echo_plugin.py]\n" + BASE.replace("audit: {", "audit: {auditors: [input_echo], ")
    )
    (tmp_path / "samples.yaml").write_text(
        "plugins: [echo_plugin.py]\nforget: {kind: samples, fraction: 0.1}\n"
        + BASE.replace("audit: {", "audit: {auditors: [input_echo], ")
    )
    monkeypatch.chdir(tmp_path)
    try:
        assert main(["run", "class.yaml", "--out", "c", "--quiet"]) == 0
        models = json.loads((tmp_path / "c" / "report.json").read_text())["models"]
        n = models["original"]["input_echo"]["n"]
        assert models["original"]["input_echo"]["inputs"] == [n, 8]  # every raw feature, flattened
        assert main(["run", "samples.yaml", "--out", "s", "--quiet"]) == 0
        models = json.loads((tmp_path / "s" / "report.json").read_text())["models"]
        assert all("input_echo" not in m for m in models.values())  # a kind it does not audit
    finally:
        AUDITORS.unregister("input_echo")


def test_an_auditor_that_needs_what_no_run_gathers_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(TypeError, match="needs 'weights', which no run gathers"):

        @register_auditor("weights_reader")
        class WeightsReader(Auditor):
            needs = frozenset({"weights"})

            def audit(self, data: AuditData) -> dict[str, dict[str, object]]:
                return {}

    assert "weights_reader" not in AUDITORS.names()
    (tmp_path / "bad_needs.py").write_text(
        PLUGIN.replace('"input_echo"', '"bad_needs"').replace('{"inputs"}', '{"weights"}')
    )
    (tmp_path / "c.yaml").write_text("plugins: [bad_needs.py]\n" + BASE)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "c.yaml", "--out", "run", "--quiet"]) == EXIT_INPUT_ERROR
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs 'weights', which no run gathers" in err
    assert not (tmp_path / "run").exists()


def test_audit_data_has_no_untyped_side_channel() -> None:
    data = AuditData("class", np.zeros(2), np.array(["test", "test"]), np.zeros(2, bool), {})
    assert not hasattr(data, "meta")
    assert data.shuffled_party_logits == {} and data.diverged == {}
