"""``runtime: ray``: every party a Ray actor, on a local Ray started for the tests.

The first test lets :func:`run_on_ray` start and stop its own Ray and checks that no Ray process
is left; the others share one local Ray (a module fixture, shut down and checked at the end).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import ray
import torch

from tests.conftest import assert_close, small_config
from vfl_sim.config import ExperimentConfig
from vfl_sim.errors import ConfigError
from vfl_sim.experiment import prepare
from vfl_sim.protocol import Embed, LocalOp
from vfl_sim.runtimes.ray_runtime import (
    ACTOR_PREFIX,
    PartyActorError,
    RayTransport,
    init_ray,
    ray_transport,
    run_on_ray,
)

pytestmark = pytest.mark.processes

TINY_DATA = {
    "name": "synthetic",
    "synthetic": {"samples": 240, "features": 8, "classes": 3, "informative_per_party": 2},
}
RAY_DAEMONS = ("raylet", "gcs_server")


def _config(**sections: object) -> ExperimentConfig:
    defaults: dict[str, object] = {
        "runtime": "ray",
        "data": TINY_DATA,
        "partition": {"parties": 2},
        "audit": {"relearning": {"steps": 2}, "plots": False},
    }
    return small_config(**{**defaults, **sections})


def _ray_processes() -> list[str]:
    """Ray's processes still running below this one (exited ones that nobody reaped, zombies,
    do not count)."""
    try:
        import psutil  # Ray puts its own copy on sys.path (ray/thirdparty_files) when imported
    except ImportError:
        return _ray_processes_from_ps()
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            name, cmd = child.name(), " ".join(child.cmdline())
        except psutil.NoSuchProcess:
            continue
        if name in RAY_DAEMONS or name.startswith("ray::") or "/ray/" in cmd:
            found.append(f"{child.pid} {name}")
    return found


def _ray_processes_from_ps() -> list[str]:
    import os

    rows = subprocess.run(["ps", "-eo", "pid=,ppid=,stat=,comm="], capture_output=True, text=True, check=True)
    table = [line.split(None, 3) for line in rows.stdout.splitlines()]
    below, grew = {os.getpid()}, True
    while grew:
        more = {int(pid) for pid, ppid, _, _ in table if int(ppid) in below}
        grew, below = not more <= below, below | more
    return [
        f"{pid} {comm}"
        for pid, _, stat, comm in table
        if int(pid) in below and not stat.startswith("Z") and (comm in RAY_DAEMONS or comm.startswith("ray::"))
    ]


def _assert_no_ray_processes(timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while (left := _ray_processes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [], f"Ray processes left running: {left}"


def _our_actors() -> list[str]:
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(ACTOR_PREFIX)]


def _assert_same_outputs(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["models"].keys() == b["models"].keys()
    for name, model in a["models"].items():
        other = b["models"][name]
        assert_close(model["output"], other["output"], tol=1e-6, where=name)
        # Same protocol, same messages: the byte count of every phase agrees too.
        assert other["communication"]["bytes_total"] == model["communication"]["bytes_total"], name
        assert other["communication"]["rounds"] == model["communication"]["rounds"], name
        if "relearning" in model:  # the attack drives the parties like a method
            for phase in ("top", "full"):
                curve, theirs = model["relearning"][phase]["curve"], other["relearning"][phase]["curve"]
                assert_close(curve["forget_acc"], theirs["forget_acc"], tol=1e-6, where=f"{name} {phase}")
                assert_close(curve["loss"], theirs["loss"], tol=1e-6, where=f"{name} {phase}")


def _assert_same_checkpoints(a: Path, b: Path, models: list[str], parties: list[str]) -> None:
    """Every model's bottom (written by its party) and top agree between two run folders."""
    for model in models:
        for name in [*parties, "top"]:
            mine = torch.load(a / "checkpoints" / model / f"{name}.pt", weights_only=True)
            theirs = torch.load(b / "checkpoints" / model / f"{name}.pt", weights_only=True)
            assert mine.keys() == theirs.keys()
            for key, tensor in mine.items():
                torch.testing.assert_close(theirs[key], tensor, rtol=0, atol=1e-6, msg=f"{model}/{name}/{key}")


def test_ray_matches_local_and_leaves_nothing_running(tmp_path: Path) -> None:
    """Three party actors give the local runtime's results, dropout included (each party draws
    its masks from its own random stream), with the same traffic; run_on_ray starts its own Ray
    and stops every process it started."""
    assert not ray.is_initialized(), "this test starts its own Ray; run it before the shared one"
    cfg = _config(
        partition={"parties": 3},
        model={"bottom_dropout": 0.2, "top_dropout": 0.2},
        methods=["retrain", "neggrad"],
    )
    local = prepare(cfg.model_copy(update={"runtime": "local"})).run(tmp_path / "local")
    report = run_on_ray(prepare(cfg), tmp_path / "ray")

    assert not ray.is_initialized()
    _assert_no_ray_processes()
    assert report["runtime"] == "ray"
    assert set(report["models"]) == {"original", "retrain", "neggrad"}
    assert "relearning" in report["models"]["neggrad"]
    _assert_same_outputs(local, report)
    parties = ["party_0", "party_1", "party_2"]
    for model in report["models"]:
        assert sorted(p.name for p in (tmp_path / "ray" / "checkpoints" / model).iterdir()) == sorted(
            [f"{p}.pt" for p in parties] + ["run.json", "top.pt"]
        )
    _assert_same_checkpoints(tmp_path / "local", tmp_path / "ray", list(report["models"]), parties)


@contextmanager
def ray_cluster(num_cpus: int = 2) -> Iterator[str]:
    """A Ray head node as a separate process (``ray start --head --block``), as a cluster is
    started by hand; yields its address. SIGTERM to the blocking ``ray start`` stops the
    processes it started; whatever is left of them is killed by pid."""
    import psutil

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_cli = str(Path(sys.executable).with_name("ray"))
    # A temp dir of its own: `ray start` writes its address to <temp dir>/ray_current_cluster, and
    # with the default /tmp/ray every bare ray.init() on this machine would join this cluster.
    temp_dir = tempfile.mkdtemp(prefix="vfl-ray-", dir="/tmp")  # short: Ray's socket paths live below
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", f"--port={port}", f"--num-cpus={num_cpus}", f"--temp-dir={temp_dir}"]
        + ["--include-dashboard=false", "--disable-usage-stats"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    address = f"127.0.0.1:{port}"
    started: list[Any] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            status = subprocess.run([ray_cli, "status", f"--address={address}"], capture_output=True, timeout=30)
            if status.returncode == 0:
                break
            assert head.poll() is None and time.monotonic() < deadline, "the Ray head node did not start"
            time.sleep(0.5)
        started = psutil.Process(head.pid).children(recursive=True)
        yield address
    finally:
        started = started or psutil.Process(head.pid).children(recursive=True)
        head.terminate()
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait(10)
        _, alive = psutil.wait_procs(started, timeout=10)
        for proc in alive:
            proc.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert alive == [], f"Ray head processes outlived ray start: {alive}"


def test_runs_against_a_cluster_address(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ray.address joins a running cluster (a relative run folder included: parties write their
    checkpoints where the driver means); $RAY_ADDRESS does too. Joining leaves the cluster up."""
    assert not ray.is_initialized(), "this test joins its own cluster; run it before the shared Ray"
    monkeypatch.chdir(tmp_path)
    with ray_cluster() as address:
        cfg = _config(
            ray={"address": address},
            train={"epochs": 1},
            methods=[{"name": "neggrad", "params": {"epochs": 1}}],
            audit={"relearning": {"enabled": False}, "plots": False},
        )
        report = run_on_ray(prepare(cfg), "runs/cluster")
        assert not ray.is_initialized()
        local = prepare(cfg.model_copy(update={"runtime": "local"})).run(tmp_path / "local")
        _assert_same_outputs(local, report)
        assert (tmp_path / "runs" / "cluster" / "checkpoints" / "neggrad" / "party_1.pt").is_file()

        monkeypatch.setenv("RAY_ADDRESS", address)
        assert init_ray(_config())
        try:
            assert ray.cluster_resources().get("CPU") == 2  # the cluster's, not a new local Ray's
            assert _our_actors() == []  # the run's actors are gone
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def shared_ray() -> Iterator[None]:
    """One local Ray for the rest of this module; afterwards no Ray process may be left."""
    ray.init(address="local", num_cpus=4, include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()
    _assert_no_ray_processes()


def test_party_request_on_a_running_ray(tmp_path: Path, shared_ray: None) -> None:
    """A party leaves: the Ray run matches the local one; on a Ray it did not start,
    run_on_ray kills its actors and leaves Ray running."""
    cfg = _config(
        forget={"kind": "party", "party": "party_1"},
        methods=["retrain", {"name": "remisvfu", "params": {"epochs": 2}}],
    )
    local = prepare(cfg.model_copy(update={"runtime": "local"})).run(tmp_path / "local")
    report = run_on_ray(prepare(cfg), tmp_path / "ray")
    assert ray.is_initialized()
    assert _our_actors() == []
    _assert_same_outputs(local, report)
    assert report["models"]["remisvfu"]["feature_recovery"] is not None
    _assert_same_checkpoints(tmp_path / "local", tmp_path / "ray", list(report["models"]), ["party_0", "party_1"])


def test_actor_errors_name_the_party(shared_ray: None) -> None:
    """An exception inside one actor, and an actor that died, fail the round with an error
    naming the party and the request; close() kills every actor."""
    cfg = _config()
    exp = prepare(cfg)
    transport = ray_transport(cfg, exp.dataset, exp.slices, exp.device)
    try:
        assert isinstance(transport, RayTransport) and transport.party_ids == ["party_0", "party_1"]
        assert len(_our_actors()) == 2
        # pydantic's error does not name the party: the transport has to.
        bad = LocalOp("configure", {"optim": {"lr": -1.0}})
        with pytest.raises(PartyActorError, match=r"^party_1 failed on LocalOp 'configure': ValidationError: .*lr"):
            transport.exchange({"party_0": LocalOp("digest"), "party_1": bad})
        # The other party answered, and both still do.
        replies = transport.broadcast(Embed(torch.arange(5), train=False))
        assert [tuple(r.embedding.shape) for r in replies.values()] == [(5, cfg.model.embedding_dim)] * 2  # type: ignore[union-attr]
        ray.kill(transport.actors["party_0"], no_restart=True)
        # ray.kill returns before the actor is gone: a call racing it may still be answered.
        deadline = time.monotonic() + 30.0
        with pytest.raises(PartyActorError, match=r"^party_0 failed on Embed: its actor died"):
            while time.monotonic() < deadline:
                transport.broadcast(Embed(torch.arange(5), train=False))
                time.sleep(0.2)
    finally:
        transport.close()
    assert _our_actors() == []
    with pytest.raises(RuntimeError, match="closed"):
        transport.broadcast(Embed(torch.arange(5), train=False))


def test_actors_that_cannot_be_placed_fail_in_time(shared_ray: None) -> None:
    """Parties asking for more CPUs than Ray has: an error naming them within start_timeout,
    and the actors that did start are killed."""
    cfg = _config(ray={"party_cpus": 3, "start_timeout": 3})  # 2 x 3 CPUs on a 4-CPU Ray
    exp = prepare(cfg)
    start = time.monotonic()
    with pytest.raises(PartyActorError, match=r"party_[01] did not start within 3s .*asks for 3 CPUs"):
        ray_transport(cfg, exp.dataset, exp.slices, exp.device)
    assert time.monotonic() - start < 30
    assert _our_actors() == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_parties_without_a_gpu_fail_to_start(shared_ray: None) -> None:
    """A constructor that raises: the error names every party and says why."""
    cfg = _config()
    exp = prepare(cfg)
    with pytest.raises(PartyActorError, match=r"^party_0 failed to start: RuntimeError: .*ray.party_gpus.*; party_1"):
        ray_transport(cfg, exp.dataset, exp.slices, torch.device("cuda"))
    assert _our_actors() == []


@pytest.mark.parametrize(
    ("ray_section", "message"),
    [
        ({"address": "localhost"}, "ray.address must be host:port"),
        ({"address": "ray://head"}, "ray.address must be host:port"),
        ({"address": "head:6379", "num_cpus": 4}, "ray.num_cpus sizes a local Ray"),
        ({"party_cpus": 1.5}, "fractions of one CPU or GPU, or whole numbers"),
        ({"party_cpus": 0}, "ray.party_cpus"),
        ({"num_cpus": 3}, r"ray.num_cpus is 3 but the 4 party actors ask for 4 CPUs"),
    ],
)
def test_ray_config_errors(ray_section: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        small_config(runtime="ray", partition={"parties": 4}, ray=ray_section)


def test_ray_config_accepts_cluster_addresses() -> None:
    for address in ("auto", "10.0.0.5:6379", "ray://head.example:10001"):
        assert small_config(runtime="ray", ray={"address": address}).ray.address == address


def test_cli_runs_the_ray_runtime(tmp_path: Path) -> None:
    """`vfl-sim run` with `runtime: ray` goes through the Ray actors and leaves no Ray behind."""
    import yaml

    from vfl_sim.cli import main
    from vfl_sim.config import dump_config

    cfg = _config(methods=["retrain"], train={"epochs": 1})
    path = tmp_path / "ray.yaml"
    path.write_text(dump_config(cfg))
    assert yaml.safe_load(path.read_text())["runtime"] == "ray"
    connected = ray.is_initialized()  # an earlier test's Ray may still be up: then it is reused
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    local = prepare(cfg.model_copy(update={"runtime": "local"})).run(tmp_path / "local")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["runtime"] == "ray"
    for name, model in local["models"].items():
        assert_close(report["models"][name]["output"], model["output"], where=name)
    assert ray.is_initialized() == connected  # the run stops only a Ray it started
    if not connected:
        assert not _ray_processes()
