"""A party that does not do its part (``parties.<id>.behaviour: ignore_unlearning``): it
acknowledges every unlearning instruction and keeps its pre-unlearning bottom model; the audits
name it and the certificate refuses removal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import small_config, trained
from vfl_sim.config import config_from_dict
from vfl_sim.errors import ConfigError
from vfl_sim.experiment import prepare
from vfl_sim.methods import get_method
from vfl_sim.models.state import state_digest
from vfl_sim.parties.party import Party
from vfl_sim.protocol import LocalOp

LAZY = {"party_1": {"behaviour": "ignore_unlearning"}}


def _digests(server: Any, name: str) -> dict[str, str]:
    return {pid: info["sha256"] for pid, info in server.party_op("digest", name=name).items()}


@pytest.mark.parametrize("method", ["retrain", "finetune", "neggrad"])
def test_the_lazy_party_keeps_its_bottom_and_the_honest_one_does_not(method: str) -> None:
    exp = prepare(small_config(parties=LAZY, methods=[method]))
    server, coordinator = trained(exp)
    coordinator.run(get_method(method)())
    before, after = _digests(server, "original"), _digests(server, method)
    assert after["party_1"] == before["party_1"]
    assert after["party_0"] != before["party_0"]
    # Only the method's own instructions are ignored: afterwards the party steps again.
    server.load_state(method)
    server.train_epochs(
        torch.from_numpy(exp.dataset.train_ids[:64]),
        epochs=1,
        batch_size=64,
        optim=exp.cfg.train,
        generator=torch.Generator().manual_seed(0),
    )
    server.save_state("later")
    assert _digests(server, "later")["party_1"] != before["party_1"]


def test_the_kept_bottom_travels_with_the_party_state() -> None:
    exp = prepare(small_config(parties=LAZY))
    server = exp.build_server()
    party = server.transport.parties["party_1"]  # type: ignore[attr-defined]
    assert isinstance(party, Party) and party.behaviour == "ignore_unlearning"
    # What a Flower ClientApp does between messages: export the party, rebuild it, import.
    party.handle(LocalOp("begin_method", {"seed": 1, "model": "m"}))
    assert party.kept is not None and party.kept_for == "m"
    tensors, meta = party.export_state()
    other = exp.build_server().transport.parties["party_1"]  # type: ignore[attr-defined]
    assert isinstance(other, Party)
    other.import_state(tensors, meta)
    assert other.kept is not None and party.kept is not None
    assert other.kept_for == "m" and state_digest(other.kept) == state_digest(party.kept)
    with torch.no_grad():
        for p in other.bottom.parameters():
            p.add_(1.0)
    other.handle(LocalOp("save_state", {"name": "m"}))
    assert other.kept is None and state_digest(other.states["m"]) == state_digest(party.kept)


def test_the_lazy_party_is_named_and_removal_refused(tmp_path: Path) -> None:
    cfg = small_config(
        train={"epochs": 6},
        methods=["retrain", "finetune"],
        parties=LAZY,
        audit={
            "plots": False,
            "model_completion": {"enabled": True},
            "relearning": {"enabled": False},
            "reference_free": {"enabled": False},
            "calibration": {"retrains": 1},
        },
    )
    report = prepare(cfg).run(tmp_path / "run")
    models = {**report["models"], **report["controls"]}
    rep = models["retrain"]["representation"]["parties"]
    assert rep["party_1"]["same_as_original"] is True and rep["party_0"]["same_as_original"] is False
    assert models["retrain"]["model_completion"]["kept_original_bottom"] == ["party_1"]
    assert models["finetune"]["model_completion"]["parties"]["party_1"]["retrain_kept_original_bottom"] is True
    for name, m in models.items():
        cert = m["certificate"]
        assert not cert["removal"], name
        failed = {c["name"] for c in cert["representation_forgetting"]["checks"] if c["status"] == "fail"}
        assert "bottom_retrained.party_1" in failed, (name, failed)
        assert "bottom_retrained.party_0" not in failed
    retrain = models["retrain"]["certificate"]["representation_forgetting"]["checks"]
    evidence = next(c["evidence"] for c in retrain if c["name"] == "bottom_retrained.party_1")
    assert "party_1 kept the original's bottom model under retrain" in evidence
    assert "party_1 kept the original's bottom" in (tmp_path / "run" / "report.md").read_text()


def test_honest_parties_still_certify_retrain(tmp_path: Path) -> None:
    cfg = small_config(
        train={"epochs": 6},
        methods=["retrain"],
        parties={"party_1": {"behaviour": "honest"}},
        audit={"plots": False, "relearning": {"enabled": False}, "reference_free": {"enabled": False}},
    )
    report = prepare(cfg).run(tmp_path / "run")
    cert = report["models"]["retrain"]["certificate"]
    assert not any(c["name"].startswith("bottom_retrained.") for c in cert["representation_forgetting"]["checks"])
    assert report["models"]["retrain"]["representation"]["parties"]["party_1"]["same_as_original"] is False


def test_bad_party_settings_are_one_line_errors() -> None:
    for raw, match in [
        ({"parties": {"party_1": {"behaviour": "lazy"}}}, "parties.party_1.behaviour"),
        ({"parties": {"party_9": {"behaviour": "ignore_unlearning"}}}, "parties.party_9 is not a party"),
        (
            {"parties": {"party_1": {"behave": "honest"}}},
            "unknown field 'behave' in parties.party_1; allowed: behaviour",
        ),
        ({"parties": ["party_1"]}, "parties"),
    ]:
        with pytest.raises(ConfigError, match=match) as err:
            config_from_dict(raw)
        assert "\n" not in str(err.value)


def test_the_lazy_party_is_named_on_ray(tmp_path: Path) -> None:
    """The behaviour lives in the party object, so a party in a Ray actor ignores unlearning too."""
    pytest.importorskip("ray")
    cfg = small_config(
        runtime="ray",
        data={
            "name": "synthetic",
            "synthetic": {"samples": 240, "features": 8, "classes": 3, "informative_per_party": 2},
        },
        methods=["retrain"],
        parties=LAZY,
        audit={
            "plots": False,
            "relearning": {"enabled": False},
            "reference_free": {"enabled": False},
            "calibration": {"retrains": 0},
        },
    )
    report = prepare(cfg).run(tmp_path / "run")
    assert report["runtime"] == "ray"
    retrain = report["models"]["retrain"]
    assert retrain["representation"]["parties"]["party_1"]["same_as_original"] is True
    assert retrain["representation"]["parties"]["party_0"]["same_as_original"] is False
    failed = {c["name"] for c in retrain["certificate"]["representation_forgetting"]["checks"] if c["status"] == "fail"}
    assert "bottom_retrained.party_1" in failed and not retrain["certificate"]["removal"]
