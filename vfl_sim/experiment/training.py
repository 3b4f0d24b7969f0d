"""Training: the original model on every training sample, and each unlearning method from it."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from vfl_sim.audits.request_leakage import PartyViewRecorder
from vfl_sim.errors import PluginError, VflSimError, error_line
from vfl_sim.experiment.checkpoints import save_checkpoint
from vfl_sim.experiment.spec import ExperimentSpec
from vfl_sim.forget import ORIGINAL
from vfl_sim.progress import ProgressReporter
from vfl_sim.seeding import derive_seed, torch_generator
from vfl_sim.server.coordinator import UnlearningCoordinator
from vfl_sim.server.server import Server, count_batches
from vfl_sim.server.unlearning import UnlearningMethod

log = logging.getLogger("vfl_sim")


def train_original(spec: ExperimentSpec, server: Server, progress: ProgressReporter) -> dict[str, Any]:
    """Train the original model; returns its runtime and communication."""
    cfg = spec.cfg
    train_ids = torch.from_numpy(spec.dataset.train_ids)
    steps = count_batches(train_ids.numel(), cfg.train.batch_size)
    log.info("training the original model on %d samples, %d parties", train_ids.numel(), len(spec.slices))
    before = server.transport.stats.snapshot()
    start = time.perf_counter()
    with progress.phase("train original", cfg.train.epochs * steps) as on_step:
        server.train_epochs(
            train_ids,
            epochs=cfg.train.epochs,
            batch_size=cfg.train.batch_size,
            optim=cfg.train,
            generator=torch_generator(derive_seed(cfg.seed, "batches", ORIGINAL)),
            on_step=on_step,
        )
    return {
        "runtime_s": time.perf_counter() - start,
        "communication": server.transport.stats.since(before).to_dict(),
    }


_PACKAGE = Path(__file__).resolve().parents[1]
_INSTALLED = {Path(p).resolve() for p in {sys.prefix, sys.base_prefix, sys.exec_prefix}}


def _plugin_frame(exc: BaseException) -> str | None:
    """``file:line`` of the innermost frame of ``exc``'s traceback in a user's own code (not
    vfl-sim, not the Python installation or its packages), or ``None`` when there is none."""
    found = None
    tb = exc.__traceback__
    while tb is not None:
        path = Path(tb.tb_frame.f_code.co_filename).resolve()
        if not path.is_relative_to(_PACKAGE) and not any(path.is_relative_to(p) for p in _INSTALLED):
            found = f"{path.name}:{tb.tb_lineno}"
        tb = tb.tb_next
    return found


def apply_method(
    server: Server,
    coordinator: UnlearningCoordinator,
    method: UnlearningMethod,
    progress: ProgressReporter,
    checkpoints: Path,
) -> dict[str, Any]:
    """Run ``method`` from the original and checkpoint its model; returns its cost."""
    ctx = coordinator.context(method)
    # What each party sees of the method's messages, for the request-leakage audit.
    view = PartyViewRecorder(server.party_ids, int(server.labels.numel()))
    server.transport.taps.append(view.observe)
    with progress.phase(method.label, method.estimated_steps(ctx)) as on_step:
        ctx.on_step = on_step
        try:
            result = coordinator.run(method, ctx)
        except VflSimError:
            raise
        except Exception as exc:
            where = _plugin_frame(exc)
            if where is None:
                raise  # vfl-sim's own code failed: a bug, whose traceback is what fixes it
            raise PluginError(f"method '{method.label}' failed in {where}: {error_line(exc)}") from exc
        finally:
            server.transport.taps.remove(view.observe)
    log.info("%s done in %.2fs", method.label, result.runtime_s)
    run = result.to_dict()
    forget = coordinator.forget
    if forget.forget_ids.numel() > 0:
        train_ids = torch.cat([forget.forget_ids, forget.retain_ids]).numpy()
        run["request_leakage"] = view.compute(forget.forget_ids.numpy(), train_ids)
    save_checkpoint(server, method.label, checkpoints, run)
    return run
