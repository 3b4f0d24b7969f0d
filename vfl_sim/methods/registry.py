"""The method registry: names in YAML ``methods:`` map to registered classes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import ValidationError

from vfl_sim.errors import ConfigError
from vfl_sim.registry import Registry
from vfl_sim.server.unlearning import UnlearningMethod

M = TypeVar("M", bound=type[UnlearningMethod[Any]])
METHODS: Registry[UnlearningMethod[Any]] = Registry(
    "unlearning method",
    UnlearningMethod,
    "add your own with @register_method and list its module under plugins",
)


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: make an :class:`UnlearningMethod` subclass available as ``name``."""
    return METHODS.register(name)


def available_methods() -> list[str]:
    return METHODS.names()


def get_method(name: str) -> type[UnlearningMethod[Any]]:
    return METHODS.get(name)


def build_method(
    name: str, params: dict[str, Any], request_kind: str, label: str | None = None
) -> UnlearningMethod[Any]:
    """Instantiate method ``name`` with validated ``params`` for a request of ``request_kind``
    (its model called ``label``, by default ``name``)."""
    cls = get_method(name)
    if request_kind not in cls.supports:
        raise ConfigError(
            f"method '{name}' does not support forget requests of kind '{request_kind}' "
            f"(it supports: {', '.join(sorted(cls.supports))})"
        )
    try:
        return cls(cls.Params.model_validate(params), label=label)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        allowed = ", ".join(sorted(cls.Params.model_fields))
        msg = first["msg"]
        if first["type"] == "extra_forbidden":
            msg = f"unknown parameter; allowed: {allowed}"
        raise ConfigError(f"methods.{name}.params.{field}: {msg}") from None
