"""The reproduction study's sweep configs (docs/reproduction.md): they load, their grids are the
study's, every cell of the embedded one validates, and the vision one validates against small
files written in the torchvision formats. Nothing is trained."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vfl_sim.config import ALL_METHODS
from vfl_sim.errors import ConfigError
from vfl_sim.experiment import expand_methods
from vfl_sim.sweep import Sweep, load_sweep

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
REPRO = CONFIGS / "sweep_mirage_repro.yaml"
VISION = CONFIGS / "sweep_mirage_vision.yaml"

CLASS_REQUEST = {"kind": "class", "classes": [0]}
# The Mirage baselines that exist here, under this project's names: FT, Amnesiac, Boundary
# Unlearning, Fisher, SSD, UNSIR and the few-shot method.
MIRAGE_BASELINES = {"finetune", "random_label", "boundary_shrink", "fisher", "ssd", "unsir", "few_shot_mixup"}
CLASS_ONLY = {"boundary_shrink", "boundary_expand", "unsir", "few_shot_mixup"}


def _axis(sweep: Sweep, key: str) -> list[Any]:
    return sweep.settings.axes[key]


def _sample_requests(sweep: Sweep) -> list[dict[str, Any]]:
    return [f for f in _axis(sweep, "forget") if f["kind"] == "samples"]


def _models(sweep: Sweep, kind: str) -> set[str]:
    cell = next(c for c in sweep.cells if c.config.forget.kind == kind)
    return {m.model_name for m in expand_methods(cell.config.methods, kind)}


def _check_study(sweep: Sweep) -> None:
    """What both configs share: the study's axes and the methods each request kind runs."""
    assert _axis(sweep, "seed") == [0, 1, 2]
    assert CLASS_REQUEST in _axis(sweep, "forget")
    samples = _sample_requests(sweep)
    assert samples and all(f["stratified"] and 0 < f["fraction"] <= 0.1 for f in samples)
    assert [m.name for m in sweep.base.methods][0] == ALL_METHODS
    class_models, sample_models = _models(sweep, "class"), _models(sweep, "samples")
    assert {"retrain", "head_retrain"} | MIRAGE_BASELINES <= class_models
    assert {"retrain", "head_retrain", "finetune", "random_label", "fisher", "ssd"} <= sample_models
    assert not CLASS_ONLY & sample_models  # `all` leaves out what a sample request cannot take
    head = next(m for m in sweep.base.methods if m.model_name == "head_retrain")
    assert head.name == "finetune" and head.params == {"freeze_bottoms": True, "reset_top": True}
    audit = sweep.base.audit
    assert (audit.probe_eval_fraction, audit.probe_C) == (0.3, 1.0)  # the Mirage probe
    assert audit.probe_repeats >= 5
    assert all(c.config.runtime == "local" for c in sweep.cells)


def test_repro_sweep_validates_every_cell() -> None:
    sweep = load_sweep(REPRO)  # check=True: dataset, partition, models, request, methods, audit
    assert sweep.name == "mirage-repro"
    assert sweep.axes == ["data.name", "forget", "partition.parties", "seed"]
    assert _axis(sweep, "data.name") == ["digits", "breast_cancer", "wine", "synthetic"]
    assert _axis(sweep, "partition.parties") == [2, 4]
    assert len(sweep.cells) == 4 * 2 * 2 * 3
    assert len({c.id for c in sweep.cells}) == len(sweep.cells)
    _check_study(sweep)
    synthetic = sweep.base.data.synthetic
    assert synthetic.structure == "planted" and synthetic.classes >= 4
    assert sweep.base.model.bottom == "auto"  # cnn on the digits strips, mlp on tabular columns
    assert sweep.settings.workers == 2


def test_vision_sweep_structure_without_data() -> None:
    sweep = load_sweep(VISION, check=False)  # the datasets are not on this machine
    assert sweep.name == "mirage-vision"
    assert sweep.axes == ["data.name", "forget", "seed"]
    assert _axis(sweep, "data.name") == ["mnist", "cifar10", "cifar100"]
    assert sorted(f["fraction"] for f in _sample_requests(sweep)) == [0.05, 0.1]  # the paper's ratios
    assert len(sweep.cells) == 3 * 3 * 3
    for cell in sweep.cells:
        cfg = cell.config
        assert cfg.model.bottom == "mirage" and cfg.model.top == "mlp" and cfg.model.embedding_dim == 256
        assert cfg.partition.parties == 2 and cfg.partition.scheme == "strips"
        assert (cfg.train.optimizer, cfg.train.lr, cfg.train.momentum) == ("sgd", 0.01, 0.9)
        assert (cfg.train.weight_decay, cfg.train.schedule, cfg.train.epochs) == (5e-4, "cosine", 50)
        assert cfg.train.batch_size == 128
        assert cfg.data.root and not cfg.data.download
    _check_study(sweep)
    with pytest.raises(ConfigError, match="data root"):
        load_sweep(VISION, ["data.root=/nonexistent/vfl-sim-data"])


# Small files in the torchvision on-disk formats (as tests/test_vision_loaders.py writes them):
# enough samples per class for the class-0 probe and a stratified sample request.


def _idx(array: np.ndarray) -> bytes:
    return struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _labels(n: int, classes: int) -> np.ndarray:
    return np.arange(n) % classes


def _write_mnist(root: Path, rng: np.random.Generator) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 200), ("t10k", 100)):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(_idx(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(_labels(n, 10).astype(np.uint8)))


def _dump(path: Path, obj: object) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _write_cifar(root: Path, rng: np.random.Generator) -> None:
    c10 = root / "cifar-10-batches-py"
    c10.mkdir()
    for i in range(1, 6):
        data = rng.integers(0, 256, (40, 3072), dtype=np.uint8)
        _dump(c10 / f"data_batch_{i}", {"data": data, "labels": _labels(40, 10).tolist()})
    _dump(
        c10 / "test_batch",
        {"data": rng.integers(0, 256, (100, 3072), dtype=np.uint8), "labels": _labels(100, 10).tolist()},
    )
    _dump(c10 / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    c100 = root / "cifar-100-python"
    c100.mkdir()
    for split, n in (("train", 2000), ("test", 1000)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        _dump(c100 / split, {"data": data, "fine_labels": _labels(n, 100).tolist(), "coarse_labels": [0] * n})
    _dump(c100 / "meta", {"fine_label_names": [f"c{i}" for i in range(100)]})


def test_vision_sweep_validates_with_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    _write_mnist(tmp_path, rng)
    _write_cifar(tmp_path, rng)
    sweep = load_sweep(VISION, [f"data.root={tmp_path}"])  # builds every cell: data, strips, Mirage CNNs, requests
    assert len(sweep.cells) == 3 * 3 * 3
    assert {c.config.data.name for c in sweep.cells} == {"mnist", "cifar10", "cifar100"}
