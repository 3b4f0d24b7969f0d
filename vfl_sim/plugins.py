"""User plugins: modules or files whose import registers methods and auditors.

A plugin is named in the config's ``plugins`` list as a module (``my_methods``,
``lab.unlearning``) or as a Python file (``my_methods.py``, ``../shared/audits.py``). Both are
found next to the config file as well as in the working directory: :func:`resolve_plugins`
turns what a config names into what :func:`import_plugins` imports anywhere (a file becomes an
absolute path, so Ray actors and Flower processes started elsewhere import the same file).
Every failure while importing one is a :class:`~vfl_sim.errors.ConfigError` of one line that
names the plugin.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from vfl_sim.errors import ConfigError

__all__ = ["import_plugins", "is_plugin_file", "plugin_module", "resolve_plugins"]


def is_plugin_file(entry: str) -> bool:
    """Whether a ``plugins`` entry names a file (``*.py`` or a path) rather than a module."""
    return entry.endswith(".py") or "/" in entry or os.sep in entry


def _module_file(folder: Path, module: str) -> Path | None:
    """The single-file module ``module`` under ``folder`` (``a.b`` -> ``a/b.py``), if it is there."""
    path = folder.joinpath(*module.split(".")).with_suffix(".py")
    return path if path.is_file() else None


def resolve_plugins(entries: Iterable[str], config_dir: Path | None = None) -> list[str]:
    """The ``plugins`` of a config read from ``config_dir``, as :func:`import_plugins` takes them.

    A file is looked up relative to ``config_dir``, then to the working directory, and becomes
    an absolute path; a missing one is a :class:`ConfigError`. A module that is a single file
    next to the config (and not in the working directory) becomes that file's absolute path;
    other modules stay names (installed packages, or modules in the working directory).
    """
    cwd = Path.cwd()
    folders = [config_dir, cwd] if config_dir is not None and config_dir.resolve() != cwd.resolve() else [cwd]
    resolved: list[str] = []
    for entry in entries:
        if is_plugin_file(entry):
            candidates = (
                [Path(entry).expanduser()] if Path(entry).expanduser().is_absolute() else [f / entry for f in folders]
            )
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                where = " or ".join(str(f) for f in folders)
                raise ConfigError(f"plugins: file '{entry}' not found (looked in {where})")
            resolved.append(str(found.resolve()))
            continue
        if config_dir is not None and _module_file(cwd, entry) is None:
            beside = _module_file(config_dir, entry)
            if beside is not None:
                resolved.append(str(beside.resolve()))
                continue
        resolved.append(entry)
    return resolved


def plugin_module(path: str | Path) -> str:
    """The module name a plugin file is imported as: stable for one file, unique across files."""
    path = Path(path).resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    stem = "".join(c if c.isalnum() else "_" for c in path.stem)
    return f"vfl_sim_plugin_{stem}_{digest}"


def _import_file(path: Path) -> ModuleType:
    name = plugin_module(path)
    if name in sys.modules:  # imported before: its classes are registered already
        return sys.modules[name]
    if not path.is_file():
        raise ConfigError(f"plugins: file '{path}' not found")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"plugins: '{path}' cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before executing it: dataclasses and pickling look it up
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def import_plugins(entries: Iterable[str]) -> None:
    """Import plugin modules and files so that their ``@register_method`` / ``@register_auditor``
    run; each is imported once per process.

    The working directory is importable, as it is for ``python -m``, so a module next to where
    ``vfl-sim`` runs is found. Raises a one-line :class:`ConfigError` naming the plugin for an
    import error, a syntax error, ``sys.exit`` during import, or any exception the plugin raises
    (a name registered twice, an abstract or misdeclared class).
    """
    entries = list(entries)
    if entries and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for entry in entries:
        try:
            if is_plugin_file(entry):
                _import_file(Path(entry).expanduser())
            else:
                importlib.import_module(entry)
        except ConfigError:
            raise
        except ImportError as exc:
            raise ConfigError(f"plugins: cannot import '{entry}': {exc}") from None
        except SyntaxError as exc:
            where = f"{exc.filename}, line {exc.lineno}" if exc.filename else f"line {exc.lineno}"
            raise ConfigError(f"plugins: '{entry}' has a syntax error ({where}): {exc.msg}") from None
        except SystemExit as exc:
            raise ConfigError(f"plugins: '{entry}' called sys.exit({exc.code!r}) while being imported") from None
        except Exception as exc:  # a plugin's own bug, or a name it registers twice
            raise ConfigError(f"plugins: importing '{entry}' failed: {type(exc).__name__}: {exc}") from None
