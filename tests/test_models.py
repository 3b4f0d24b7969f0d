"""Model zoo: shapes, named layers, the Mirage preset."""

from __future__ import annotations

import pytest
import torch

from vfl_sim.config import ModelConfig
from vfl_sim.errors import ConfigError
from vfl_sim.models.bottoms import BottomModel
from vfl_sim.models.zoo import build_bottom, build_top


@pytest.mark.parametrize(
    "kind,shape,layers",
    [
        ("mlp", (7,), ["fc1", "embedding"]),
        ("cnn", (1, 8, 4), ["conv1", "conv2", "embedding"]),
        ("cnn", (1, 8, 1), ["conv1", "conv2", "embedding"]),  # a 1-pixel strip: pooling only along the height
        ("mirage", (3, 32, 16), ["block1", "block2", "block3", "embedding"]),
        ("mirage", (1, 8, 2), ["block1", "block2", "block3", "embedding"]),
    ],
)
def test_bottoms_expose_named_layers(kind: str, shape: tuple[int, ...], layers: list[str]) -> None:
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
