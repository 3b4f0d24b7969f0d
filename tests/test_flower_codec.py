"""Protocol messages survive the trip through Flower records unchanged."""

from __future__ import annotations

import pytest
import torch

from vfl_sim.protocol import Ack, Backward, Embed, EmbedReply, LocalOp, tensor_nbytes
from vfl_sim.runtimes.flower_codec import (
    BACKWARD,
    EMBED,
    LOCAL_OP,
    content_nbytes,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
)


def _roundtrip(request):
    kind, content = encode_request(request)
    return kind, decode_request(kind, content), content


def test_embed_roundtrip() -> None:
    kind, out, content = _roundtrip(Embed(torch.tensor([5, 1, 9]), train=False, layers=True))
    assert kind == EMBED
    assert isinstance(out, Embed) and torch.equal(out.ids, torch.tensor([5, 1, 9]))
    assert out.ids.dtype == torch.int64 and out.train is False and out.layers is True
    assert content_nbytes(content) >= 3 * 8


@pytest.mark.parametrize("then", [None, Embed(torch.arange(4), train=True)])
def test_backward_roundtrip(then) -> None:
    grad = torch.randn(4, 7)
    kind, out, _ = _roundtrip(Backward(grad, step=False, then=then))
    assert kind == BACKWARD and isinstance(out, Backward)
    assert torch.equal(out.grad, grad) and out.grad.dtype == torch.float32 and out.step is False
    if then is None:
        assert out.then is None
    else:
        assert out.then is not None and torch.equal(out.then.ids, then.ids) and out.then.train


def test_local_op_roundtrip_keeps_nested_args() -> None:
    args = {"optim": {"optimizer": "sgd", "lr": 0.01}, "total_steps": 12, "name": None}
    kind, out, _ = _roundtrip(LocalOp("configure", args))
    assert kind == LOCAL_OP and out == LocalOp("configure", args)


def test_replies_roundtrip() -> None:
    emb, layer = torch.randn(3, 5), torch.randn(3, 2)
    out = decode_reply(encode_reply(EmbedReply(emb, {"conv1": layer})))
    assert isinstance(out, EmbedReply) and torch.equal(out.embedding, emb)
    assert out.layers is not None and torch.equal(out.layers["conv1"], layer)
    assert decode_reply(encode_reply(EmbedReply(emb))).layers is None
    assert decode_reply(encode_reply(Ack({"sha256": "ab", "bytes": 3}))) == Ack({"sha256": "ab", "bytes": 3})


def test_decoded_tensors_are_writable_copies() -> None:
    _, out, content = _roundtrip(Embed(torch.arange(3)))
    out.ids[0] = 42  # must not write into the record's buffer
    assert decode_request(EMBED, content).ids[0] == 0


def test_unknown_message_type() -> None:
    _, content = encode_request(Embed(torch.arange(2)))
    with pytest.raises(ValueError, match="unknown message type 'query.nope'"):
        decode_request("query.nope", content)


def test_local_op_and_ack_carry_tensors() -> None:
    grad, ids = torch.randn(4, 3), torch.arange(4)
    kind, out, content = _roundtrip(LocalOp("attack", {"eps": 0.1}, {"grad": grad, "ids": ids}))
    assert kind == LOCAL_OP and isinstance(out, LocalOp) and out.args == {"eps": 0.1}
    assert torch.equal(out.tensors["grad"], grad) and torch.equal(out.tensors["ids"], ids)
    # Flower counts the tensors' bytes as the protocol does.
    assert content_nbytes(content) >= tensor_nbytes(grad) + tensor_nbytes(ids)
    reply = decode_reply(encode_reply(Ack({"n": 4}, {"embedding": grad})))
    assert isinstance(reply, Ack) and reply.info == {"n": 4} and torch.equal(reply.tensors["embedding"], grad)
    assert LocalOp("a", {}, {"g": grad}).nbytes() == LocalOp("a").nbytes() + 1 + tensor_nbytes(grad)


def test_local_op_refuses_a_name_given_twice() -> None:
    with pytest.raises(ValueError, match=r"\['x'\] given both"):
        LocalOp("op", {"x": 1}, {"x": torch.zeros(1)})
