"""Tests of the vfl-sim command line: validate, run, methods, and input errors (exit code 2)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vfl_sim.cli import EXIT_INPUT_ERROR, main
from vfl_sim.config import load_config
from vfl_sim.report import SCHEMA_VERSION

TINY = """\
name: tiny
seed: 3
threads: 1
data:
  name: synthetic
  synthetic: {samples: 300, features: 8, classes: 3, informative_per_party: 3}
model:
  embedding_dim: 8
  bottom_hidden: [16]
  top_hidden: [16]
train: {epochs: 2, batch_size: 64}
forget: {kind: class, classes: [1]}
audit: {max_samples: 200}
"""
RUN_SETS = ["--set", "train.epochs=1", "--set", "methods=[retrain,finetune,neggrad]"]
METHODS = ["retrain", "finetune", "neggrad"]
MODELS = ["original", *METHODS]
OUTPUT_KEYS = ("retain_test_acc", "forget_test_acc", "retain_train_acc", "forget_train_acc")
REPR_KEYS = ("lpr", "lpr_auroc", "lpr_gap", "cka_original", "cka_retrain")


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "vfl-sim"
    return [str(script)] if script.exists() else [sys.executable, "-m", "vfl_sim.cli"]


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line on stderr, got {err!r}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def _strip_runtimes(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_runtimes(v) for k, v in value.items() if k not in ("runtime_s", "timings_s")}
    if isinstance(value, list):
        return [_strip_runtimes(v) for v in value]
    return value


def _in_unit(x: float) -> bool:
    return isinstance(x, float | int) and not math.isnan(x) and -1e-6 <= x <= 1 + 1e-6


# ------------------------------------------------------------------------------------------
# validate and methods


def test_validate_ok(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tiny)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("ok: synthetic, 2 parties, forget class: classes [1] (request class-")
    assert "methods: retrain, finetune, neggrad" in out
    assert err == ""


def test_validate_with_override(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tiny), "--set", "partition.parties=1", "--set", "methods=[neggrad]"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: synthetic, 1 parties,")
    assert out.rstrip().endswith("methods: neggrad")


def test_validate_bad_config(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["validate", str(tiny), "--set", "train.lr=-1"]) == EXIT_INPUT_ERROR
    out, err = capsys.readouterr()
    assert out == ""
    assert _one_error_line(err) == "error: train.lr: Input should be greater than 0 (got -1)"


def test_validate_unknown_key_lists_allowed(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tiny), "--set", "train.epoch=1"]) == EXIT_INPUT_ERROR
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("error: unknown field 'epoch' in train; allowed: ")
    assert "epochs" in line and "batch_size" in line


def test_validate_partition_error(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tiny), "--set", "partition.parties=9"]) == EXIT_INPUT_ERROR
    line = _one_error_line(capsys.readouterr().err)
    assert "partition.parties is 9" in line


def test_validate_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.yaml"
    assert main(["validate", str(missing)]) == EXIT_INPUT_ERROR
    assert _one_error_line(capsys.readouterr().err) == f"error: config file not found: {missing}"


def test_error_text_is_not_markup(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "[red]" / "c.yaml"
    assert main(["validate", str(missing)]) == EXIT_INPUT_ERROR
    assert _one_error_line(capsys.readouterr().err) == f"error: config file not found: {missing}"


def test_error_with_closing_tag_exits_2(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tiny), "--set", 'plugins=["no[/]such"]']) == EXIT_INPUT_ERROR
    assert "no[/]such" in _one_error_line(capsys.readouterr().err)


def test_unknown_method_lists_available(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run-unknown"
    assert (
        main(["run", str(tiny), "--out", str(out), "--quiet", "--set", "methods=[retrain,forgetti]"])
        == EXIT_INPUT_ERROR
    )
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("error: unknown unlearning method 'forgetti'; available: ")
    available = line.split("available: ", 1)[1]
    for name in METHODS:
        assert name in available
    assert not out.exists()


def test_bad_method_param(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tiny), "--set", "methods=[{name: neggrad, params: {lr: -1}}]"]) == EXIT_INPUT_ERROR
    assert _one_error_line(capsys.readouterr().err).startswith("error: methods.neggrad.params.lr: ")


def test_methods_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines if line.strip()]
    for name in METHODS:
        assert name in names
    finetune = next(line for line in lines if line.startswith("finetune"))
    assert "epochs=5" in finetune and "lr=0.01" in finetune


# ------------------------------------------------------------------------------------------
# run


def test_run_bad_config_writes_nothing(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    out = tmp_path / "never"
    assert main(["run", str(tiny), "--quiet", "--out", str(out), "--set", "data.name=foo"]) == EXIT_INPUT_ERROR
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("error: data.name: ") and "'digits'" in line and "(got 'foo')" in line
    assert not out.exists()
    # nor a default run folder, nor a partial one
    assert main(["run", str(tiny), "--quiet", "--set", "forget.classes=[7]"]) == EXIT_INPUT_ERROR
    assert "classes are 0..2" in _one_error_line(capsys.readouterr().err)
    assert list(work.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "tiny.yaml"]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-run")
    cfg = root / "tiny.yaml"
    cfg.write_text(TINY)
    out = root / "run"
    assert main(["run", str(cfg), "--out", str(out), "--quiet", *RUN_SETS]) == 0
    return out


def test_run_writes_folder(run_folder: Path) -> None:
    for name in ("report.json", "report.md", "config.yaml"):
        assert (run_folder / name).is_file(), name
    assert not [p for p in run_folder.parent.iterdir() if ".partial" in p.name]
    md = (run_folder / "report.md").read_text()
    assert md.startswith("# tiny")
    for name in MODELS:
        assert f"| {name} |" in md


def test_run_config_yaml_is_the_resolved_config(run_folder: Path) -> None:
    saved = load_config(run_folder / "config.yaml")
    expected = load_config(run_folder.parent / "tiny.yaml", RUN_SETS[1::2])
    assert saved == expected
    assert saved.train.epochs == 1
    assert [m.name for m in saved.methods] == METHODS


def test_run_report_schema(run_folder: Path) -> None:
    report = json.loads((run_folder / "report.json").read_text())
    assert report["schema_version"] == SCHEMA_VERSION
    assert report["name"] == "tiny" and report["seed"] == 3
    assert report["dataset"]["name"] == "synthetic" and report["dataset"]["samples"] == 300
    assert [p["party"] for p in report["parties"]] == ["party_0", "party_1"]
    assert report["forget_request"]["kind"] == "class" and report["forget_request"]["classes"] == [1]
    assert report["forget_request"]["forget_train_samples"] == 80  # 100 of class 1, 20 held out
    assert list(report["models"]) == MODELS
    for name in MODELS:
        m = report["models"][name]
        assert isinstance(m["runtime_s"], float) and m["runtime_s"] >= 0, name
        for key in OUTPUT_KEYS:
            assert _in_unit(m["output"][key]), (name, key, m["output"][key])
        rep = m["representation"]
        for section in (rep["fused"], rep["parties"]["party_0"], rep["parties"]["party_1"]):
            for key in REPR_KEYS:
                assert key in section, (name, key)
                if key == "lpr_gap":
                    assert isinstance(section[key], float) and -1 <= section[key] <= 1
                else:
                    assert _in_unit(section[key]), (name, key, section[key])
    models = report["models"]
    assert models["original"]["representation"]["fused"]["cka_original"] == pytest.approx(1.0)
    assert models["retrain"]["representation"]["fused"]["cka_retrain"] == pytest.approx(1.0)
    assert models["retrain"]["representation"]["fused"]["lpr_gap"] == pytest.approx(0.0)
    # retraining never saw class 1, so it cannot predict it
    assert models["retrain"]["output"]["forget_train_acc"] == 0.0
    assert models["retrain"]["output"]["forget_test_acc"] == 0.0


def test_run_is_reproducible_across_processes(run_folder: Path) -> None:
    root = run_folder.parent
    out = root / "run-again"
    env = {**os.environ, "PYTHONHASHSEED": "123"}  # a different hash salt must not matter
    proc = subprocess.run(
        [*_cli(), "run", str(root / "tiny.yaml"), "--out", str(out), "--quiet", *RUN_SETS],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    assert "original" in proc.stdout  # the results table
    first = json.loads((run_folder / "report.json").read_text())
    second = json.loads((out / "report.json").read_text())
    assert _strip_runtimes(second) == _strip_runtimes(first)
    assert (out / "config.yaml").read_text() == (run_folder / "config.yaml").read_text()


def test_run_into_non_empty_folder(run_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = run_folder.parent
    before = {p.relative_to(run_folder): p.stat().st_mtime_ns for p in run_folder.rglob("*")}
    report = (run_folder / "report.json").read_bytes()
    code = main(["run", str(root / "tiny.yaml"), "--out", str(run_folder), "--quiet", *RUN_SETS])
    assert code == EXIT_INPUT_ERROR
    line = _one_error_line(capsys.readouterr().err)
    assert str(run_folder) in line and "--overwrite" in line
    after = {p.relative_to(run_folder): p.stat().st_mtime_ns for p in run_folder.rglob("*")}
    assert after == before
    assert (run_folder / "report.json").read_bytes() == report
    assert not [p for p in root.iterdir() if ".partial" in p.name]


def test_run_overwrite_replaces_folder(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    sets = ["--set", "train.epochs=1", "--set", "methods=[neggrad]"]
    assert main(["run", str(tiny), "--out", str(out), "--quiet", "--overwrite", *sets]) == 0
    assert not (out / "stale.txt").exists()
    report = json.loads((out / "report.json").read_text())
    assert list(report["models"]) == ["original", "neggrad"]


def test_tiny_dataset_fails_cleanly_or_runs(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "small"
    sets = ["--set", "train.epochs=1", "--set", "methods=[neggrad]", "--set", "data.synthetic.samples=60"]
    code = main(["run", str(tiny), "--out", str(out), "--quiet", *sets])
    if code == EXIT_INPUT_ERROR:
        _one_error_line(capsys.readouterr().err)
        assert not out.exists()
    else:
        assert code == 0 and (out / "report.json").is_file()


def test_readme_plugin_method_runs_from_yaml(tmp_path, monkeypatch) -> None:
    """The README's extension example: a user module listed under plugins adds a method."""
    from vfl_sim.methods.registry import METHODS as METHOD_REGISTRY

    (tmp_path / "mymethods_readme.py").write_text(
        "import torch.nn.functional as F\n"
        "from vfl_sim.methods import PhaseParams, UnlearningContext, UnlearningMethod, register_method\n\n"
        "class LabelFlipParams(PhaseParams):\n    epochs: int = 3\n\n"
        "@register_method('label_flip')\n"
        "class LabelFlip(UnlearningMethod[LabelFlipParams]):\n"
        "    supports = frozenset({'class'})\n\n"
        "    def unlearn(self, ctx: UnlearningContext) -> None:\n"
        "        def loss(logits, labels, ids):\n"
        "            return F.cross_entropy(logits, (labels + 1) % logits.shape[1])\n"
        "        ctx.phase(self.params, ctx.forget.forget_ids, loss_fn=loss)\n"
    )
    (tmp_path / "cfg.yaml").write_text(
        "plugins: [mymethods_readme]\n"
        "data: {name: synthetic, synthetic: {samples: 300, features: 8, classes: 3, informative_per_party: 2}}\n"
        "train: {epochs: 1}\n"
        "methods: [retrain, {name: label_flip, params: {epochs: 2}}]\n"
    )
    monkeypatch.chdir(tmp_path)
    try:
        assert main(["run", "cfg.yaml", "--out", "run", "--quiet"]) == 0
        report = json.loads((tmp_path / "run" / "report.json").read_text())
        assert set(report["models"]) == {"original", "retrain", "label_flip"}
        assert report["models"]["label_flip"]["output"]["forget_train_acc"] < 0.5
    finally:
        METHOD_REGISTRY.unregister("label_flip")
        sys.modules.pop("mymethods_readme", None)


def test_audit_reaudits_a_finished_run_from_its_checkpoints(run_folder: Path, capsys) -> None:
    report_path = run_folder / "report.json"
    before = json.loads(report_path.read_text())
    broken = json.loads(report_path.read_text())
    for model in broken["models"].values():  # what an older audit left, or a damaged report
        model["representation"] = {}
        model["output"] = {}
    report_path.write_text(json.dumps(broken))
    capsys.readouterr()
    assert main(["audit", str(run_folder), "--quiet"]) == 0
    assert "| original |" not in capsys.readouterr().err
    after = json.loads(report_path.read_text())
    # No training: runtimes and traffic are kept; the audit comes back the same from the checkpoints.
    for name, model in before["models"].items():
        assert after["models"][name]["runtime_s"] == model["runtime_s"]
        assert after["models"][name]["communication"] == model["communication"]
        assert _strip_runtimes(after["models"][name]["output"]) == _strip_runtimes(model["output"])
        for section in ("representation", "certificate", "relearning", "reference_free"):
            assert _strip_runtimes(after["models"][name][section]) == _strip_runtimes(model[section]), section
    assert sorted(p.name for p in (run_folder / "plots").iterdir()) == sorted(
        ["trilemma.png", "layerwise_lpr.png", "cka.png", "probe_vs_output.png"]
    )
    assert (run_folder / "report.md").read_text().startswith("# tiny")
    assert not list(run_folder.glob("*.tmp*"))


def test_audit_of_a_folder_that_is_not_a_run(tmp_path: Path, capsys) -> None:
    assert main(["audit", str(tmp_path)]) == EXIT_INPUT_ERROR
    assert "is not a run folder (no config.yaml)" in _one_error_line(capsys.readouterr().err)


def test_reaudit_takes_other_audit_settings_but_not_other_models(run_folder: Path) -> None:
    """The audit section may change between runs of `audit` (or come from a newer version's
    defaults); anything that made the models may not."""
    from vfl_sim.config import load_config
    from vfl_sim.errors import ConfigError
    from vfl_sim.experiment import prepare

    saved = load_config(run_folder / "config.yaml")
    other_audit = saved.model_copy(update={"audit": saved.audit.model_copy(update={"probe_repeats": 2})})
    report = prepare(other_audit).reaudit(run_folder)
    assert report["models"]["original"]["representation"]["fused"]["probe_samples"]["splits"] == 2
    elsewhere = other_audit.model_copy(update={"runtime": "ray", "threads": 1})  # same models, other runtime
    assert prepare(elsewhere).reaudit(run_folder)["models"].keys() == report["models"].keys()
    other_training = saved.model_copy(update={"train": saved.train.model_copy(update={"epochs": 7})})
    with pytest.raises(ConfigError, match="train differ"):
        prepare(other_training).reaudit(run_folder)


def test_bench_without_a_config_runs_the_built_in_cases(monkeypatch: pytest.MonkeyPatch) -> None:
    import vfl_sim.bench

    calls: list[Any] = []
    monkeypatch.setattr(vfl_sim.bench, "run_bench", lambda config, overrides, **kw: calls.append(config))
    assert main(["bench"]) == 0
    assert calls == [None]


def test_readme_plugin_auditor_runs_from_yaml(tmp_path, monkeypatch) -> None:
    """The README's auditor example: a user module under plugins adds an audit section, and a
    bad auditor entry is an input error before anything is written."""
    from vfl_sim.audits.base import AUDITORS as AUDITOR_REGISTRY

    (tmp_path / "myaudits_readme.py").write_text(
        "import numpy as np\n"
        "from vfl_sim.audits import AuditData, Auditor, register_auditor\n\n"
        "@register_auditor('logit_margin')\n"
        "class LogitMargin(Auditor):\n"
        "    def __init__(self, *, top: int = 2) -> None:\n"
        "        self.top = top\n\n"
        "    def audit(self, data: AuditData) -> dict[str, dict[str, float]]:\n"
        "        out = {}\n"
        "        for name, m in data.models.items():\n"
        "            z = np.sort(m.logits[data.forget], axis=1)\n"
        "            out[name] = {'margin': float(np.mean(z[:, -1] - z[:, -self.top]))}\n"
        "        return out\n"
    )
    base = (
        "plugins: [myaudits_readme]\n"
        "data: {name: synthetic, synthetic: {samples: 300, features: 8, classes: 3, informative_per_party: 2}}\n"
        "train: {epochs: 1}\n"
        "methods: [retrain]\n"
    )
    (tmp_path / "cfg.yaml").write_text(base + "audit: {auditors: [{name: logit_margin, params: {top: 2}}]}\n")
    (tmp_path / "bad.yaml").write_text(base + "audit: {auditors: [{name: logit_margin, params: {tops: 2}}]}\n")
    (tmp_path / "unknown.yaml").write_text(base + "audit: {auditors: [no_such_audit]}\n")
    monkeypatch.chdir(tmp_path)
    try:
        assert main(["run", "cfg.yaml", "--out", "run", "--quiet"]) == 0
        report = json.loads((tmp_path / "run" / "report.json").read_text())
        margins = {name: m["logit_margin"]["margin"] for name, m in report["models"].items()}
        assert set(margins) == {"original", "retrain"} and all(v >= 0 for v in margins.values())
        assert main(["run", "bad.yaml", "--out", "bad", "--quiet"]) == EXIT_INPUT_ERROR
        assert main(["run", "unknown.yaml", "--out", "unknown", "--quiet"]) == EXIT_INPUT_ERROR
        assert not (tmp_path / "bad").exists() and not (tmp_path / "unknown").exists()
    finally:
        AUDITOR_REGISTRY.unregister("logit_margin")
        sys.modules.pop("myaudits_readme", None)
