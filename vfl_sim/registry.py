"""Name-to-class registries, for unlearning methods and auditors selected by name in YAML."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Generic, TypeVar

from vfl_sim.errors import RegistryError

T = TypeVar("T")
C = TypeVar("C", bound=type)


class Registry(Generic[T]):
    """Classes deriving from ``base``, registered under unique names.

    Parameters
    ----------
    kind
        What the entries are, for messages ("unlearning method", "auditor").
    base
        The class every entry must derive from.
    hint
        Appended to the unknown-name error (how to add one).
    """

    def __init__(self, kind: str, base: type, hint: str = "") -> None:
        self.kind = kind
        self.base = base
        self.hint = hint
        self._entries: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[C], C]:
        """Class decorator: register the class as ``name`` and set its ``name`` attribute."""

        def wrap(cls: C) -> C:
            if not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"registering '{name}' needs a subclass of {self.base.__name__}")
            if inspect.isabstract(cls):  # it would fail only when a run builds it
                missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
                raise TypeError(f"{self.kind} '{name}' ({cls.__name__}) does not implement {missing}")
            if name in self._entries and self._entries[name] is not cls:
                raise ValueError(f"an {self.kind} named '{name}' is already registered")
            cls.name = name  # type: ignore[attr-defined]
            self._entries[name] = cls  # type: ignore[assignment]  # checked against base above
            return cls

        return wrap

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> type[T]:
        try:
            return self._entries[name]
        except KeyError:
            hint = f" ({self.hint})" if self.hint else ""
            raise RegistryError(f"unknown {self.kind} '{name}'; available: {', '.join(self.names())}{hint}") from None
