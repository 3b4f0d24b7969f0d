"""scripts/threat_study.py: the threat study's tables and plots from sweep result tables."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("threat_study", ROOT / "scripts" / "threat_study.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sweep(folder: Path, name: str, rows: list[dict]) -> Path:
    folder.mkdir(parents=True)
    (folder / "sweep.yaml").write_text(f"name: {name}\n")
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _row(model: str, cover: bool, behaviour: str, seed: int, **metrics) -> dict:
    return {
        "forget.cover": cover,
        "parties.party_1.behaviour": behaviour,
        "seed": seed,
        "model": model,
        "status": "finished",
        **metrics,
    }


def test_tables_and_plots_from_sweep_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = _script()
    rows = []
    for seed in (0, 1):
        for cover in (False, True):
            for behaviour in ("honest", "ignore_unlearning"):
                rows.append(
                    _row(
                        "neggrad",
                        cover,
                        behaviour,
                        seed,
                        request_ids_advantage_max=0.0 if cover else 1.0,
                        request_gradient_advantage_max=1.0 if cover else None,
                        bytes_total=1000 if cover else 100,
                        runtime_s=2.0 if cover else 1.0,
                        completion_gap_max=0.1 + 0.1 * seed,
                        removal=behaviour == "honest" and seed == 0,
                        forget_test_acc=0.0,
                    )
                )
    rows.append({"model": None, "status": "failed"})  # a failed cell is left out
    sweep = _sweep(tmp_path / "s", "threats-x", rows)
    out = tmp_path / "plots"
    assert study.main([str(sweep), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    # Q1: mean ± std over the two seeds, in points; removal counted over seeds.
    assert "| threats-x | neggrad | 0.0 ± 0.0 | 15.0 ± 7.1 | 1/2 |" in text
    # Q2: the ids channel without and with cover, the gradient channel, the cost ratios.
    assert "| threats-x | neggrad | 1.00 ± 0.00 | 0.00 ± 0.00 | – | 1.00 ± 0.00 | 10.0x | 2.0x |" in text
    # Q4: removal honest vs lazy.
    assert "| threats-x | neggrad | 1/2 | 0/2 |" in text
    assert "Q3" not in text  # no defense sweep given
    assert sorted(p.name for p in out.iterdir()) == [
        "q1_model_completion.png",
        "q2_request_leakage.png",
        "q4_lazy_party.png",
    ]
