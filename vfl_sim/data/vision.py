"""Readers for the on-disk formats of the torchvision image datasets.

The files are read straight from a local folder laid out as torchvision writes it, without
torchvision's md5 checks: tests can then fabricate small files in the real formats, and a
user's copy of a dataset is accepted as long as its contents are well formed. Every problem
raises :class:`~vfl_sim.errors.DataError` with a one-line message that names the dataset, the
path and what to do.
"""

from __future__ import annotations

import gzip
import importlib
import os
import pickle
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vfl_sim.errors import DataError

VISION_DATASETS: tuple[str, ...] = ("mnist", "fashion_mnist", "cifar10", "cifar100", "svhn")

_DIGITS = tuple(str(d) for d in range(10))
_FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

# name -> (folder under root, as torchvision names it; torchvision class name)
_IDX_FOLDERS = {"mnist": ("MNIST", "MNIST"), "fashion_mnist": ("FashionMNIST", "FashionMNIST")}
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_CIFAR = {
    # name: (folder, train files, test file, meta file, label key, meta key, classes, torchvision class)
    "cifar10": (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "batches.meta",
        "labels",
        "label_names",
        10,
        "CIFAR10",
    ),
    "cifar100": ("cifar-100-python", ("train",), "test", "meta", "fine_labels", "fine_label_names", 100, "CIFAR100"),
}
_SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")


@dataclass(frozen=True)
class VisionArrays:
    """The official train/test split of an image dataset.

    Attributes
    ----------
    x_train, x_test : numpy.ndarray
        Contiguous ``uint8`` images of shape ``(N, C, H, W)``.
    y_train, y_test : numpy.ndarray
        ``int64`` labels of shape ``(N,)``, in ``0 .. len(classes) - 1``.
    classes : tuple of str
        Class names, indexed by label.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]


def load_vision(name: str, root: str | os.PathLike[str], *, download: bool = False) -> VisionArrays:
    """Read a torchvision image dataset from ``root``.

    Parameters
    ----------
    name : str
        One of :data:`VISION_DATASETS`.
    root : str or os.PathLike
        The folder torchvision would be given as ``root`` (for example the folder that holds
        ``MNIST/raw`` or ``cifar-10-batches-py``). MNIST-style IDX files may also lie directly
        in it, and the SVHN ``.mat`` files may also lie in ``root/svhn``.
    download : bool, default False
        When the files are missing, fetch them into ``root`` with torchvision first.

    Returns
    -------
    VisionArrays
        The official train and test splits.

    Raises
    ------
    DataError
        If the name is unknown, the files are missing (and not downloaded), or a file is
        malformed.
    """
    if name not in VISION_DATASETS:
        raise DataError(f"unknown vision dataset '{name}'; choose one of {', '.join(VISION_DATASETS)}")
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise DataError(f"{name}: data root {root} is a file, not a folder; set data.root to a folder")
    if not root.is_dir() and not download:
        raise DataError(
            f"{name}: data root {root} does not exist; set data.root to an existing folder or data.download: true"
        )
    locate, read = _READERS[name]
    try:
        files = locate(name, root)
    except DataError:
        if not download:
            raise
        _download(name, root)
        files = locate(name, root)
    return read(name, files)


# ----------------------------------------------------------------------------- locating files


def _missing(name: str, where: Path, expected: str, parent: str) -> DataError:
    return DataError(
        f"{name}: no complete set of files under {where} (expected {expected}, as torchvision writes them); "
        f"set data.root to the folder that contains {parent}, or data.download: true"
    )


def _locate_idx(name: str, root: Path) -> list[Path]:
    folder = _IDX_FOLDERS[name][0]
    nested = root / folder / "raw"
    for where in (nested, root):
        # torchvision keeps both the .gz and the extracted file; the extracted one is cheaper to read
        found = [next((p for p in (where / f, where / f"{f}.gz") if p.is_file()), None) for f in _IDX_FILES]
        if all(p is not None for p in found):
            return [p for p in found if p is not None]
    raise _missing(name, nested, f"{', '.join(_IDX_FILES)}, each optionally .gz, or the same in {root}", folder)


def _locate_cifar(name: str, root: Path) -> list[Path]:
    folder, train, test, meta, *_ = _CIFAR[name]
    where = root / folder
    missing = [f for f in (*train, test) if not (where / f).is_file()]
    if missing:
        expected = f"{train[0]}..{train[-1][-1]}" if len(train) > 1 else train[0]
        raise _missing(name, where, f"{expected} and {test}; missing {', '.join(missing)}", folder)
    return [where / f for f in (*train, test, meta)]


def _locate_svhn(name: str, root: Path) -> list[Path]:
    for where in (root, root / "svhn"):
        if all((where / f).is_file() for f in _SVHN_FILES):
            return [where / f for f in _SVHN_FILES]
    raise DataError(
        f"svhn: no {' and '.join(_SVHN_FILES)} under {root} or {root / 'svhn'}; "
        "set data.root to the folder that contains them, or data.download: true"
    )


def _download(name: str, root: Path) -> None:
    try:
        import torchvision.datasets as tvd

        if name == "svhn":
            for split in ("train", "test"):
                tvd.SVHN(str(root), split=split, download=True)
        else:
            cls = _IDX_FOLDERS[name][1] if name in _IDX_FOLDERS else _CIFAR[name][-1]
            for train in (True, False):
                getattr(tvd, cls)(str(root), train=train, download=True)
    except Exception as exc:  # noqa: BLE001 -- network, disk and checksum failures all mean the same to the user
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(
            f"{name}: download into {root} failed ({reason}); check the network, "
            "or copy the files there and set data.download: false"
        ) from exc


# ----------------------------------------------------------------------------- readers


def _check_labels(name: str, path: Path, labels: np.ndarray, n: int, classes: int) -> np.ndarray:
    if labels.shape != (n,):
        raise DataError(f"{name}: {path} has {labels.size} labels for {n} images; the file is malformed, replace it")
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise DataError(
            f"{name}: {path} has labels outside 0..{classes - 1} "
            f"(found {labels.min()}..{labels.max()}); the file is malformed, replace it"
        )
    return labels.astype(np.int64)


def _read_idx(name: str, path: Path, ndim: int) -> np.ndarray:
    """Read a uint8 IDX file with ``ndim`` dimensions (big-endian header, then raw bytes)."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{name}: cannot read {path} ({exc}); replace the file") from exc
    magic = 0x0800 | ndim  # type byte 0x08 (unsigned byte), then the number of dimensions
    header = 4 * (ndim + 1)
    if len(raw) < header:
        raise DataError(f"{name}: {path} is truncated ({len(raw)} bytes, shorter than its header); replace the file")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"{name}: {path} has magic number {found:#010x}, expected {magic:#010x}; replace the file")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    size = int(np.prod(shape))
    if len(raw) != header + size:
        raise DataError(
            f"{name}: {path} holds {len(raw) - header} data bytes but its header {shape} needs {size}; "
            "the file is truncated or corrupt, replace it"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _read_idx_dataset(name: str, files: list[Path]) -> VisionArrays:
    splits = []
    for images_path, labels_path in (files[0:2], files[2:4]):
        images = _read_idx(name, images_path, 3)
        if images.shape[1:] != (28, 28):
            raise DataError(f"{name}: {images_path} holds images of {images.shape[1:]}, expected (28, 28); replace it")
        labels = _check_labels(name, labels_path, _read_idx(name, labels_path, 1), images.shape[0], 10)
        # frombuffer views a read-only bytes object; copy so callers get an ordinary writable array
        splits.append((images[:, None].copy(), labels))
    classes = _FASHION_CLASSES if name == "fashion_mnist" else _DIGITS
    return VisionArrays(splits[0][0], splits[0][1], splits[1][0], splits[1][1], classes)


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays but refuses any other global.

    A dataset folder is user-supplied data; an ordinary unpickler would run whatever code a
    crafted file names.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "numpy.core.multiarray"),
        ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "numpy.core.multiarray"),
        ("numpy.core.multiarray", "scalar"): ("numpy._core.multiarray", "numpy.core.multiarray"),
        ("numpy._core.multiarray", "scalar"): ("numpy._core.multiarray", "numpy.core.multiarray"),
        ("numpy.core.numeric", "_frombuffer"): ("numpy._core.numeric", "numpy.core.numeric"),
        ("numpy._core.numeric", "_frombuffer"): ("numpy._core.numeric", "numpy.core.numeric"),
        ("numpy", "ndarray"): ("numpy",),
        ("numpy", "dtype"): ("numpy",),
        # protocol 2 pickles written by Python 3 encode bytes (the array buffer) this way
        ("_codecs", "encode"): ("_codecs",),
    }

    def find_class(self, module: str, name: str) -> Any:
        modules = self._ALLOWED.get((module, name))
        if modules is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a dataset file")
        # numpy 2 renamed numpy.core to numpy._core; CIFAR's pickles predate it
        for candidate in modules:
            try:
                return getattr(importlib.import_module(candidate), name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"numpy has no {module}.{name}")


def _read_pickle(name: str, path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            # CIFAR was pickled by Python 2: its str objects need latin1 to decode as str
            entry = _NumpyUnpickler(f, encoding="latin1").load()
    except Exception as exc:  # noqa: BLE001 -- a corrupt pickle can fail with almost any exception
        raise DataError(f"{name}: cannot unpickle {path} ({type(exc).__name__}: {exc}); replace the file") from exc
    if not isinstance(entry, dict):
        raise DataError(f"{name}: {path} holds a {type(entry).__name__}, not a dict; replace the file")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _read_cifar(name: str, files: list[Path]) -> VisionArrays:
    _, train, _, _, label_key, meta_key, n_classes, _ = _CIFAR[name]
    data_files, meta_path = files[:-1], files[-1]
    xs, ys = [], []
    for path in data_files:
        entry = _read_pickle(name, path)
        if "data" not in entry or label_key not in entry:
            raise DataError(f"{name}: {path} lacks the 'data' or '{label_key}' entry; replace the file")
        data = entry["data"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise DataError(f"{name}: {path} 'data' is {got}, expected uint8 (N, 3072); replace the file")
        try:
            labels = np.asarray(entry[label_key], dtype=np.int64)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{name}: {path} '{label_key}' is not a list of integers; replace the file") from exc
        xs.append(data.reshape(-1, 3, 32, 32))  # rows are 1024 red, 1024 green, 1024 blue bytes
        ys.append(_check_labels(name, path, labels, data.shape[0], n_classes))
    n_train = len(train)
    classes = _CIFAR10_CLASSES if name == "cifar10" else tuple(str(c) for c in range(n_classes))
    if meta_path.is_file():
        names = _read_pickle(name, meta_path).get(meta_key)
        if not isinstance(names, (list, tuple)) or len(names) != n_classes:
            raise DataError(f"{name}: {meta_path} lacks a '{meta_key}' list of {n_classes} names; replace or delete it")
        classes = tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names)
    return VisionArrays(
        np.concatenate(xs[:n_train]),
        np.concatenate(ys[:n_train]),
        np.concatenate(xs[n_train:]),  # copies, so the result never aliases an unpickled buffer
        ys[n_train],
        classes,
    )


def _read_svhn_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
    except Exception as exc:  # noqa: BLE001 -- scipy raises ValueError, OSError, TypeError... for bad files
        raise DataError(f"svhn: cannot read {path} ({type(exc).__name__}: {exc}); replace the file") from exc
    x, y = mat.get("X"), mat.get("y")
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else "missing"
        raise DataError(f"svhn: {path} 'X' is {got}, expected uint8 (32, 32, 3, N); replace the file")
    n = x.shape[3]
    if not isinstance(y, np.ndarray) or y.size != n or y.ndim > 2 or y.dtype.kind not in "iu":
        got = f"{y.dtype} {y.shape}" if isinstance(y, np.ndarray) else "missing"
        raise DataError(f"svhn: {path} 'y' is {got}, expected integers of shape ({n}, 1); replace the file")
    labels = y.reshape(-1).astype(np.int64)
    if n and (labels.min() < 1 or labels.max() > 10):
        raise DataError(
            f"svhn: {path} has labels outside 1..10 (found {labels.min()}..{labels.max()}); replace the file"
        )
    labels[labels == 10] = 0  # SVHN writes digit 0 as class 10
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), labels


def _read_svhn(name: str, files: list[Path]) -> VisionArrays:
    x_train, y_train = _read_svhn_split(files[0])
    x_test, y_test = _read_svhn_split(files[1])
    return VisionArrays(x_train, y_train, x_test, y_test, _DIGITS)


_Locate = Callable[[str, Path], list[Path]]
_Read = Callable[[str, list[Path]], VisionArrays]
_READERS: dict[str, tuple[_Locate, _Read]] = {
    "mnist": (_locate_idx, _read_idx_dataset),
    "fashion_mnist": (_locate_idx, _read_idx_dataset),
    "cifar10": (_locate_cifar, _read_cifar),
    "cifar100": (_locate_cifar, _read_cifar),
    "svhn": (_locate_svhn, _read_svhn),
}
