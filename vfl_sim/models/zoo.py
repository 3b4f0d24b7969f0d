"""Build bottom and top models from the model config and the shapes of the party views."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import wraps
from typing import ParamSpec, TypeVar

import numpy as np
import torch

from vfl_sim.config import ModelConfig
from vfl_sim.errors import ConfigError
from vfl_sim.models.bottoms import BottomModel, cnn_bottom, mirage_bottom, mlp_bottom
from vfl_sim.models.top import TopModel, fused_dim

_P = ParamSpec("_P")
_M = TypeVar("_M")


def _keeps_global_rng(build: Callable[_P, _M]) -> Callable[_P, _M]:
    """Building a module draws default initializations from the process's random stream; every
    model here is re-initialized from its own seed, so construction must not move that stream.
    Otherwise the server's dropout masks would depend on whether the parties were built in the
    same process (local runtime) or elsewhere (Flower, Ray)."""

    @wraps(build)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _M:
        with torch.random.fork_rng(devices=[]):
            return build(*args, **kwargs)

    return wrapper


def resolve_bottom_kind(cfg: ModelConfig, party_shape: tuple[int, ...]) -> str:
    if cfg.bottom != "auto":
        return cfg.bottom
    return "cnn" if len(party_shape) == 3 else "mlp"


@_keeps_global_rng
def build_bottom(cfg: ModelConfig, party_shape: tuple[int, ...]) -> BottomModel:
    """The bottom model for one party whose samples have shape ``party_shape``.

    Parameters
    ----------
    cfg
        The model config. ``mlp`` fits any party (an image strip ``(C, H, W)`` is flattened after
        its per-column input mask); ``cnn`` and ``mirage`` need image strips. ``bottom_dropout``
        is used by ``mlp`` (after every hidden layer) and ``cnn`` (before the embedding's
        ``Linear``); the ``mirage`` preset has no bottom dropout and ignores it.
    party_shape
        Shape of one sample of the party's view.

    Returns
    -------
    BottomModel
        The freshly initialized bottom model (building it leaves the global random stream alone).

    Raises
    ------
    ConfigError
        ``cnn`` or ``mirage`` on a party with flat columns.
    """
    kind = resolve_bottom_kind(cfg, party_shape)
    if kind in ("cnn", "mirage"):
        if len(party_shape) != 3:
            raise ConfigError(
                f"model.bottom '{kind}' needs image parties (partition.scheme strips); this party holds "
                f"{int(np.prod(party_shape))} flat columns: use model.bottom mlp"
            )
        shape = (party_shape[0], party_shape[1], party_shape[2])
        if kind == "mirage":
            return mirage_bottom(shape, cfg.embedding_dim)
        return cnn_bottom(
            shape, cfg.cnn_channels, cfg.embedding_dim, batch_norm=cfg.batch_norm, dropout=cfg.bottom_dropout
        )
    return mlp_bottom(
        tuple(party_shape),
        cfg.bottom_hidden,
        cfg.embedding_dim,
        batch_norm=cfg.batch_norm,
        dropout=cfg.bottom_dropout,
    )


@_keeps_global_rng
def build_top(cfg: ModelConfig, embedding_dims: Sequence[int], num_classes: int) -> TopModel:
    """The server's top model over the fused embeddings."""
    in_features = fused_dim(embedding_dims, cfg.fusion)
    if cfg.bottom == "mirage" and cfg.top == "mlp":
        return TopModel(
            in_features, num_classes, [512, 256], dropout=0.5, dropout_first_only=True, num_parties=len(embedding_dims)
        )
    hidden = cfg.top_hidden if cfg.top == "mlp" else []
    return TopModel(in_features, num_classes, hidden, dropout=cfg.top_dropout, num_parties=len(embedding_dims))
