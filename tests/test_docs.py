"""The documentation stays true to the code: the generated pages follow the config models and the
method registry (a changed default changes the page), docs/report.md matches a real report, and
the README stays short."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from vfl_sim.cli import main
from vfl_sim.config import ExperimentConfig, TrainConfig, config_from_dict
from vfl_sim.methods import available_methods, get_method
from vfl_sim.methods.baselines import FinetuneParams

ROOT = Path(__file__).resolve().parent.parent


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_docs", module)
    spec.loader.exec_module(module)
    return module


gen_docs = _load_generator()


def _row(page: str, key: str) -> list[str]:
    """The cells of the table row whose first cell is ``key`` (in backticks)."""
    rows = [line for line in page.splitlines() if line.startswith(f"| `{key}` |")]
    assert len(rows) == 1, f"{len(rows)} rows for {key}"
    return [c.strip() for c in re.split(r"(?<!\\)\|", rows[0])[1:-1]]


def _section(page: str, heading: str) -> str:
    start = page.index(f"\n## {heading}")
    end = page.find("\n## ", start + 1)
    return page[start : end if end >= 0 else None]


def _fields(model: Any, prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        out.append(key)
        sub = gen_docs._section_model(field.annotation)
        if sub is not None:
            out += _fields(sub, f"{key}[]." if "list" in str(field.annotation) else f"{key}.")
    return out


# --------------------------------------------------------------------------------------------
# The configuration reference


def test_the_configuration_reference_has_every_field_with_its_default_and_a_description() -> None:
    page = gen_docs.config_reference()
    for key in _fields(ExperimentConfig):
        cells = _row(page, key)
        assert cells[3], f"{key} has no description: write a docstring under the field in vfl_sim/config.py"
    assert _row(page, "train.epochs")[2] == "`30`"
    assert _row(page, "audit.certificate.utility")[2] == "`0.03`"
    assert _row(page, "forget")[2] == "`{kind: class, classes: [0]}`"
    assert _row(page, "methods")[2] == "`[retrain, finetune, neggrad]`"
    assert "≥ 1" in _row(page, "train.epochs")[1]


def test_the_configuration_reference_follows_a_changed_default(monkeypatch: pytest.MonkeyPatch) -> None:
    before = gen_docs.config_reference()
    monkeypatch.setattr(TrainConfig.model_fields["epochs"], "default", 7)
    monkeypatch.setattr(TrainConfig.model_fields["lr"], "description", "a new description")
    after = gen_docs.config_reference()
    assert _row(before, "train.epochs")[2] == "`30`"
    assert _row(after, "train.epochs")[2] == "`7`"
    assert _row(after, "train.lr")[3] == "a new description"
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b]
    assert len(changed) == 2


def test_the_configuration_reference_follows_a_new_field() -> None:
    class Train(TrainConfig):
        warmup: int = 3
        """Warm-up steps."""

    class Config(ExperimentConfig):
        train: Train = Train()

    assert _row(gen_docs.config_reference(Config), "train.warmup")[1:] == ["int", "`3`", "Warm-up steps."]


# --------------------------------------------------------------------------------------------
# The methods catalogue


def test_the_methods_catalogue_has_the_facts_vfl_sim_methods_prints(capsys: pytest.CaptureFixture[str]) -> None:
    page = gen_docs.methods_catalogue()
    assert main(["methods"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == available_methods()
    for line in listed:
        name, _, kinds, *params = line.split(maxsplit=3)
        section = _section(page, f"`{name}`")
        assert f"Requests: {', '.join(f'`{k}`' for k in kinds.split(','))}." in section
        for key, field in get_method(name).Params.model_fields.items():
            assert f"{key}={field.get_default(call_default_factory=True)}" in params[0]
            default = _row(section, key)[2]
            assert default == gen_docs.default_of(field), (name, key)
        assert get_method(name).__doc__.split("\n")[0].strip().rstrip(".") in section


def test_the_methods_catalogue_follows_a_changed_default_and_a_new_method(monkeypatch: pytest.MonkeyPatch) -> None:
    from vfl_sim.methods import PhaseParams, UnlearningMethod, register_method
    from vfl_sim.methods.registry import METHODS

    before = gen_docs.methods_catalogue()
    monkeypatch.setattr(FinetuneParams.model_fields["epochs"], "default", 9)

    class DocProbeParams(PhaseParams):
        strength: float = 0.5
        """How hard to probe."""

    @register_method("doc_probe")
    class DocProbe(UnlearningMethod[DocProbeParams]):
        """A method that exists only in this test."""

        supports = frozenset({"class"})

        def unlearn(self, ctx: Any) -> None:  # pragma: no cover - never run
            raise NotImplementedError

    try:
        after = gen_docs.methods_catalogue()
    finally:
        METHODS.unregister("doc_probe")
    assert _row(_section(before, "`finetune`"), "epochs")[2] == "`5`"
    assert _row(_section(after, "`finetune`"), "epochs")[2] == "`9`"
    probe = _section(after, "`doc_probe`")
    assert "A method that exists only in this test." in probe
    assert _row(probe, "strength")[2:] == ["`0.5`", "How hard to probe."]
    assert "doc_probe" not in before


# --------------------------------------------------------------------------------------------
# docs/report.md against a real report

# Keys a class request's run does not write: other request kinds' audits, a diverged model, and
# the cost of forget.cover (off in this run).
NOT_IN_A_CLASS_RUN = {
    "models.<name>.cover",
    "models.<name>.diverged",
    "models.<name>.feature_recovery",
    "models.<name>.output.party_dependence",
}


def _documented_paths() -> tuple[list[str], set[str]]:
    """The paths of docs/report.md's key table, and every word named in backticks in the table."""
    text = (ROOT / "docs" / "report.md").read_text()
    table = text[text.index("| key | meaning |") :]
    table = table[: table.index("\n\n")]
    paths, words = [], set()
    for line in table.splitlines()[2:]:
        first = line.split(" | ")[0]
        tokens = re.findall(r"`([^`]+)`", first)
        parent = tokens[0].rpartition(".")[0]
        for token in tokens:
            paths.append(token if "." in token or not parent else f"{parent}.{token}")
        words |= {w.removesuffix("[]") for t in re.findall(r"`([^`]+)`", line) for w in re.split(r"[.,\s/]+", t)}
    return paths, words


def _resolve(node: Any, parts: list[str]) -> bool:
    """Whether the path exists, a ``<placeholder>`` part matching any key (at least one must have it)."""
    if not parts:
        return True
    head, rest = parts[0], parts[1:]
    if head.endswith("[]"):
        items = node.get(head[:-2]) if isinstance(node, dict) else None
        return isinstance(items, list) and any(_resolve(item, rest) for item in items)
    if not isinstance(node, dict):
        return False
    if head.startswith("<"):
        return any(_resolve(child, rest) for child in node.values())
    return head in node and _resolve(node[head], rest)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from vfl_sim.experiment import prepare

    cfg = config_from_dict(
        {
            "name": "schema",
            "train": {"epochs": 1},
            "methods": ["retrain", "finetune"],
            "audit": {
                "plots": False,
                "calibration": {"retrains": 1},
                "probe_repeats": 2,
                "model_completion": {"enabled": True, "draws": 2},
            },
        }
    )
    out = tmp_path_factory.mktemp("report") / "run"
    prepare(cfg).run(out)
    return json.loads((out / "report.json").read_text())


def test_every_documented_report_key_is_in_a_real_report(report: dict[str, Any]) -> None:
    paths, _ = _documented_paths()
    assert len(paths) > 40
    missing = [p for p in paths if p not in NOT_IN_A_CLASS_RUN and not _resolve(report, p.split("."))]
    assert missing == []


def test_every_key_a_real_report_writes_is_documented(report: dict[str, Any]) -> None:
    from vfl_sim.report import SCHEMA_VERSION

    _, words = _documented_paths()
    text = (ROOT / "docs" / "report.md").read_text()
    assert f"schema version `{SCHEMA_VERSION}`" in text
    assert f"schema {SCHEMA_VERSION}" in (ROOT / "CHANGELOG.md").read_text()
    model = report["models"]["finetune"]
    fused = model["representation"]["fused"]
    containers = {
        "report.json": report,
        "dataset": report["dataset"],
        "forget_request": report["forget_request"],
        "audit": report["audit"],
        "audit.certificate": report["audit"]["certificate"],
        "controls.<name>": report["controls"]["output_mask"],
        "models.<name>": model,
        "models.<name>.communication": model["communication"],
        "models.<name>.output": model["output"],
        "models.<name>.output.membership": model["output"]["membership"],
        "models.<name>.representation": model["representation"],
        "models.<name>.representation.fused": fused,
        "models.<name>.representation.fused.separability": fused["separability"],
        "models.<name>.representation.fused.consistency": fused["consistency"],
        "models.<name>.representation.class_recovery": model["representation"]["class_recovery"],
        "models.<name>.certificate": model["certificate"],
        "models.<name>.reference_free": model["reference_free"],
        "models.<name>.relearning": model["relearning"],
    }
    undocumented = [f"{where}.{key}" for where, node in containers.items() for key in node if key not in words]
    assert undocumented == []


# --------------------------------------------------------------------------------------------
# The README


def test_the_readme_stays_short_and_links_only_to_files_that_exist() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= 12 * 1024
    assert "make demo" in text and "make test" in text
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target


def test_generated_pages_are_not_committed() -> None:
    for name in gen_docs.PAGES:
        assert not (ROOT / "docs" / name).exists(), f"docs/{name} is generated at build time"
