"""The in-memory dataset that every run starts from.

Every sample has a stable integer id: its row in :attr:`VflDataset.features`, which holds the
training and the test samples together. Forget requests, parties and audits refer to samples
by id only, so a party can keep its feature slice as one tensor and gather a batch with one
index operation instead of copying data per batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class VflDataset:
    """Features of all samples, labels, and the train/test split, by sample id.

    Attributes
    ----------
    name
        Dataset name as configured.
    features
        ``float32`` array of shape ``(N, D)`` (flat features) or ``(N, C, H, W)`` (images),
        standardized with training-set statistics. Row ``i`` is the sample with id ``i``.
    labels
        ``int64`` array of shape ``(N,)``. Only the server (the active party) reads it.
    train_ids, test_ids
        Sorted ``int64`` ids of the training and the test samples; disjoint, together ``0..N-1``.
    classes
        Class names, indexed by label.
    column_names
        One name per flat column (``None`` for images, whose columns are pixel positions).
    """

    name: str
    features: np.ndarray
    labels: np.ndarray
    train_ids: np.ndarray
    test_ids: np.ndarray
    classes: tuple[str, ...]
    column_names: tuple[str, ...] | None = None
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def is_image(self) -> bool:
        return self.features.ndim == 4

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_samples(self) -> int:
        return int(self.features.shape[0])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.features.shape[1:])

    def describe(self) -> dict[str, object]:
        """A JSON-ready summary for reports."""
        return {
            "name": self.name,
            "samples": self.num_samples,
            "train": int(self.train_ids.size),
            "test": int(self.test_ids.size),
            "classes": list(self.classes),
            "sample_shape": list(self.sample_shape),
            "kind": "image" if self.is_image else "tabular",
        }


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified train/test split of ``range(len(labels))``.

    Each class contributes ``round(test_fraction * n_c)`` samples (at least one when it has two
    or more) to the test set, chosen by a permutation seeded with ``seed``.
    """
    rng = np.random.default_rng(seed)
    test: list[np.ndarray] = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n_test = int(round(test_fraction * members.size))
        if members.size >= 2:
            n_test = min(max(n_test, 1), members.size - 1)
        test.append(rng.permutation(members)[:n_test])
    test_ids = np.sort(np.concatenate(test)).astype(np.int64)
    train_mask = np.ones(labels.size, dtype=bool)
    train_mask[test_ids] = False
    return np.flatnonzero(train_mask).astype(np.int64), test_ids


def standardize(features: np.ndarray, train_ids: np.ndarray, *, per_channel: bool) -> np.ndarray:
    """Standardize with training-set statistics.

    Per column for flat features (a statistic each party could compute on its own columns),
    per channel for images. Constant columns are left centered rather than divided by zero.
    """
    x = features.astype(np.float32, copy=False)
    axes = (0, 2, 3) if per_channel else (0,)
    train = x[train_ids]
    mean = train.mean(axis=axes, keepdims=True, dtype=np.float64).astype(np.float32)
    std = train.std(axis=axes, keepdims=True, dtype=np.float64).astype(np.float32)
    std[std < 1e-8] = 1.0
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)
