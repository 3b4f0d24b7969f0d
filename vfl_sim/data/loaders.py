"""Build a :class:`VflDataset` from the data section of a config."""

from __future__ import annotations

import numpy as np

from vfl_sim.config import DataConfig
from vfl_sim.data.dataset import VflDataset, standardize, stratified_split
from vfl_sim.data.synthetic import make_synthetic
from vfl_sim.errors import ConfigError


def _embedded(name: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], tuple[str, ...] | None]:
    from sklearn import datasets as skd

    if name == "digits":
        bunch = skd.load_digits()
        # 8x8 grey images with values 0..16; keep them as images so they can be cut into strips.
        x = (bunch.data.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
        return x, bunch.target.astype(np.int64), tuple(str(c) for c in bunch.target_names), None
    loader = {"breast_cancer": skd.load_breast_cancer, "wine": skd.load_wine}[name]
    bunch = loader()
    return (
        bunch.data.astype(np.float32),
        bunch.target.astype(np.int64),
        tuple(str(c) for c in bunch.target_names),
        tuple(str(c) for c in bunch.feature_names),
    )


def load_dataset(cfg: DataConfig, *, parties: int, seed: int) -> VflDataset:
    """Load, split and standardize the configured dataset.

    Embedded datasets (``digits``, ``breast_cancer``, ``wine``, ``synthetic``) get a stratified
    split seeded by ``cfg.split_seed``; torchvision datasets keep their official train/test
    split, with the training samples first (ids ``0..n_train-1``).
    """
    if cfg.name in ("digits", "breast_cancer", "wine", "synthetic"):
        if cfg.root is not None or cfg.download:
            raise ConfigError(f"data.root and data.download are for torchvision datasets, not '{cfg.name}'")
        if cfg.name == "synthetic":
            features, labels = make_synthetic(cfg.synthetic, parties, seed=cfg.split_seed)
            classes = tuple(str(c) for c in range(cfg.synthetic.classes))
            columns: tuple[str, ...] | None = tuple(f"x{j}" for j in range(cfg.synthetic.features))
        else:
            features, labels, classes, columns = _embedded(cfg.name)
        train_ids, test_ids = stratified_split(labels, cfg.test_fraction, cfg.split_seed)
    else:
        from vfl_sim.data.vision import load_vision

        if cfg.root is None:
            raise ConfigError(
                f"data.root is required for '{cfg.name}': the folder holding its files as torchvision writes them"
            )
        arrays = load_vision(cfg.name, cfg.root, download=cfg.download)
        features = np.concatenate([arrays.x_train, arrays.x_test]).astype(np.float32) / 255.0
        labels = np.concatenate([arrays.y_train, arrays.y_test]).astype(np.int64)
        n_train = arrays.x_train.shape[0]
        train_ids = np.arange(n_train, dtype=np.int64)
        test_ids = np.arange(n_train, labels.size, dtype=np.int64)
        classes, columns = tuple(arrays.classes), None
    features = standardize(features, train_ids, per_channel=features.ndim == 4)
    return VflDataset(
        name=cfg.name,
        features=features,
        labels=labels,
        train_ids=train_ids,
        test_ids=test_ids,
        classes=classes,
        column_names=columns,
    )
