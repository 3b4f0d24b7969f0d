"""Defenses of the training messages (``train.defense``, :mod:`vfl_sim.defenses`).

Known answers: clipped rows have the clip's norm at most, sparsified rows the asked share of
zeros, the closed-form privacy bound is the minimum over RDP orders, what the parties see in a
defended phase is defended (and only in training), a party rebuilt for every message trains to
the same weights as a resident one under every defense, and a run without a defense is the run
it always was.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pytest
import torch

from tests.conftest import small_config
from tests.test_flower_state import _servers
from vfl_sim.config import OptimConfig, TrainConfig, config_from_dict
from vfl_sim.defenses import (
    clip_rows,
    defend,
    gaussian_epsilon,
    gaussian_epsilon_numeric,
    sparsify_rows,
)
from vfl_sim.errors import ConfigError
from vfl_sim.experiment import prepare
from vfl_sim.experiment.reporting import describe_defense
from vfl_sim.models.zoo import build_bottom, build_top
from vfl_sim.parties.party import Party
from vfl_sim.protocol import Backward, EmbedReply, LocalOp, Reply, Request
from vfl_sim.server.server import Server
from vfl_sim.transport import LocalTransport

# -- the functions -----------------------------------------------------------------------------


def test_clip_rows_bounds_every_row_and_keeps_short_ones() -> None:
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    out = clip_rows(x, 1.0)
    assert torch.allclose(out[0], torch.tensor([0.6, 0.8]))
    assert torch.equal(out[1], x[1]) and torch.equal(out[2], x[2])
    images = torch.randn(5, 3, 4, 4) * 10
    assert (clip_rows(images, 2.0).reshape(5, -1).norm(dim=1) <= 2.0 + 1e-5).all()


def test_sparsify_rows_zeroes_the_smallest_share_of_each_row() -> None:
    x = torch.tensor([[1.0, -5.0, 0.5, 3.0], [-2.0, 0.1, 4.0, -0.2]])
    out = sparsify_rows(x, 0.5)
    assert torch.equal(out, torch.tensor([[0.0, -5.0, 0.0, 3.0], [-2.0, 0.0, 4.0, 0.0]]))
    assert torch.equal(sparsify_rows(x, 0.1), x)  # less than one entry per row: nothing to drop


def test_defend_noise_is_seeded_and_scaled_by_the_clip() -> None:
    x = torch.zeros(2000, 8)
    a = defend(x, clip=2.0, noise=0.5, generator=torch.Generator().manual_seed(1))
    b = defend(x, clip=2.0, noise=0.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert abs(float(a.std()) - 1.0) < 0.03  # std = noise * clip
    assert torch.equal(defend(x), x)


@pytest.mark.parametrize(("sigma", "releases", "delta"), [(2.0, 1, 1e-5), (1.0, 30, 1e-5), (8.0, 100, 1e-6)])
def test_the_closed_form_bound_is_the_minimum_over_orders(sigma: float, releases: int, delta: float) -> None:
    closed = gaussian_epsilon(sigma, 1.0, releases, delta)
    numeric = gaussian_epsilon_numeric(sigma, 1.0, releases, delta)
    assert closed is not None and numeric is not None
    assert closed == pytest.approx(numeric, rel=1e-4)


def test_the_bound_by_hand_and_where_none_holds() -> None:
    # sigma = 2 is z = 1 under replace-one neighbours: eps = 1/2 + sqrt(2 log(1/delta)).
    assert gaussian_epsilon(2.0, 1.0, 1, 1e-5) == pytest.approx(0.5 + math.sqrt(2 * math.log(1e5)))
    assert gaussian_epsilon(4.0, 1.0, 10, 1e-5) < gaussian_epsilon(2.0, 1.0, 10, 1e-5)  # type: ignore[operator]
    assert gaussian_epsilon(2.0, 1.0, 20, 1e-5) > gaussian_epsilon(2.0, 1.0, 10, 1e-5)  # type: ignore[operator]
    assert gaussian_epsilon(0.0, 1.0, 10, 1e-5) is None  # no noise
    assert gaussian_epsilon(1.0, None, 10, 1e-5) is None  # no clip: unbounded sensitivity


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("train.defense.gradient_sparsity=1.0", "gradient_sparsity"),
        ("train.defense.embedding_noise=-1", "embedding_noise"),
        ("train.defense.gradient_clip=0", "gradient_clip"),
        ("train.defense.delta=1", "delta"),
        ("train.defense.noise=1", "noise"),
    ],
)
def test_bad_defense_settings_are_refused_by_name(override: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        config_from_dict({}, [override])


def test_the_report_section() -> None:
    train = TrainConfig(epochs=10, defense={"gradient_clip": 1.0, "gradient_noise": 2.0, "embedding_noise": 0.3})
    section = describe_defense(train)
    assert section["gradients_defended"] and section["embeddings_defended"]
    assert section["releases_per_sample"] == 10
    assert section["epsilon"]["gradients"] == pytest.approx(gaussian_epsilon(2.0, 1.0, 10, 1e-5))
    assert section["epsilon"]["embeddings"] is None  # noise without a clip: no bound claimed
    assert describe_defense(TrainConfig())["epsilon"] == {"embeddings": None, "gradients": None}


# -- in the protocol ---------------------------------------------------------------------------


class RecordingTransport(LocalTransport):
    """A local transport that keeps every request and reply."""

    def __init__(self, parties: Mapping[str, Party]) -> None:
        super().__init__(dict(parties))
        self.log: list[tuple[str, Request, Reply]] = []

    def _exchange(self, requests: Mapping[str, Request]) -> dict[str, Reply]:
        replies = super()._exchange(requests)
        self.log.extend((pid, requests[pid], replies[pid]) for pid in requests)
        return replies


def _recording_server(cfg) -> tuple[Server, RecordingTransport]:  # type: ignore[no-untyped-def]
    exp = prepare(cfg)
    parties = {}
    for k, part in enumerate(exp.slices):
        view = torch.from_numpy(part.take(exp.dataset.features))
        parties[part.party_id] = Party(part.party_id, view, build_bottom(cfg.model, tuple(view.shape[1:])), init_seed=k)
    transport = RecordingTransport(parties)
    torch.manual_seed(0)
    top = build_top(cfg.model, [cfg.model.embedding_dim] * len(parties), exp.dataset.num_classes)
    return Server(torch.from_numpy(exp.dataset.labels), top, transport), transport


def _train(server: Server, optim: OptimConfig, n: int = 256) -> None:
    server.train_epochs(
        torch.arange(n), epochs=1, batch_size=64, optim=optim, generator=torch.Generator().manual_seed(3)
    )


def test_parties_receive_clipped_and_sparsified_gradients() -> None:
    cfg = small_config(train={"defense": {"gradient_clip": 0.05, "gradient_sparsity": 0.5}})
    server, transport = _recording_server(cfg)
    _train(server, cfg.train)
    grads = [req.grad for _, req, _ in transport.log if isinstance(req, Backward)]
    assert len(grads) == 2 * 4
    for grad in grads:
        per_sample = grad * grad.shape[0]
        assert (per_sample.norm(dim=1) <= 0.05 + 1e-6).all()
        assert ((grad == 0).sum(dim=1) >= grad.shape[1] // 2).all()


def test_parties_send_clipped_noisy_embeddings_in_training_only() -> None:
    cfg = small_config(train={"defense": {"embedding_clip": 0.5}})
    server, transport = _recording_server(cfg)
    _train(server, cfg.train)
    sent = [rep.embedding for _, req, rep in transport.log if isinstance(rep, EmbedReply)]
    assert sent and all((e.norm(dim=1) <= 0.5 + 1e-5).all() for e in sent)
    # Inference is not defended: the server's own view of the parties is the clean one.
    embeddings, _ = server.embed(torch.arange(64))
    assert max(float(e.norm(dim=1).max()) for e in embeddings) > 0.5

    noisy = small_config(train={"defense": {"embedding_clip": 0.5, "embedding_noise": 1.0}})
    server, transport = _recording_server(noisy)
    _train(server, noisy.train, n=64)
    first = next(rep.embedding for _, _, rep in transport.log if isinstance(rep, EmbedReply))
    assert float(first.detach().norm(dim=1).min()) > 0.5  # noise of std 0.5 per entry on top of the clipped rows


@pytest.mark.parametrize(
    "defense",
    [
        {"embedding_clip": 0.5, "embedding_noise": 0.2},
        {"gradient_clip": 0.1, "gradient_noise": 0.3, "gradient_sparsity": 0.25},
    ],
    ids=["embeddings", "gradients"],
)
def test_a_rebuilt_party_trains_like_a_resident_one_under_a_defense(defense: dict[str, float]) -> None:
    cfg = small_config(train={"defense": defense})
    digests = []
    for server in _servers(cfg):
        torch.manual_seed(1)
        _train(server, cfg.train, n=384)
        digests.append(server.digests())
    assert digests[0] == digests[1]


def test_without_a_defense_nothing_changes() -> None:
    """The default defense sends nothing new and draws nothing: the same weights as a phase
    whose optimizer settings carry no defense at all."""
    cfg = small_config()
    digests = []
    for optim in (cfg.train, OptimConfig.model_validate(cfg.train.model_dump(include=set(OptimConfig.model_fields)))):
        server, transport = _recording_server(cfg)
        _train(server, optim)
        configures = [req for _, req, _ in transport.log if isinstance(req, LocalOp) and req.name == "configure"]
        assert configures and all("defense" not in req.args for req in configures)
        digests.append(server.digests())
    assert digests[0] == digests[1]
    defended = small_config(train={"defense": {"gradient_clip": 1.0, "gradient_noise": 0.5}})
    server, _ = _recording_server(defended)
    _train(server, defended.train)
    assert server.digests() != digests[0]


def test_a_defended_run_reports_its_bound(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from vfl_sim import api

    run = api.run(
        small_config(
            train={"epochs": 2, "defense": {"gradient_clip": 1.0, "gradient_noise": 1.0}}, methods=["retrain"]
        ),
        out=tmp_path / "run",
    )
    section = run.report["defense"]
    assert section["gradients_defended"] and not section["embeddings_defended"]
    assert section["epsilon"]["gradients"] == pytest.approx(gaussian_epsilon(1.0, 1.0, 2, 1e-5))
    assert {"original", "retrain"} <= set(run.report["models"])
