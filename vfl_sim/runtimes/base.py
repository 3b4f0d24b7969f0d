"""Runtimes: where the parties of an experiment live, behind one interface.

A :class:`Runtime` runs a prepared :class:`~vfl_sim.experiment.Experiment` into a run folder.
Most runtimes only decide where the parties live and how the server reaches them: they
implement :meth:`Runtime.parties`, a context that yields the
:class:`~vfl_sim.transport.Transport` to the parties and stops them afterwards, and inherit
:meth:`Runtime.run`. A runtime that runs the server elsewhere too (Flower's ServerApp)
overrides :meth:`Runtime.run`.

Runtimes are registered by name, as methods and auditors are, and ``runtime:`` in the config
picks one: a built-in name or one that a plugin registers (the name is checked against this
registry once the config's plugins are imported, :func:`check_runtime`). The built-in ones are
imported when first asked for, so Ray and Flower are loaded only by runs that use them::

    @register_runtime("my-cluster")
    class MyCluster(Runtime):
        @contextmanager
        def parties(self, exp):
            ...
            yield transport
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from vfl_sim.config import ExperimentConfig
from vfl_sim.errors import ConfigError
from vfl_sim.experiment import Experiment
from vfl_sim.plugins import import_plugins
from vfl_sim.progress import ProgressReporter
from vfl_sim.registry import Registry
from vfl_sim.runfolder import check_before_start
from vfl_sim.transport import Transport

__all__ = [
    "RUNTIMES",
    "Runtime",
    "available_runtimes",
    "check_runtime",
    "get_runtime",
    "register_runtime",
    "run_experiment",
]


class Runtime:
    """Where the parties of a run live.

    Attributes
    ----------
    name
        The name ``runtime:`` selects it by (set by :func:`register_runtime`).
    drives_parties
        Whether :meth:`parties` gives this process a transport to the parties (benchmarks and
        re-audits need one); False for runtimes whose server runs elsewhere.
    starts_processes
        Whether :meth:`parties` starts processes: the run folder is then checked before they
        start, so a run that would be refused fails fast; in-process runs leave the check to
        :meth:`Experiment.run`, which makes it while holding the run folder's lock.
    """

    name: ClassVar[str] = ""
    drives_parties: ClassVar[bool] = True
    starts_processes: ClassVar[bool] = True

    @contextmanager
    def parties(self, exp: Experiment) -> Iterator[Transport | None]:
        """Start the parties of ``exp`` and yield the transport that reaches them (None: the
        parties are built in this process); stop them when the context ends, also on error."""
        raise NotImplementedError(f"runtime '{self.name}' runs its server elsewhere and gives no transport")
        yield None  # pragma: no cover  (makes this a generator)

    def resolve_out(self, out: Path) -> Path:
        """The run folder as this runtime writes it (absolute where other processes write)."""
        return out

    def run(
        self,
        exp: Experiment,
        out: Path,
        *,
        overwrite: bool = False,
        resume: bool = False,
        progress: ProgressReporter | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Run ``exp`` into the run folder ``out`` and return its report.

        The run folder is checked before any party starts; a completed run that ``resume``
        finds intact is returned as it is, without starting parties.
        """
        out = self.resolve_out(out)
        if resume and (out / "report.json").is_file() and exp.run_folder_damage(out) is None:
            return exp.run(out, progress=progress, resume=True)  # a no-op check: no parties needed
        if self.starts_processes:
            check_before_start(out, overwrite, resume)
        with self.parties(exp) as transport:
            return exp.run(out, progress=progress, overwrite=overwrite, resume=resume, transport=transport)


RUNTIMES: Registry[Runtime] = Registry("runtime", Runtime, hint="register one with @register_runtime")
register_runtime = RUNTIMES.register

# Built-in runtimes by the module that registers them: imported on first use only.
_BUILT_IN = {
    "local": "vfl_sim.runtimes.local",
    "ray": "vfl_sim.runtimes.ray_runtime",
    "flower-sim": "vfl_sim.runtimes.flower_runtime",
    "flower-deploy": "vfl_sim.runtimes.flower_runtime",
}


def unknown_runtime(name: str) -> ConfigError:
    """The one-line error of a ``runtime:`` that names no registered runtime."""
    return ConfigError(
        f"runtime: unknown runtime '{name}'; known: {', '.join(available_runtimes())} "
        "(a plugin adds one with @register_runtime)"
    )


def check_runtime(cfg: ExperimentConfig) -> None:
    """Check that ``cfg.runtime`` names a runtime, after importing ``cfg``'s plugins (which may
    register it); raises :func:`unknown_runtime`'s :class:`ConfigError`. Starts nothing and
    imports no built-in runtime (so Ray or Flower need not be installed to validate)."""
    import_plugins(cfg.plugins)
    if cfg.runtime not in available_runtimes():
        raise unknown_runtime(cfg.runtime)


def get_runtime(name: str) -> Runtime:
    """The runtime registered as ``name`` (a built-in one is imported first); an unknown name
    is :func:`unknown_runtime`'s :class:`ConfigError`."""
    if name not in available_runtimes():
        raise unknown_runtime(name)
    if name in _BUILT_IN and name not in RUNTIMES.names():
        try:
            importlib.import_module(_BUILT_IN[name])
        except ImportError as exc:
            raise ConfigError(f"runtime '{name}' cannot start: {exc}") from None
    return RUNTIMES.get(name)()


def available_runtimes() -> list[str]:
    """Every runtime name: the built-in ones and those registered by plugins."""
    return sorted({*_BUILT_IN, *RUNTIMES.names()})


def run_experiment(
    exp: Experiment,
    out: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: ProgressReporter | None = None,
    on_line: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run a prepared experiment on the runtime its config names; returns the report.

    Parameters
    ----------
    exp
        From :func:`vfl_sim.experiment.prepare`.
    out
        The run folder.
    overwrite, resume
        Replace a non-empty run folder; finish an interrupted run (a no-op on a complete one).
    progress
        Progress bars of a run whose server runs in this process.
    on_line
        Receives the log lines of a server that runs elsewhere (Flower's ServerApp).
    """
    runtime = get_runtime(exp.cfg.runtime)
    return runtime.run(exp, Path(out), overwrite=overwrite, resume=resume, progress=progress, on_line=on_line)
