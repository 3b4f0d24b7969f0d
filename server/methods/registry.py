"""The method registry: names in YAML ``methods:`` map to registered classes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import ValidationError

from server.methods.base import UnlearningMethod
from vfl_sim.errors import ConfigError, RegistryError

M = TypeVar("M", bound=type[UnlearningMethod])
_METHODS: dict[str, type[UnlearningMethod]] = {}


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: make an :class:`UnlearningMethod` subclass available as ``name``."""

    def wrap(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, UnlearningMethod)):
            raise TypeError(f"@register_method('{name}') needs a subclass of UnlearningMethod")
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"an unlearning method named '{name}' is already registered")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return wrap


def available_methods() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> type[UnlearningMethod]:
    try:
        return _METHODS[name]
    except KeyError:
        raise RegistryError(
            f"unknown unlearning method '{name}'; available: {', '.join(available_methods())} "
            "(add your own with @register_method and list its module under plugins)"
        ) from None


def build_method(name: str, params: dict[str, Any], request_kind: str) -> UnlearningMethod:
    """Instantiate method ``name`` with validated ``params`` for a request of ``request_kind``."""
    cls = get_method(name)
    if request_kind not in cls.supports:
        raise ConfigError(
            f"method '{name}' does not support forget requests of kind '{request_kind}' "
            f"(it supports: {', '.join(sorted(cls.supports))})"
        )
    try:
        return cls(cls.Params.model_validate(params))
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        allowed = ", ".join(sorted(cls.Params.model_fields))
        msg = first["msg"]
        if first["type"] == "extra_forbidden":
            msg = f"unknown parameter; allowed: {allowed}"
        raise ConfigError(f"methods.{name}.params.{field}: {msg}") from None
