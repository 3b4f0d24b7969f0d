"""The package's layering and namespace.

vfl-sim installs one import package, ``vfl_sim``; the role packages are ``vfl_sim.parties``,
``vfl_sim.server`` and ``vfl_sim.audits`` (folders under ``vfl_sim/``, linked from the
repository root). Imports point downward only, at module level and inside functions alike:

- core: ``vfl_sim`` itself (config, errors, registry, seeding, protocol, transport, optim,
  progress) and ``vfl_sim.data``, ``vfl_sim.models``;
- parties and audits: each on the core only (an auditor sees arrays, never a party);
- server: the core only (it reaches the parties through a transport, never by import);
- methods (``vfl_sim.methods``): the core, the parties and the server; each method's module
  holds its server side and its parties' steps, which meet only over the transport;
- applications: the experiment, report and plots, benchmarks, sweeps, runtimes and the CLI.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "vfl_sim"
APPS = {"experiment", "report", "plots", "bench", "sweep", "sweep_table", "runtimes", "cli", "api"}
ALLOWED = {
    "core": {"core"},
    "parties": {"core", "parties"},
    "audits": {"core", "audits"},
    "server": {"core", "server"},
    "methods": {"core", "parties", "server", "methods"},
    "apps": {"core", "parties", "audits", "server", "methods", "apps"},
}
ROLES = ("server", "parties", "audits")


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in (*ROLES, "methods"):
        return parts[1]
    if len(parts) > 1 and parts[1] in APPS:
        return "apps"
    return "core"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, int]]:
    """Every absolute import in ``path`` (module level or not) with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
    return found


def sources(*folders: Path) -> list[Path]:
    return sorted(p for folder in folders for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def test_imports_point_downward_only() -> None:
    upward = []
    for path in sources(PACKAGE):
        mine = layer(module_name(path))
        for name, line in imports(path):
            if name.split(".")[0] == "vfl_sim" and layer(name) not in ALLOWED[mine]:
                upward.append(f"{path.relative_to(ROOT)}:{line} ({mine}) imports {name} ({layer(name)})")
    assert upward == []


def _module_graph() -> dict[str, set[str]]:
    """``module -> the vfl_sim modules it imports`` (module level and inside functions)."""
    modules = {module_name(p): p for p in sources(PACKAGE)}

    def owner(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.split(".")[0] == "vfl_sim":
                    deps |= {owner(f"{node.module}.{a.name}") for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {owner(a.name) for a in node.names if a.name.split(".")[0] == "vfl_sim"}
        graph[name] = deps - {name, "vfl_sim", ""}
    return graph


def test_no_import_cycle_even_through_function_level_imports() -> None:
    # A function-level import may defer a heavy optional dependency (Ray, Flower), never hide a
    # cycle: the graph of every import, wherever it is written, has none.
    graph = _module_graph()
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        path.append(module)
        for dep in sorted(graph.get(module, ())):
            cycle = visit(dep)
            if cycle:
                return cycle
        path.pop()
        done.add(module)
        return None

    cycles = [c for c in (visit(m) for m in sorted(graph)) if c]
    assert cycles == [], " -> ".join(cycles[0])


def test_the_experiment_does_not_know_its_runtimes() -> None:
    # Runtimes run experiments; an experiment reaches its parties through a transport only.
    graph = _module_graph()
    mine = [m for m in graph if m == "vfl_sim.experiment" or m.startswith("vfl_sim.experiment.")]
    assert len(mine) > 1  # the package and its job modules
    assert not {d for m in mine for d in graph[m] if d.startswith("vfl_sim.runtimes")}


def test_role_packages_are_imported_through_the_vfl_sim_namespace_only() -> None:
    # A top-level `server`, `parties` or `audits` import would load a second copy of a module
    # (two registries) and fail for an installed vfl-sim.
    stray = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path in sources(PACKAGE, ROOT / "tests", ROOT / "benchmarks")
        for name, line in imports(path)
        if name.split(".")[0] in ROLES
    ]
    assert stray == []


def test_the_wheel_installs_one_package(tmp_path: Path) -> None:
    # Built from a copy: setuptools writes build/ and *.egg-info into the source folder.
    src = tmp_path / "src"
    shutil.copytree(PACKAGE, src / "vfl_sim", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=src,
        check=True,
        capture_output=True,
        timeout=240,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"vfl_sim", wheel.name.split("-")[0] + "-0.1.0.dist-info"}
    for role in ROLES:
        assert f"vfl_sim/{role}/__init__.py" in names


def test_a_folder_with_its_own_server_parties_and_audits_modules_runs_vfl_sim(tmp_path: Path) -> None:
    for role in ROLES:
        (tmp_path / f"{role}.py").write_text(f"raise ImportError('the user\\'s own {role}.py was imported')\n")
    code = (
        "from vfl_sim.config import config_from_dict\n"
        "from vfl_sim.experiment import prepare\n"
        "cfg = config_from_dict({'train': {'epochs': 1}, 'methods': ['retrain'],"
        " 'audit': {'plots': False, 'calibration': {'retrains': 0}, 'relearning': {'enabled': False}}})\n"
        "report = prepare(cfg).run('run')\n"
        "print(report['models']['retrain']['certificate']['trilemma'])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in {"removal", "inconclusive", "unverified"}


@pytest.mark.parametrize("role", ROLES)
def test_the_repository_root_links_each_role_folder_into_the_package(role: str) -> None:
    link = ROOT / role
    assert link.is_symlink() and link.resolve() == (PACKAGE / role).resolve()


def test_every_module_that_builds_parties_registers_the_methods_party_steps() -> None:
    # A party answers a method's LocalOp only if its process imported the method's module: the
    # local run, each Ray actor and each Flower ClientApp import vfl_sim.methods themselves.
    graph = _module_graph()
    builders = sorted(m for m, deps in graph.items() if "vfl_sim.parties.build" in deps)
    assert {"vfl_sim.experiment.spec", "vfl_sim.runtimes.ray_runtime", "vfl_sim.runtimes.flower_app"} <= set(builders)
    assert [m for m in builders if "vfl_sim.methods" not in graph[m]] == []
