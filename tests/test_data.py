"""Tests of dataset loading: embedded datasets, stratified split, standardization, synthetic data."""

from __future__ import annotations

import numpy as np
import pytest

from vfl_sim.config import DataConfig, SyntheticConfig
from vfl_sim.data.dataset import VflDataset, standardize, stratified_split
from vfl_sim.data.loaders import load_dataset
from vfl_sim.data.synthetic import make_synthetic
from vfl_sim.errors import ConfigError

EXPECTED = {
    # name: (features shape, number of classes)
    "digits": ((1797, 1, 8, 8), 10),
    "breast_cancer": ((569, 30), 2),
    "wine": ((178, 13), 3),
    "synthetic": ((2000, 20), 4),
}


@pytest.fixture(scope="module")
def loaded() -> dict[str, VflDataset]:
    return {name: load_dataset(DataConfig(name=name), parties=2, seed=0) for name in EXPECTED}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_embedded_shapes_and_types(loaded: dict[str, VflDataset], name: str) -> None:
    ds = loaded[name]
    shape, n_classes = EXPECTED[name]
    assert ds.name == name
    assert ds.features.shape == shape
    assert ds.features.dtype == np.float32
    assert ds.features.flags["C_CONTIGUOUS"]
    assert ds.labels.shape == (shape[0],) and ds.labels.dtype == np.int64
    assert ds.num_classes == n_classes
    assert sorted(np.unique(ds.labels).tolist()) == list(range(n_classes))
    assert ds.is_image == (name == "digits")
    if name == "digits":
        assert ds.column_names is None
        assert ds.classes == tuple(str(c) for c in range(10))
    else:
        assert ds.column_names is not None and len(ds.column_names) == shape[1]
    d = ds.describe()
    assert d["samples"] == shape[0] and d["train"] + d["test"] == shape[0]
    assert d["kind"] == ("image" if name == "digits" else "tabular")
    assert d["sample_shape"] == list(shape[1:])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_split_disjoint_and_covering(loaded: dict[str, VflDataset], name: str) -> None:
    ds = loaded[name]
    n = ds.num_samples
    assert ds.train_ids.dtype == np.int64 and ds.test_ids.dtype == np.int64
    assert np.all(np.diff(ds.train_ids) > 0) and np.all(np.diff(ds.test_ids) > 0)  # sorted, unique
    assert np.intersect1d(ds.train_ids, ds.test_ids).size == 0
    assert np.array_equal(np.sort(np.concatenate([ds.train_ids, ds.test_ids])), np.arange(n))
    assert ds.test_ids.size == pytest.approx(0.2 * n, abs=ds.num_classes)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_split_stratified(loaded: dict[str, VflDataset], name: str) -> None:
    ds = loaded[name]
    for c in range(ds.num_classes):
        n_c = int((ds.labels == c).sum())
        n_test = int((ds.labels[ds.test_ids] == c).sum())
        assert n_test == int(round(0.2 * n_c)), (c, n_c, n_test)


def test_split_deterministic_and_seeded() -> None:
    a = load_dataset(DataConfig(name="wine", split_seed=5), parties=2, seed=0)
    b = load_dataset(DataConfig(name="wine", split_seed=5), parties=2, seed=123)  # run seed does not move the split
    c = load_dataset(DataConfig(name="wine", split_seed=6), parties=2, seed=0)
    assert np.array_equal(a.test_ids, b.test_ids)
    assert np.array_equal(a.features, b.features)
    assert not np.array_equal(a.test_ids, c.test_ids)
    assert a.test_ids.size == c.test_ids.size


def test_test_fraction_is_used() -> None:
    ds = load_dataset(DataConfig(name="breast_cancer", test_fraction=0.5), parties=2, seed=0)
    counts = np.bincount(ds.labels, minlength=2)
    assert ds.test_ids.size == sum(int(round(0.5 * n)) for n in counts)


def test_stratified_split_small_classes() -> None:
    labels = np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2], dtype=np.int64)
    train, test = stratified_split(labels, 0.1, seed=0)
    # class 0 (2 samples) still gives one test sample, class 2 (1 sample) stays in training
    assert (labels[test] == 0).sum() == 1
    assert (labels[test] == 1).sum() == 1
    assert (labels[test] == 2).sum() == 0
    assert 10 in train.tolist()


@pytest.mark.parametrize("name", ["breast_cancer", "wine", "synthetic"])
def test_tabular_standardized_per_column(loaded: dict[str, VflDataset], name: str) -> None:
    ds = loaded[name]
    train = ds.features[ds.train_ids].astype(np.float64)
    np.testing.assert_allclose(train.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(train.std(axis=0), 1.0, atol=1e-4)
    # test samples are standardized with training statistics, so they are not exactly 0/1
    test = ds.features[ds.test_ids].astype(np.float64)
    assert not np.allclose(test.mean(axis=0), 0.0, atol=1e-4)


def test_digits_standardized_per_channel(loaded: dict[str, VflDataset]) -> None:
    ds = loaded["digits"]
    train = ds.features[ds.train_ids].astype(np.float64)
    assert train.mean() == pytest.approx(0.0, abs=1e-4)
    assert train.std() == pytest.approx(1.0, abs=1e-4)
    # per channel, not per pixel: the border pixels are nearly always 0 and stay at one value
    corner = train[:, 0, 0, 0]
    assert np.ptp(corner) == pytest.approx(0.0, abs=1e-6)
    assert corner[0] < -0.5


def test_standardize_constant_column() -> None:
    x = np.array([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]], dtype=np.float32)
    out = standardize(x, np.array([0, 1, 2]), per_channel=False)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[:, 1], 0.0)
    np.testing.assert_allclose(out[:, 0], np.array([-1.0, 0.0, 1.0]) * np.sqrt(1.5), rtol=1e-5)


# ------------------------------------------------------------------------------------------
# Synthetic data


def test_synthetic_planted_structure_raw() -> None:
    cfg = SyntheticConfig(samples=4000, features=12, classes=3, informative_per_party=3, separation=3.0, noise=0.5)
    x, y = make_synthetic(cfg, parties=2, seed=1)
    assert x.shape == (4000, 12) and x.dtype == np.float32
    assert np.bincount(y).tolist() == [1334, 1333, 1333]
    groups = [list(range(0, 6)), list(range(6, 12))]
    for group in groups:
        informative, noise_cols = group[:3], group[3:]
        for k, col in enumerate(informative):
            for c in range(3):
                mean = x[y == c, col].mean()
                expected = 3.0 if c == k else 0.0  # class k owns the k-th informative column of every party
                assert mean == pytest.approx(expected, abs=0.1), (col, c, mean)
        for col in noise_cols:
            for c in range(3):
                assert x[y == c, col].mean() == pytest.approx(0.0, abs=0.1)
            assert x[:, col].std() == pytest.approx(0.5, abs=0.05)


def test_synthetic_planted_structure_after_loading() -> None:
    cfg = DataConfig(
        name="synthetic", synthetic=SyntheticConfig(samples=2000, features=20, classes=4, informative_per_party=4)
    )
    ds = load_dataset(cfg, parties=2, seed=0)
    x, y = ds.features, ds.labels
    for start in (0, 10):  # the two parties' contiguous groups
        for k in range(4):
            col = start + k
            means = [x[y == c, col].mean() for c in range(4)]
            assert int(np.argmax(means)) == k, (col, means)
            others = [m for c, m in enumerate(means) if c != k]
            assert means[k] - max(others) > 1.2  # separation 2 over std sqrt(1 + 4 * 3/16) ~ 1.51
        for col in range(start + 4, start + 10):
            means = [x[y == c, col].mean() for c in range(4)]
            assert np.ptp(means) < 0.3


def test_synthetic_balanced_labels() -> None:
    _, y = make_synthetic(SyntheticConfig(samples=103, features=6, classes=4, informative_per_party=1), 3, seed=0)
    assert np.bincount(y).tolist() == [26, 26, 26, 25]


def test_synthetic_mixed_structure() -> None:
    cfg = SyntheticConfig(
        samples=4000, features=8, classes=2, informative_per_party=2, structure="mixed", separation=2.0, noise=0.5
    )
    x, y = make_synthetic(cfg, parties=2, seed=0)
    for informative in ([0, 1], [4, 5]):
        diff = x[y == 0][:, informative].mean(axis=0) - x[y == 1][:, informative].mean(axis=0)
        assert np.linalg.norm(diff) > 1.0
    for noise_col in (2, 3, 6, 7):
        assert abs(x[y == 0, noise_col].mean() - x[y == 1, noise_col].mean()) < 0.1


def test_synthetic_reproducible_from_seed() -> None:
    cfg = SyntheticConfig(samples=200, features=8, classes=2, informative_per_party=2)
    x1, y1 = make_synthetic(cfg, 2, seed=4)
    x2, y2 = make_synthetic(cfg, 2, seed=4)
    x3, y3 = make_synthetic(cfg, 2, seed=5)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert not np.array_equal(x1, x3)
    # through load_dataset the data is drawn from data.split_seed
    d = dict(name="synthetic", synthetic=cfg)
    a = load_dataset(DataConfig(**d, split_seed=4), parties=2, seed=0)
    b = load_dataset(DataConfig(**d, split_seed=4), parties=2, seed=0)
    c = load_dataset(DataConfig(**d, split_seed=5), parties=2, seed=0)
    assert np.array_equal(a.features, b.features) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.features, c.features)


def test_synthetic_informative_exceeds_smallest_party() -> None:
    cfg = DataConfig(name="synthetic", synthetic=SyntheticConfig(features=10, informative_per_party=4))
    with pytest.raises(ConfigError) as info:
        load_dataset(cfg, parties=3, seed=0)  # groups of 3, 3, 4
    msg = str(info.value)
    assert "informative_per_party is 4" in msg and "only 3" in msg


def test_synthetic_more_parties_than_features() -> None:
    cfg = DataConfig(name="synthetic", synthetic=SyntheticConfig(features=3, informative_per_party=1))
    with pytest.raises(ConfigError) as info:
        load_dataset(cfg, parties=4, seed=0)
    msg = str(info.value)
    assert "partition.parties is 4" in msg and "data.synthetic.features is 3" in msg


# ------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("field", [{"root": "/tmp/data"}, {"download": True}])
def test_root_or_download_for_embedded_dataset(field: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=r"data\.root and data\.download are for torchvision datasets, not 'digits'"):
        load_dataset(DataConfig(name="digits", **field), parties=2, seed=0)


def test_vision_dataset_without_root() -> None:
    with pytest.raises(ConfigError) as info:
        load_dataset(DataConfig(name="mnist"), parties=2, seed=0)
    assert str(info.value).startswith("data.root is required for 'mnist'")
