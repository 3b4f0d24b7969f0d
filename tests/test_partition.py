"""Tests of vfl_sim.data.partition: strips, contiguous, random and explicit column partitions."""

from __future__ import annotations

import numpy as np
import pytest

from vfl_sim.config import PartitionConfig, config_from_dict
from vfl_sim.data.partition import PartySlice, contiguous_groups, partition_features
from vfl_sim.errors import ConfigError

IMAGE = (1, 8, 8)  # digits-like sample shape
TABULAR = (10,)


@pytest.fixture
def images() -> np.ndarray:
    return np.arange(5 * 2 * 8 * 8, dtype=np.float32).reshape(5, 2, 8, 8)


@pytest.fixture
def table() -> np.ndarray:
    return np.arange(6 * 10, dtype=np.float32).reshape(6, 10)


def _cfg(parties: int, scheme: str = "auto", columns: list[list[int | str]] | None = None) -> PartitionConfig:
    return PartitionConfig(parties=parties, scheme=scheme, columns=columns)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("parties", "strips"),
    [
        (2, [(0, 4), (4, 8)]),
        (3, [(0, 2), (2, 4), (4, 8)]),  # the last party takes the remainder
        (4, [(0, 2), (2, 4), (4, 6), (6, 8)]),
        (8, [(k, k + 1) for k in range(8)]),
    ],
)
@pytest.mark.parametrize("scheme", ["strips", "auto"])
def test_strips(images: np.ndarray, parties: int, strips: list[tuple[int, int]], scheme: str) -> None:
    slices = partition_features(_cfg(parties, scheme), (2, 8, 8), seed=0)
    assert [s.party_id for s in slices] == [f"party_{k}" for k in range(parties)]
    assert [s.strip for s in slices] == strips
    assert all(s.columns is None for s in slices)
    assert sum(b - a for a, b in strips) == 8
    for s in slices:
        a, b = s.strip  # type: ignore[misc]
        view = s.take(images)
        assert view.shape == (5, 2, 8, b - a)
        assert view.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(view, images[:, :, :, a:b])
        assert s.describe() == {"party": s.party_id, "strip": [a, b], "width": b - a}
    # the strips together give back the image
    np.testing.assert_array_equal(np.concatenate([s.take(images) for s in slices], axis=3), images)


def test_single_party_holds_everything(images: np.ndarray) -> None:
    (only,) = partition_features(_cfg(1), IMAGE, seed=0)
    assert only.strip == (0, 8)


def test_strips_more_parties_than_width() -> None:
    with pytest.raises(ConfigError) as info:
        partition_features(_cfg(9, "strips"), IMAGE, seed=0)
    msg = str(info.value)
    assert "9" in msg and "8 pixels wide" in msg
    assert msg.startswith("partition.parties is 9")


def test_strips_on_tabular() -> None:
    with pytest.raises(ConfigError, match=r"'strips' needs image data"):
        partition_features(_cfg(2, "strips"), TABULAR, seed=0)


@pytest.mark.parametrize("scheme", ["contiguous", "auto"])
def test_contiguous_tabular(table: np.ndarray, scheme: str) -> None:
    slices = partition_features(_cfg(3, scheme), TABULAR, seed=0)
    assert [s.columns for s in slices] == [(0, 1, 2), (3, 4, 5), (6, 7, 8, 9)]
    assert all(s.strip is None for s in slices)
    for s in slices:
        np.testing.assert_array_equal(s.take(table), table[:, list(s.columns)])  # type: ignore[arg-type]
    assert slices[2].describe() == {"party": "party_2", "columns": [6, 7, 8, 9], "n_columns": 4}


def test_contiguous_more_parties_than_columns() -> None:
    with pytest.raises(ConfigError) as info:
        partition_features(_cfg(11, "contiguous"), TABULAR, seed=0)
    assert str(info.value) == "partition.parties is 11 but there are only 10 columns to split"


def test_contiguous_groups_helper() -> None:
    assert contiguous_groups(7, 2) == [[0, 1, 2], [3, 4, 5, 6]]
    assert contiguous_groups(4, 4) == [[0], [1], [2], [3]]
    with pytest.raises(ConfigError):
        contiguous_groups(3, 4)


def test_random_seeded_disjoint_covering(table: np.ndarray) -> None:
    a = partition_features(_cfg(3, "random"), TABULAR, seed=11)
    b = partition_features(_cfg(3, "random"), TABULAR, seed=11)
    c = partition_features(_cfg(3, "random"), TABULAR, seed=12)
    assert a == b
    assert [s.columns for s in a] != [s.columns for s in c]
    cols = [list(s.columns) for s in a]  # type: ignore[arg-type]
    assert [len(g) for g in cols] == [3, 3, 4]
    assert all(g == sorted(g) for g in cols)
    flat = sorted(c for g in cols for c in g)
    assert flat == list(range(10))  # disjoint and covering
    assert cols != [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]  # actually shuffled
    for s in a:
        np.testing.assert_array_equal(s.take(table), table[:, list(s.columns)])  # type: ignore[arg-type]


def test_random_more_parties_than_columns() -> None:
    with pytest.raises(ConfigError, match=r"partition\.parties is 11 but there are only 10 columns"):
        partition_features(_cfg(11, "random"), TABULAR, seed=0)


def test_explicit_columns(table: np.ndarray) -> None:
    slices = partition_features(_cfg(2, "columns", [[9, 0], [3, 4]]), TABULAR, seed=0)
    assert [s.columns for s in slices] == [(9, 0), (3, 4)]
    np.testing.assert_array_equal(slices[0].take(table), table[:, [9, 0]])


def test_explicit_columns_out_of_range() -> None:
    with pytest.raises(ConfigError) as info:
        partition_features(_cfg(2, "columns", [[0, 1], [2, 10]]), TABULAR, seed=0)
    assert str(info.value) == "partition.columns for party_1 has column 10 but the data has 10 columns (0..9)"


def test_explicit_negative_column_rejected() -> None:
    # Either the config (a ConfigError from config_from_dict) or the partition may reject it.
    with pytest.raises(ConfigError, match=r"-1"):
        cfg = config_from_dict({"partition": {"parties": 2, "scheme": "columns", "columns": [[-1, 0], [1, 9]]}})
        partition_features(cfg.partition, TABULAR, seed=0)


def test_explicit_columns_overlap() -> None:
    with pytest.raises(ConfigError) as info:
        partition_features(_cfg(3, "columns", [[0, 1], [2, 3], [3, 1]]), TABULAR, seed=0)
    assert str(info.value) == "partition.columns: column 1 is given to more than one party"


def test_explicit_column_repeated_within_party() -> None:
    with pytest.raises(ConfigError):
        cfg = config_from_dict({"partition": {"parties": 2, "scheme": "columns", "columns": [[0, 0], [1]]}})
        partition_features(cfg.partition, TABULAR, seed=0)


def test_explicit_columns_empty() -> None:
    with pytest.raises(ConfigError) as info:
        partition_features(_cfg(2, "columns", [[0, 1], []]), TABULAR, seed=0)
    assert str(info.value) == "partition.columns for party_1 is empty"


def test_images_contiguous_flatten(images: np.ndarray) -> None:
    slices = partition_features(_cfg(3, "contiguous"), (2, 8, 8), seed=0)
    assert [len(s.columns) for s in slices] == [42, 42, 44]  # type: ignore[arg-type]
    flat = images.reshape(5, -1)
    for s in slices:
        view = s.take(images)
        assert view.shape == (5, len(s.columns))  # type: ignore[arg-type]
        np.testing.assert_array_equal(view, flat[:, list(s.columns)])  # type: ignore[arg-type]
    np.testing.assert_array_equal(np.concatenate([s.take(images) for s in slices], axis=1), flat)


def test_images_explicit_columns_are_flat_indices(images: np.ndarray) -> None:
    slices = partition_features(_cfg(2, "columns", [[0, 127], [64]]), (2, 8, 8), seed=0)
    np.testing.assert_array_equal(slices[0].take(images), images.reshape(5, -1)[:, [0, 127]])
    with pytest.raises(ConfigError, match=r"has column 128 but the data has 128 columns"):
        partition_features(_cfg(2, "columns", [[0], [128]]), (2, 8, 8), seed=0)


def test_party_slice_is_frozen() -> None:
    s = PartySlice("party_0", columns=(0, 1))
    with pytest.raises(AttributeError):
        s.columns = (2,)  # type: ignore[misc]


def test_explicit_columns_by_name() -> None:
    names = [f"c{j}" for j in range(10)]
    by_name = partition_features(_cfg(2, "columns", [["c9", "c0"], ["c3", 4]]), TABULAR, 0, names)
    assert [s.columns for s in by_name] == [(9, 0), (3, 4)]  # names and indices mix
    with pytest.raises(ConfigError) as info:
        partition_features(_cfg(2, "columns", [["c1"], ["zz"]]), TABULAR, 0, names)
    assert str(info.value) == "partition.columns for party_1: no column 'zz'"
    with pytest.raises(ConfigError) as info:
        partition_features(_cfg(2, "columns", [["c1"], [2]]), TABULAR, 0)
    assert str(info.value) == "partition.columns for party_0: its columns have no names; give indices"
    with pytest.raises(ConfigError, match="column 1 is given to more than one party"):
        partition_features(_cfg(2, "columns", [["c1"], [1]]), TABULAR, 0, names)


def test_a_run_partitions_and_forgets_by_the_dataset_s_column_names() -> None:
    """wine names its 13 columns: a partition and a feature request may both use the names."""
    from vfl_sim.experiment import prepare

    names = ["alcohol", "malic_acid", "ash", "alcalinity_of_ash", "magnesium", "total_phenols"]
    rest = [
        "flavanoids",
        "nonflavanoid_phenols",
        "proanthocyanins",
        "color_intensity",
        "hue",
        "od280/od315_of_diluted_wines",
        "proline",
    ]
    raw = {
        "data": {"name": "wine"},
        "partition": {"parties": 2, "scheme": "columns", "columns": [rest, names]},
        "forget": {"kind": "features", "party": "party_1", "columns": ["ash", "magnesium"]},
        "methods": ["retrain"],
    }
    exp = prepare(config_from_dict(raw))
    assert exp.slices[0].columns == tuple(range(6, 13)) and exp.slices[1].columns == tuple(range(6))
    assert exp.forget.party == "party_1" and exp.forget.columns == (2, 4)  # positions in party_1's view
    by_index = {
        **raw,
        "partition": {"parties": 2, "scheme": "columns", "columns": [list(range(6, 13)), list(range(6))]},
    }
    assert prepare(config_from_dict(by_index)).slices == exp.slices
