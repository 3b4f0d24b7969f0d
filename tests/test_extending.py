"""docs/extending.md: the method with a party-side step, written from the page itself (so the page
cannot drift from the code) and run as a plugin through the CLI, in-process and on Ray."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from tests.conftest import small_config
from vfl_sim.experiment import prepare
from vfl_sim.methods.registry import METHODS
from vfl_sim.parties import party as party_module
from vfl_sim.parties.build import build_party
from vfl_sim.parties.party import registered_ops
from vfl_sim.plugins import import_plugins, plugin_module
from vfl_sim.protocol import Ack, LocalOp

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "extending.md"
SECTION = "## Adding an unlearning method"
# Small and quick: the page's config on a synthetic dataset, with one training epoch and no
# extra audits; everything the page says stays as written.
QUICK = [
    "--set",
    "data.name=synthetic",
    "--set",
    "data.synthetic.samples=300",
    "--set",
    "train.epochs=1",
    "--set",
    "audit.plots=false",
    "--set",
    "audit.calibration.retrains=0",
    "--set",
    "audit.relearning.enabled=false",
]


def _section() -> str:
    text = PAGE.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start : end if end >= 0 else None]


def _block(first_line: str) -> str:
    """The fenced code block of the section that starts with ``first_line``."""
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```$", _section(), flags=re.S | re.M)
    found = [b for b in blocks if b.startswith(first_line + "\n")]
    assert len(found) == 1, f"docs/extending.md has {len(found)} blocks starting with {first_line!r}"
    return found[0]


@pytest.fixture
def documented(tmp_path: Path) -> Path:
    """A folder holding the page's my_method.py and my_method.yaml."""
    (tmp_path / "my_method.py").write_text(_block("# my_method.py"))
    (tmp_path / "my_method.yaml").write_text(_block("# my_method.yaml"))
    return tmp_path


@pytest.fixture
def plugin(documented: Path) -> Iterator[ModuleType]:
    """The page's file imported as a plugin in this process; unregistered afterwards, so other
    tests (``methods: all``) never see it."""
    path = documented / "my_method.py"
    import_plugins([str(path)])
    module = sys.modules[plugin_module(path)]
    try:
        yield module
    finally:
        METHODS.unregister("shrink_perturb")
        party_module._OPS.pop(module.shrink_perturb_bottom.name, None)
        sys.modules.pop(plugin_module(path), None)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "vfl_sim.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def _report(folder: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((folder / "report.json").read_text())
    return report


def test_the_page_says_how_a_method_reaches_the_top_model_and_the_parties() -> None:
    section = _section()
    for needed in ("ctx.server.top", "ctx.phase", "party_op", "party_call", "grad_hook", "plugins:", ".name"):
        assert needed in section, needed


def test_the_party_step_is_registered_under_the_name_it_declares_and_edits_the_bottom_model(
    plugin: ModuleType,
) -> None:
    step = plugin.shrink_perturb_bottom
    assert step.name == "shrink_perturb_bottom" and step.name in registered_ops()
    assert METHODS.get("shrink_perturb").Params is plugin.ShrinkPerturbParams
    exp = prepare(small_config())
    s = exp.slices[0]
    party = build_party(exp.cfg, s.party_id, torch.from_numpy(s.take(exp.dataset.features)), torch.device("cpu"))
    before = {k: v.clone() for k, v in party.bottom.named_parameters()}
    reply = party.handle(LocalOp(step.name, {"shrink": 0.5, "noise": 0.0, "seed": 0}))
    assert isinstance(reply, Ack) and reply.info["norm"] > 0
    for name, p in party.bottom.named_parameters():
        torch.testing.assert_close(p.detach(), 0.5 * before[name], rtol=0, atol=0, msg=name)


def test_the_documented_method_runs_as_a_plugin_through_the_cli(documented: Path) -> None:
    listed = _cli("methods", "--plugins", "my_method.py", cwd=documented)
    assert listed.returncode == 0, listed.stderr
    assert "shrink_perturb" in listed.stdout

    done = _cli("run", "my_method.yaml", "--out", "run", "--quiet", *QUICK, cwd=documented)
    assert done.returncode == 0, done.stderr
    models = _report(documented / "run")["models"]
    assert set(models) >= {"original", "retrain", "shrink_perturb"}
    mine = models["shrink_perturb"]
    assert mine["communication"]["bytes_total"] > 0
    # shrinking every model of the split and fine-tuning on the retained data moved it away
    # from the original
    assert mine["output"] != models["original"]["output"]


def test_a_wrong_parameter_of_the_documented_method_is_one_line_and_exit_2(documented: Path) -> None:
    sets = ["--set", "methods=[{name: shrink_perturb, params: {shrink: 2}}]"]
    done = _cli("run", "my_method.yaml", "--out", "run", "--quiet", *QUICK, *sets, cwd=documented)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "methods.shrink_perturb.params.shrink" in lines[0], done.stderr
    assert not (documented / "run").exists()


@pytest.mark.processes
def test_the_documented_method_gives_the_same_model_on_ray(documented: Path) -> None:
    """The party step runs in each Ray actor's process (which imports the plugin itself) and
    gives what it gives in-process."""
    local = _cli("run", "my_method.yaml", "--out", "local", "--quiet", *QUICK, cwd=documented)
    assert local.returncode == 0, local.stderr
    ray = _cli("run", "my_method.yaml", "--out", "ray", "--quiet", *QUICK, "--set", "runtime=ray", cwd=documented)
    assert ray.returncode == 0, ray.stderr
    a, b = _report(documented / "local")["models"], _report(documented / "ray")["models"]
    assert a.keys() == b.keys()
    for name in a:
        for key, value in a[name]["output"].items():
            if isinstance(value, float):
                assert b[name]["output"][key] == pytest.approx(value, abs=1e-6), f"{name}.{key}"
