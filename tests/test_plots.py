"""vfl_sim.plots: which PNGs a report gets, that they are real images, and that partial reports do not crash."""

from __future__ import annotations

import copy
import struct
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from vfl_sim.plots import (
    PLOT_FILES,
    cka_figure,
    layerwise_figure,
    probe_output_figure,
    trilemma_figure,
    write_plots,
)

ALL_FILES = {"trilemma.png", "layerwise_lpr.png", "cka.png", "probe_vs_output.png"}


def _representation(lpr_gap: float | None, cka_o: float | None, cka_r: float | None, shift: float) -> dict[str, Any]:
    return {
        "fused": {"lpr": 0.9 - shift, "lpr_gap": lpr_gap, "cka_original": cka_o, "cka_retrain": cka_r},
        "parties": {
            "party_0": {"lpr": 0.85 - shift, "lpr_gap": lpr_gap, "cka_original": cka_o, "cka_retrain": cka_r},
            "party_1": {"lpr": 0.8 - shift, "lpr_gap": lpr_gap, "cka_original": cka_o, "cka_retrain": cka_r},
        },
        "layers": {
            "party_0": {"conv1": {"lpr": 0.7 - shift, "lpr_gap": 0.0}, "conv2": {"lpr": 0.8 - shift, "lpr_gap": 0.0}},
            "party_1": {"conv1": {"lpr": 0.6 - shift, "lpr_gap": 0.0}, "conv2": {"lpr": 0.75 - shift, "lpr_gap": 0.0}},
        },
        "class_recovery": {"probe_accuracy": 0.95 - shift, "output_accuracy": 0.9 - 3 * shift, "ncm_accuracy": 0.8},
    }


def _output(retain: float, forget_test: float | None, forget_train: float | None) -> dict[str, Any]:
    return {
        "retain_test_acc": retain,
        "forget_test_acc": forget_test,
        "retain_train_acc": retain,
        "forget_train_acc": forget_train,
    }


def class_report() -> dict[str, Any]:
    """A class request with every section: layers, class recovery, three models."""
    return {
        "name": "digits",
        "dataset": {"classes": [str(c) for c in range(10)]},
        "forget_request": {"kind": "class", "classes": [3]},
        "models": {
            "original": {
                "output": _output(0.98, 1.0, 1.0),
                "representation": _representation(0.05, 1.0, 0.8, 0.0),
            },
            "retrain": {
                "output": _output(0.97, 0.0, 0.0),
                "representation": _representation(0.0, 0.8, 1.0, 0.3),
            },
            "finetune": {
                "output": _output(0.96, 0.2, 0.3),
                "representation": _representation(0.04, 0.95, 0.85, 0.1),
            },
        },
    }


def sample_report() -> dict[str, Any]:
    """A sample request: no forgotten test accuracy and no class recovery, but layers."""
    report = class_report()
    report["forget_request"] = {"kind": "samples", "fraction": 0.05, "classes": None}
    for model in report["models"].values():
        model["output"]["forget_test_acc"] = None
        del model["representation"]["class_recovery"]
    return report


def party_report() -> dict[str, Any]:
    """A party request as the experiment writes it: no representation section, forgotten accuracies None."""
    return {
        "name": "digits",
        "forget_request": {"kind": "party", "party": "party_1", "classes": None},
        "models": {
            "original": {"runtime_s": 1.0, "output": _output(0.95, None, None) | {"membership": None}},
            "retrain": {"runtime_s": 0.5, "output": _output(0.85, None, None) | {"membership": None}},
        },
    }


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _scatter_offsets(where: Figure | Axes) -> list[tuple[float, float]]:
    points: list[tuple[float, float]] = []
    for ax in where.axes if isinstance(where, Figure) else [where]:
        for coll in ax.collections:
            if isinstance(coll, PathCollection):
                points.extend((float(x), float(y)) for x, y in np.asarray(coll.get_offsets(), dtype=float))
    return points


def _xdata(line: Line2D) -> np.ndarray:
    return np.asarray(line.get_xdata(), dtype=float)


def _ydata(line: Line2D) -> np.ndarray:
    return np.asarray(line.get_ydata(), dtype=float)


def test_class_report_writes_all_four_pngs(tmp_path: Path) -> None:
    folder = tmp_path / "nested" / "plots"
    written = write_plots(class_report(), folder)
    assert set(written) == set(PLOT_FILES) == {"trilemma", "layerwise_lpr", "cka", "probe_vs_output"}
    assert {p.name for p in written.values()} == ALL_FILES
    assert {p.name for p in folder.iterdir()} == ALL_FILES
    for name, path in written.items():
        assert path.parent == folder
        assert path.stat().st_size > 5_000, name
        width, height = _png_size(path)
        # At dpi 120 every figure is at least 5 inches on a side.
        assert width >= 600 and height >= 500, (name, width, height)


def test_sample_report_skips_probe_plot(tmp_path: Path) -> None:
    written = write_plots(sample_report(), tmp_path)
    assert set(written) == {"trilemma", "layerwise_lpr", "cka"}
    assert {p.name for p in tmp_path.iterdir()} == {"trilemma.png", "layerwise_lpr.png", "cka.png"}
    assert probe_output_figure(sample_report()) is None


def test_party_report_writes_nothing_and_does_not_crash(tmp_path: Path) -> None:
    report = party_report()
    assert trilemma_figure(report) is None
    assert layerwise_figure(report) is None
    assert cka_figure(report) is None
    assert probe_output_figure(report) is None
    folder = tmp_path / "plots"
    assert write_plots(report, folder) == {}
    assert folder.is_dir() and not any(folder.iterdir())


@pytest.mark.parametrize("report", [{}, {"models": None}, {"models": {}}, {"models": {"original": None}}])
def test_empty_reports_give_no_figures(report: dict[str, Any], tmp_path: Path) -> None:
    assert write_plots(report, tmp_path) == {}


def test_trilemma_places_one_point_per_model_at_its_accuracies() -> None:
    fig = trilemma_figure(class_report())
    assert fig is not None
    assert sorted(_scatter_offsets(fig)) == sorted([(0.98, 1.0), (0.97, 0.0), (0.96, 0.2)])
    names = {t.get_text() for t in fig.axes[0].texts}
    assert {"original", "retrain", "finetune"} <= names
    # Reference models are told apart by marker shape, not colour (colour is the LPR gap).
    shapes = {
        tuple(np.round(np.asarray(coll.get_paths()[0].vertices), 3).ravel())
        for coll in fig.axes[0].collections
        if isinstance(coll, PathCollection)
    }
    assert len(shapes) == 3


def test_trilemma_falls_back_to_forget_train_acc_for_sample_requests() -> None:
    fig = trilemma_figure(sample_report())
    assert fig is not None
    assert sorted(_scatter_offsets(fig)) == sorted([(0.98, 1.0), (0.97, 0.0), (0.96, 0.3)])
    assert "training" in fig.axes[0].get_ylabel()


def test_trilemma_does_not_mix_test_and_train_accuracies() -> None:
    report = class_report()
    report["models"]["finetune"]["output"]["forget_test_acc"] = None
    fig = trilemma_figure(report)
    assert fig is not None
    # finetune has only a train accuracy; plotting it among test accuracies would be misleading.
    assert sorted(_scatter_offsets(fig)) == sorted([(0.98, 1.0), (0.97, 0.0)])


def test_trilemma_grey_marker_and_no_colorbar_without_representation() -> None:
    report = class_report()
    for model in report["models"].values():
        del model["representation"]
    fig = trilemma_figure(report)
    assert fig is not None
    # Only the data axes: no colorbar when no model has an LPR gap.
    assert len(fig.axes) == 1
    faces = {
        tuple(np.asarray(coll.get_facecolor())[0])
        for coll in fig.axes[0].collections
        if isinstance(coll, PathCollection)
    }
    assert faces == {matplotlib.colors.to_rgba("lightgrey")}


def test_trilemma_colour_scale_is_centred_at_zero() -> None:
    fig = trilemma_figure(class_report())
    assert fig is not None
    assert len(fig.axes) == 2  # data and colorbar
    colorbar_ax = fig.axes[1]
    low, high = colorbar_ax.get_ylim()
    assert low == pytest.approx(-high)
    assert high >= 0.05


def test_layerwise_one_subplot_per_party_layers_then_embedding() -> None:
    fig = layerwise_figure(class_report())
    assert fig is not None
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["party_0", "party_1"]
    for ax in visible:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["conv1", "conv2", "embedding"]
        assert len(ax.get_lines()) == 3 + 1  # three models and the chance line
    original = next(line for line in visible[0].get_lines() if line.get_label() == "original")
    assert list(_ydata(original)) == pytest.approx([0.7, 0.8, 0.85])


def test_layerwise_missing_layer_is_a_gap_not_a_crash() -> None:
    report = class_report()
    del report["models"]["finetune"]["representation"]["layers"]["party_0"]["conv1"]
    report["models"]["retrain"]["representation"]["layers"]["party_1"] = None
    report["models"]["retrain"]["representation"]["parties"]["party_1"]["lpr"] = None
    fig = layerwise_figure(report)
    assert fig is not None
    finetune = next(line for line in fig.axes[0].get_lines() if line.get_label() == "finetune")
    ys = list(_ydata(finetune))
    assert np.isnan(ys[0])
    assert ys[1:] == pytest.approx([0.7, 0.75])
    # retrain has nothing for party_1, so it draws no line there.
    assert "retrain" not in {line.get_label() for line in fig.axes[1].get_lines()}


def test_layerwise_none_without_layers() -> None:
    report = class_report()
    for model in report["models"].values():
        del model["representation"]["layers"]
    assert layerwise_figure(report) is None


def test_cka_skips_models_missing_either_value() -> None:
    report = class_report()
    report["models"]["finetune"]["representation"]["fused"]["cka_retrain"] = None
    fig = cka_figure(report)
    assert fig is not None
    expected = sorted([(1.0, 0.8), (0.8, 1.0)])
    assert len(fig.axes) == 2  # full scale and zoom, as the points crowd into one corner
    for ax in fig.axes:
        assert sorted(_scatter_offsets(ax)) == expected
    full = fig.axes[0]
    assert full.get_xlim() == (0.0, 1.0) and full.get_ylim() == (0.0, 1.0)
    diagonal = [line for line in full.get_lines() if np.array_equal(_xdata(line), _ydata(line))]
    assert diagonal, "the y = x diagonal is missing"


def test_cka_none_when_no_model_has_both() -> None:
    report = class_report()
    for model in report["models"].values():
        model["representation"]["fused"]["cka_original"] = None
    assert cka_figure(report) is None


def test_probe_bars_skip_none_values() -> None:
    report = class_report()
    report["models"]["retrain"]["representation"]["class_recovery"]["ncm_accuracy"] = None
    fig = probe_output_figure(report)
    assert fig is not None
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["original", "retrain", "finetune"]
    assert len(ax.patches) == 3 * 3 - 1
    heights = sorted(round(p.get_height(), 6) for p in ax.patches if isinstance(p, Rectangle))
    assert heights.count(0.8) == 2  # ncm of original and finetune only


def test_probe_none_when_all_values_missing() -> None:
    report = class_report()
    for model in report["models"].values():
        model["representation"]["class_recovery"] = {"probe_accuracy": None, "output_accuracy": None}
    assert probe_output_figure(report) is None


def test_none_and_nan_values_anywhere_do_not_crash(tmp_path: Path) -> None:
    report = class_report()
    finetune = report["models"]["finetune"]
    finetune["output"]["retain_test_acc"] = float("nan")
    finetune["representation"]["fused"] = None
    finetune["representation"]["parties"] = {"party_0": None}
    finetune["representation"]["class_recovery"]["probe_accuracy"] = "n/a"
    report["models"]["retrain"]["representation"]["fused"]["lpr_gap"] = None
    report["models"]["neggrad"] = {"output": None, "representation": None}
    report["forget_request"] = None
    written = write_plots(report, tmp_path)
    assert {p.name for p in written.values()} == ALL_FILES
    fig = trilemma_figure(report)
    assert fig is not None
    assert len(_scatter_offsets(fig)) == 2  # finetune has no retained accuracy, neggrad nothing


def test_many_models_stay_one_figure_each(tmp_path: Path) -> None:
    base = class_report()
    models = base["models"]
    for i in range(18):
        m = copy.deepcopy(models["finetune"])
        m["output"]["retain_test_acc"] = 0.6 + 0.02 * i
        models[f"method_{i:02d}"] = m
    written = write_plots(base, tmp_path)
    assert set(written) == set(PLOT_FILES)
    fig = probe_output_figure(base)
    assert fig is not None
    labels = fig.axes[0].get_xticklabels()
    assert len(labels) == 21
    assert all(label.get_rotation() > 0 for label in labels)


def test_writing_leaves_no_pyplot_figures_open(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    backend = matplotlib.get_backend()
    write_plots(class_report(), tmp_path)
    assert plt.get_fignums() == before
    assert matplotlib.get_backend() == backend
