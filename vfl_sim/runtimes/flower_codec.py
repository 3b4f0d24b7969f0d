"""Protocol messages as Flower records (flwr 1.41 Message API).

Each request becomes the content (a ``RecordDict``) and message type of one Flower
``Message``; each reply becomes the content of the reply. Tensors travel in an ``ArrayRecord``,
flags and operation arguments in a ``ConfigRecord`` (arguments as one JSON string, since
``ConfigRecord`` values are flat scalars; a ``Backward``'s ``local_steps`` is the integer key
``local_steps`` of its config). Message types follow Flower's routing:
``query.embed`` for embeddings, ``train.backward`` for gradients, ``train.local_op`` for
party-side operations.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from vfl_sim.protocol import Ack, Backward, Embed, EmbedReply, LocalOp, Reply, Request

EMBED, BACKWARD, LOCAL_OP = "query.embed", "train.backward", "train.local_op"
_LAYER = "layer/"
_TENSORS = "tensors"  # the ArrayRecord of a LocalOp's or an Ack's tensors


def _array(t: torch.Tensor) -> Array:
    return Array(np.ascontiguousarray(t.detach().cpu().numpy()))


def _tensor(a: Array) -> torch.Tensor:
    return torch.from_numpy(np.array(a.numpy(), copy=True))


def encode_request(request: Request) -> tuple[str, RecordDict]:
    """``(message_type, content)`` of the Flower message that carries ``request``."""
    if isinstance(request, Embed):
        return EMBED, RecordDict(
            {
                "arrays": ArrayRecord({"ids": _array(request.ids)}),
                "config": ConfigRecord({"train": request.train, "layers": request.layers}),
            }
        )
    if isinstance(request, Backward):
        arrays = {"grad": _array(request.grad)}
        config: dict[str, Any] = {
            "step": request.step,
            "then": request.then is not None,
            "local_steps": request.local_steps,
        }
        if request.then is not None:
            arrays["then_ids"] = _array(request.then.ids)
            config.update(then_train=request.then.train, then_layers=request.then.layers)
        return BACKWARD, RecordDict({"arrays": ArrayRecord(arrays), "config": ConfigRecord(config)})
    if isinstance(request, LocalOp):
        content = RecordDict({"config": ConfigRecord({"name": request.name, "args": json.dumps(request.args)})})
        if request.tensors:
            content[_TENSORS] = ArrayRecord({k: _array(t) for k, t in request.tensors.items()})
        return LOCAL_OP, content
    raise TypeError(f"cannot encode {type(request).__name__}")


def decode_request(message_type: str, content: RecordDict) -> Request:
    """The protocol request carried by a Flower message (inverse of :func:`encode_request`)."""
    config = content.config_records["config"]
    if message_type == EMBED:
        ids = _tensor(content.array_records["arrays"]["ids"])
        return Embed(ids, train=bool(config["train"]), layers=bool(config["layers"]))
    if message_type == BACKWARD:
        arrays = content.array_records["arrays"]
        then = None
        if config["then"]:
            then = Embed(
                _tensor(arrays["then_ids"]), train=bool(config["then_train"]), layers=bool(config["then_layers"])
            )
        # A message without the key (written before local updates existed) means one update.
        local_steps = int(str(config["local_steps"])) if "local_steps" in config else 1
        return Backward(_tensor(arrays["grad"]), step=bool(config["step"]), then=then, local_steps=local_steps)
    if message_type == LOCAL_OP:
        return LocalOp(str(config["name"]), json.loads(str(config["args"])), _tensors(content))
    raise ValueError(f"unknown message type '{message_type}'; expected {EMBED}, {BACKWARD} or {LOCAL_OP}")


def encode_reply(reply: Reply) -> RecordDict:
    """The content of the reply message that carries ``reply``."""
    if isinstance(reply, EmbedReply):
        arrays = {"embedding": _array(reply.embedding)}
        arrays.update({_LAYER + name: _array(t) for name, t in (reply.layers or {}).items()})
        return RecordDict({"arrays": ArrayRecord(arrays)})
    content = RecordDict({"config": ConfigRecord({"info": json.dumps(reply.info)})})
    if reply.tensors:
        content[_TENSORS] = ArrayRecord({k: _array(t) for k, t in reply.tensors.items()})
    return content


def decode_reply(content: RecordDict) -> Reply:
    """The protocol reply in a reply message's content (inverse of :func:`encode_reply`)."""
    if "arrays" in content.array_records:
        arrays = content.array_records["arrays"]
        layers = {k[len(_LAYER) :]: _tensor(v) for k, v in arrays.items() if k.startswith(_LAYER)}
        return EmbedReply(_tensor(arrays["embedding"]), layers or None)
    return Ack(json.loads(str(content.config_records["config"]["info"])), _tensors(content))


def _tensors(content: RecordDict) -> dict[str, torch.Tensor]:
    if _TENSORS not in content.array_records:
        return {}
    return {k: _tensor(v) for k, v in content.array_records[_TENSORS].items()}


def content_nbytes(content: RecordDict) -> int:
    """Bytes of a message's content as Flower counts them (``count_bytes`` of every record)."""
    records: list[ArrayRecord | ConfigRecord | MetricRecord] = [
        *content.array_records.values(),
        *content.config_records.values(),
        *content.metric_records.values(),
    ]
    return int(sum(r.count_bytes() for r in records))
