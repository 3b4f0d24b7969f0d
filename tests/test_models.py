"""Model zoo: shapes, named layers, input masks, bottom dropout, the Mirage preset."""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import pytest
import torch
from torch import nn

from tests.conftest import small_config, trained
from vfl_sim.config import ModelConfig
from vfl_sim.errors import ConfigError
from vfl_sim.experiment import prepare
from vfl_sim.forget import ORIGINAL
from vfl_sim.methods import build_method
from vfl_sim.models.bottoms import BottomModel
from vfl_sim.models.zoo import build_bottom, build_top
from vfl_sim.parties.party import Party
from vfl_sim.protocol import Embed, LocalOp

BottomKind = Literal["auto", "mlp", "cnn", "mirage"]


@pytest.mark.parametrize(
    "kind,shape,layers",
    [
        ("mlp", (7,), ["fc1", "embedding"]),
        ("mlp", (1, 8, 4), ["fc1", "embedding"]),  # an image strip, flattened
        ("cnn", (1, 8, 4), ["conv1", "conv2", "embedding"]),
        ("cnn", (1, 8, 1), ["conv1", "conv2", "embedding"]),  # a 1-pixel strip: pooling only along the height
        ("mirage", (3, 32, 16), ["block1", "block2", "block3", "embedding"]),
        ("mirage", (1, 8, 2), ["block1", "block2", "block3", "embedding"]),
    ],
)
def test_bottoms_expose_named_layers(kind: BottomKind, shape: tuple[int, ...], layers: list[str]) -> None:
    bottom = build_bottom(ModelConfig(bottom=kind), shape)
    assert isinstance(bottom, BottomModel)
    x = torch.randn(5, *shape)
    bottom.eval()
    out, acts = bottom.forward_layers(x)
    assert bottom.layer_names == layers == list(acts)
    assert out.shape == (5, bottom.embedding_dim)
    assert torch.equal(acts["embedding"], out)
    assert all(a.ndim == 2 and a.shape[0] == 5 for a in acts.values())
    assert torch.allclose(bottom(x), out)


def test_mirage_preset_matches_the_paper() -> None:
    cfg = ModelConfig(bottom="mirage")
    assert cfg.embedding_dim == 256
    bottom = build_bottom(cfg, (3, 32, 16))
    convs = [m for m in bottom.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in bottom.modules()) == 6
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in bottom.modules()) == 2
    _, acts = bottom.forward_layers(torch.randn(2, 3, 32, 16))
    assert [a.shape[1] for a in acts.values()] == [64, 128, 256, 256]

    top = build_top(cfg, [256, 256], 10)
    linears = [m for m in top.modules() if isinstance(m, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(512, 512), (512, 256), (256, 10)]
    dropouts = [m for m in top.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(dropouts) == 1 and dropouts[0].p == 0.5
    assert list(top.net).index(dropouts[0]) == 2  # right after the first Linear-ReLU


def test_conv_bottom_on_flat_party_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="model.bottom 'cnn' needs image parties"):
        build_bottom(ModelConfig(bottom="cnn"), (12,))


def test_sum_fusion_needs_equal_embeddings() -> None:
    with pytest.raises(ValueError, match="fusion 'sum' needs equal embedding sizes"):
        build_top(ModelConfig(fusion="sum"), [8, 16], 3)


@pytest.mark.parametrize(
    "kind,shape,mask_shape",
    [("mlp", (7,), (7,)), ("mlp", (1, 8, 4), (1, 1, 4)), ("mlp", (3, 5, 2), (1, 1, 2)), ("cnn", (1, 8, 4), (1, 1, 4))],
)
def test_input_mask_has_one_entry_per_column(
    kind: BottomKind, shape: tuple[int, ...], mask_shape: tuple[int, ...]
) -> None:
    """Image strips are masked by pixel column whatever the bottom (an MLP flattens after the mask)."""
    bottom = build_bottom(ModelConfig(bottom=kind), shape)
    assert tuple(bottom.input_mask.shape) == mask_shape
    assert bottom(torch.randn(3, *shape)).shape == (3, bottom.embedding_dim)


def _embedding(party: Party, ids: torch.Tensor) -> torch.Tensor:
    reply = party.handle(Embed(ids, train=False))
    return reply.embedding  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_masked_pixel_columns_do_not_reach_the_embedding(kind: str) -> None:
    """A feature request's party ops on a digits strip: the masked columns have no influence."""
    cfg = small_config(model={"bottom": kind}, partition={"parties": 2, "scheme": "strips"})
    exp = prepare(cfg)
    part = exp.slices[0]
    view = torch.from_numpy(part.take(exp.dataset.features))
    assert view.ndim == 4  # (N, C, H, W_k) strips
    party = Party(part.party_id, view, build_bottom(cfg.model, tuple(view.shape[1:])), init_seed=0)
    ids = torch.arange(32)
    before = _embedding(party, ids)

    party.handle(LocalOp("mask_columns", {"columns": [0, 1]}))
    assert party.handle(LocalOp("masked_columns")).info == {"columns": [0, 1]}  # type: ignore[union-attr]
    masked = _embedding(party, ids)
    assert not torch.allclose(masked, before)
    party.features[..., :2] += torch.randn_like(party.features[..., :2]) * 5.0  # perturb the masked columns only
    assert torch.equal(_embedding(party, ids), masked)
    party.features[..., 2:] += 1.0  # the other columns are still read
    assert not torch.allclose(_embedding(party, ids), masked)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_feature_request_on_digits_strips_runs_for_both_bottoms(kind: str) -> None:
    """prepare, train and retrain for ``features`` of party_0, columns [0, 1], on digits strips."""
    forget = {"kind": "features", "party": "party_0", "columns": [0, 1]}
    exp = prepare(
        small_config(
            model={"bottom": kind}, partition={"parties": 2, "scheme": "strips"}, forget=forget, methods=["retrain"]
        )
    )
    server, coordinator = trained(exp, epochs=1)
    coordinator.run(build_method("retrain", {"epochs": 1}, "features"))
    party = server.transport.parties["party_0"]  # type: ignore[attr-defined]
    server.load_state("retrain")
    ids = torch.arange(20)
    before = _embedding(party, ids)
    party.features[..., :2] += 5.0  # change only the removed pixel columns
    after = _embedding(party, ids)
    assert torch.allclose(before, after)
    server.load_state(ORIGINAL)  # the original still reads them
    assert not torch.allclose(_embedding(party, ids), after)


def _old_cnn(shape: tuple[int, int, int], channels: list[int], embedding_dim: int) -> nn.Sequential:
    """The CNN bottom as built before ``bottom_dropout`` was honoured (batch norm on)."""
    c, h, w = shape
    stages: list[tuple[str, nn.Module]] = []
    for i, c_out in enumerate(channels):
        kh, kw = (2 if h >= 2 else 1, 2 if w >= 2 else 1)
        conv = [nn.Conv2d(c, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        stages.append((f"conv{i + 1}", nn.Sequential(*conv, nn.MaxPool2d((kh, kw)))))
        c, h, w = c_out, h // kh, w // kw
    stages.append(("embedding", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(c, embedding_dim))))
    return nn.Sequential(OrderedDict(stages))


def test_cnn_without_dropout_is_bit_identical_to_before() -> None:
    shape = (1, 8, 4)
    torch.manual_seed(0)
    bottom = build_bottom(ModelConfig(bottom="cnn"), shape)
    torch.manual_seed(0)
    old = _old_cnn(shape, [32, 64], 32)
    assert not any(isinstance(m, nn.Dropout) for m in bottom.modules())
    new_state = {k.removeprefix("stages."): v for k, v in bottom.state_dict().items() if k != "input_mask"}
    old_state = old.state_dict()
    assert new_state.keys() == old_state.keys()
    assert all(torch.equal(new_state[k], old_state[k]) for k in old_state)
    x = torch.randn(6, *shape)
    torch.manual_seed(1)
    out_new = bottom.train()(x)
    rng_new = torch.get_rng_state()
    torch.manual_seed(1)
    out_old = old.train()(x)
    assert torch.equal(out_new, out_old)
    assert torch.equal(rng_new, torch.get_rng_state())  # consumed no random numbers


def test_cnn_honours_bottom_dropout() -> None:
    bottom = build_bottom(ModelConfig(bottom="cnn", bottom_dropout=0.5), (1, 8, 4))
    head = list(bottom.get_submodule("stages.embedding").children())
    dropouts = [m for m in bottom.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 1 and dropouts[0].p == 0.5
    assert isinstance(head[-1], nn.Linear) and head[-2] is dropouts[0]  # right before the embedding's Linear
    x = torch.randn(6, 1, 8, 4)
    bottom.train()
    torch.manual_seed(0)
    a = bottom(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, bottom(x))  # training draws dropout masks
    bottom.eval()
    assert torch.equal(bottom(x), bottom(x))


def test_mlp_on_flat_columns_keeps_its_layout() -> None:
    """Flattening image strips does not change the MLP's modules on flat views (checkpoint keys)."""
    bottom = build_bottom(ModelConfig(bottom="mlp", bottom_hidden=[16], bottom_dropout=0.2), (7,))
    assert isinstance(next(bottom.get_submodule("stages.fc1").children()), nn.Linear)
    assert set(bottom.state_dict()) == {
        "input_mask",
        "stages.fc1.0.weight",
        "stages.fc1.0.bias",
        "stages.fc1.1.weight",
        "stages.fc1.1.bias",
        "stages.fc1.1.running_mean",
        "stages.fc1.1.running_var",
        "stages.fc1.1.num_batches_tracked",
        "stages.embedding.1.weight",
        "stages.embedding.1.bias",
    }
