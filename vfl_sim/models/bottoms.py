"""Bottom models: what each party runs on its own feature slice.

Every bottom model is a sequence of named stages. ``forward(x)`` returns the embedding;
``forward_layers(x)`` also returns the output of every stage, pooled to one vector per sample
(global average pooling for feature maps), so audits can probe each layer without hooks into
anonymous modules.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn


def _pool(t: torch.Tensor) -> torch.Tensor:
    return t.mean(dim=(2, 3)) if t.ndim == 4 else t.flatten(1)


class BottomModel(nn.Module):
    """A party's bottom model: named stages applied in order; the last gives the embedding.

    ``input_mask`` (a buffer, ones by default, shape ``mask_shape``: ``(D,)`` for flat inputs,
    ``(1, 1, W)`` for image strips ``(C, H, W)``, one entry per pixel column, whatever the
    bottom's kind: an MLP on a strip flattens it after the mask) multiplies the input. Feature
    unlearning zeroes the entries of removed columns, so a model that forgot them no longer
    reads them (the inputs are standardized, so zero is the training mean); being a buffer, the
    mask is part of every snapshot and checkpoint of the model.
    """

    input_mask: torch.Tensor

    def __init__(
        self, stages: Sequence[tuple[str, nn.Module]], embedding_dim: int, mask_shape: Sequence[int] = (1,)
    ) -> None:
        super().__init__()
        self.stages = nn.Sequential(OrderedDict(stages))
        self.embedding_dim = embedding_dim
        self.register_buffer("input_mask", torch.ones(tuple(mask_shape)))

    @property
    def layer_names(self) -> list[str]:
        return list(self.stages._modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x * self.input_mask)

    def forward_layers(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The embedding and every named stage's pooled output (the last stage is the embedding)."""
        x = x * self.input_mask
        layers: dict[str, torch.Tensor] = {}
        for name, stage in self.stages.named_children():
            x = stage(x)
            layers[name] = _pool(x)
        return x, layers


def _mask_shape(in_shape: Sequence[int]) -> tuple[int, ...]:
    """The input mask's shape for samples of shape ``in_shape``: one entry per column of the last
    axis, broadcast over the others (``(1, 1, W)`` for an image strip ``(C, H, W)``, one entry per
    pixel column; ``(D,)`` for a flat view)."""
    return (1,) * (len(in_shape) - 1) + (int(in_shape[-1]),)


def mlp_bottom(
    in_shape: int | Sequence[int],
    hidden: Sequence[int],
    embedding_dim: int,
    *,
    batch_norm: bool,
    dropout: float,
) -> BottomModel:
    """Fully connected bottom: ``[Linear-(BN)-ReLU-(Dropout)] x len(hidden)`` then ``Linear`` to the embedding.

    Parameters
    ----------
    in_shape
        Shape of one sample of the party's view: ``D`` or ``(D,)`` for flat features, ``(C, H, W)``
        for an image strip. An image strip is masked first (the input mask has one entry per pixel
        column, as for the convolutional bottoms, so feature unlearning removes whole columns) and
        then flattened to ``C * H * W`` inputs by a leading ``Flatten`` in the first stage.
    hidden
        Widths of the hidden layers (stages ``fc1``, ``fc2``, ...).
    embedding_dim
        Width of the embedding (the last stage, ``embedding``).
    batch_norm
        Put a ``BatchNorm1d`` after every hidden ``Linear``.
    dropout
        Dropout probability after every hidden ReLU; ``0`` adds no module.

    Returns
    -------
    BottomModel
        The bottom model.
    """
    shape = (in_shape,) if isinstance(in_shape, int) else tuple(int(d) for d in in_shape)
    in_features = int(math.prod(shape))
    image = len(shape) > 1
    stages: list[tuple[str, nn.Module]] = []
    width = in_features
    for i, h in enumerate(hidden):
        # Flat views keep their module layout (and state-dict keys) of before; images flatten first.
        parts: list[nn.Module] = [nn.Flatten(1)] if image and i == 0 else []
        parts.append(nn.Linear(width, h))
        if batch_norm:
            parts.append(nn.BatchNorm1d(h))
        parts.append(nn.ReLU())
        if dropout > 0:
            parts.append(nn.Dropout(dropout))
        stages.append((f"fc{i + 1}", nn.Sequential(*parts)))
        width = h
    stages.append(("embedding", nn.Sequential(nn.Flatten(1), nn.Linear(width, embedding_dim))))
    return BottomModel(stages, embedding_dim, _mask_shape(shape))


def _conv_bn_relu(c_in: int, c_out: int, batch_norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.ReLU())
    return layers


def _pool_kernel(height: int, width: int) -> tuple[int, int]:
    # Narrow strips (a 2-pixel-wide strip of an 8x8 digit) cannot be halved along the width;
    # pool only along the sides that are at least 2 long.
    return (2 if height >= 2 else 1, 2 if width >= 2 else 1)


def cnn_bottom(
    in_shape: tuple[int, int, int],
    channels: Sequence[int],
    embedding_dim: int,
    *,
    batch_norm: bool,
    dropout: float = 0.0,
) -> BottomModel:
    """Small image bottom: one ``conv3x3-BN-ReLU-maxpool`` block per entry of ``channels``,
    global average pooling, (dropout) and a linear projection to the embedding.

    Parameters
    ----------
    in_shape
        Shape ``(C, H, W)`` of the party's image strip.
    channels
        Output channels of the conv blocks (stages ``conv1``, ``conv2``, ...).
    embedding_dim
        Width of the embedding (the last stage, ``embedding``).
    batch_norm
        Put a ``BatchNorm2d`` after every convolution (which then has no bias).
    dropout
        Dropout probability on the pooled features, right before the embedding's ``Linear``
        (``AdaptiveAvgPool2d-Flatten-Dropout-Linear``): the one fully connected layer of the
        model, where the MLP bottom drops too. ``0`` adds no module, so such a model has the
        modules, state-dict keys and random draws of a model built without the option.

    Returns
    -------
    BottomModel
        The bottom model.
    """
    c, h, w = in_shape
    stages: list[tuple[str, nn.Module]] = []
    for i, c_out in enumerate(channels):
        kh, kw = _pool_kernel(h, w)
        stages.append((f"conv{i + 1}", nn.Sequential(*_conv_bn_relu(c, c_out, batch_norm), nn.MaxPool2d((kh, kw)))))
        c, h, w = c_out, h // kh, w // kw
    head: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    if dropout > 0:
        head.append(nn.Dropout(dropout))
    head.append(nn.Linear(c, embedding_dim))
    stages.append(("embedding", nn.Sequential(*head)))
    return BottomModel(stages, embedding_dim, _mask_shape(in_shape))


def mirage_bottom(in_shape: tuple[int, int, int], embedding_dim: int = 256) -> BottomModel:
    """The bottom of the Mirage paper (arXiv 2605.20282), which it calls "ResNet18".

    ``[conv3x3(64)-BN-ReLU x2, maxpool2] [conv(128)-BN-ReLU x2, maxpool2] [conv(256)-BN-ReLU x2]``
    then global average pooling to a 256-d embedding. Stages are named ``block1``..``block3``
    (the 64, 128 and 256 channel blocks the paper probes layer by layer) and ``embedding``.
    ``embedding_dim`` other than 256 adds a linear projection.
    """
    c, h, w = in_shape
    kh, kw = _pool_kernel(h, w)
    block1 = nn.Sequential(*_conv_bn_relu(c, 64, True), *_conv_bn_relu(64, 64, True), nn.MaxPool2d((kh, kw)))
    h, w = h // kh, w // kw
    kh, kw = _pool_kernel(h, w)
    block2 = nn.Sequential(*_conv_bn_relu(64, 128, True), *_conv_bn_relu(128, 128, True), nn.MaxPool2d((kh, kw)))
    block3 = nn.Sequential(*_conv_bn_relu(128, 256, True), *_conv_bn_relu(256, 256, True))
    head: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    if embedding_dim != 256:
        head.append(nn.Linear(256, embedding_dim))
    stages = [("block1", block1), ("block2", block2), ("block3", block3), ("embedding", nn.Sequential(*head))]
    return BottomModel(stages, embedding_dim, _mask_shape(in_shape))
