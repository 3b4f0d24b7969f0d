"""The party's node for ``flower-deploy``: the long-lived ClientApp process
(:mod:`vfl_sim.runtimes.flower_exec`), the SuperNode wrapper (:mod:`vfl_sim.runtimes.flower_node`)
and the waits they cap (:mod:`vfl_sim.runtimes.flower_pace`). Whole runs through them are in
``tests/test_flower_runtime.py``."""

from __future__ import annotations

import functools
import inspect
import io
import subprocess
import sys
import zipfile

import pytest
from flwr.clientapp import ClientApp

from vfl_sim.runtimes import flower_app, flower_exec, flower_node, flower_pace


def _fab(pyproject: str | None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as fab:
        if pyproject is not None:
            fab.writestr("pyproject.toml", pyproject)
        fab.writestr("README.md", "app")
    return buffer.getvalue()


def _components(ref: str) -> str:
    return f'[project]\nname = "x"\n[tool.flwr.app.components]\nclientapp = "{ref}"\n'


def test_the_fabs_clientapp_is_imported_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flower_exec, "_APPS", {})
    app = flower_exec.client_app_of("h1", _fab(_components("vfl_sim.runtimes.flower_app:client_app")))
    assert app is flower_app.client_app and isinstance(app, ClientApp)
    # Cached by the FAB's hash: the same FAB is not read again.
    assert flower_exec.client_app_of("h1", b"not a zip") is app


@pytest.mark.parametrize(
    ("pyproject", "message"),
    [
        (None, "names no clientapp"),
        ("[tool.flwr.app]\npublisher = 'x'\n", "names no clientapp"),
        (_components("no_such_module_here:app"), "cannot import the run's clientapp 'no_such_module_here:app'"),
        (_components("vfl_sim.runtimes.flower_app:no_such_app"), "cannot import"),
        (_components("vfl_sim.runtimes.flower_app:server_app"), "is a ServerApp, not a ClientApp"),
    ],
)
def test_a_fab_without_an_importable_clientapp_is_refused(
    pyproject: str | None, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flower_exec, "_APPS", {})
    with pytest.raises(flower_exec.AppLoadError, match=message):
        flower_exec.client_app_of("h", _fab(pyproject))


def test_the_supernode_waits_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """What flower_pace patches is still in Flower (an upgrade that moves it fails here)."""
    from flwr.superlink.grid import http_grid
    from flwr.supernode import start_client_internal

    source = inspect.getsource(start_client_internal)
    assert "time.sleep(3)" in source and "time.sleep(0.5)" in source and "pull_objects(" in source
    assert "pull_objects(" in inspect.getsource(http_grid)
    for module in (start_client_internal, http_grid):
        monkeypatch.setattr(module, "pull_objects", module.pull_objects)
    monkeypatch.setattr(start_client_internal, "time", start_client_internal.time)

    flower_pace.pace_supernode(0.01)
    flower_pace.pace_supernode(0.01)  # twice: still one layer
    flower_pace.pace_grid()
    paced = start_client_internal.time
    assert isinstance(paced, flower_pace._PacedTime) and paced._cap == 0.01
    assert paced.monotonic is not None  # everything but sleep is the time module's
    for module in (start_client_internal, http_grid):
        pull = module.pull_objects
        assert isinstance(pull, functools.partial) and not isinstance(pull.func, functools.partial)
        assert pull.keywords == {
            "initial_backoff": flower_pace.PULL_BACKOFF,
            "backoff_cap": flower_pace.PULL_BACKOFF_CAP,
        }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--isolation", "subprocess"], "--isolation is always 'process'"),
        (["--host", "0.0.0.0"], "--host 127.0.0.1"),
        (["--poll-interval", "0"], "--poll-interval must be > 0"),
    ],
)
def test_node_arguments_it_cannot_honour_are_refused(args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vfl_sim.runtimes.flower_node", "--superlink", "127.0.0.1:9", "--insecure", *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]  # one line
    assert message in done.stderr


def test_node_passes_flowers_own_arguments_through() -> None:
    ours, flower = flower_node._split_args(
        ["--superlink", "x:1", "--node-config", "partition-id=0", "--port", "9094", "--insecure"]
    )
    assert ours.port == 9094 and ours.poll_interval == flower_node.DEFAULT_POLL_INTERVAL
    assert flower == ["--superlink", "x:1", "--node-config", "partition-id=0", "--insecure"]
