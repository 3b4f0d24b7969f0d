"""The experiment: a prepared :class:`ExperimentSpec` that runs into a run folder.

:meth:`Experiment.run` trains the original, runs every method and control, audits and writes
the run folder atomically (into a partial sibling folder that is renamed at the end, resumable
after a crash); :meth:`Experiment.reaudit` audits a finished run again from its checkpoints.
Each job lives in its own module: :mod:`.setup` (preparation), :mod:`.resume` and
:mod:`.checkpoints` (the run folder), :mod:`.training`, :mod:`.gathering`, :mod:`.auditing`,
:mod:`.reporting`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from vfl_sim.audits.base import AuditData, Auditor
from vfl_sim.config import dump_config
from vfl_sim.errors import ConfigError, RunFolderError, os_error_text
from vfl_sim.experiment.auditing import audit_models, audit_needs, auditors
from vfl_sim.experiment.checkpoints import (
    CHECKPOINTS,
    DONE_MARK,
    CheckpointError,
    read_report,
    restore_checkpoint,
    restored,
    run_folder_damage,
    save_checkpoint,
)
from vfl_sim.experiment.compute import apply_threads
from vfl_sim.experiment.gathering import audit_frame, check_audit, embedding_arrays, gather
from vfl_sim.experiment.reporting import build_report
from vfl_sim.experiment.resume import check_replay, check_same_config, check_same_models
from vfl_sim.experiment.spec import ExperimentSpec
from vfl_sim.experiment.training import apply_method, train_original
from vfl_sim.forget import ORIGINAL
from vfl_sim.plots import write_plots
from vfl_sim.progress import ProgressReporter
from vfl_sim.report import write_markdown
from vfl_sim.runfolder import RunFolderLock, check_out_dir, partial_dir, remove_folder, replace_folder, write_atomic
from vfl_sim.seeding import seed_everything
from vfl_sim.server.coordinator import UnlearningCoordinator
from vfl_sim.server.ledger import LEDGER_FILE, RequestLedger
from vfl_sim.server.server import Server
from vfl_sim.transport import Transport

log = logging.getLogger("vfl_sim")


class Experiment(ExperimentSpec):
    """A validated experiment, ready to run (built by :func:`~vfl_sim.experiment.prepare`)."""

    def run(
        self,
        out_dir: str | Path,
        *,
        progress: ProgressReporter | None = None,
        overwrite: bool = False,
        resume: bool = False,
        transport: Transport | None = None,
    ) -> dict[str, Any]:
        """Train the original, run every method, audit, and write the run folder.

        The run is built in ``.<name>.partial`` next to ``out_dir`` and renamed when complete.
        Each model's checkpoint is written as soon as the model exists, and the forget request
        and the methods applied to it are recorded in the request ledger (``ledger.jsonl``), so
        a run killed after the original was trained keeps its partial folder and
        ``resume=True`` finishes it: the original and every finished method are loaded from
        their checkpoints, the rest is run. ``resume=True`` on a completed run with the same
        config is a no-op that returns its report.

        A checkpoint that cannot be read (truncated, overwritten, deleted) counts as absent on
        ``resume``: its model is trained again (and a completed run with one is reopened).

        The run folder is locked while it is written (a lock file next to it holds the
        writer's pid): a second writer is refused, and a lock left by a process that died is
        taken over.

        ``transport`` reaches parties that live elsewhere (Flower nodes, Ray actors); by
        default the parties are built in this process. Returns the report (also written as
        ``report.json``).
        """
        out = Path(out_dir)
        with RunFolderLock(out):
            return self._run_locked(out, progress or ProgressReporter(enabled=False), overwrite, resume, transport)

    def _run_locked(
        self, out: Path, progress: ProgressReporter, overwrite: bool, resume: bool, transport: Transport | None
    ) -> dict[str, Any]:
        work = partial_dir(out)
        reopened = False  # a completed run moved back to its partial folder: never removed
        if resume and not work.exists() and (out / "report.json").is_file():
            check_replay(self.cfg, self.forget, self.methods, out)
            damage = self.run_folder_damage(out)
            if damage is None:
                log.info("forget request %s is already completed in %s; nothing to do", self.forget.request_id, out)
                report: dict[str, Any] = json.loads((out / "report.json").read_text())
                return report
            log.warning("%s: %s; finishing the run again", out, damage)
            replace_folder(out, work)
            reopened = True
        if resume and work.exists():
            check_same_config(self.cfg, work)
            log.info("resuming the partial run in %s", work)
        else:
            check_out_dir(out, overwrite)
            if work.exists():
                if not overwrite:
                    raise ConfigError(
                        f"a partial run of {out} exists in {work} (an earlier run was interrupted); "
                        "pass --resume to finish it or --overwrite to start again"
                    )
                remove_folder(work)
            try:
                work.mkdir(parents=True)
            except OSError as exc:
                raise RunFolderError(f"cannot write the run folder {out}: {os_error_text(exc)}") from None
        try:
            report = self._run(work, progress, transport)
            if out.exists():
                shutil.rmtree(out)
            os.replace(work, out)
        except BaseException:
            # An error (or Ctrl-C) before the original model was saved leaves nothing to resume.
            if not reopened and not (work / CHECKPOINTS / ORIGINAL / DONE_MARK).exists():
                shutil.rmtree(work, ignore_errors=True)
            else:
                log.error("the partial run is kept in %s; rerun with --resume to finish it", work)
            raise
        return report

    def _run(self, work: Path, progress: ProgressReporter, transport: Transport | None) -> dict[str, Any]:
        cfg = self.cfg
        apply_threads(cfg.threads)  # 0: a runtime's process already applied the driver's count
        seed_everything(cfg.seed)
        (work / "config.yaml").write_text(dump_config(cfg))
        server = self.build_server(transport)
        checkpoints = work / CHECKPOINTS
        runs: dict[str, dict[str, Any]] = {}
        if restored(server, ORIGINAL, checkpoints):
            log.info("loaded the original model from %s", checkpoints / ORIGINAL)
            runs[ORIGINAL] = json.loads((checkpoints / ORIGINAL / DONE_MARK).read_text())
        else:
            runs[ORIGINAL] = train_original(self, server, progress)
            server.save_state(ORIGINAL)
            save_checkpoint(server, ORIGINAL, checkpoints, runs[ORIGINAL])
        original_digest = server.digests(ORIGINAL)

        ledger = RequestLedger(work / LEDGER_FILE)
        rid = self.forget.request_id
        entry = ledger.open(rid, self.forget.describe(), [m.label for m in self.methods])
        coordinator = UnlearningCoordinator(
            server, self.forget, cfg.train, seed=cfg.seed, top_seed=self.top_seed, cover=cfg.forget.cover
        )
        for method in self.methods:
            if method.label in entry.done and restored(server, method.label, checkpoints):
                log.info("%s: already applied to request %s; loaded its checkpoint", method.label, rid)
                runs[method.label] = entry.done[method.label]
                continue
            ledger.method_started(rid, method.label)
            runs[method.label] = apply_method(server, coordinator, method, progress, checkpoints)
            ledger.method_done(rid, method.label, runs[method.label])
        ledger.completed(rid)
        # The controls are the audit's, not methods applied to the request: checkpointed (so a
        # resumed run does not train them again) but not in the ledger.
        for control in self.controls:
            label = control.method.label
            if restored(server, label, checkpoints):
                runs[label] = json.loads((checkpoints / label / DONE_MARK).read_text())
                continue
            runs[label] = apply_method(server, coordinator, control.method, progress, checkpoints)
        if server.digests(ORIGINAL) != original_digest:  # a method wrote to the original snapshot
            raise RuntimeError("the original model changed while running methods")

        data, results, timings, certification = audit_models(self, server, list(runs))
        np.savez_compressed(work / "audit_embeddings.npz", **embedding_arrays(data))  # type: ignore[arg-type]

        report = build_report(self, runs, results, timings, data, certification)
        report["ledger"] = [e.to_dict() for e in ledger.entries().values()]
        (work / "report.json").write_text(json.dumps(report, indent=2))
        (work / "report.md").write_text(write_markdown(report))
        self.write_plots(report, work)
        return report

    def write_plots(self, report: dict[str, Any], folder: Path) -> None:
        """The report's PNG plots in ``folder/plots`` (when ``audit.plots``)."""
        if self.cfg.audit.plots:
            write_plots(report, folder / "plots")

    def reaudit(self, run_dir: str | Path) -> dict[str, Any]:
        """Audit a finished run again from its checkpoints, without training anything.

        The parties are built here and load their bottom models from the run's checkpoints,
        the server its top models; the embeddings are gathered and every auditor runs again.
        ``report.json``, ``report.md`` and ``audit_embeddings.npz`` are replaced (each written
        to a temporary file first); runtimes and traffic of training and unlearning stay as
        they were. Returns the new report.
        """
        folder = Path(run_dir)
        report_path = folder / "report.json"
        if not report_path.is_file():
            raise ConfigError(f"{folder} is not a finished run folder (no report.json)")
        check_same_models(self.cfg, folder)
        again = (
            f"repair the run with `vfl-sim run {folder / 'config.yaml'} --out {folder} --resume` "
            "(it runs again only what is damaged)"
        )
        try:
            old = read_report(folder)
        except RunFolderError as exc:
            raise RunFolderError(f"{exc}; {again}") from None
        saved = {**old["models"], **old.get("controls", {})}
        names = list(saved)
        server = self.build_server()
        missing = []
        for n in names:
            try:
                if not restore_checkpoint(server, n, folder / CHECKPOINTS):
                    missing.append(n)
            except CheckpointError as exc:
                raise RunFolderError(f"{folder}: {exc}; {again}") from None
        if missing:
            raise RunFolderError(
                f"{folder}: no complete checkpoint of {', '.join(missing)} under {CHECKPOINTS}/; {again}"
            )
        data, results, timings, certification = audit_models(self, server, names)
        runs = {n: {k: saved[n][k] for k in ("runtime_s", "communication")} for n in names}
        report = build_report(self, runs, results, timings, data, certification)
        if "ledger" in old:
            report["ledger"] = old["ledger"]
        write_atomic(folder / "report.json", json.dumps(report, indent=2).encode())
        write_atomic(folder / "report.md", write_markdown(report).encode())
        tmp = folder / "audit_embeddings.tmp.npz"
        np.savez_compressed(tmp, **embedding_arrays(data))  # type: ignore[arg-type]
        os.replace(tmp, folder / "audit_embeddings.npz")
        self.write_plots(report, folder)
        return report

    # -- the jobs of a run, each in its module, for callers that hold an Experiment ----------------

    def auditors(self) -> list[Auditor]:
        """The auditors of this run (:func:`vfl_sim.experiment.auditing.auditors`)."""
        return auditors(self)

    def audit_needs(self) -> frozenset[str]:
        """What the auditors of this run need gathered."""
        return audit_needs(self)

    def audit_frame(self) -> AuditData:
        """The audit samples with what the auditors need of the data, no model views yet."""
        return audit_frame(self, audit_needs(self))

    def check_audit(self) -> None:
        """Fail before training when the audit samples cannot support a linear probe."""
        check_audit(self, audit_needs(self))

    def gather(self, server: Server, models: list[str]) -> AuditData:
        """Every model's view of the audit samples, asked of the parties."""
        return gather(self, server, models, audit_needs(self))

    def run_folder_damage(self, out: Path) -> str | None:
        """What is missing or unreadable in the completed run folder ``out``, None if intact."""
        models = [ORIGINAL, *(m.label for m in self.all_methods)]
        return run_folder_damage(out, models, [s.party_id for s in self.slices])
