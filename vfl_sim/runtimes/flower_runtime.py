"""Running an experiment on Flower: ``runtime: flower-sim`` and ``runtime: flower-deploy``.

The experiment runs inside the ServerApp (:mod:`vfl_sim.runtimes.flower_app`), the parties in
ClientApps; this module gets it there with Flower's own tools, as a user would by hand:

- ``flower-sim``: a SuperLink in simulation mode on 127.0.0.1, and ``flwr run`` with
  ``num-supernodes`` = the number of parties; Flower runs the nodes on its Ray backend.
- ``flower-deploy``: a SuperLink and one SuperNode per party (``--node-config
  "partition-id=K num-partitions=N"``) started as processes on 127.0.0.1, or, with
  ``flower.superlink``, a SuperLink that is already running with its SuperNodes (the
  docker-compose demo); then ``flwr run`` against it.

The app submitted is a generated folder holding only a ``pyproject.toml`` (:func:`write_app`):
the code is this installed package, which every Flower process imports from the same Python
environment, since the SuperLink is started with ``--disable-runtime-dependency-installation``
(otherwise it would ``uv sync`` the app's dependencies, torch included, for every run).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import tomli_w

from vfl_sim import __version__
from vfl_sim.config import ExperimentConfig
from vfl_sim.data.dataset import VflDataset
from vfl_sim.data.partition import PartySlice
from vfl_sim.experiment import Experiment
from vfl_sim.progress import ProgressReporter
from vfl_sim.runfolder import check_before_start
from vfl_sim.runtimes.base import Runtime, register_runtime
from vfl_sim.runtimes.flower_app import APP_CONFIG, DATA_KEY, SERVER_KEY, hand_off
from vfl_sim.runtimes.flower_handoff import PARTY_DATA_ENV, SERVER_DIR_ENV, external_folders
from vfl_sim.runtimes.flower_launch import FlowerProcesses, FlowerRuntimeError, free_port

log = logging.getLogger("vfl_sim")

CONNECTION = "vfl-sim"
COMPONENTS = {
    "serverapp": "vfl_sim.runtimes.flower_app:server_app",
    "clientapp": "vfl_sim.runtimes.flower_app:client_app",
}


def app_pyproject() -> dict[str, Any]:
    """The Flower App's ``pyproject.toml`` (the repository's own declares the same app)."""
    return {
        "project": {
            "name": "vfl-sim-app",
            "version": __version__,
            "description": "vfl-sim parties (ClientApp) and server (ServerApp)",
            "license": "Apache-2.0",
            "dependencies": [],
        },
        "tool": {"flwr": {"app": {"publisher": "vfl-sim", "components": COMPONENTS, "config": APP_CONFIG}}},
    }


def write_app(folder: Path) -> Path:
    """Write the Flower App folder that ``flwr run`` packs and sends to the SuperLink."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(tomli_w.dumps(app_pyproject()))
    return folder


def federation_config(cfg: ExperimentConfig) -> dict[str, Any]:
    """``flwr run --federation-config`` of ``flower-sim``: one simulated SuperNode per party."""
    return {"num-supernodes": cfg.partition.parties, "client-resources-num-cpus": cfg.flower.client_cpus}


def shipped_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` as it travels to Flower's processes, which need not share the submitter's working
    directory: the dataset folder made absolute."""
    if cfg.data.root is None:
        return cfg
    data = cfg.data.model_copy(update={"root": str(Path(cfg.data.root).expanduser().resolve())})
    return cfg.model_copy(update={"data": data})


def run_on_flower(
    cfg: ExperimentConfig,
    out: Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    on_line: Callable[[str], None] | None = None,
    keep: Callable[[FlowerProcesses], None] | None = None,
    data: tuple[VflDataset, list[PartySlice]] | None = None,
) -> dict[str, Any]:
    """Run ``cfg`` on its Flower runtime and return the report the ServerApp wrote to ``out``.

    ``on_line`` receives the run's log lines as they arrive. ``keep`` is called with the
    processes once the run is submitted (tests use it to kill a party). ``data`` is the
    dataset and party slices of ``cfg`` where the caller has them, to hand each party its own
    columns (:mod:`vfl_sim.runtimes.flower_handoff`). The processes are always stopped; their
    logs are copied into ``out/flower_logs`` when the run succeeds, and kept in a temporary
    folder named in the error when it fails.
    """
    if cfg.runtime not in ("flower-sim", "flower-deploy"):
        raise ValueError(f"runtime '{cfg.runtime}' does not run on Flower")
    out = out.expanduser().resolve()
    external = cfg.runtime == "flower-deploy" and cfg.flower.superlink is not None
    handoff = external_folders() if external else None  # before anything starts
    folder = Path(tempfile.mkdtemp(prefix="vfl-sim-flower-"))
    server_dir, party_root = handoff or (folder / "server", folder / "party-data")
    # The ServerApp inherits the SuperLink's environment, each party its SuperNode's; a
    # simulated party runs in the SuperLink's simulation process, so that one gets both.
    to_server = {SERVER_DIR_ENV: str(server_dir), PARTY_DATA_ENV: ""}
    to_parties = {SERVER_DIR_ENV: "", PARTY_DATA_ENV: str(party_root)}
    ca = Path(cfg.flower.root_certificates) if cfg.flower.root_certificates else None
    run_config: dict[str, Any] = {}
    try:
        with FlowerProcesses(folder) as procs:
            federation = None
            if cfg.runtime == "flower-sim":
                sim_env = {**to_server, PARTY_DATA_ENV: str(party_root)}
                address = procs.start_superlink(free_port(), simulation=True, env=sim_env)
                federation = federation_config(cfg)
            elif cfg.flower.superlink is None:
                address = procs.start_superlink(free_port(), env=to_server)
                procs.start_supernodes(address, cfg.partition.parties, env=to_parties)
            else:
                address = cfg.flower.superlink
            procs.add_connection(CONNECTION, address, root_certificates=ca)
            run_config = hand_off(
                shipped_config(cfg),
                str(out),
                server_dir=server_dir,
                party_root=party_root,
                data=data,
                overwrite=overwrite,
                resume=resume,
            )
            run_id = procs.submit(write_app(folder / "app"), CONNECTION, run_config, federation)
            if keep is not None:
                keep(procs)
            status = procs.wait(run_id, CONNECTION, timeout=cfg.flower.run_timeout, on_line=on_line)
    finally:
        if run_config:  # what the run did not take is removed with it
            (server_dir / f"{run_config[SERVER_KEY]}.json").unlink(missing_ok=True)
            shutil.rmtree(party_root / str(run_config[DATA_KEY]), ignore_errors=True)
    # On failure the logs stay in `folder` for the error message; on success they join the run.
    if status.get("status") != "finished:completed":
        detail = status.get("status-details") or status.get("status")
        raise FlowerRuntimeError(
            f"Flower run {run_id} ended '{status.get('status')}': {detail}; logs kept in {folder / 'logs'}"
        )
    report_path = out / "report.json"
    if not report_path.is_file():
        raise FlowerRuntimeError(
            f"Flower run {run_id} completed but wrote no {report_path}: the ServerApp writes the run folder on "
            f"its own filesystem (mount it at the same path); logs kept in {folder / 'logs'}"
        )
    shutil.copytree(folder / "logs", out / "flower_logs", dirs_exist_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
    report: dict[str, Any] = json.loads(report_path.read_text())
    return report


class _FlowerRuntime(Runtime):
    """A Flower runtime: the server runs in Flower's ServerApp, so it gives no transport here."""

    drives_parties: ClassVar[bool] = False

    def resolve_out(self, out: Path) -> Path:
        return out.expanduser().resolve()  # the ServerApp writes it from another process

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
        out = self.resolve_out(out)
        check_before_start(out, overwrite, resume)  # before any process starts
        log.info("starting the %s runtime (%d parties)", self.name, len(exp.slices))
        return run_on_flower(
            exp.cfg, out, overwrite=overwrite, resume=resume, on_line=on_line, data=(exp.dataset, exp.slices)
        )


@register_runtime("flower-sim")
class FlowerSimRuntime(_FlowerRuntime):
    """``runtime: flower-sim``: Flower's simulation engine runs one SuperNode per party."""


@register_runtime("flower-deploy")
class FlowerDeployRuntime(_FlowerRuntime):
    """``runtime: flower-deploy``: one SuperNode process per party, or the SuperLink at
    ``flower.superlink`` with its SuperNodes (the docker-compose demo)."""
