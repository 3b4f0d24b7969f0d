"""Tests of vfl_sim.config: defaults, YAML round trip, dotted overrides and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vfl_sim.config import (
    DATASETS,
    ExperimentConfig,
    MethodSpec,
    ModelConfig,
    apply_overrides,
    config_from_dict,
    dump_config,
    load_config,
)
from vfl_sim.errors import ConfigError, VflSimError


def _error(raw: object = None, overrides: tuple[str, ...] = ()) -> str:
    """The message of the ConfigError that validating ``raw`` + ``overrides`` raises."""
    with pytest.raises(ConfigError) as info:
        config_from_dict({} if raw is None else raw, overrides)  # type: ignore[arg-type]
    msg = str(info.value)
    assert "\n" not in msg, f"error message is not one line: {msg!r}"
    return msg


def _write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------
# Defaults and round trip


def test_defaults_validate() -> None:
    cfg = config_from_dict({})
    assert cfg == ExperimentConfig()
    assert cfg.data.name == "digits"
    assert cfg.partition.parties == 2 and cfg.partition.scheme == "auto"
    assert cfg.forget.kind == "class" and cfg.forget.classes == [0]
    assert [m.name for m in cfg.methods] == ["retrain", "finetune", "neggrad"]
    assert cfg.train.lr == 0.05 and cfg.train.epochs == 30
    assert cfg.model.embedding_dim == 32


def test_empty_yaml_file_is_refused_but_an_empty_mapping_gives_defaults(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"c\.yaml is empty; "):
        load_config(_write(tmp_path, ""))
    assert load_config(_write(tmp_path, "{}\n")) == ExperimentConfig()


def test_dump_then_load_round_trip(tmp_path: Path) -> None:
    cfg = config_from_dict(
        {
            "name": "round-trip",
            "seed": 7,
            "data": {"name": "synthetic", "split_seed": 3, "synthetic": {"samples": 500, "structure": "mixed"}},
            "partition": {"parties": 2, "scheme": "columns", "columns": [[0, 2, 4], [1, 3]]},
            "model": {"bottom": "mirage", "top_hidden": [16, 8], "fusion": "mean"},
            "train": {"optimizer": "adam", "lr": 0.001, "epochs": 3},
            "forget": {"kind": "samples", "fraction": 0.1},
            "methods": ["retrain", {"name": "neggrad", "params": {"lr": 0.001, "epochs": 1}}],
            "audit": {"max_samples": 100},
        }
    )
    text = dump_config(cfg)
    path = _write(tmp_path, text, "dumped.yaml")
    again = load_config(path)
    assert again == cfg
    assert again.model.embedding_dim == 256  # the mirage preset survives the round trip
    assert dump_config(again) == text


def test_default_round_trip(tmp_path: Path) -> None:
    cfg = ExperimentConfig()
    assert load_config(_write(tmp_path, dump_config(cfg))) == cfg


# ------------------------------------------------------------------------------------------
# Overrides


def test_override_types() -> None:
    cfg = config_from_dict(
        {},
        [
            "train.epochs=3",
            "train.lr=1e-3",
            "train.momentum=0.5",
            "forget.classes=[0,1]",
            "data.synthetic.samples=500",
            "name=my-run",
        ],
    )
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.train.lr == pytest.approx(1e-3) and isinstance(cfg.train.lr, float)
    assert cfg.train.momentum == 0.5
    assert cfg.forget.classes == [0, 1]
    assert cfg.data.synthetic.samples == 500
    assert cfg.name == "my-run"


def test_override_replaces_value_from_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "train: {epochs: 9, lr: 0.2}\ndata: {synthetic: {samples: 100, features: 10}}\n")
    cfg = load_config(path, ["train.epochs=1", "data.synthetic.samples=500"])
    assert cfg.train.epochs == 1
    assert cfg.train.lr == 0.2  # untouched siblings stay
    assert cfg.data.synthetic.samples == 500
    assert cfg.data.synthetic.features == 10


def test_override_value_may_contain_equals() -> None:
    assert config_from_dict({}, ["name=a=b"]).name == "a=b"


def test_apply_overrides_does_not_mutate_input() -> None:
    raw = {"train": {"epochs": 5}}
    out = apply_overrides(raw, ["train.epochs=1", "data.synthetic.samples=50"])
    assert raw == {"train": {"epochs": 5}}
    assert out == {"train": {"epochs": 1}, "data": {"synthetic": {"samples": 50}}}


def test_override_into_scalar_is_error() -> None:
    with pytest.raises(ConfigError, match=r"'train\.epochs\.x'.*'epochs' is not a section"):
        apply_overrides({"train": {"epochs": 5}}, ["train.epochs.x=1"])


def test_override_empty_key_part_is_error() -> None:
    msg = _error(overrides=("train..lr=1",))
    assert "empty" in msg and "train..lr" in msg


def test_override_without_equals_is_error() -> None:
    msg = _error(overrides=("train.epochs",))
    assert msg == "override 'train.epochs' is not of the form key=value (for example train.epochs=5)"


def test_methods_shorthand_in_yaml(tmp_path: Path) -> None:
    path = _write(tmp_path, "methods: [retrain, {name: neggrad, params: {lr: 0.001}}]\n")
    cfg = load_config(path)
    assert cfg.methods == [MethodSpec(name="retrain"), MethodSpec(name="neggrad", params={"lr": 0.001})]


def test_methods_shorthand_in_override() -> None:
    cfg = config_from_dict({}, ["methods=[retrain,finetune]"])
    assert [m.name for m in cfg.methods] == ["retrain", "finetune"]
    assert all(m.params == {} for m in cfg.methods)


def test_mirage_preset_sets_embedding_dim() -> None:
    assert config_from_dict({}, ["model.bottom=mirage"]).model.embedding_dim == 256
    assert config_from_dict({}, ["model.bottom=mirage", "model.embedding_dim=32"]).model.embedding_dim == 32
    assert config_from_dict({}, ["model.bottom=mirage", "model.embedding_dim=64"]).model.embedding_dim == 64
    assert config_from_dict({}, ["model.bottom=mlp"]).model.embedding_dim == 32
    assert ModelConfig(bottom="mirage").embedding_dim == 256


# ------------------------------------------------------------------------------------------
# Errors: one line, naming the field and the allowed values


def test_config_error_is_vfl_sim_error() -> None:
    assert issubclass(ConfigError, VflSimError) and issubclass(ConfigError, ValueError)


def test_unknown_top_level_key() -> None:
    msg = _error({"trian": {"epochs": 1}})
    assert msg.startswith("unknown field 'trian'; allowed: ")
    allowed = msg.split("allowed: ", 1)[1].split(", ")
    assert allowed == sorted(ExperimentConfig.model_fields)
    assert "train" in allowed and "data" in allowed


def test_unknown_nested_key() -> None:
    msg = _error({"data": {"nmae": "digits"}})
    assert msg == "unknown field 'nmae' in data; allowed: download, name, root, split_seed, synthetic, test_fraction"


def test_unknown_doubly_nested_key_via_override() -> None:
    msg = _error(overrides=("data.synthetic.sample=5",))
    assert msg.startswith("unknown field 'sample' in data.synthetic; allowed: ")
    assert "samples" in msg.split("allowed: ", 1)[1].split(", ")


def test_unknown_key_in_method_entry_lists_allowed_keys() -> None:
    msg = _error({"methods": [{"name": "retrain", "parmas": {}}]})
    assert "'parmas'" in msg
    assert msg.endswith("allowed: label, name, params")


def test_bad_dataset_name_lists_allowed() -> None:
    msg = _error(overrides=("data.name=foo",))
    assert msg.startswith("data.name: ")
    assert "(got 'foo')" in msg
    for name in DATASETS:
        assert f"'{name}'" in msg


def test_bad_literal_in_nested_section() -> None:
    msg = _error(overrides=("partition.scheme=diagonal",))
    assert msg.startswith("partition.scheme: ")
    for scheme in ("auto", "strips", "contiguous", "random", "columns"):
        assert f"'{scheme}'" in msg
    assert "(got 'diagonal')" in msg


def test_negative_lr() -> None:
    assert _error(overrides=("train.lr=-0.1",)) == "train.lr: Input should be greater than 0 (got -0.1)"


def test_zero_epochs() -> None:
    assert _error(overrides=("train.epochs=0",)).startswith("train.epochs: Input should be greater than or equal to 1")


def test_wrong_type_section() -> None:
    msg = _error({"train": 5})
    assert msg.startswith("train: ") and "(got 5)" in msg


def test_columns_scheme_without_columns() -> None:
    msg = _error(overrides=("partition.scheme=columns",))
    assert msg.startswith("partition: ")
    assert "partition.columns" in msg


def test_columns_count_mismatch() -> None:
    msg = _error(overrides=("partition.scheme=columns", "partition.columns=[[0,1]]"))
    assert msg == "partition: partition.columns has 1 lists but partition.parties is 2"


def test_columns_with_other_scheme() -> None:
    msg = _error(overrides=("partition.scheme=random", "partition.columns=[[0],[1]]"))
    assert "partition.columns" in msg and "'random'" in msg


def test_forget_class_without_classes() -> None:
    msg = _error({"forget": {"kind": "class"}})
    assert msg.startswith("forget: ")
    assert "forget.classes" in msg


def test_forget_class_with_empty_classes() -> None:
    assert "forget.classes" in _error({"forget": {"kind": "class", "classes": []}})


def test_forget_samples_with_both_ids_and_fraction() -> None:
    msg = _error({"forget": {"kind": "samples", "ids": [1, 2], "fraction": 0.1}})
    assert msg == "forget: forget.kind 'samples' needs exactly one of forget.ids or forget.fraction"


def test_forget_samples_with_neither() -> None:
    assert "exactly one of forget.ids or forget.fraction" in _error({"forget": {"kind": "samples"}})


def test_forget_fraction_out_of_range() -> None:
    msg = _error({"forget": {"kind": "samples", "fraction": 1.0}})
    assert msg.startswith("forget.fraction: ")


def test_duplicate_methods() -> None:
    msg = _error(overrides=("methods=[retrain,neggrad,retrain]",))
    assert msg == "methods lists retrain more than once; give each a distinct label"


def test_one_method_twice_under_labels() -> None:
    head = {"name": "finetune", "label": "head", "params": {"freeze_bottoms": True}}
    cfg = config_from_dict({"methods": ["finetune", head]})
    assert [m.model_name for m in cfg.methods] == ["finetune", "head"]
    assert "head more than once" in _error({"methods": [head, {**head, "params": {}}]})


def test_original_is_not_a_method() -> None:
    assert "'original'" in _error(overrides=("methods=[original]",))


def test_not_a_mapping() -> None:
    assert "mapping" in _error([1, 2])  # type: ignore[arg-type]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"config file not found: {path}"


def test_invalid_yaml(tmp_path: Path) -> None:
    path = _write(tmp_path, "train: {epochs: 1\nmodel: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: not valid YAML: ")
    assert "\n" not in msg


def test_invalid_value_in_file(tmp_path: Path) -> None:
    path = _write(tmp_path, yaml.safe_dump({"data": {"test_fraction": 1.5}}))
    with pytest.raises(ConfigError, match=r"^data\.test_fraction: Input should be less than 1 \(got 1\.5\)$"):
        load_config(path)


def test_every_shipped_config_validates() -> None:
    """Each file in configs/ loads; those whose data ships here also prepare (dataset, partition,
    forget request, methods and their request kinds), as `vfl-sim validate` does."""
    from pathlib import Path

    from vfl_sim.config import load_config
    from vfl_sim.experiment import prepare
    from vfl_sim.sweep import has_sweep_section, load_sweep

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert len(configs) >= 8
    for path in configs:
        if has_sweep_section(path):
            sweep = load_sweep(path, check=False)
            assert sweep.cells, path.name
            if all(c.config.data.name in ("digits", "breast_cancer", "wine", "synthetic") for c in sweep.cells):
                load_sweep(path)  # data that ships here: every cell prepares
            continue
        cfg = load_config(path, [])
        if cfg.data.name in ("digits", "breast_cancer", "wine", "synthetic"):
            exp = prepare(cfg)
            assert exp.methods, path.name
