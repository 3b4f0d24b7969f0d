"""``runtime:`` is a name in the runtime registry: a plugin's runtime is selected from YAML, and
an unknown name is one line naming the field and the known runtimes (exit 2)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from vfl_sim.cli import EXIT_INPUT_ERROR, main
from vfl_sim.config import config_from_dict
from vfl_sim.errors import ConfigError
from vfl_sim.runtimes.base import RUNTIMES, available_runtimes, check_runtime, get_runtime

PLUGIN = '''
from contextlib import contextmanager

from vfl_sim.runtimes.base import Runtime, register_runtime

CALLS = []


@register_runtime("test-plugin-runtime")
class PluginRuntime(Runtime):
    """Parties in this process, as `local` (the experiment builds them when given no transport)."""

    starts_processes = False

    @contextmanager
    def parties(self, exp):
        CALLS.append(exp.cfg.name)
        yield None
'''

TINY = {
    "name": "plugin-runtime",
    "runtime": "test-plugin-runtime",
    "plugins": ["my_runtime.py"],
    "data": {"name": "synthetic", "synthetic": {"samples": 300, "features": 8, "classes": 3}},
    "partition": {"parties": 2, "scheme": "contiguous"},
    "model": {"bottom": "mlp"},
    "train": {"epochs": 1, "batch_size": 64},
    "methods": [{"name": "finetune", "params": {"epochs": 1}}],
    "audit": {
        "plots": False,
        "probe_repeats": 1,
        "relearning": {"enabled": False},
        "reference_free": {"enabled": False},
        "calibration": {"retrains": 0},
    },
}


@pytest.fixture
def plugin_config(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "my_runtime.py").write_text(PLUGIN)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(TINY))
    try:
        yield path
    finally:
        RUNTIMES.unregister("test-plugin-runtime")


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_plugin_runtime_is_selected_from_yaml_and_runs(
    plugin_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    out = tmp_path / "run"
    assert main(["validate", str(plugin_config)]) == 0
    assert main(["run", str(plugin_config), "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["runtime"] == "test-plugin-runtime"
    assert {"original", "finetune"} <= set(report["models"])
    plugin = next(m for name, m in sys.modules.items() if name.startswith("vfl_sim_plugin_my_runtime_"))
    assert plugin.CALLS == ["plugin-runtime"]  # the run went through the plugin's runtime
    assert "test-plugin-runtime" in available_runtimes()
    assert type(get_runtime("test-plugin-runtime")).__name__ == "PluginRuntime"


def test_an_unknown_runtime_is_one_line_naming_the_field(
    plugin_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    for command in (["validate"], ["run", "--out", str(out), "--quiet"]):
        code = main([*command[:1], str(plugin_config), *command[1:], "--set", "runtime=nope"])
        assert code == EXIT_INPUT_ERROR
        line = _one_error_line(capsys.readouterr().err)
        assert line.startswith("error: runtime: unknown runtime 'nope'; known: "), line
        for name in ("local", "ray", "flower-sim", "flower-deploy", "test-plugin-runtime"):
            assert name in line, line
    assert not out.exists()


def test_without_its_plugin_a_plugin_runtime_is_unknown() -> None:
    cfg = config_from_dict({"runtime": "test-plugin-runtime"})  # the schema takes any name
    with pytest.raises(ConfigError, match=r"^runtime: unknown runtime 'test-plugin-runtime'; known: flower-deploy"):
        check_runtime(cfg)
    with pytest.raises(ConfigError, match="^runtime: unknown runtime"):
        get_runtime("test-plugin-runtime")


def test_per_runtime_checks_still_apply() -> None:
    with pytest.raises(ConfigError, match="flower.superlink is for runtime 'flower-deploy'"):
        config_from_dict({"runtime": "flower-sim", "flower": {"superlink": "h:1"}})
    with pytest.raises(ConfigError, match="ray.num_cpus is 1 but"):
        config_from_dict({"runtime": "ray", "ray": {"num_cpus": 1}, "partition": {"parties": 2}})
    with pytest.raises(ConfigError, match="^runtime: "):
        config_from_dict({"runtime": ""})
