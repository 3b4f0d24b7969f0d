"""The bad-input corpus: every bad config, dataset path, forget request, party count, plugin,
output folder and damaged run folder gives ONE line naming the problem, exit code 2, no
traceback, and writes nothing (no run folder, no partial folder, no lock left behind).

Each case is a row of a table, run through ``vfl_sim.cli.main`` in this process. Cases on a
run folder start from copies of one real tiny run (made once for the module), damaged as the
row says. A few behaviours that are not errors (``--resume`` retrains what is damaged, a
stale lock is taken over) are tested after the tables.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vfl_sim.cli import EXIT_INPUT_ERROR, main

CONFIG = "name: bad-input\nseed: 1\nthreads: 1\ndata: {name: digits}\n"
TINY = [
    "--set",
    "train.epochs=1",
    "--set",
    "methods=[retrain]",
    "--set",
    "audit.relearning.enabled=false",
    "--set",
    "audit.plots=false",
]
PLUGIN_DUP = (
    "from vfl_sim.methods import register_method\n"
    "from vfl_sim.methods.baselines import Finetune\n\n"
    "@register_method('retrain')\n"
    "class Mine(Finetune):\n"
    "    pass\n"
)


@dataclass
class Case:
    id: str
    argv: list[str]
    expect: list[str]  # substrings of the one error line
    files: dict[str, bytes | str] = field(default_factory=lambda: {"c.yaml": CONFIG})


def _run_cmd(*sets: str) -> list[str]:
    return ["run", "c.yaml", "--out", "out", "--quiet", *[a for s in sets for a in ("--set", s)]]


def _out(out: str, *extra: str) -> list[str]:
    return ["run", "c.yaml", "--out", out, "--quiet", *extra, *TINY]


def _validate(*sets: str) -> list[str]:
    return ["validate", "c.yaml", *[a for s in sets for a in ("--set", s)]]


CONFIG_CASES = [
    # -- what was already handled
    Case("unknown-field", _run_cmd("train.epoch=1"), ["unknown field 'epoch' in train; allowed: ", "epochs"]),
    Case("bad-value", _run_cmd("train.lr=-1"), ["train.lr: Input should be greater than 0 (got -1)"]),
    Case("bad-literal", _validate("data.name=foo"), ["data.name: ", "(got 'foo')"]),
    Case(
        "missing-dataset-folder",
        _run_cmd("data.name=mnist", "data.root=nowhere"),
        ["data root nowhere does not exist", "data.root"],
    ),
    Case(
        "unknown-class", _run_cmd("forget.classes=[42]"), ["forget.classes: class 42 does not exist; classes are 0..9"]
    ),
    Case("unknown-sample", _validate("forget.kind=samples", "forget.ids=[99999]"), ["forget", "99999"]),
    Case("more-parties-than-columns", _run_cmd("partition.parties=99"), ["partition.parties is 99"]),
    Case("unknown-method", _run_cmd("methods=[forgetti]"), ["unknown unlearning method 'forgetti'; available: "]),
    Case("bad-method-param", _validate("methods=[{name: neggrad, params: {lr: -1}}]"), ["methods.neggrad.params.lr"]),
    Case("missing-config", ["validate", "missing.yaml"], ["config file not found: missing.yaml"]),
    Case("invalid-yaml", ["validate", "c.yaml"], ["c.yaml: not valid YAML: line "], {"c.yaml": "train: {epochs: 1\n"}),
    Case("override-without-equals", _validate("train.epochs"), ["override 'train.epochs' is not of the form"]),
    Case("override-into-scalar", _validate("seed.x=1"), ["override 'seed.x': 'seed' is not a section"]),
    # -- config files that are not YAML text
    Case("config-is-a-folder", ["validate", "d"], ["d is a folder, not a config file"], {"d/x": ""}),
    Case(
        "binary-garbage",
        _run_cmd(),
        ["c.yaml: not a UTF-8 text file (byte 0 is b'\\xff')"],
        {"c.yaml": b"\xff\xfe\x00\x01\x80\x81garbage"},
    ),
    Case("utf16", _run_cmd(), ["c.yaml: not a UTF-8 text file"], {"c.yaml": CONFIG.encode("utf-16")}),
    Case("control-characters", _validate(), ["c.yaml: not valid YAML", "unacceptable character"], {"c.yaml": "a\x01"}),
    Case(
        "duplicate-key",
        _run_cmd(),
        ["c.yaml: not valid YAML: line 4: duplicate key 'lr'"],
        {"c.yaml": "name: dup\ntrain:\n  lr: 0.1\n  lr: 0.2\n"},
    ),
    Case(
        "duplicate-section",
        _validate(),
        ["line 3: duplicate key 'train'"],
        {"c.yaml": "train: {lr: 0.1}\nseed: 1\ntrain: {epochs: 2}\n"},
    ),
    Case("empty-config", _run_cmd(), ["c.yaml is empty; "], {"c.yaml": ""}),
    Case("comments-only-config", _validate(), ["c.yaml is empty; "], {"c.yaml": "# nothing yet\n"}),
    Case("not-a-mapping", _validate(), ["c.yaml: the config must be a mapping"], {"c.yaml": "- 1\n- 2\n"}),
    # -- overrides
    Case(
        "override-yaml-error", _validate("train={lr: 0.1"), ["override 'train': cannot parse value '{lr: 0.1' as YAML"]
    ),
    Case("override-duplicate-key", _validate("train={lr: 1, lr: 2}"), ["override 'train'", "duplicate key 'lr'"]),
    # -- values accepted before although wrong
    Case("lr-inf", _run_cmd("train.lr=.inf"), ["train.lr: Input should be a finite number (got inf)"]),
    Case("momentum-nan", _validate("train.momentum=.nan"), ["train.momentum: Input should be a finite number"]),
    Case(
        "ray-timeout-inf", _validate("ray.round_timeout=.inf"), ["ray.round_timeout: Input should be a finite number"]
    ),
    Case(
        "method-param-inf",
        _validate("methods=[{name: neggrad, params: {lr: .inf}}]"),
        ["methods.neggrad.params.lr: Input should be a finite number"],
    ),
    Case("epochs-1e12", _run_cmd("train.epochs=1.0e+12"), ["train.epochs: Input should be less than or equal to"]),
    Case("batch-size-huge", _validate("train.batch_size=10000000000000"), ["train.batch_size: Input should be less"]),
    Case("name-escapes", _run_cmd("name=../../escaped"), ["name: must be one folder name", "'../../escaped'"]),
    Case("name-hidden", _validate("name=.hidden"), ["name: must be one folder name"]),
    Case("name-with-slash", _validate("name=a/b"), ["name: must be one folder name"]),
    Case("label-escapes", _validate("methods=[{name: retrain, label: ../x}]"), ["methods.0.label: must be one folder"]),
    Case("seed-beyond-64-bits", _run_cmd(f"seed={2**64}"), ["seed: Input should be less than or equal to"]),
    Case("seed-negative", _validate("seed=-1"), ["seed: Input should be greater than or equal to 0"]),
    Case("split-seed-huge", _validate(f"data.split_seed={2**70}"), ["data.split_seed: Input should be less"]),
    Case("seed-not-a-number", _validate("seed=abc"), ["seed: Input should be a valid integer"]),
    Case(
        "embedding-dim-too-large",
        _run_cmd("model.embedding_dim=1000000000000"),
        ["model.embedding_dim (1000000000000) makes the models too large", "GB"],
    ),
    Case(
        "hidden-width-too-large",
        _validate("model.top_hidden=[100000000000]"),
        ["model.top_hidden (100000000000) makes the models too large"],
    ),
    Case(
        "embedding-dim-beyond-torch",
        _validate(f"model.embedding_dim={10**30}"),
        ["model.embedding_dim (1000000000000000000000000000000) "],
    ),
    # -- plugins
    Case("plugin-missing", _run_cmd("plugins=[no_such_plugin_xyz]"), ["plugins: cannot import 'no_such_plugin_xyz'"]),
    Case(
        "plugin-raises",
        _run_cmd("plugins=[bad_input_raises]"),
        ["plugins: importing 'bad_input_raises' failed: RuntimeError: boom"],
        {"c.yaml": CONFIG, "bad_input_raises.py": "raise RuntimeError('boom')\n"},
    ),
    Case(
        "plugin-syntax-error",
        _run_cmd("plugins=[bad_input_syntax]"),
        ["plugins: 'bad_input_syntax' has a syntax error (", "bad_input_syntax.py, line 1)"],
        {"c.yaml": CONFIG, "bad_input_syntax.py": "def f(:\n    pass\n"},
    ),
    Case(
        "plugin-exits",
        _run_cmd("plugins=[bad_input_exits]"),
        ["plugins: 'bad_input_exits' called sys.exit(3) while being imported"],
        {"c.yaml": CONFIG, "bad_input_exits.py": "import sys\nsys.exit(3)\n"},
    ),
    Case(
        "plugin-reregisters-builtin",
        _run_cmd("plugins=[bad_input_dup]"),
        ["plugins: importing 'bad_input_dup' failed: ", "'retrain' is already registered"],
        {"c.yaml": CONFIG, "bad_input_dup.py": PLUGIN_DUP},
    ),
    # -- the command line itself
    Case("no-command", [], ["vfl-sim: the following arguments are required: command"]),
    Case("unknown-command", ["bogus"], ["vfl-sim: argument command: invalid choice: 'bogus'"]),
    Case("run-without-config", ["run"], ["vfl-sim run: the following arguments are required: config"]),
    Case("bad-int-option", ["bench", "--epochs", "x"], ["vfl-sim bench: argument --epochs: invalid int value: 'x'"]),
    Case("unknown-option", ["validate", "c.yaml", "--nope"], ["unrecognized arguments: --nope"]),
    Case("resume-without-out", ["run", "c.yaml", "--resume", "-q", *TINY], ["--resume needs --out"]),
    # -- sweeps
    Case(
        "sweep-name-escapes",
        ["sweep", "sw.yaml", "--dry-run"],
        ["sweep.name: must be one folder name", "'../x'"],
        {"sw.yaml": "name: sw\nsweep:\n  name: ../x\n  axes: {seed: [0, 1]}\n"},
    ),
    Case(
        "sweep-duplicate-key",
        ["sweep", "sw.yaml", "--dry-run"],
        ["sw.yaml: not valid YAML: line 3: duplicate key 'axes'"],
        {"sw.yaml": "sweep:\n  axes: {seed: [0, 1]}\n  axes: {seed: [2]}\n"},
    ),
    Case(
        "sweep-out-under-a-file",
        ["sweep", "sw.yaml", "--out", "f/sw", "--quiet"],
        ["cannot write the sweep folder ", "Not a directory"],
        {"sw.yaml": "name: sw\ntrain: {epochs: 1}\nmethods: [retrain]\nsweep:\n  axes: {seed: [0, 1]}\n", "f": "x"},
    ),
    # -- output folders that cannot be written
    Case("out-under-a-file", _out("f/run"), ["--out f/run: f is a file, not a folder"], {"c.yaml": CONFIG, "f": "x"}),
    Case("out-deep-under-a-file", _out("f/a/b"), ["f is a file, not a folder"], {"c.yaml": CONFIG, "f": "x"}),
    Case("out-is-a-file", _out("f"), ["--out f is a file, not a folder"], {"c.yaml": CONFIG, "f": "x"}),
    Case(
        "out-is-a-file-overwrite",
        _out("f", "--overwrite"),
        ["--out f is a file, not a folder"],
        {"c.yaml": CONFIG, "f": "x"},
    ),
    Case(
        "out-not-empty",
        _out("full"),
        ["output folder full exists and is not empty; choose another --out or pass --overwrite"],
        {"c.yaml": CONFIG, "full/x": "x"},
    ),
]


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root`` (hidden ones too) with its size and mtime."""
    return {
        str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
        for p in root.rglob("*")
    }


def _write(root: Path, files: dict[str, bytes | str]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {out + err!r}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def _check(line: str, expect: list[str]) -> None:
    for text in expect:
        assert text in line, (text, line)


@pytest.fixture
def case_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    work = tmp_path / "case"
    work.mkdir()
    monkeypatch.chdir(work)
    before = set(sys.modules)
    yield work
    for name in set(sys.modules) - before:  # a plugin that imported is not left for the next case
        if name.startswith("bad_input"):
            del sys.modules[name]


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c.id for c in CONFIG_CASES])
def test_bad_input_is_one_line_and_writes_nothing(
    case: Case, case_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(case_dir, case.files)
    before = _tree(case_dir)
    assert main(case.argv) == EXIT_INPUT_ERROR
    _check(_one_line(capsys), case.expect)
    assert _tree(case_dir) == before  # no run folder, partial folder or lock


# ------------------------------------------------------------------------------------------
# Output folders the OS refuses


def test_out_in_an_unwritable_place(case_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not Path("/proc/self").is_dir():
        pytest.skip("needs /proc")
    _write(case_dir, {"c.yaml": CONFIG})
    before = _tree(case_dir)
    assert main(["run", "c.yaml", "--out", "/proc/vfl-sim-bad-input/run", "-q", *TINY]) == EXIT_INPUT_ERROR
    _check(_one_line(capsys), ["cannot write the run folder /proc/vfl-sim-bad-input/run: "])
    assert _tree(case_dir) == before


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into any folder")
def test_out_in_a_read_only_folder(case_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(case_dir, {"c.yaml": CONFIG})
    locked = case_dir / "ro"
    locked.mkdir(mode=0o555)
    try:
        for out, expect in (
            ("ro/run", "cannot write the run folder ro/run: Permission denied"),
            ("ro", "ro is not writable"),
        ):
            assert main(["run", "c.yaml", "--out", out, "-q", *TINY]) == EXIT_INPUT_ERROR
            _check(_one_line(capsys), [expect])
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def _chattr(flag: str, path: Path) -> bool:
    try:
        return subprocess.run(["chattr", flag, str(path)], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.parametrize(
    ("out", "expect"),
    [("imm/run", "cannot write the run folder imm/run: Operation not permitted"), ("imm", "imm is not writable")],
)
def test_out_in_an_immutable_folder(out: str, expect: str, case_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(case_dir, {"c.yaml": CONFIG})
    imm = case_dir / "imm"
    imm.mkdir()
    if not _chattr("+i", imm):
        pytest.skip("chattr +i is not permitted here")
    try:
        assert main(["run", "c.yaml", "--out", out, "-q", "--overwrite", *TINY]) == EXIT_INPUT_ERROR
        _check(_one_line(capsys), [expect])
        assert list(imm.iterdir()) == []
        assert sorted(p.name for p in case_dir.iterdir()) == ["c.yaml", "imm"]
    finally:
        _chattr("-i", imm)


def test_a_plugin_calling_sys_exit_exits_2_in_a_real_process(tmp_path: Path) -> None:
    _write(tmp_path, {"c.yaml": CONFIG, "bad_input_exit_proc.py": "import sys\nsys.exit(3)\n"})
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vfl_sim.cli",
            "run",
            "c.yaml",
            "--out",
            "out",
            "-q",
            "--set",
            "plugins=[bad_input_exit_proc]",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == EXIT_INPUT_ERROR
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert lines == ["error: plugins: 'bad_input_exit_proc' called sys.exit(3) while being imported"]
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------
# Damaged and busy run folders


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad-input-run")
    (root / "c.yaml").write_text(CONFIG)
    out = root / "run"
    assert main(["run", str(root / "c.yaml"), "--out", str(out), "--quiet", *TINY]) == 0
    return out


@pytest.fixture(scope="module")
def live_pid() -> Iterator[int]:
    """The pid of a process that runs for the whole module (another 'writer')."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _truncate(path: str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        file = run / path
        file.write_bytes(file.read_bytes()[:100])

    return damage


def _garble(path: str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        (run / path).write_bytes(os.urandom(4096))

    return damage


def _delete(path: str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        target = run / path
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    return damage


def _to_partial(run: Path) -> None:
    shutil.copy(run / "config.yaml", run.parent / "saved.yaml")
    run.rename(run.parent / ".run.partial")


def _lock(run: Path) -> None:
    pid = int((run.parent / "pid").read_text())
    (run.parent / ".run.lock").write_text(f"{pid} {socket.gethostname()}\n")


RESUME = "--out run --resume"
FOLDER_CASES = [
    (
        "audit-truncated-checkpoint",
        "audit run",
        _truncate("checkpoints/retrain/party_1.pt"),
        ["the checkpoint of 'retrain' is unreadable: run/checkpoints/retrain/party_1.pt: ", RESUME],
    ),
    (
        "audit-random-checkpoint",
        "audit run",
        _garble("checkpoints/original/top.pt"),
        ["the checkpoint of 'original' is unreadable: run/checkpoints/original/top.pt: ", RESUME],
    ),
    (
        "audit-deleted-checkpoint-file",
        "audit run",
        _delete("checkpoints/retrain/top.pt"),
        ["the checkpoint of 'retrain' is unreadable: run/checkpoints/retrain/top.pt: No such file", RESUME],
    ),
    (
        "audit-deleted-checkpoint",
        "audit run",
        _delete("checkpoints/retrain"),
        ["no complete checkpoint of retrain under checkpoints/", RESUME],
    ),
    (
        "audit-garbled-run-json",
        "audit run",
        _garble("checkpoints/retrain/run.json"),
        ["the checkpoint of 'retrain' is unreadable: run/checkpoints/retrain/run.json", RESUME],
    ),
    ("audit-corrupt-report", "audit run", _truncate("report.json"), ["run/report.json is unreadable (", RESUME]),
    (
        "audit-report-without-models",
        "audit run",
        lambda run: (run / "report.json").write_text("{}"),
        ["run/report.json is damaged", RESUME],
    ),
    (
        "audit-deleted-report",
        "audit run",
        _delete("report.json"),
        ["run is not a finished run folder (no report.json)"],
    ),
    ("audit-binary-config", "audit run", _garble("config.yaml"), ["run/config.yaml: not a UTF-8 text file"]),
    ("audit-not-a-run", "audit run", _delete("config.yaml"), ["run is not a run folder (no config.yaml)"]),
    (
        "run-into-finished-run",
        "run run/config.yaml --out run",
        None,
        ["output folder run exists and is not empty; choose another --out or pass --overwrite"],
    ),
    (
        "resume-another-request",
        "run run/config.yaml --out run --resume --set forget.classes=[1]",
        None,
        ["run was made with another config than this one"],
    ),
    (
        "partial-without-resume",
        "run saved.yaml --out run",
        _to_partial,
        ["a partial run of run exists in .run.partial", "--resume", "--overwrite"],
    ),
    ("audit-locked", "audit run", _lock, ["run folder run is being written by another vfl-sim process"]),
    ("locked", "run run/config.yaml --out run", _lock, ["run folder run is being written by another vfl-sim process"]),
    ("locked-overwrite", "run run/config.yaml --out run --overwrite", _lock, ["being written by another vfl-sim"]),
    ("locked-resume", "run run/config.yaml --out run --resume", _lock, ["being written by another vfl-sim process"]),
    (
        "locked-new-folder",
        "run run/config.yaml --out new",
        lambda run: (run.parent / ".new.lock").write_text(
            f"{(run.parent / 'pid').read_text()} {socket.gethostname()}\n"
        ),
        ["run folder new is being written"],
    ),
]


@pytest.mark.parametrize(("argv", "damage", "expect"), [c[1:] for c in FOLDER_CASES], ids=[c[0] for c in FOLDER_CASES])
def test_damaged_or_busy_run_folder_is_one_line_and_changes_nothing(
    argv: str,
    damage: Callable[[Path], None] | None,
    expect: list[str],
    finished_run: Path,
    live_pid: int,
    case_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = case_dir / "run"
    shutil.copytree(finished_run, run)
    (case_dir / "pid").write_text(str(live_pid))
    if damage is not None:
        damage(run)
    before = _tree(case_dir)
    assert main([*argv.split(), "--quiet", *(TINY if argv.startswith("run") else [])]) == EXIT_INPUT_ERROR
    _check(_one_line(capsys), expect)
    assert _tree(case_dir) == before


# ------------------------------------------------------------------------------------------
# Recovery: --resume runs again what is damaged; a lock of a dead process is taken over


def _models(report_path: Path) -> dict[str, dict[str, float]]:
    return {n: m["output"] for n, m in json.loads(report_path.read_text())["models"].items()}


def test_resume_retrains_a_truncated_checkpoint_of_a_partial_run(
    finished_run: Path, case_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = case_dir / "run"
    shutil.copytree(finished_run, run)
    _truncate("checkpoints/original/top.pt")(run)
    _to_partial(run)
    assert main(["run", "saved.yaml", "--out", "run", "--resume", "--quiet", *TINY]) == 0
    assert "checkpoint of 'original' is unreadable" in capsys.readouterr().err  # logged, then trained again
    assert sorted(p.name for p in case_dir.iterdir()) == ["run", "saved.yaml"]  # no partial folder, no lock
    assert _models(run / "report.json") == _models(finished_run / "report.json")  # the same seeded model
    assert main(["audit", "run", "--quiet"]) == 0


def test_resume_repairs_a_finished_run_that_audit_refuses(
    finished_run: Path, case_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = case_dir / "run"
    shutil.copytree(finished_run, run)
    _garble("checkpoints/retrain/party_0.pt")(run)
    assert main(["audit", "run", "--quiet"]) == EXIT_INPUT_ERROR
    capsys.readouterr()
    assert main(["run", "run/config.yaml", "--out", "run", "--resume", "--quiet", *TINY]) == 0
    assert "checkpoint of 'retrain' is unreadable" in capsys.readouterr().err
    assert main(["audit", "run", "--quiet"]) == 0
    assert _models(run / "report.json") == _models(finished_run / "report.json")
    assert sorted(p.name for p in case_dir.iterdir()) == ["run"]


@pytest.mark.parametrize("owner", ["dead", "this-pid"])
def test_a_lock_of_a_dead_process_is_taken_over_and_released(
    owner: str, case_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A lock whose pid is gone, or that has this process's pid without this process holding
    it (a restarted container starts its pids low again), was left by a process that died."""
    _write(case_dir, {"c.yaml": CONFIG, "full/x": "x"})
    if owner == "dead":
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        pid = gone.pid
    else:
        pid = os.getpid()
    (case_dir / ".full.lock").write_text(f"{pid} {socket.gethostname()}\n")
    # Taken over (the run gets as far as the next check: the folder is not empty), then released.
    assert main(["run", "c.yaml", "--out", "full", "--quiet", *TINY]) == EXIT_INPUT_ERROR
    err = capsys.readouterr().err
    assert f"taking over the lock of full left by pid {pid}" in " ".join(err.split())
    assert "output folder full exists and is not empty" in err
    assert sorted(p.name for p in case_dir.iterdir()) == ["c.yaml", "full"]  # the lock is gone


def test_the_lock_is_held_while_the_run_writes(
    finished_run: Path, case_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vfl_sim.experiment import Experiment
    from vfl_sim.runfolder import lock_file

    seen: list[str] = []

    def spy(self: Experiment, work: Path, *args: object) -> dict[str, object]:
        seen.append(lock_file(case_dir / "run").read_text())
        raise KeyboardInterrupt  # stop before training

    monkeypatch.setattr(Experiment, "_run", spy)
    shutil.copy(finished_run / "config.yaml", case_dir / "c.yaml")
    assert main(["run", "c.yaml", "--out", "run", "--quiet", *TINY]) == 130
    assert seen == [f"{os.getpid()} {socket.gethostname()}\n"]
    assert sorted(p.name for p in case_dir.iterdir()) == ["c.yaml"]  # released, nothing written


# ------------------------------------------------------------------------------------------
# A plugin that breaks while the run uses it


PLUGIN_STEP = """\
from typing import Any

from vfl_sim.methods import Party, PhaseParams, UnlearningContext, UnlearningMethod, party_op, register_method


@party_op("bad_input_step")
def bad_input_step(party: Party) -> dict[str, Any]:
    return {"x": STEP}


@register_method("bad_input_broken")
class Broken(UnlearningMethod[PhaseParams]):
    supports = frozenset({"class", "samples"})

    def unlearn(self, ctx: UnlearningContext) -> None:
        ctx.server.party_op(bad_input_step.name)
"""


def test_a_plugin_step_that_raises_is_named_and_the_run_resumes_once_fixed(
    case_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A party step of a plugin method that raises mid-run: exit 2, the error names the method,
    the plugin's file and line and the exception (no traceback); the trained original is kept,
    and once the plugin is fixed ``--resume`` finishes the run."""
    from vfl_sim.methods.registry import METHODS
    from vfl_sim.parties import party as party_module

    _write(case_dir, {"c.yaml": CONFIG, "bad_input_step_plugin.py": PLUGIN_STEP.replace("STEP", "1 / 0")})
    argv = ["run", "c.yaml", "--out", "out", "--quiet", *TINY, "--set", "methods=[bad_input_broken]"]
    argv += ["--set", "plugins=[bad_input_step_plugin.py]"]
    try:
        code = main(argv)
    finally:  # other tests list every registered method and step: leave the registries as they were
        METHODS.unregister("bad_input_broken")
        party_module._OPS.pop("bad_input_step", None)
    assert code == EXIT_INPUT_ERROR
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    errors = [line for line in (out + err).splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: method 'bad_input_broken' failed in bad_input_step_plugin.py:8: ZeroDivisionError: division by zero"
    ]
    assert not (case_dir / "out").exists() and (case_dir / ".out.partial").is_dir()

    # Fixed, in a fresh process (this one has the broken method registered).
    _write(case_dir, {"bad_input_step_plugin.py": PLUGIN_STEP.replace("STEP", "1")})
    done = subprocess.run(
        [sys.executable, "-m", "vfl_sim.cli", *argv, "--resume"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=case_dir,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((case_dir / "out" / "report.json").read_text())
    assert "bad_input_broken" in report["models"]
