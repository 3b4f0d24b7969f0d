"""Tests of server.coordinator.resolve_forget_request: class and sample requests, and their errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vfl_sim.config import ForgetConfig, config_from_dict
from vfl_sim.data.dataset import stratified_split
from vfl_sim.errors import ForgetRequestError, VflSimError
from vfl_sim.experiment import prepare
from vfl_sim.server.coordinator import resolve_forget_request

NUM_CLASSES = 4


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    labels = np.random.default_rng(0).permutation(np.arange(200) % NUM_CLASSES).astype(np.int64)
    train_ids, test_ids = stratified_split(labels, 0.25, seed=0)
    return {"labels": labels, "train_ids": train_ids, "test_ids": test_ids}


def _resolve(data: dict[str, np.ndarray], seed: int = 0, **request: object):
    return resolve_forget_request(
        ForgetConfig(**request),  # type: ignore[arg-type]
        train_ids=data["train_ids"],
        test_ids=data["test_ids"],
        labels=data["labels"],
        num_classes=NUM_CLASSES,
        seed=seed,
    )


def _check_partition_of_train(fs, train_ids: np.ndarray) -> None:
    forget, retain = fs.forget_ids.numpy(), fs.retain_ids.numpy()
    assert fs.forget_ids.dtype == torch.int64 and fs.retain_ids.dtype == torch.int64
    assert np.intersect1d(forget, retain).size == 0
    assert np.array_equal(np.sort(np.concatenate([forget, retain])), train_ids)
    assert np.all(np.diff(forget) > 0) and np.all(np.diff(retain) > 0)


def test_class_request(data: dict[str, np.ndarray]) -> None:
    fs = _resolve(data, kind="class", classes=[2])
    train, labels = data["train_ids"], data["labels"]
    assert fs.kind == "class"
    assert fs.classes == (2,)
    np.testing.assert_array_equal(fs.forget_ids.numpy(), train[labels[train] == 2])
    np.testing.assert_array_equal(fs.retain_ids.numpy(), train[labels[train] != 2])
    assert not np.isin(fs.forget_ids.numpy(), data["test_ids"]).any()  # test samples of class 2 are not forgotten
    _check_partition_of_train(fs, train)
    d = fs.describe()
    assert d["kind"] == "class" and d["classes"] == [2]
    assert d["forget_train_samples"] == int((labels[train] == 2).sum())
    assert d["retain_train_samples"] == train.size - d["forget_train_samples"]


def test_several_classes_sorted_and_deduplicated(data: dict[str, np.ndarray]) -> None:
    fs = _resolve(data, kind="class", classes=[3, 1, 3])
    train, labels = data["train_ids"], data["labels"]
    assert fs.classes == (1, 3)
    np.testing.assert_array_equal(fs.forget_ids.numpy(), train[np.isin(labels[train], [1, 3])])
    _check_partition_of_train(fs, train)


def test_samples_by_ids(data: dict[str, np.ndarray]) -> None:
    train = data["train_ids"]
    wanted = [int(train[7]), int(train[0]), int(train[42]), int(train[7])]
    fs = _resolve(data, kind="samples", ids=wanted)
    assert fs.kind == "samples" and fs.classes == ()
    assert fs.forget_ids.tolist() == sorted(set(wanted))
    _check_partition_of_train(fs, train)
    d = fs.describe()
    assert d["classes"] is None and d["forget_train_samples"] == 3
    assert d["ids"] == wanted  # the request as given is kept for the report


def test_samples_by_fraction(data: dict[str, np.ndarray]) -> None:
    train = data["train_ids"]
    fs = _resolve(data, seed=3, kind="samples", fraction=0.1)
    assert fs.forget_ids.numel() == int(round(0.1 * train.size))
    _check_partition_of_train(fs, train)
    again = _resolve(data, seed=3, kind="samples", fraction=0.1)
    assert torch.equal(fs.forget_ids, again.forget_ids)
    other = _resolve(data, seed=4, kind="samples", fraction=0.1)
    assert other.forget_ids.numel() == fs.forget_ids.numel()
    assert not torch.equal(fs.forget_ids, other.forget_ids)
    assert fs.describe()["fraction"] == 0.1


def test_tiny_fraction_forgets_at_least_one(data: dict[str, np.ndarray]) -> None:
    assert _resolve(data, kind="samples", fraction=0.001).forget_ids.numel() == 1


def test_class_out_of_range(data: dict[str, np.ndarray]) -> None:
    with pytest.raises(ForgetRequestError) as info:
        _resolve(data, kind="class", classes=[1, 4])
    assert str(info.value) == "forget.classes: class 4 does not exist; classes are 0..3"


def test_class_without_training_samples() -> None:
    labels = np.array([0, 0, 1, 1, 2], dtype=np.int64)
    with pytest.raises(ForgetRequestError, match=r"class 2 has no training samples"):
        resolve_forget_request(
            ForgetConfig(kind="class", classes=[2]),
            train_ids=np.array([0, 1, 2, 3]),
            test_ids=np.array([4]),
            labels=labels,
            num_classes=3,
            seed=0,
        )


def test_test_id_is_rejected(data: dict[str, np.ndarray]) -> None:
    test_id = int(data["test_ids"][5])
    with pytest.raises(ForgetRequestError) as info:
        _resolve(data, kind="samples", ids=[int(data["train_ids"][0]), test_id])
    msg = str(info.value)
    assert msg.startswith(f"forget.ids: {test_id} is a test sample; forget requests name training samples")
    assert f"({data['train_ids'].size} of them" in msg


def test_unknown_id_is_rejected(data: dict[str, np.ndarray]) -> None:
    with pytest.raises(ForgetRequestError) as info:
        _resolve(data, kind="samples", ids=[10_000])
    assert str(info.value).startswith("forget.ids: 10000 is not a sample id;")


def test_request_covering_all_training_samples(data: dict[str, np.ndarray]) -> None:
    with pytest.raises(ForgetRequestError, match="covers every training sample"):
        _resolve(data, kind="class", classes=list(range(NUM_CLASSES)))
    with pytest.raises(ForgetRequestError, match="covers every training sample"):
        _resolve(data, kind="samples", ids=data["train_ids"].tolist())
    with pytest.raises(ForgetRequestError, match="covers every training sample"):
        _resolve(data, kind="samples", fraction=0.999)


def test_forget_request_error_is_input_error() -> None:
    assert issubclass(ForgetRequestError, VflSimError) and issubclass(ForgetRequestError, ValueError)


def test_prepare_resolves_the_request() -> None:
    cfg = config_from_dict(
        {
            "data": {
                "name": "synthetic",
                "synthetic": {"samples": 200, "features": 8, "classes": 4, "informative_per_party": 2},
            },
            "forget": {"kind": "class", "classes": [1]},
            "methods": ["retrain"],
        }
    )
    exp = prepare(cfg)
    ds = exp.dataset
    np.testing.assert_array_equal(exp.forget.forget_ids.numpy(), ds.train_ids[ds.labels[ds.train_ids] == 1])


def test_prepare_rejects_class_out_of_range() -> None:
    cfg = config_from_dict({"data": {"name": "wine"}, "forget": {"classes": [3]}, "methods": ["retrain"]})
    with pytest.raises(ForgetRequestError, match=r"classes are 0\.\.2"):
        prepare(cfg)


def test_stratified_fraction_keeps_class_proportions(data: dict[str, np.ndarray]) -> None:
    fs = _resolve(data, kind="samples", fraction=0.2, stratified=True)
    _check_partition_of_train(fs, data["train_ids"])
    train_counts = np.bincount(data["labels"][data["train_ids"]], minlength=NUM_CLASSES)
    forget_counts = np.bincount(data["labels"][fs.forget_ids.numpy()], minlength=NUM_CLASSES)
    assert np.array_equal(forget_counts, np.round(0.2 * train_counts).astype(int))
    again = _resolve(data, kind="samples", fraction=0.2, stratified=True)
    assert torch.equal(fs.forget_ids, again.forget_ids)


def test_request_ids_are_given_or_derived_from_content(data: dict[str, np.ndarray]) -> None:
    a = _resolve(data, kind="class", classes=[1])
    assert a.request_id.startswith("class-") and a.request_id == _resolve(data, kind="class", classes=[1]).request_id
    assert a.request_id != _resolve(data, kind="class", classes=[2]).request_id
    assert _resolve(data, kind="class", classes=[1], id="gdpr-17").request_id == "gdpr-17"
    with pytest.raises(VflSimError, match=r"forget\.id: String should match pattern"):
        config_from_dict({"forget": {"kind": "class", "classes": [1], "id": "has space"}})


def _slices():
    from vfl_sim.data.partition import PartySlice

    return [PartySlice("party_0", columns=(0, 1, 2)), PartySlice("party_1", columns=(3, 4, 5, 6))]


def _resolve_party(data: dict[str, np.ndarray], names=None, **request: object):
    return resolve_forget_request(
        ForgetConfig(**request),  # type: ignore[arg-type]
        train_ids=data["train_ids"],
        test_ids=data["test_ids"],
        labels=data["labels"],
        num_classes=NUM_CLASSES,
        seed=0,
        slices=_slices(),
        column_names=names,
    )


def test_party_and_feature_requests_keep_every_sample(data: dict[str, np.ndarray]) -> None:
    fs = _resolve_party(data, kind="party", party="party_1")
    assert fs.party == "party_1" and fs.forget_ids.numel() == 0
    assert np.array_equal(fs.retain_ids.numpy(), data["train_ids"]) and fs.removes_data_of_a_party
    names = [f"c{i}" for i in range(7)]
    fs = _resolve_party(data, names, kind="features", party="party_1", columns=["c5", 3])
    assert fs.party == "party_1" and fs.columns == (0, 2)  # positions in party_1's own view


@pytest.mark.parametrize(
    ("request_", "names", "message"),
    [
        ({"kind": "party", "party": "party_9"}, None, "'party_9' is not a party; parties: party_0, party_1"),
        ({"kind": "features", "party": "party_0", "columns": [4]}, None, "column 4 is not held by party_0"),
        ({"kind": "features", "party": "party_0", "columns": ["c1"]}, None, "its columns have no names"),
        ({"kind": "features", "party": "party_0", "columns": ["zz"]}, ["c"] * 7, "no column 'zz'"),
        ({"kind": "features", "party": "party_0", "columns": [0, 1, 2]}, None, "every column of party_0"),
    ],
)
def test_bad_party_and_feature_requests(data, request_, names, message) -> None:
    with pytest.raises(ForgetRequestError, match=message):
        _resolve_party(data, names, **request_)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"kind": "party"}, "needs forget.party"),
        ({"kind": "features", "party": "party_0"}, "needs forget.columns"),
        ({"kind": "class", "classes": [1], "party": "party_0"}, "forget.party is for kind 'party' or 'features'"),
        ({"kind": "samples", "ids": [1], "stratified": True}, "stratified applies to forget.fraction"),
        ({"kind": "party", "party": "party_0", "classes": [1]}, "forget.classes is for kind 'class', not 'party'"),
    ],
)
def test_bad_request_kinds_are_config_errors(request_, message) -> None:
    with pytest.raises(VflSimError, match=message):
        config_from_dict({"forget": request_})


def test_the_config_accepts_exactly_the_forget_kinds() -> None:
    from typing import get_args

    from vfl_sim.config import ForgetConfig
    from vfl_sim.forget import ForgetKind

    assert get_args(ForgetConfig.model_fields["kind"].annotation) == ForgetKind.ALL
