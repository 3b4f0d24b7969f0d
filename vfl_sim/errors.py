"""Errors that vfl-sim raises for bad input.

Every error here is a user's mistake (a config field, a dataset path, a forget request, a
party count), not a bug. The CLI prints them as one line and exits with code 2; the Python
API lets them propagate so that callers can catch :class:`VflSimError`.
"""

from __future__ import annotations


class VflSimError(Exception):
    """Base class of every input error raised by vfl-sim."""


class ConfigError(VflSimError, ValueError):
    """A configuration field is missing, malformed or inconsistent with another field."""


class DataError(VflSimError, ValueError):
    """A dataset cannot be found or read, or its files are malformed."""


class ForgetRequestError(VflSimError, ValueError):
    """A forget request names classes, samples, parties or features that do not exist."""


class RegistryError(VflSimError, KeyError):
    """A method or auditor name is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class RunFolderError(VflSimError):
    """A run folder cannot be written, is being written by another process, or is damaged
    (a missing or unreadable checkpoint or report)."""


class PluginError(VflSimError):
    """A plugin's code (a method's server side, a party step, a gradient hook) raised while a
    run used it: a broken plugin, named with the method and the plugin's line."""


def os_error_text(exc: OSError) -> str:
    """An ``OSError`` in a few words: its reason and the path it is about."""
    reason = exc.strerror or type(exc).__name__
    return f"{reason}: {exc.filename}" if exc.filename else reason


def error_line(exc: BaseException) -> str:
    """``Type: first line of the message``."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
