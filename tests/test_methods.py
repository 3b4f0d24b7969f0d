"""The coordinator and the first methods: copies of the original, data access, the registry."""

from __future__ import annotations

from typing import get_args, get_origin

import pytest
import torch

from tests.conftest import embedded_ids, record_requests, trained
from vfl_sim.errors import ConfigError, RegistryError
from vfl_sim.experiment import Experiment
from vfl_sim.forget import ORIGINAL
from vfl_sim.methods import (
    MethodParams,
    UnlearningContext,
    UnlearningMethod,
    available_methods,
    build_method,
    get_method,
    register_method,
)
from vfl_sim.methods.registry import METHODS
from vfl_sim.server.coordinator import UnlearningCoordinator
from vfl_sim.server.server import Server


def _trained(exp: Experiment, epochs: int = 1) -> tuple[Server, UnlearningCoordinator]:
    return trained(exp, epochs)


@pytest.mark.parametrize("fixture", ["digits_experiment", "synthetic_experiment"])
def test_retrain_never_touches_forget_data(fixture: str, request: pytest.FixtureRequest) -> None:
    exp: Experiment = request.getfixturevalue(fixture)
    server, coordinator = _trained(exp)
    seen = record_requests(server)
    coordinator.run(build_method("retrain", {"epochs": 1}, exp.forget.kind))
    asked = torch.cat(embedded_ids(seen))
    assert asked.numel() >= exp.forget.retain_ids.numel()
    assert not torch.isin(asked, exp.forget.forget_ids).any()
    assert set(asked.tolist()) == set(exp.forget.retain_ids.tolist())


def test_neggrad_trains_on_forget_data_only(digits_experiment: Experiment) -> None:
    server, coordinator = _trained(digits_experiment)
    seen = record_requests(server)
    coordinator.run(build_method("neggrad", {}, "class"))
    assert set(torch.cat(embedded_ids(seen)).tolist()) == set(digits_experiment.forget.forget_ids.tolist())


@pytest.mark.parametrize("name", ["retrain", "finetune", "neggrad"])
def test_methods_never_mutate_the_original(digits_experiment: Experiment, name: str) -> None:
    server, coordinator = _trained(digits_experiment)
    before = server.digests(ORIGINAL)
    run = coordinator.run(build_method(name, {"epochs": 1}, "class"))
    assert server.digests(ORIGINAL) == before
    assert server.digests(name) != before  # the method did change its own copy
    assert run.runtime_s > 0 and run.comm.total_bytes > 0


def test_retrain_equals_training_from_scratch(digits_experiment: Experiment) -> None:
    """Retrain is exactly the original recipe on the retained ids, from the original init."""
    exp = digits_experiment
    server, coordinator = _trained(exp)
    method = build_method("retrain", {"epochs": 1}, "class")
    ctx = coordinator.context(method)
    coordinator.run(method, ctx)
    retrained = server.digests("retrain")

    fresh = exp.build_server()
    torch.manual_seed(ctx.seed)
    fresh.train_epochs(
        exp.forget.retain_ids,
        epochs=1,
        batch_size=exp.cfg.train.batch_size,
        optim=exp.cfg.train,
        generator=torch.Generator().manual_seed(ctx.seed),
    )
    assert fresh.digests() == retrained


def test_neggrad_drives_forget_accuracy_down(digits_experiment: Experiment) -> None:
    server, coordinator = _trained(digits_experiment)
    forget = digits_experiment.forget.forget_ids
    before = (server.predict(forget) == server.labels[forget]).float().mean()
    coordinator.run(build_method("neggrad", {"epochs": 3, "lr": 0.01}, "class"))
    after = (server.predict(forget) == server.labels[forget]).float().mean()
    assert before > 0.5 and after < before / 2


def test_user_method_registers_and_runs(digits_experiment: Experiment) -> None:
    class ScaleParams(MethodParams):
        factor: float = 0.5

    @register_method("test_scale_top")
    class ScaleTop(UnlearningMethod):
        """Multiplies the top model's weights (a classifier-only edit)."""

        Params = ScaleParams
        supports = frozenset({"class"})

        def unlearn(self, ctx: UnlearningContext) -> None:
            with torch.no_grad():
                for p in ctx.server.top.parameters():
                    p.mul_(self.params.factor)

    try:
        server, coordinator = _trained(digits_experiment)
        coordinator.run(build_method("test_scale_top", {"factor": 0.0}, "class"))
        server.load_state("test_scale_top")
        assert all((p == 0).all() for p in server.top.parameters())
        with pytest.raises(ConfigError, match="does not support forget requests of kind 'samples'"):
            build_method("test_scale_top", {}, "samples")
        with pytest.raises(
            ConfigError, match=r"methods.test_scale_top.params.bogus: unknown parameter; allowed: factor"
        ):
            build_method("test_scale_top", {"bogus": 1}, "class")
    finally:
        METHODS.unregister("test_scale_top")


def test_unknown_method_lists_available() -> None:
    with pytest.raises(
        RegistryError,
        match=r"unknown unlearning method 'nope'; available: (\w+, )*finetune, (\w+, )*neggrad, (\w+, )*retrain",
    ):
        build_method("nope", {}, "class")


def test_bad_method_params() -> None:
    with pytest.raises(ConfigError, match=r"methods.finetune.params.lr"):
        build_method("finetune", {"lr": -1}, "class")


class _Factor(MethodParams):
    factor: float = 0.5


class _Sub(_Factor):
    extra: int = 1


def test_the_params_class_comes_from_the_generic_argument() -> None:
    class Typed(UnlearningMethod[_Factor]):
        def unlearn(self, ctx: UnlearningContext) -> None:
            pass

    class Narrower(Typed):  # a subclass may narrow Params explicitly; its own subclasses keep it
        Params = _Sub

    class Inherits(Narrower):
        pass

    assert Typed.Params is _Factor and isinstance(Typed().params, _Factor)
    assert Typed(_Factor(factor=0.25)).params.factor == 0.25
    assert Narrower.Params is _Sub and Inherits.Params is _Sub and isinstance(Inherits().params, _Sub)


def test_a_params_class_that_contradicts_the_generic_argument_is_refused() -> None:
    class Other(MethodParams):
        pass

    with pytest.raises(TypeError, match=r"Params is Other, but the class is an UnlearningMethod\[_Factor\]"):

        class Wrong(UnlearningMethod[_Factor]):
            Params = Other

            def unlearn(self, ctx: UnlearningContext) -> None:
                pass


def test_every_built_in_method_declares_its_params_as_the_generic_argument() -> None:
    # the base types self.params from the argument, so no method needs an isinstance assert
    for name in available_methods():
        method = get_method(name)
        if method.__module__.startswith("vfl_sim.methods."):
            declared = [get_args(b) for b in method.__orig_bases__ if get_origin(b) is UnlearningMethod]
            assert declared == [(method.Params,)], name
