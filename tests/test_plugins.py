"""Plugins: modules or files, found next to the config as well as in the working directory,
imported once, and every failure one line with exit 2 (``vfl_sim.plugins``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vfl_sim.config import load_config
from vfl_sim.errors import ConfigError
from vfl_sim.methods.registry import METHODS
from vfl_sim.plugins import import_plugins, plugin_module, resolve_plugins

ROOT = Path(__file__).resolve().parent.parent

METHOD = """
from vfl_sim.methods import UnlearningContext, UnlearningMethod, register_method


@register_method("{name}")
class Mine(UnlearningMethod):
    \"\"\"Changes nothing.\"\"\"

    supports = frozenset({{"class"}})

    def unlearn(self, ctx: UnlearningContext) -> None:
        pass
"""

ABSTRACT = """
from vfl_sim.methods import UnlearningMethod, register_method


@register_method("plugin_test_abstract")
class Forgetful(UnlearningMethod):
    supports = frozenset({"class"})
"""

NOT_A_METHOD = """
from vfl_sim.methods import register_method


@register_method("plugin_test_not_a_method")
class Thing:
    pass
"""


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "vfl_sim.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """A config folder holding plugins, and a separate working directory."""
    conf, work = tmp_path / "conf", tmp_path / "work"
    (conf / "lib").mkdir(parents=True)
    work.mkdir()
    return conf, work


def test_a_file_plugin_is_found_next_to_the_config_and_made_absolute(
    layout: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    conf, work = layout
    (conf / "lib" / "mine.py").write_text(METHOD.format(name="plugin_test_file"))
    (conf / "c.yaml").write_text("plugins: [lib/mine.py]\n")
    monkeypatch.chdir(work)
    cfg = load_config(conf / "c.yaml")
    assert cfg.plugins == [str((conf / "lib" / "mine.py").resolve())]


def test_a_module_next_to_the_config_becomes_its_file_and_an_importable_module_stays_a_name(
    layout: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    conf, work = layout
    (conf / "beside.py").write_text("")
    (work / "here.py").write_text("")
    monkeypatch.chdir(work)
    assert resolve_plugins(["beside", "here", "json"], conf) == [str((conf / "beside.py").resolve()), "here", "json"]


def test_a_missing_file_names_where_it_was_looked_for(
    layout: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    conf, work = layout
    monkeypatch.chdir(work)
    with pytest.raises(ConfigError, match=r"plugins: file 'nope\.py' not found \(looked in .*conf or .*work\)"):
        resolve_plugins(["nope.py"], conf)


def test_a_file_is_imported_once_per_process(tmp_path: Path) -> None:
    path = tmp_path / "once.py"
    path.write_text(METHOD.format(name="plugin_test_once"))
    try:
        import_plugins([str(path)])
        first = METHODS.get("plugin_test_once")
        import_plugins([str(path)])  # executing it again would register a second class: refused
        assert METHODS.get("plugin_test_once") is first
        assert first.__module__ == plugin_module(path)
    finally:
        METHODS.unregister("plugin_test_once")
        sys.modules.pop(plugin_module(path), None)


@pytest.mark.parametrize(
    ("source", "expect"),
    [
        (ABSTRACT, "unlearning method 'plugin_test_abstract' (Forgetful) does not implement unlearn"),
        (NOT_A_METHOD, "registering 'plugin_test_not_a_method' needs a subclass of UnlearningMethod"),
        ("def broken(:\n", "has a syntax error"),
    ],
    ids=["abstract", "not-a-method", "syntax"],
)
def test_a_broken_plugin_file_is_one_line(tmp_path: Path, source: str, expect: str) -> None:
    path = tmp_path / "broken.py"
    path.write_text(source)
    with pytest.raises(ConfigError, match="plugins: ") as err:
        import_plugins([str(path)])
    assert expect in str(err.value) and "\n" not in str(err.value)
    assert plugin_module(path) not in sys.modules  # a failed import is not cached as done


def test_vfl_sim_validate_finds_a_plugin_beside_the_config_from_another_directory(layout: tuple[Path, Path]) -> None:
    conf, work = layout
    (conf / "lib" / "mine.py").write_text(METHOD.format(name="plugin_test_cli"))
    (conf / "c.yaml").write_text("plugins: [lib/mine.py]\nmethods: [retrain, plugin_test_cli]\n")
    done = _cli("validate", str(conf / "c.yaml"), cwd=work)
    assert done.returncode == 0, done.stderr
    assert "methods: retrain, plugin_test_cli" in done.stdout


def test_vfl_sim_methods_lists_plugin_methods_with_their_origin(layout: tuple[Path, Path]) -> None:
    conf, work = layout
    (work / "mine.py").write_text(METHOD.format(name="plugin_test_listed"))
    done = _cli("methods", "--plugins", "mine.py", cwd=work)
    assert done.returncode == 0, done.stderr
    listed = {line.split()[0]: line for line in done.stdout.splitlines()}
    assert "(plugin: vfl_sim_plugin_mine_" in listed["plugin_test_listed"]
    assert "plugin" not in listed["retrain"]


def test_vfl_sim_methods_with_a_broken_plugin_exits_2_with_one_line(layout: tuple[Path, Path]) -> None:
    conf, work = layout
    (work / "abstract.py").write_text(ABSTRACT)
    done = _cli("methods", "--plugins", "abstract.py", cwd=work)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not implement unlearn" in lines[0], done.stderr
