"""Readers of the torchvision on-disk formats, checked against small files written in those formats."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from vfl_sim.data.vision import VISION_DATASETS, VisionArrays, load_vision
from vfl_sim.errors import DataError

N_TRAIN, N_TEST = 20, 10
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as an IDX file: magic 0x0000 08 <ndim>, big-endian sizes, raw bytes."""
    assert array.dtype == np.uint8
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def _mnist_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        IDX_NAMES[0]: rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        IDX_NAMES[1]: rng.integers(0, 10, N_TRAIN, dtype=np.uint8),
        IDX_NAMES[2]: rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        IDX_NAMES[3]: rng.integers(0, 10, N_TEST, dtype=np.uint8),
    }


def _write_idx(folder: Path, arrays: dict[str, np.ndarray], *, gz: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for fname, array in arrays.items():
        data = _idx_bytes(array)
        if gz:
            (folder / f"{fname}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / fname).write_bytes(data)


def _check_mnist(out: VisionArrays, arrays: dict[str, np.ndarray]) -> None:
    assert out.x_train.shape == (N_TRAIN, 1, 28, 28) and out.x_test.shape == (N_TEST, 1, 28, 28)
    assert out.x_train.dtype == np.uint8 and out.y_train.dtype == np.int64
    assert out.x_train.flags.c_contiguous and out.x_test.flags.c_contiguous
    np.testing.assert_array_equal(out.x_train[:, 0], arrays[IDX_NAMES[0]])
    np.testing.assert_array_equal(out.y_train, arrays[IDX_NAMES[1]].astype(np.int64))
    np.testing.assert_array_equal(out.x_test[:, 0], arrays[IDX_NAMES[2]])
    np.testing.assert_array_equal(out.y_test, arrays[IDX_NAMES[3]].astype(np.int64))


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_mnist_nested_layout(tmp_path: Path, gz: bool) -> None:
    arrays = _mnist_arrays()
    _write_idx(tmp_path / "MNIST" / "raw", arrays, gz=gz)
    out = load_vision("mnist", tmp_path)
    _check_mnist(out, arrays)
    assert out.classes == tuple(str(d) for d in range(10))


def test_mnist_flat_layout_and_path_string(tmp_path: Path) -> None:
    arrays = _mnist_arrays(1)
    _write_idx(tmp_path, arrays, gz=True)
    _check_mnist(load_vision("mnist", str(tmp_path)), arrays)


def test_mnist_prefers_extracted_file_over_gz(tmp_path: Path) -> None:
    # torchvision leaves both the .gz and the extracted file; a stale .gz must not win
    raw = tmp_path / "MNIST" / "raw"
    arrays = _mnist_arrays(2)
    _write_idx(raw, _mnist_arrays(3), gz=True)
    _write_idx(raw, arrays)
    _check_mnist(load_vision("mnist", tmp_path), arrays)


def test_fashion_mnist(tmp_path: Path) -> None:
    arrays = _mnist_arrays(4)
    _write_idx(tmp_path / "FashionMNIST" / "raw", arrays, gz=True)
    out = load_vision("fashion_mnist", tmp_path)
    _check_mnist(out, arrays)
    assert out.classes[0] == "T-shirt/top" and out.classes[9] == "Ankle boot" and len(out.classes) == 10
    with pytest.raises(DataError, match=r"mnist: .*MNIST"):
        load_vision("mnist", tmp_path)  # a FashionMNIST folder is not an MNIST one


def _cifar_split(rng: np.random.Generator, n: int, classes: int) -> tuple[np.ndarray, list[int]]:
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), [int(v) for v in rng.integers(0, classes, n)]


def _dump(path: Path, obj: object, protocol: int) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10(tmp_path: Path, protocol: int) -> None:
    rng = np.random.default_rng(5)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = [_cifar_split(rng, 4, 10) for _ in range(5)]
    for i, (data, labels) in enumerate(batches, 1):
        _dump(folder / f"data_batch_{i}", {"batch_label": f"batch {i}", "data": data, "labels": labels}, protocol)
    test_data, test_labels = _cifar_split(rng, N_TEST, 10)
    # Python 2 pickles decode to bytes keys under encoding="bytes"; the reader must accept both
    _dump(folder / "test_batch", {b"data": test_data, b"labels": np.array(test_labels)}, protocol)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _dump(folder / "batches.meta", {"label_names": names, "num_vis": 3072}, protocol)

    out = load_vision("cifar10", tmp_path)
    assert out.x_train.shape == (N_TRAIN, 3, 32, 32) and out.x_test.shape == (N_TEST, 3, 32, 32)
    assert out.x_train.dtype == np.uint8 and out.y_test.dtype == np.int64
    expected = np.concatenate([b[0] for b in batches])
    # row-major CHW: the first 1024 bytes are the red plane, row by row
    np.testing.assert_array_equal(out.x_train[:, 0].reshape(N_TRAIN, -1), expected[:, :1024])
    np.testing.assert_array_equal(out.x_train[3, 2, 31, 31], expected[3, 3071])
    np.testing.assert_array_equal(out.x_train[7, 1, 0, 5], expected[7, 1024 + 5])
    np.testing.assert_array_equal(out.y_train, np.concatenate([b[1] for b in batches]))
    np.testing.assert_array_equal(out.x_test.reshape(N_TEST, -1), test_data)
    np.testing.assert_array_equal(out.y_test, test_labels)
    assert out.classes == tuple(names)
    assert out.x_train.flags.c_contiguous and out.x_test.flags.writeable


def _write_cifar100(tmp_path: Path, *, meta: bool) -> tuple[np.ndarray, list[int], np.ndarray, list[int]]:
    rng = np.random.default_rng(6)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    x_tr, y_tr = _cifar_split(rng, N_TRAIN, 100)
    x_te, y_te = _cifar_split(rng, N_TEST, 100)
    coarse = [0] * N_TRAIN
    _dump(folder / "train", {"data": x_tr, "fine_labels": y_tr, "coarse_labels": coarse}, 2)
    _dump(folder / "test", {"data": x_te, "fine_labels": y_te, "coarse_labels": coarse[:N_TEST]}, 2)
    if meta:
        _dump(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": []}, 2)
    return x_tr, y_tr, x_te, y_te


@pytest.mark.parametrize("meta", [True, False], ids=["meta", "no-meta"])
def test_cifar100(tmp_path: Path, meta: bool) -> None:
    x_tr, y_tr, x_te, y_te = _write_cifar100(tmp_path, meta=meta)
    out = load_vision("cifar100", tmp_path)
    np.testing.assert_array_equal(out.x_train.reshape(N_TRAIN, -1), x_tr)
    np.testing.assert_array_equal(out.y_train, y_tr)
    np.testing.assert_array_equal(out.x_test.reshape(N_TEST, -1), x_te)
    np.testing.assert_array_equal(out.y_test, y_te)
    assert len(out.classes) == 100
    assert out.classes[42] == ("c42" if meta else "42")


def _write_svhn(folder: Path, seed: int = 7) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)  # HWCN, as the .mat files hold it
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
        y[0, 0] = 10  # make sure digit 0 (stored as 10) appears
        scipy.io.savemat(folder / f"{split}_32x32.mat", {"X": x, "y": y})
        written[split] = (x, y)
    return written


@pytest.mark.parametrize("sub", ["", "svhn"])
def test_svhn(tmp_path: Path, sub: str) -> None:
    written = _write_svhn(tmp_path / sub if sub else tmp_path)
    out = load_vision("svhn", tmp_path)
    pairs = ((out.x_train, out.y_train, written["train"]), (out.x_test, out.y_test, written["test"]))
    for x_out, y_out, (x, y) in pairs:
        n = x.shape[3]
        assert x_out.shape == (n, 3, 32, 32) and x_out.dtype == np.uint8 and x_out.flags.c_contiguous
        np.testing.assert_array_equal(x_out[4, 2, 10, 17], x[10, 17, 2, 4])  # [n, c, h, w] <- [h, w, c, n]
        np.testing.assert_array_equal(x_out, x.transpose(3, 2, 0, 1))
        expected = y[:, 0].astype(np.int64)
        expected[expected == 10] = 0
        assert y_out.dtype == np.int64 and y_out[0] == 0
        np.testing.assert_array_equal(y_out, expected)
        assert y_out.min() >= 0 and y_out.max() <= 9
    assert out.classes == tuple(str(d) for d in range(10))


# ----------------------------------------------------------------------------- errors


def test_unknown_name_lists_allowed(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="imagenet") as info:
        load_vision("imagenet", tmp_path)
    for name in VISION_DATASETS:
        assert name in str(info.value)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"cifar10: data root .*nowhere does not exist"):
        load_vision("cifar10", tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("mnist", r"MNIST[/\\]raw"),
        ("fashion_mnist", r"FashionMNIST[/\\]raw"),
        ("cifar10", r"cifar-10-batches-py .*data_batch_1\.\.5 and test_batch"),
        ("cifar100", r"cifar-100-python"),
        ("svhn", r"train_32x32\.mat"),
    ],
)
def test_missing_files_without_download(tmp_path: Path, name: str, needle: str) -> None:
    with pytest.raises(DataError, match=rf"^{name}: .*{needle}.*data\.download: true") as info:
        load_vision(name, tmp_path, download=False)
    assert "\n" not in str(info.value)


def test_missing_one_cifar_batch_is_named(tmp_path: Path) -> None:
    _write_cifar100(tmp_path, meta=True)
    (tmp_path / "cifar-100-python" / "test").unlink()
    with pytest.raises(DataError, match="missing test"):
        load_vision("cifar100", tmp_path)


def test_mnist_missing_one_file(tmp_path: Path) -> None:
    _write_idx(tmp_path / "MNIST" / "raw", _mnist_arrays())
    (tmp_path / "MNIST" / "raw" / IDX_NAMES[3]).unlink()
    with pytest.raises(DataError, match="mnist: no complete set"):
        load_vision("mnist", tmp_path)


def test_mnist_bad_magic(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    _write_idx(raw, _mnist_arrays())
    path = raw / IDX_NAMES[1]
    data = bytearray(path.read_bytes())
    data[3] = 3  # a labels file that claims to be an image file
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte has magic number 0x00000803, expected 0x00000801"):
        load_vision("mnist", tmp_path)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_truncated(tmp_path: Path, gz: bool) -> None:
    raw = tmp_path / "MNIST" / "raw"
    arrays = _mnist_arrays()
    _write_idx(raw, arrays, gz=gz)
    target = IDX_NAMES[2]
    data = _idx_bytes(arrays[target])[:-100]
    if gz:
        (raw / f"{target}.gz").write_bytes(gzip.compress(data))
    else:
        (raw / target).write_bytes(data)
    with pytest.raises(DataError, match=rf"{target}.* truncated"):
        load_vision("mnist", tmp_path)


def test_mnist_cut_gzip_stream(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    _write_idx(raw, _mnist_arrays(), gz=True)
    path = raw / f"{IDX_NAMES[0]}.gz"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(DataError, match=r"cannot read .*train-images-idx3-ubyte\.gz"):
        load_vision("mnist", tmp_path)


def test_mnist_label_count_and_range(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    arrays = _mnist_arrays()
    arrays[IDX_NAMES[3]] = arrays[IDX_NAMES[3]][:-1]
    _write_idx(raw, arrays)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte has 9 labels for 10 images"):
        load_vision("mnist", tmp_path)
    arrays = _mnist_arrays()
    arrays[IDX_NAMES[1]][5] = 12
    _write_idx(raw, arrays)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte has labels outside 0\.\.9"):
        load_vision("mnist", tmp_path)


def test_cifar_malformed(tmp_path: Path) -> None:
    _write_cifar100(tmp_path, meta=True)
    folder = tmp_path / "cifar-100-python"
    _dump(folder / "train", {"data": np.zeros((N_TRAIN, 1024), np.uint8), "fine_labels": [0] * N_TRAIN}, 2)
    with pytest.raises(DataError, match=r"cifar100: .*train 'data' is uint8 \(20, 1024\), expected uint8 \(N, 3072\)"):
        load_vision("cifar100", tmp_path)
    _dump(folder / "train", {"data": np.zeros((N_TRAIN, 3072), np.uint8), "fine_labels": [100] * N_TRAIN}, 2)
    with pytest.raises(DataError, match=r"labels outside 0\.\.99"):
        load_vision("cifar100", tmp_path)
    (folder / "train").write_bytes((folder / "train").read_bytes()[:200])
    with pytest.raises(DataError, match=r"cannot unpickle .*cifar-100-python[/\\]train "):
        load_vision("cifar100", tmp_path)


def test_cifar_pickle_cannot_run_code(tmp_path: Path) -> None:
    _write_cifar100(tmp_path, meta=True)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (Path.touch, (str(marker),))

    _dump(tmp_path / "cifar-100-python" / "test", {"data": Evil(), "fine_labels": []}, 2)
    with pytest.raises(DataError, match="not allowed"):
        load_vision("cifar100", tmp_path)
    assert not marker.exists()


def test_svhn_malformed(tmp_path: Path) -> None:
    _write_svhn(tmp_path)
    rng = np.random.default_rng(0)
    bad_y = rng.integers(0, 10, (N_TEST, 1)).astype(np.uint8)  # 0 is not an SVHN label
    bad_y[0, 0] = 0
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((32, 32, 3, N_TEST), np.uint8), "y": bad_y})
    with pytest.raises(DataError, match=r"svhn: .*test_32x32\.mat has labels outside 1\.\.10"):
        load_vision("svhn", tmp_path)
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((N_TEST, 3, 32, 32), np.uint8), "y": bad_y})
    with pytest.raises(DataError, match=r"test_32x32\.mat 'X' is uint8 \(10, 3, 32, 32\)"):
        load_vision("svhn", tmp_path)
    (tmp_path / "train_32x32.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(DataError, match=r"cannot read .*train_32x32\.mat"):
        load_vision("svhn", tmp_path)


def test_root_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(DataError, match="is a file, not a folder"):
        load_vision("svhn", path)


def test_cifar_pickle_naming_numpy_core(tmp_path: Path) -> None:
    # the published CIFAR pickles name numpy.core.multiarray, which numpy 2 moved to numpy._core
    x_tr, y_tr, _, _ = _write_cifar100(tmp_path, meta=False)
    path = tmp_path / "cifar-100-python" / "train"
    data = path.read_bytes()
    assert b"numpy._core.multiarray" in data or b"numpy.core.multiarray" in data
    path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    out = load_vision("cifar100", tmp_path)
    np.testing.assert_array_equal(out.x_train.reshape(N_TRAIN, -1), x_tr)
    np.testing.assert_array_equal(out.y_train, y_tr)
