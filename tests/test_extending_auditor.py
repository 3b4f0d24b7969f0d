"""The auditor of docs/extending.md, written from the page and run as a plugin."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from vfl_sim.audits.base import AUDITORS
from vfl_sim.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def _section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _block(section: str, language: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)
    assert blocks, f"no {language} block"
    return blocks[0]


@pytest.fixture
def plugin_file(tmp_path: Path) -> Path:
    path = tmp_path / "centroid_audit.py"
    path.write_text(_block(_section("Adding an auditor"), "python"))
    return path


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("centroid_audit_doc", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    finally:
        AUDITORS.unregister("centroid_separation")
    return module


def test_the_documented_statistic_follows_its_formula(plugin_file: Path) -> None:
    sep = _load(plugin_file).centroid_separation
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    forget = np.arange(4000) < 2000
    assert sep(a, forget) < 0.15  # the same distribution: about 0
    shifted = a.copy()
    shifted[forget, 0] += 2.0  # two standard deviations along one axis
    assert sep(shifted, forget) == pytest.approx(2.0, abs=0.15)
    assert sep(np.zeros((10, 2)), np.arange(10) < 5) == 0.0


def test_the_documented_auditor_runs_as_a_plugin(
    plugin_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _block(_section("Adding an auditor"), "yaml")
    (tmp_path / "c.yaml").write_text(
        config.replace("audit:\n", "audit:\n  plots: false\n  calibration: {retrains: 0}\n")
        + "data: {name: digits}\ntrain: {epochs: 2}\nforget: {kind: class, classes: [0]}\n"
        + "methods: [retrain, finetune]\n"
    )
    monkeypatch.chdir(tmp_path)
    try:
        assert main(["run", "c.yaml", "--out", "run", "--quiet"]) == 0
        models = json.loads((tmp_path / "run" / "report.json").read_text())["models"]
    finally:
        AUDITORS.unregister("centroid_separation")
    original, retrain = models["original"]["centroid_separation"], models["retrain"]["centroid_separation"]
    assert original["layers"] and set(original["layers"]) == set(retrain["layers"])
    assert all(k.startswith(("party_0/", "party_1/")) for k in original["layers"])
    assert all(math.isfinite(v) and v > 0 for v in original["layers"].values())
    assert all(v == 0.0 for v in retrain["vs_retrain"].values())
    assert set(models["finetune"]["centroid_separation"]["vs_retrain"]) == set(original["layers"])
