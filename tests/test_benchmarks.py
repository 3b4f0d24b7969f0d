"""Smoke tests of the benchmark scripts under ``benchmarks/``: each main function runs on a tiny
setting and returns well-formed rows. Timings are never asserted (only that they are positive)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

from tests.conftest import small_config
from vfl_sim.bench import bench_case, bench_named_runtimes, features_device, synthetic_case, time_monolithic_epochs
from vfl_sim.config import config_from_dict
from vfl_sim.experiment import prepare
from vfl_sim.models.monolithic import MonolithicModel

ROOT = Path(__file__).resolve().parent.parent / "benchmarks"
FOUR_CLASSES = ["--set", "data.synthetic.classes=4"]  # enough forgotten test samples for the audit's probe
TINY = ["--epochs", "1", "--repeats", "1", "--runtimes", "local", *FOUR_CLASSES]


def script(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` as a module."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def positive(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def table_rows(lines: list[str]) -> list[str]:
    """Markdown table body lines (header and separator excluded)."""
    return [line for line in lines if line.startswith("| ") and not line.startswith("| ---")][1:]


def test_synthetic_case_sizes() -> None:
    raw = synthetic_case(2000, 4)
    cfg = config_from_dict(raw)
    assert cfg.data.synthetic.samples == 2500 and cfg.data.synthetic.features == 32
    assert cfg.partition.parties == 4
    assert config_from_dict(synthetic_case(2000, 32, total_features=64)).data.synthetic.features == 64


def test_bench_case_keeps_its_keys() -> None:
    cfg = config_from_dict(synthetic_case(200, 2), ["threads=1", "data.synthetic.classes=4"])
    r = bench_case(cfg, epochs=1, repeats=1)
    assert r["train_samples"] == 200 and r["parties"] == 2 and r["steps_per_epoch"] == 2
    assert positive(r["split_epoch_s"]) and positive(r["monolithic_epoch_s"]) and positive(r["ratio"])


class _IndexDevices(TorchFunctionMode):
    """Records the device of every ``index_select`` index."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.device] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in (torch.Tensor.index_select, torch.index_select):
            self.seen.append(args[2].device)
        return func(*args, **(kwargs or {}))


def test_monolithic_batches_index_the_features_on_their_device() -> None:
    # Issue 12: on CUDA, index_select got the CPU batch index. The meta device stands in for a
    # GPU here: the index must be moved to wherever the features are.
    cfg = small_config(
        data={"name": "synthetic", "synthetic": {"samples": 200, "features": 8, "classes": 3}},
        partition={"parties": 2, "scheme": "contiguous"},
        model={"bottom": "mlp"},
        methods=[],
    )
    exp = prepare(cfg)
    server = exp.build_server()
    parties = list(server.transport.parties.values())  # type: ignore[attr-defined]
    model = MonolithicModel([p.bottom for p in parties], server.top, cfg.model.fusion).to("meta")
    features = [p.features.to("meta") for p in parties]
    assert features_device(features) == torch.device("meta")
    with _IndexDevices() as spy:
        time_monolithic_epochs(exp, model, features, server.labels, 1)
    assert spy.seen and set(spy.seen) == {torch.device("meta")}
    with pytest.raises(ValueError, match="several devices"):
        features_device([torch.zeros(1), torch.zeros(1, device="meta")])


def test_bench_named_runtimes_refuses_unknown() -> None:
    with pytest.raises(ValueError, match="unknown runtimes"):
        bench_named_runtimes(config_from_dict(synthetic_case(200, 2)), ["flower-deploy"], epochs=1, repeats=1)


def test_bench_named_runtimes_ray_row() -> None:
    pytest.importorskip("vfl_sim.runtimes.ray_runtime")
    import ray

    cfg = config_from_dict(synthetic_case(200, 2), ["threads=1", "data.synthetic.classes=4"])
    rows = bench_named_runtimes(cfg, ["local", "ray"], epochs=1, repeats=1)
    assert [r["runtime"] for r in rows] == ["local", "ray"]
    local, remote = rows
    assert remote["monolithic_epoch_s"] == local["monolithic_epoch_s"]  # one monolithic timing for both
    assert remote["rounds_per_epoch"] == local["rounds_per_epoch"]
    assert remote["bytes_per_epoch_per_party"] == local["bytes_per_epoch_per_party"]  # the same protocol
    assert positive(remote["epoch_s"])
    assert not ray.is_initialized()  # the Ray it started is shut down


def test_training_overhead_rows() -> None:
    lines: list[str] = []
    rows = script("training_overhead").main(
        ["--cases", "digits,parties", "--parties", "2,3", "--party-samples", "300", *TINY], out=lines.append
    )
    assert [(r["case"], r["parties"]) for r in rows] == [("digits", 2), ("parties", 2), ("parties", 3)]
    for r in rows:
        assert r["runtime"] == "local"
        assert positive(r["epoch_s"]) and positive(r["monolithic_epoch_s"])
        assert r["ratio"] == pytest.approx(r["epoch_s"] / r["monolithic_epoch_s"])
        assert r["rounds_per_epoch"] == r["steps_per_epoch"] + 1  # the first Embed, then one per batch
        assert r["bytes_per_epoch_per_party"] > 0
    assert rows[1]["features"] == 16 and rows[2]["features"] == 24  # 8 columns per party
    assert len(table_rows(lines)) == 3


def test_scaling_rows(tmp_path: Path) -> None:
    lines: list[str] = []
    out = tmp_path / "rows.json"
    args = ["--samples", "200,400", "--parties", "2,4", "--party-samples", "200", "--json", str(out)]
    rows = script("scaling").main([*args, *TINY], out=lines.append)
    assert [(r["axis"], r["train_samples"], r["parties"]) for r in rows] == [
        ("samples", 200, 2),
        ("samples", 400, 2),
        ("parties", 200, 2),
        ("parties", 200, 4),
    ]
    for r in rows:
        assert positive(r["vs_linear"]) and positive(r["monolithic_vs_linear"]) and positive(r["per_unit_s"])
    assert rows[0]["vs_linear"] == 1.0 and rows[2]["vs_linear"] == 1.0
    assert rows[1]["per_unit_s"] == pytest.approx(rows[1]["epoch_s"] / 400)
    assert len(table_rows(lines)) == 4
    assert len(json.loads(out.read_text())) == 4


def test_unlearning_cost_and_method_communication(tmp_path: Path) -> None:
    lines: list[str] = []
    out = tmp_path / "cost.json"
    settings = [
        "data.name=synthetic",
        "data.synthetic.samples=400",
        "train.epochs=1",
        "methods=[retrain, finetune, neggrad]",
        "audit.relearning.enabled=false",
        "audit.probe_repeats=1",
    ]
    result = script("unlearning_cost").main([*(f"--set={s}" for s in settings), "--json", str(out)], out=lines.append)
    rows = {r["model"]: r for r in result["rows"]}
    assert set(rows) == {"original", "retrain", "finetune", "neggrad"}
    assert rows["retrain"]["runtime_vs_retrain"] == 1.0 and rows["retrain"]["bytes_vs_retrain"] == 1.0
    for r in rows.values():
        assert positive(r["runtime_s"]) and r["bytes_total"] > 0 and r["rounds"] > 0
    audit = result["audit"]
    assert audit["models"] == 4 and positive(audit["runtime_s"]) and positive(audit["vs_retrain"])
    assert {"gather", "output", "representation"} <= set(audit["steps"])
    blank = lines.index("")
    assert len(table_rows(lines[:blank])) == 4  # the models
    assert len(table_rows(lines[blank + 1 :])) == 2 + len(audit["steps"])  # whole audit, per model, each step

    # communication.py reads the same run's traffic from that JSON
    lines = []
    comm = script("communication").main(["--parts", "methods", "--report", str(out)], out=lines.append)
    methods = {r["model"]: r for r in comm["methods"]}
    assert set(methods) == set(rows)
    for name, r in methods.items():
        assert r["bytes_total"] == rows[name]["bytes_total"]
        assert r["to_party"] * 2 + r["from_party"] * 2 == pytest.approx(r["bytes_total"])  # 2 parties
    assert methods["retrain"]["bytes_vs_retrain"] == 1.0
    assert len(table_rows(lines)) == 4


def test_communication_training_rows() -> None:
    lines: list[str] = []
    result = script("communication").main(
        ["--parts", "training", "--digits-parties", "2", "--parties", "2,4", "--party-samples", "300", *FOUR_CLASSES],
        out=lines.append,
    )
    rows = result["training"]
    assert [(r["case"], r["parties"]) for r in rows] == [("digits", 2), ("synthetic", 2), ("synthetic", 4)]
    for r in rows:
        assert r["parties_equal"]
        assert r["per_party"] == pytest.approx(r["to_party"] + r["from_party"])
        # every sample's embedding goes up and its gradient comes down: at least 2 x width x 4 bytes
        assert r["per_party_per_sample"] >= 2 * 4 * r["embedding_dim"]
    # the traffic per party does not depend on the party count
    assert rows[1]["per_party"] == rows[2]["per_party"]
    assert len(table_rows(lines)) == 3


def test_certificate_power_small_study_makes_no_false_removal_claim() -> None:
    """The small version of benchmarks/certificate_power.py: wine, class and party requests,
    two seeds. The controls that removed nothing are never certified `removal`, and retrain is
    never refused (it may be inconclusive where the run has no power)."""
    power = script("certificate_power")
    rows = power.study(["wine"], ["class", "party"], seeds=2, workers=1, quiet=True)
    assert len(rows) == 4
    for row in rows:
        models = row["models"]
        negative = power.NEGATIVE[row["kind"]]
        assert not models[negative]["removal"], row
        if "output_mask" in models:
            assert not models["output_mask"]["removal"], row
        retrain = models["retrain"]
        assert "fail" not in (retrain["output"], retrain["representation"]), row
        if all(row["power"].values()):
            assert retrain["removal"], row
    text = power.tables(rows)
    assert "## False removal claims, retrain and power" in text and "| wine | class | 2 |" in text
