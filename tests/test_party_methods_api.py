"""What methods build on at the party: tensors in LocalOps, gradient hooks, method buffers."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import torch

from tests.conftest import small_config
from vfl_sim.experiment import prepare
from vfl_sim.parties.build import build_party
from vfl_sim.parties.party import Party, PartyFunction, grad_hook, party_op
from vfl_sim.protocol import Ack, Backward, Embed, LocalOp


@party_op("test_scale_embedding")
def _scale_embedding(party: Party, ids: torch.Tensor, factor: float) -> dict[str, Any]:
    party._set_mode(False)
    with torch.no_grad():
        out = party.bottom(party.features.index_select(0, ids))
    return {"n": int(ids.numel()), "embedding": out * factor}


@grad_hook("test_sq_grads")
def _sq_grads(party: Party, stepping: bool, scale: float = 1.0) -> None:
    for name, p in party.bottom.named_parameters():
        if p.grad is not None:
            acc = party.buffers.get(name, torch.zeros_like(p))
            party.buffers[name] = acc + scale * p.grad.detach() ** 2
    if not stepping:
        for p in party.bottom.parameters():
            p.grad = None


def _party() -> Party:
    exp = prepare(small_config())
    s = exp.slices[0]
    return build_party(exp.cfg, s.party_id, torch.from_numpy(s.take(exp.dataset.features)), torch.device("cpu"))


def test_party_op_gets_tensors_and_returns_them_in_the_ack() -> None:
    party = _party()
    ids = torch.arange(5)
    reply = party.handle(LocalOp("test_scale_embedding", {"factor": 2.0}, {"ids": ids}))
    assert isinstance(reply, Ack) and reply.info == {"n": 5}
    plain = party.handle(Embed(ids, train=False))
    assert torch.allclose(reply.tensors["embedding"], 2 * plain.embedding)  # type: ignore[union-attr]


def test_grad_hook_runs_after_every_backward_and_its_buffers_travel_with_the_state() -> None:
    party = _party()
    optim = {"optimizer": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "schedule": "constant"}
    party.handle(LocalOp("configure", {"optim": optim, "grad_hook": "test_sq_grads", "hook_args": {"scale": 0.5}}))
    before = {k: v.detach().clone() for k, v in party.bottom.named_parameters()}
    grads = []
    for t in range(2):
        party.handle(Embed(torch.arange(8) + 8 * t, train=True))
        g = torch.randn(8, party.bottom.embedding_dim)
        grads.append(g)
        party.handle(Backward(g, step=False))
    # step=False: the hook saw the gradients (and cleared them); no parameter was updated.
    assert all(torch.equal(v, dict(party.bottom.named_parameters())[k]) for k, v in before.items())
    assert set(party.buffers) == {n for n, _ in party.bottom.named_parameters()}
    expected = torch.zeros_like(party.bottom.stages[-1][-1].weight)
    for t, g in enumerate(grads):
        x = party.features.index_select(0, torch.arange(8) + 8 * t)
        party.bottom.zero_grad()
        party.bottom.train()
        party.bottom(x).backward(g)
        expected += 0.5 * party.bottom.stages[-1][-1].weight.grad ** 2
    name = next(n for n, p in party.bottom.named_parameters() if p is party.bottom.stages[-1][-1].weight)
    assert torch.allclose(party.buffers[name], expected, atol=1e-6)

    tensors, meta = party.export_state()
    other = _party()
    other.import_state(tensors, meta)
    assert other.buffers.keys() == party.buffers.keys()
    assert all(torch.equal(other.buffers[k], party.buffers[k]) for k in party.buffers)
    assert other.phase is not None and other.phase["grad_hook"] == "test_sq_grads"
    party.handle(LocalOp("clear_buffers"))
    assert party.buffers == {}


def test_unknown_grad_hook_is_refused_at_configure() -> None:
    import pytest

    with pytest.raises(KeyError, match="unknown gradient hook 'nope'"):
        _party().handle(LocalOp("configure", {"optim": {}, "grad_hook": "nope"}))


def test_a_registered_step_carries_its_name_and_calls_through() -> None:
    assert isinstance(_scale_embedding, PartyFunction) and _scale_embedding.name == "test_scale_embedding"
    assert isinstance(_sq_grads, PartyFunction) and _sq_grads.name == "test_sq_grads"
    party = _party()
    direct = _scale_embedding(party, torch.arange(3), 3.0)
    assert direct is not None and direct["n"] == 3
    import pytest

    with pytest.raises(ValueError, match="party operation 'test_scale_embedding' is already registered"):
        party_op("test_scale_embedding")(lambda party: None)


METHODS_DIR = Path(__file__).resolve().parent.parent / "vfl_sim" / "methods"


def test_the_methods_call_their_party_steps_by_the_step_never_by_a_repeated_string() -> None:
    # The name is written once, in @party_op / @grad_hook; the server side uses `step.name`.
    literal = []
    for path in sorted(METHODS_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            # server.party_op(...) / server.party_call(...) / LocalOp(...), not the @party_op(...) itself
            by_name = (isinstance(node.func, ast.Attribute) and node.func.attr in ("party_op", "party_call")) or (
                isinstance(node.func, ast.Name) and node.func.id == "LocalOp"
            )
            named = node.args[0] if by_name and node.args else None
            hook = next((k.value for k in node.keywords if k.arg == "party_hook"), None)
            if isinstance(hook, ast.Tuple) and hook.elts:
                named = hook.elts[0]
            if isinstance(named, ast.Constant) and isinstance(named.value, str):
                literal.append(f"{path.name}:{node.lineno}: {named.value!r}")
    assert literal == []
