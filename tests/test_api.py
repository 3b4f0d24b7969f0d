"""Tests of the Python API (:mod:`vfl_sim.api`): run from a dict, a YAML file or a config, read a
run or a sweep back, the DataFrames against ``report.json``, the certificate as objects, and
one-line errors for bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from vfl_sim import api
from vfl_sim.audits.certificate import Certificate, Check, Tolerance, Verdict, certify_run
from vfl_sim.errors import ConfigError, RunFolderError, VflSimError
from vfl_sim.sweep_table import METRIC_NAMES

# digits (1 epoch by override), no calibration retrains, relearning or plots: a few seconds a run.
TINY: dict[str, Any] = {
    "name": "api-tiny",
    "threads": 1,
    "train": {"epochs": 2, "batch_size": 64},
    "methods": ["retrain"],
    "audit": {"calibration": {"retrains": 0}, "relearning": {"enabled": False}, "plots": False},
}
SYNTHETIC = {
    "name": "synthetic",
    "synthetic": {"samples": 240, "features": 8, "classes": 3, "informative_per_party": 2},
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> api.Run:
    """One run from a dict, with overrides as a mapping (epochs down to 1, a method added)."""
    out = tmp_path_factory.mktemp("api") / "run"
    return api.run(TINY, overrides={"train.epochs": 1, "methods": ("retrain", "finetune")}, out=out)


def _entries(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {**report["models"], **report["controls"]}


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert text and "\n" not in text
    return text


def test_run_from_a_dict_applies_the_overrides(tiny_run: api.Run) -> None:
    assert tiny_run.config.train.epochs == 1
    assert tiny_run.models == ["original", "retrain", "finetune"]
    assert tiny_run.controls == {"output_mask": "suppression"}
    assert (tiny_run.folder / "report.json").is_file()


def test_load_run_reads_the_same_run_back(tiny_run: api.Run) -> None:
    loaded = api.load_run(tiny_run.folder)
    assert loaded.config == tiny_run.config
    assert loaded.report == json.loads(json.dumps(tiny_run.report))
    assert loaded.models == tiny_run.models
    assert loaded.certificates == tiny_run.certificates


def test_to_pandas_is_report_json(tiny_run: api.Run) -> None:
    report = json.loads((tiny_run.folder / "report.json").read_text())
    df = api.load_run(tiny_run.folder).to_pandas()
    assert list(df.columns) == ["model", "role", *METRIC_NAMES]
    assert list(df["model"]) == [*report["models"], *report["controls"]]
    assert list(df["role"]) == ["original", "method", "method", "suppression"]
    for row in df.to_dict("records"):
        entry = _entries(report)[row["model"]]
        assert row["retain_test_acc"] == entry["output"]["retain_test_acc"]
        assert row["forget_test_acc"] == entry["output"]["forget_test_acc"]
        assert row["lpr_gap"] == entry["representation"]["fused"]["lpr_gap"]
        assert row["membership_auc"] == entry["output"]["membership"]["auc"]
        assert row["runtime_s"] == entry["runtime_s"]
        assert row["bytes_total"] == entry["communication"]["bytes_total"]
        assert row["trilemma"] == entry["certificate"]["trilemma"]
        assert row["removal"] == entry["certificate"]["removal"]
        assert row["representation_forgetting"] == entry["certificate"]["representation_forgetting"]["status"]


def test_the_certificate_as_objects_agrees_with_the_report(tiny_run: api.Run) -> None:
    report = tiny_run.report
    assert list(tiny_run.certificates) == [*report["models"], *report["controls"]]
    for name, entry in _entries(report).items():
        cert = tiny_run.verdict(name)
        assert isinstance(cert, Certificate) and cert.to_dict() == entry["certificate"]
        for part in ("utility", "output_forgetting", "representation_forgetting"):
            verdict = getattr(cert, part)
            assert isinstance(verdict, Verdict) and verdict.status == entry["certificate"][part]["status"]
            assert all(isinstance(c, Check) for c in verdict.checks)
    saved = report["audit"]["certificate"]
    assert tiny_run.certification.tolerances_dict() == saved["tolerances"]
    assert tiny_run.certification.power == saved["power"]
    with pytest.raises(ConfigError, match="no certificate for model 'nope'") as exc:
        tiny_run.verdict("nope")
    _one_line(exc)


def test_certificate_to_dict_from_dict_round_trip(tiny_run: api.Run) -> None:
    # Certified again from the report's audit sections, then through JSON and back.
    report = tiny_run.report
    certification = certify_run(_entries(report), "class", controls=tiny_run.controls)
    for name, cert in certification.certificates.items():
        assert Certificate.from_dict(json.loads(json.dumps(cert.to_dict()))) == cert, name
    for tol in certification.tolerances.values():
        assert Tolerance.from_dict(json.loads(json.dumps(tol.to_dict()))) == tol
    # A check of a schema 1.0 report has only ``passed``.
    old = {"name": "lpr_gap.fused", "passed": False, "value": 0.2, "reference": 0.0, "rule": "r", "evidence": "e"}
    assert Check.from_dict(old).status == "fail"
    with pytest.raises(ValueError, match="unknown verdict status"):
        Verdict.from_dict({"status": "maybe", "checks": []})


def test_run_from_a_yaml_path_with_set_overrides(tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, "data": SYNTHETIC, "partition": {"parties": 2}}))
    done = api.run(path, overrides=["train.epochs=1", "name=from-yaml"], out=tmp_path / "out")
    assert done.config.name == "from-yaml" and done.config.data.name == "synthetic"
    assert done.models == ["original", "retrain"]
    assert done.to_pandas()["model"].tolist() == ["original", "retrain", "output_mask"]


def test_run_with_a_config_object_resumes_a_finished_run(tiny_run: api.Run) -> None:
    # resume on a complete run of the same config is a no-op that returns its report.
    again = api.run(tiny_run.config, out=tiny_run.folder, resume=True)
    assert again.report["models"]["retrain"]["runtime_s"] == tiny_run.report["models"]["retrain"]["runtime_s"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"config": {**TINY, "sweep": {"axes": {"seed": [0, 1]}}}}, ConfigError, "is a sweep config.*run_sweep"),
        ({"config": TINY, "overrides": {"train.epochs": -1}}, ConfigError, "train.epochs"),
        ({"config": TINY, "overrides": ["train.epochs"]}, ConfigError, "not of the form key=value"),
        ({"config": TINY, "overrides": {"name": object()}}, ConfigError, "override 'name': object is not"),
        ({"config": TINY, "resume": True, "out": None}, ConfigError, "resume=True needs out"),
        ({"config": 42}, ConfigError, "config must be a path"),
        ({"config": "no/such.yaml"}, ConfigError, "config file not found"),
    ],
)
def test_run_refuses_bad_input_in_one_line(
    kwargs: dict[str, Any], error: type[VflSimError], match: str, tmp_path: Path
) -> None:
    with pytest.raises(error, match=match) as exc:
        api.run(**{"out": tmp_path / "never", **kwargs})
    _one_line(exc)
    assert not (tmp_path / "never").exists()


def test_run_refuses_a_sweep_yaml(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**TINY, "sweep": {"axes": {"seed": [0, 1]}}}))
    with pytest.raises(ConfigError, match="sweep.yaml is a sweep config") as exc:
        api.run(path, out=tmp_path / "out")
    _one_line(exc)


def test_load_run_refuses_what_is_not_a_finished_run(tmp_path: Path, tiny_run: api.Run) -> None:
    cases = {
        tmp_path / "missing": "no such folder",
        tmp_path: "it has no report.json",
        tiny_run.folder / "report.json": "it is a file",
    }
    (tmp_path / ".unfinished.partial").mkdir()
    cases[tmp_path / "unfinished"] = "did not finish.*resume=True"
    for folder, match in cases.items():
        with pytest.raises(RunFolderError, match=match) as exc:
            api.load_run(folder)
        _one_line(exc)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "report.json").write_text("{not json")
    with pytest.raises(RunFolderError, match="report.json is unreadable") as exc:
        api.load_run(damaged)
    _one_line(exc)
    with pytest.raises(RunFolderError, match="is a run folder; read it with load_run") as exc:
        api.load_sweep(tiny_run.folder)
    _one_line(exc)
    bad_cert = tmp_path / "bad_cert"
    bad_cert.mkdir()
    report = json.loads((tiny_run.folder / "report.json").read_text())
    report["models"]["retrain"]["certificate"]["utility"]["status"] = "maybe"
    (bad_cert / "report.json").write_text(json.dumps(report))
    (bad_cert / "config.yaml").write_text((tiny_run.folder / "config.yaml").read_text())
    with pytest.raises(RunFolderError, match="a certificate is damaged") as exc:
        api.load_run(bad_cert).verdict("retrain")
    _one_line(exc)


# --------------------------------------------------------------------------------------------
# A sweep (a local Ray)


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[api.SweepRun]:
    raw = {**TINY, "data": SYNTHETIC, "train": {"epochs": 1, "batch_size": 64}, "sweep": {"axes": {"seed": [0, 1]}}}
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)
        yield api.run_sweep(raw, overrides={"sweep.name": "api-grid"}, out=tmp_path_factory.mktemp("sweep"), workers=2)


@pytest.mark.processes
def test_a_sweep_loads_into_one_row_per_cell_and_model(tiny_sweep: api.SweepRun) -> None:
    assert tiny_sweep.sweep.name == "api-grid" and len(tiny_sweep.cells) == 2
    assert tiny_sweep.failed == {} and tiny_sweep.finished == tiny_sweep.cells
    loaded = api.load_sweep(tiny_sweep.folder)
    df = loaded.to_pandas()
    assert df.equals(tiny_sweep.to_pandas())
    assert len(df) == 2 * 2  # cells x models (original, retrain)
    assert set(zip(df["cell_id"], df["model"], strict=True)) == {
        (c, m) for c in loaded.cells for m in ("original", "retrain")
    }
    assert sorted(df["seed"]) == [0, 0, 1, 1] and set(df["status"]) == {"finished"}
    for cell_id, cell in loaded.runs().items():
        assert cell.config.seed in (0, 1)
        mine = cell.to_pandas().set_index("model")
        for row in df[df["cell_id"] == cell_id].to_dict("records"):
            for col in ("retain_test_acc", "lpr_gap", "trilemma", "utility", "bytes_total"):
                assert row[col] == mine.loc[row["model"], col], (cell_id, row["model"], col)


def test_load_sweep_refuses_what_is_not_a_sweep_folder(tmp_path: Path) -> None:
    for folder, match in ((tmp_path / "missing", "no such folder"), (tmp_path, "it has no sweep.yaml")):
        with pytest.raises(RunFolderError, match=match) as exc:
            api.load_sweep(folder)
        _one_line(exc)
    (tmp_path / "sweep.yaml").write_text("name: x\n")
    with pytest.raises(RunFolderError, match="sweep.yaml is damaged") as exc:
        api.load_sweep(tmp_path)
    _one_line(exc)
