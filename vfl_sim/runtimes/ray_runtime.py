"""The Ray runtime (``runtime: ray``): every passive party is a Ray actor.

Each actor builds its own :class:`~vfl_sim.parties.party.Party` from the experiment's config and its
own feature slice, which the driver puts into Ray's object store once (only that party's
columns travel to it, once, when the actor starts). The party then lives in the actor's memory
for the whole run: its bottom model, optimizer, schedule, snapshots, random stream and the
autograd graph between an ``Embed`` and its ``Backward``, so this is exact split learning with
no replayed forward pass. The server stays in the driver and drives the parties through
:class:`RayTransport`: one round sends every party its request as an actor call, all at once,
and waits for all replies with one ``ray.get``.

Every party draws its dropout masks from its own seeded random stream (kept in the party), and
building a model never moves a process's random stream, so a run gives the same results as
``runtime: local`` for the same seed. :class:`RayRuntime` starts a local Ray (or joins the
cluster at ``ray.address`` or ``$RAY_ADDRESS``), runs the experiment and always stops the
actors, and the local Ray if it started it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError

import vfl_sim.methods  # noqa: F401  (the built-in methods' party-side steps, in each actor's process)
from vfl_sim.config import ExperimentConfig, config_from_dict
from vfl_sim.data.dataset import VflDataset
from vfl_sim.data.partition import PartySlice
from vfl_sim.errors import VflSimError
from vfl_sim.experiment import Experiment, apply_threads, resolve_threads
from vfl_sim.parties.build import build_party
from vfl_sim.plugins import import_plugins
from vfl_sim.progress import ProgressReporter
from vfl_sim.protocol import Backward, Embed, LocalOp, Reply, Request
from vfl_sim.runtimes.base import Runtime, register_runtime
from vfl_sim.runtimes.ray_start import connect_ray, ray_address
from vfl_sim.transport import Transport

if TYPE_CHECKING:
    from vfl_sim.parties.party import Party

ACTOR_PREFIX = "vfl-sim"

log = logging.getLogger("vfl_sim")


class PartyActorError(VflSimError, RuntimeError):
    """A party's actor raised, died, or did not answer (or start) in time; the message names it
    (one line, as the CLI prints every :class:`~vfl_sim.errors.VflSimError`)."""


class PartyActor:
    """One party, resident in a Ray actor. Ray builds it in a worker process; the driver only
    holds its handle (``ray.remote(PartyActor)``).

    Parameters
    ----------
    config_json
        The experiment's config as JSON (the actor rebuilds it, plugins included).
    party_id
        The party this actor is.
    view
        The party's columns of every sample (row ``i`` is sample id ``i``); passed as an object
        reference, which Ray resolves to the array before the actor is built.
    device
        Where the party computes; ``cuda`` needs ``ray.party_gpus`` > 0.
    work_dir
        The driver's working directory: where plugin modules next to the config are found, and
        the actor's working directory when it exists on the actor's node.
    threads
        Torch intra-op threads of this actor: the driver's (:func:`~vfl_sim.experiment.resolve_threads`).
    """

    def __init__(
        self, config_json: str, party_id: str, view: np.ndarray, device: str, work_dir: str, threads: int
    ) -> None:
        cfg = config_from_dict(json.loads(config_json))
        if work_dir and os.path.isdir(work_dir):
            # Relative paths in requests (checkpoint files) mean what they mean to the driver,
            # wherever Ray started this worker; on another node the folder may not exist.
            os.chdir(work_dir)
        if cfg.plugins:
            # Plugin methods register their party-side steps on import, in this process too.
            if work_dir and work_dir not in sys.path:
                sys.path.insert(0, work_dir)
            import_plugins(cfg.plugins)
        apply_threads(threads)
        where = torch.device(device)
        if where.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                f"device is {device} but Ray gave this actor no GPU; set ray.party_gpus (for example 0.25)"
            )
        # The object store hands out a read-only buffer; the party keeps a private copy.
        self.party: Party = build_party(cfg, party_id, torch.from_numpy(np.array(view)), where)

    def ready(self) -> str:
        """The party id, once the actor is built (the first call waits for the constructor)."""
        return self.party.party_id

    def handle(self, request: Request) -> Reply:
        """Answer one protocol request."""
        return self.party.handle(request)


def describe_request(request: Request) -> str:
    """A short name of a request for error messages."""
    if isinstance(request, LocalOp):
        return f"LocalOp '{request.name}'"
    if isinstance(request, Backward):
        return "Backward"
    if isinstance(request, Embed):
        return "Embed"
    return type(request).__name__


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(part.strip() for part in text.strip().splitlines() if part.strip())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _reason(exc: BaseException) -> str:
    """What went wrong inside an actor, in one line (Ray's own message, with the remote
    traceback, stays on the chained exception)."""
    if isinstance(exc, RayTaskError) and exc.cause is not None:
        return f"{type(exc.cause).__name__}: {_one_line(str(exc.cause))}"
    if isinstance(exc, RayActorError):
        lines = [line.strip() for line in (exc.error_msg or "").splitlines() if line.strip()]
        if exc.actor_init_failed and lines:
            return lines[-1]  # the constructor's exception, as the remote traceback ends
        return f"its actor died ({type(exc).__name__}); see the Ray worker logs"
    return f"{type(exc).__name__}: {_one_line(str(exc))}"


class RayTransport(Transport):
    """Protocol rounds as calls to one Ray actor per party.

    Parameters
    ----------
    actors
        ``party_id -> actor handle`` of :class:`PartyActor`, in party order.
    round_timeout
        Seconds to wait for the replies of one round; then an error naming the silent parties.
    party_cpus, party_gpus
        What each actor asked Ray for (named in the error when actors cannot be placed).
    """

    def __init__(
        self,
        actors: Mapping[str, Any],
        *,
        round_timeout: float | None = None,
        party_cpus: float = 1.0,
        party_gpus: float = 0.0,
    ) -> None:
        super().__init__(list(actors))
        self._actors: dict[str, Any] = dict(actors)
        self.round_timeout = round_timeout
        self._cpus, self._gpus = party_cpus, party_gpus  # what each actor asked Ray for, for errors

    @property
    def actors(self) -> dict[str, Any]:
        """The actor handles by party id (empty once closed)."""
        return dict(self._actors)

    def wait_ready(self, timeout: float) -> None:
        """Wait until every actor is placed and its party built; raise naming those that are not."""
        refs = {pid: actor.ready.remote() for pid, actor in self._actors.items()}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
        late = [pid for pid, ref in refs.items() if ref not in ready]
        failed: list[str] = []
        first: RayError | None = None
        for pid, ref in refs.items():
            if ref in ready:
                try:
                    ray.get(ref)
                except RayError as exc:
                    failed.append(f"{pid} failed to start: {_reason(exc)}")
                    first = first or exc
        if late:
            have = ray.available_resources()
            failed.append(
                f"{', '.join(late)} did not start within {timeout:.0f}s (ray.start_timeout): Ray could not place "
                f"the actor or build the party; each party asks for {self._cpus:g} CPUs (ray.party_cpus) and "
                f"{self._gpus:g} GPUs (ray.party_gpus), and Ray has {have.get('CPU', 0):g} CPUs and "
                f"{have.get('GPU', 0):g} GPUs free"
            )
        if failed:
            raise PartyActorError("; ".join(failed)) from first

    def _exchange(self, requests: Mapping[str, Request]) -> dict[str, Reply]:
        if not self._actors:
            raise RuntimeError("the Ray transport is closed")
        # All calls are submitted before waiting on any, so the parties compute in parallel.
        refs = {pid: self._actors[pid].handle.remote(req) for pid, req in requests.items()}
        try:
            values = ray.get(list(refs.values()), timeout=self.round_timeout)
        except (RayError, GetTimeoutError) as exc:
            raise self._failure(refs, requests, exc) from exc
        return dict(zip(refs, values))

    def _failure(
        self, refs: Mapping[str, Any], requests: Mapping[str, Request], first: BaseException
    ) -> PartyActorError:
        """The error of a failed round, naming every party that failed or did not answer."""
        # ray.get raised for one reference without saying whose; ask each reference on its own.
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=0)
        failed: list[str] = []
        silent: list[str] = []
        for pid, ref in refs.items():
            if ref not in ready:
                silent.append(pid)
                continue
            try:
                ray.get(ref, timeout=0)
            except RayError as exc:
                failed.append(f"{pid} failed on {describe_request(requests[pid])}: {_reason(exc)}")
        if silent and isinstance(first, GetTimeoutError):
            failed.append(f"no reply from {', '.join(silent)} within {self.round_timeout:.0f}s (ray.round_timeout)")
        if not failed:
            failed.append(f"a party's actor failed: {_reason(first)}")
        return PartyActorError("; ".join(failed))

    def close(self) -> None:
        """Kill every party actor (their state is lost; checkpoints are already on disk)."""
        actors, self._actors = self._actors, {}
        for actor in actors.values():
            try:
                ray.kill(actor, no_restart=True)
            except (RayError, ValueError):
                pass  # already dead, or Ray was shut down under us


def ray_transport(
    cfg: ExperimentConfig, dataset: VflDataset, slices: list[PartySlice], device: torch.device
) -> RayTransport:
    """Start one :class:`PartyActor` per party on the Ray that this process is connected to,
    wait until all are built, and return the transport that reaches them.

    Each party's slice is cut here and put into the object store once; its actor receives only
    that slice. On any failure the actors started so far are killed.
    """
    if not ray.is_initialized():
        raise RuntimeError("Ray is not initialized: call ray.init() first, or use run_on_ray")
    config_json = json.dumps(cfg.model_dump(mode="json"))
    # The driver's count, not the actor's CPUs: the numbers must not depend on the runtime.
    threads = resolve_threads(cfg)
    remote = ray.remote(PartyActor)
    run = uuid.uuid4().hex[:8]
    actors: dict[str, Any] = {}
    try:
        for s in slices:
            view = ray.put(s.take(dataset.features))
            actors[s.party_id] = remote.options(
                name=f"{ACTOR_PREFIX}-{run}-{s.party_id}",
                num_cpus=cfg.ray.party_cpus,
                num_gpus=cfg.ray.party_gpus,
                max_restarts=0,  # a restarted party would have lost its model: fail instead
            ).remote(config_json, s.party_id, view, str(device), os.getcwd(), threads)
        transport = RayTransport(
            actors, round_timeout=cfg.ray.round_timeout, party_cpus=cfg.ray.party_cpus, party_gpus=cfg.ray.party_gpus
        )
        transport.wait_ready(cfg.ray.start_timeout)
    except BaseException:
        RayTransport(actors).close()
        raise
    return transport


def local_ray_cpus(cfg: ExperimentConfig) -> int:
    """Logical CPUs of a local Ray: ``ray.num_cpus``, or exactly what the party actors ask for."""
    return cfg.ray.num_cpus or max(1, math.ceil(cfg.partition.parties * cfg.ray.party_cpus))


def init_ray(cfg: ExperimentConfig) -> bool:
    """Connect to Ray for ``cfg`` (:func:`~vfl_sim.runtimes.ray_start.connect_ray`): the cluster
    at ``ray.address`` or ``$RAY_ADDRESS``, else a new local Ray with :func:`local_ray_cpus` CPUs.
    Returns whether this call started or joined Ray (False when this process was already
    connected, and then it is left as it is)."""
    return connect_ray(ray_address(cfg.ray.address), num_cpus=local_ray_cpus(cfg))


@register_runtime("ray")
class RayRuntime(Runtime):
    """``runtime: ray``: one Ray actor per party, on a local Ray or the cluster at ``ray.address``.

    Ray is started (or joined) only if this process is not connected to it yet; the actors are
    always killed, and Ray is shut down again if this runtime connected it, whether the run
    succeeds or fails.
    """

    def resolve_out(self, out: Path) -> Path:
        return out.expanduser().resolve()  # parties write their checkpoints from other processes

    @contextmanager
    def parties(self, exp: Experiment) -> Iterator[Transport | None]:
        log.info("starting the ray runtime (%d party actors)", len(exp.slices))
        started = init_ray(exp.cfg)
        transport: RayTransport | None = None
        try:
            transport = ray_transport(exp.cfg, exp.dataset, exp.slices, exp.device)
            yield transport
        finally:
            if transport is not None:
                transport.close()
            if started:
                ray.shutdown()


def run_on_ray(
    exp: Experiment,
    out: str | Path,
    *,
    progress: ProgressReporter | None = None,
    overwrite: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Run ``exp`` with its parties as Ray actors and return the report (also in ``out``);
    :class:`RayRuntime` whatever ``exp``'s config names."""
    return RayRuntime().run(exp, Path(out), progress=progress, overwrite=overwrite, resume=resume)
