"""One experiment, end to end: build roles, train, forget, unlearn, audit, report.

:func:`prepare` validates everything a run needs (plugins, dataset, partition, models, forget
request, methods) before anything is written, so bad input fails with one error and leaves no
half-written run folder. :meth:`Experiment.run` then does the work and writes the run folder
atomically (into a temporary sibling that is renamed at the end).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

import vfl_sim.methods  # noqa: F401  (registers the built-in methods and their parties' steps)
from vfl_sim import __version__
from vfl_sim.audits.base import AuditData, Auditor, ModelEmbeddings, get_auditor
from vfl_sim.audits.certificate import Certification, certify_run
from vfl_sim.audits.feature_recovery import FeatureRecoveryAuditor
from vfl_sim.audits.output import OutputAuditor
from vfl_sim.audits.probe import stratified_split
from vfl_sim.audits.reference_free import ReferenceFreeAuditor
from vfl_sim.audits.relearning import compare_relearning
from vfl_sim.audits.representation import RepresentationAuditor, probe_samples
from vfl_sim.config import ALL_METHODS, ExperimentConfig, MethodSpec, dump_config, load_config
from vfl_sim.data.dataset import VflDataset
from vfl_sim.data.loaders import load_dataset
from vfl_sim.data.partition import PartySlice, partition_features
from vfl_sim.errors import ConfigError, RunFolderError, VflSimError, os_error_text
from vfl_sim.forget import ORIGINAL, RETRAIN, ForgetKind
from vfl_sim.methods.controls import Control, build_controls, is_reserved
from vfl_sim.methods.registry import available_methods, build_method, get_method
from vfl_sim.models.state import reset_parameters
from vfl_sim.models.zoo import build_bottom, build_top, resolve_bottom_kind
from vfl_sim.parties.build import local_transport, party_shapes
from vfl_sim.plots import write_plots
from vfl_sim.plugins import import_plugins
from vfl_sim.progress import ProgressReporter
from vfl_sim.protocol import LocalOp
from vfl_sim.report import SCHEMA_VERSION, write_markdown
from vfl_sim.runfolder import RunFolderLock, check_out_dir, partial_dir, remove_folder, replace_folder, write_atomic
from vfl_sim.seeding import derive_seed, seed_everything, torch_generator
from vfl_sim.server.coordinator import UnlearningCoordinator, resolve_forget_request
from vfl_sim.server.ledger import COMPLETED, LEDGER_FILE, RequestLedger
from vfl_sim.server.relearning import default_attack_optim, default_head_optim, relearning_curves, relearning_split
from vfl_sim.server.server import Server, count_batches
from vfl_sim.server.unlearning import ForgetSet, UnlearningMethod
from vfl_sim.transport import Transport

log = logging.getLogger("vfl_sim")

CHECKPOINTS = "checkpoints"
DONE_MARK = "run.json"  # written last in a model's checkpoint folder: the checkpoint is complete
AUDITORS = ("output", "representation", "reference_free", "feature_recovery")
# Report sections written by the run itself: a user auditor may not overwrite them.
BUILT_IN_SECTIONS = (*AUDITORS, "relearning", "certificate", "runtime_s", "communication")


def resolve_threads(cfg: ExperimentConfig) -> int:
    """The torch intra-op thread count of every process that computes for a run of ``cfg``:
    ``threads``, or with 0 this process's count (torch's default unless something set it).

    Results depend on the count (a reduction split over more threads adds in another order),
    so the process that starts a run resolves it once and hands the number to every process
    of the run (Ray actors, Flower's ServerApp and ClientApps): equal configs then give equal
    numbers on every runtime, and ``local`` computes as it always did.
    """
    return cfg.threads or torch.get_num_threads()


def apply_threads(threads: int) -> None:
    """Compute with ``threads`` torch intra-op threads in this process (0: leave it as it is)."""
    if threads and torch.get_num_threads() != threads:  # as it is when equal: local runs compute as before
        torch.set_num_threads(threads)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device is 'cuda' but no CUDA device is available; use cpu or auto")
    return torch.device(name)


@dataclass
class Experiment:
    """A validated experiment, ready to run."""

    cfg: ExperimentConfig
    dataset: VflDataset
    slices: list[PartySlice]
    forget: ForgetSet
    methods: list[UnlearningMethod]
    device: torch.device
    controls: list[Control] = field(default_factory=list)

    # -- building ------------------------------------------------------------------------------

    def build_server(self, transport: Transport | None = None) -> Server:
        """The server, freshly initialized, talking to the parties through ``transport``
        (default: in-process parties built here)."""
        transport = transport or local_transport(self.cfg, self.dataset, self.slices, self.device)
        dims = [self.cfg.model.embedding_dim] * len(self.slices)  # every bottom ends in this width
        top = build_top(self.cfg.model, dims, self.dataset.num_classes)
        reset_parameters(top, self.top_seed)
        return Server(
            torch.from_numpy(self.dataset.labels), top, transport, fusion=self.cfg.model.fusion, device=self.device
        )

    @property
    def top_seed(self) -> int:
        return derive_seed(self.cfg.seed, "init", "top")

    def audit_seed(self, purpose: str) -> int:
        """Seed of one source of the audit's randomness (probe splits, bootstrap, attack
        samples...): derived from ``audit.seed``, or from ``seed`` when that is unset."""
        base = self.cfg.seed if self.cfg.audit.seed is None else self.cfg.audit.seed
        return derive_seed(base, purpose)

    @property
    def all_methods(self) -> list[UnlearningMethod]:
        """The configured methods, then the built-in controls (:mod:`vfl_sim.server.controls`)."""
        return [*self.methods, *(c.method for c in self.controls)]

    @property
    def control_roles(self) -> dict[str, str]:
        """``{model: role}`` of the controls of this run (the original is not among them)."""
        return {c.method.label: c.role for c in self.controls}

    # -- running -------------------------------------------------------------------------------

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
            self._check_replay(out)
            damage = self.run_folder_damage(out)
            if damage is None:
                log.info("forget request %s is already completed in %s; nothing to do", self.forget.request_id, out)
                report: dict[str, Any] = json.loads((out / "report.json").read_text())
                return report
            log.warning("%s: %s; finishing the run again", out, damage)
            replace_folder(out, work)
            reopened = True
        if resume and work.exists():
            self._check_same_config(work)
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

    def _check_same_config(self, folder: Path) -> None:
        """Refuse to resume a run made with another config. The saved config is compared as
        settings, not as text: one written before a version added a setting loads with that
        setting's default."""
        saved = folder / "config.yaml"
        if not saved.is_file():
            return
        try:
            same = saved.read_text(errors="replace") == dump_config(self.cfg) or (
                load_config(saved).model_dump() == self.cfg.model_dump()
            )
        except VflSimError:
            same = False
        if not same:
            raise ConfigError(
                f"{folder} was made with another config than this one; resume it with the config in "
                f"{saved}, or pass --overwrite to start again"
            )

    def _check_same_models(self, folder: Path) -> None:
        """A re-audit needs the config that made the run's models; the ``audit`` section, where
        and how the parties ran (they give the same models), and settings that newer versions
        added (which load with their defaults) may differ."""
        saved = folder / "config.yaml"
        if not saved.is_file():
            return
        free = {"audit", "name", "runtime", "device", "threads", "flower", "ray"}
        theirs = load_config(saved).model_dump(exclude=free)
        mine = self.cfg.model_dump(exclude=free)
        changed = sorted(k for k in mine if mine[k] != theirs.get(k))
        if changed:
            raise ConfigError(
                f"{folder} was made with another config ({', '.join(changed)} differ); audit it with the "
                f"config in {saved}"
            )

    def _check_replay(self, out: Path) -> None:
        """``resume`` on a completed run is a no-op only if its ledger has this request and methods."""
        self._check_same_config(out)
        entry = RequestLedger(out / LEDGER_FILE).get(self.forget.request_id)
        names = [m.label for m in self.methods]
        if entry is None or entry.status != COMPLETED or any(n not in entry.done for n in names):
            raise ConfigError(
                f"{out} is a completed run without forget request '{self.forget.request_id}' and methods "
                f"{names}; write to another --out, or pass --overwrite to run again"
            )

    def run_folder_damage(self, out: Path) -> str | None:
        """What is missing or unreadable in the completed run folder ``out`` (its report, or the
        checkpoint of the original or of a method), or None when it is intact. Reads the files
        (without building any party), so it holds where the parties wrote them here."""
        try:
            read_report(out)
            for name in [ORIGINAL, *(m.label for m in self.all_methods)]:
                if not self._check_checkpoint_files(out / CHECKPOINTS / name, name, [s.party_id for s in self.slices]):
                    return f"no complete checkpoint of '{name}' under {CHECKPOINTS}/"
        except RunFolderError as exc:
            return str(exc)
        return None

    def _check_checkpoint_files(self, target: Path, name: str, party_ids: list[str]) -> dict[str, Any] | None:
        """The record (``run.json``) of the complete checkpoint of ``name`` in ``target`` once
        every file of it reads, None if it is not complete; a :class:`CheckpointError` names a
        file that is gone or unreadable."""
        mark = target / DONE_MARK
        if not mark.is_file():
            return None
        try:
            record = json.loads(mark.read_bytes())
        except (OSError, ValueError) as exc:
            raise CheckpointError(name, mark, _reason(exc)) from None
        if not isinstance(record, dict):
            raise CheckpointError(name, mark, "not a JSON object")
        for file in ["top", *party_ids]:  # each party reads its own; here only whether it can
            _load_tensors(target / f"{file}.pt", name, map_location="cpu")
        return record

    def _run(self, work: Path, progress: ProgressReporter, transport: Transport | None) -> dict[str, Any]:
        cfg = self.cfg
        apply_threads(cfg.threads)  # 0: a runtime's process already applied the driver's count
        seed_everything(cfg.seed)
        (work / "config.yaml").write_text(dump_config(cfg))
        server = self.build_server(transport)
        checkpoints = work / CHECKPOINTS
        runs: dict[str, dict[str, Any]] = {}
        if self._restored(server, ORIGINAL, checkpoints):
            log.info("loaded the original model from %s", checkpoints / ORIGINAL)
            runs[ORIGINAL] = json.loads((checkpoints / ORIGINAL / DONE_MARK).read_text())
        else:
            runs[ORIGINAL] = self.train_original(server, progress)
            server.save_state(ORIGINAL)
            self.save_checkpoint(server, ORIGINAL, checkpoints, runs[ORIGINAL])
        original_digest = server.digests(ORIGINAL)

        ledger = RequestLedger(work / LEDGER_FILE)
        rid = self.forget.request_id
        entry = ledger.open(rid, self.forget.describe(), [m.label for m in self.methods])
        coordinator = UnlearningCoordinator(server, self.forget, cfg.train, seed=cfg.seed, top_seed=self.top_seed)
        for method in self.methods:
            if method.label in entry.done and self._restored(server, method.label, checkpoints):
                log.info("%s: already applied to request %s; loaded its checkpoint", method.label, rid)
                runs[method.label] = entry.done[method.label]
                continue
            ledger.method_started(rid, method.label)
            runs[method.label] = self._apply(server, coordinator, method, progress, checkpoints)
            ledger.method_done(rid, method.label, runs[method.label])
        ledger.completed(rid)
        # The controls are the audit's, not methods applied to the request: checkpointed (so a
        # resumed run does not train them again) but not in the ledger.
        for control in self.controls:
            label = control.method.label
            if self._restored(server, label, checkpoints):
                runs[label] = json.loads((checkpoints / label / DONE_MARK).read_text())
                continue
            runs[label] = self._apply(server, coordinator, control.method, progress, checkpoints)
        if server.digests(ORIGINAL) != original_digest:  # a method wrote to the original snapshot
            raise RuntimeError("the original model changed while running methods")

        data, results, timings, certification = self.audit_models(server, list(runs))
        np.savez_compressed(work / "audit_embeddings.npz", **_embedding_arrays(data))  # type: ignore[arg-type]

        report = self.report(runs, results, timings, data, certification)
        report["ledger"] = [e.to_dict() for e in ledger.entries().values()]
        (work / "report.json").write_text(json.dumps(report, indent=2))
        (work / "report.md").write_text(write_markdown(report))
        self.write_plots(report, work)
        return report

    def _apply(
        self,
        server: Server,
        coordinator: UnlearningCoordinator,
        method: UnlearningMethod,
        progress: ProgressReporter,
        checkpoints: Path,
    ) -> dict[str, Any]:
        """Run ``method`` from the original and checkpoint its model; returns its cost."""
        ctx = coordinator.context(method)
        with progress.phase(method.label, method.estimated_steps(ctx)) as on_step:
            ctx.on_step = on_step
            result = coordinator.run(method, ctx)
        log.info("%s done in %.2fs", method.label, result.runtime_s)
        run = result.to_dict()
        self.save_checkpoint(server, method.label, checkpoints, run)
        return run

    def audit_models(
        self, server: Server, names: list[str]
    ) -> tuple[AuditData, dict[str, dict[str, Any]], dict[str, float], Certification]:
        """Gather every model's embeddings (controls included), run the auditors and (class
        requests) the relearning attack, and certify; returns the audit data, ``{model:
        {section: result}}``, the seconds each step took and the certification."""
        timings: dict[str, float] = {}
        start = time.perf_counter()
        data = self.gather(server, names)
        timings["gather"] = time.perf_counter() - start
        results = self.audit(data, timings)
        if self.forget.kind == ForgetKind.CLASS and self.cfg.audit.relearning.enabled:
            start = time.perf_counter()
            for name, section in self.relearning(server, names).items():
                results[name]["relearning"] = section
            timings["relearning"] = time.perf_counter() - start
        for name, reason in data.meta.get("diverged", {}).items():
            results[name]["diverged"] = reason
        certification = certify_run(
            results,
            self.forget.kind,
            self.cfg.audit.certificate,
            controls=self.control_roles,
            quantile=self.cfg.audit.calibration.quantile,
        )
        for model, cert in certification.certificates.items():
            results[model]["certificate"] = cert.to_dict()
        return data, results, timings, certification

    def relearning(self, server: Server, names: list[str]) -> dict[str, dict[str, Any]]:
        """The relearning attack on every model, each phase compared with ``retrain``'s curve."""
        r = self.cfg.audit.relearning
        split = relearning_split(
            self.forget,
            self.dataset.labels,
            self.dataset.test_ids,
            per_class=r.per_class,
            max_eval=self.cfg.audit.max_samples,
            seed=self.audit_seed("relearning-split"),
        )
        optim = default_attack_optim().model_copy(update={"lr": r.lr})
        curves = relearning_curves(
            server,
            names,
            split,
            steps=r.steps,
            optim=optim,
            phases=r.phases,
            head_steps=r.head_steps,
            head_optim=default_head_optim().model_copy(update={"lr": r.head_lr}),
            seed=self.audit_seed("relearn"),
        )
        out: dict[str, dict[str, Any]] = {name: {"attack": split.describe()} for name in names}
        for phase, per_model in curves.items():
            reference = per_model.get(RETRAIN)
            for name, curve in per_model.items():
                summary = compare_relearning(curve, reference, threshold=r.threshold)
                out[name][phase] = {**summary.to_dict(), "curve": curve.to_dict()}
        return out

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
        self._check_same_models(folder)
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
                if not self.restore_checkpoint(server, n, folder / CHECKPOINTS):
                    missing.append(n)
            except CheckpointError as exc:
                raise RunFolderError(f"{folder}: {exc}; {again}") from None
        if missing:
            raise RunFolderError(
                f"{folder}: no complete checkpoint of {', '.join(missing)} under {CHECKPOINTS}/; {again}"
            )
        data, results, timings, certification = self.audit_models(server, names)
        runs = {n: {k: saved[n][k] for k in ("runtime_s", "communication")} for n in names}
        report = self.report(runs, results, timings, data, certification)
        if "ledger" in old:
            report["ledger"] = old["ledger"]
        write_atomic(folder / "report.json", json.dumps(report, indent=2).encode())
        write_atomic(folder / "report.md", write_markdown(report).encode())
        tmp = folder / "audit_embeddings.tmp.npz"
        np.savez_compressed(tmp, **_embedding_arrays(data))  # type: ignore[arg-type]
        os.replace(tmp, folder / "audit_embeddings.npz")
        self.write_plots(report, folder)
        return report

    def train_original(self, server: Server, progress: ProgressReporter) -> dict[str, Any]:
        """Train the original model; returns its runtime and communication."""
        cfg = self.cfg
        train_ids = torch.from_numpy(self.dataset.train_ids)
        steps = count_batches(train_ids.numel(), cfg.train.batch_size)
        log.info("training the original model on %d samples, %d parties", train_ids.numel(), len(self.slices))
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

    def audit_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """The audit samples (ids and their split name), each group capped at ``audit.max_samples``."""
        cap = self.cfg.audit.max_samples
        rng = np.random.default_rng(self.audit_seed("audit-samples"))

        def capped(ids: np.ndarray) -> np.ndarray:
            return np.sort(rng.choice(ids, cap, replace=False)) if ids.size > cap else ids

        groups = {
            "test": capped(self.dataset.test_ids),
            "forget_train": capped(self.forget.forget_ids.numpy()),
            "retain_train": capped(self.forget.retain_ids.numpy()),
        }
        ids = np.concatenate(list(groups.values()))
        split = np.concatenate([np.full(g.size, name) for name, g in groups.items()])
        return ids, split

    def audit_frame(self) -> AuditData:
        """The audit samples, their labels and forget mask, with no model views yet."""
        ids, split = self.audit_ids()
        labels = self.dataset.labels[ids]
        if self.forget.kind == ForgetKind.CLASS:
            forget = np.isin(labels, self.forget.classes)
        elif self.forget.removes_data_of_a_party:
            forget = np.zeros(ids.size, dtype=bool)  # every sample stays; a party's data goes
        else:
            forget = np.isin(ids, self.forget.forget_ids.numpy())
        meta: dict[str, Any] = {"ids": ids}
        if self.forget.removes_data_of_a_party:
            meta["removed_party"] = self.forget.party
            meta["removed_features"] = self.removed_features(ids)
        elif self.cfg.audit.reference_free.enabled:
            meta["inputs"] = self.dataset.features[ids].reshape(ids.size, -1)
        return AuditData(kind=self.forget.kind, labels=labels, split=split, forget=forget, models={}, meta=meta)

    def removed_features(self, ids: np.ndarray) -> np.ndarray:
        """Raw values ``(n, m)`` of what a party or feature request removes, for samples ``ids``:
        every column of the party that leaves, or the removed columns (flat columns, or pixel
        columns of an image strip, every channel and row), flattened. The audit reads them as the
        simulator, which holds all the data; no party or server role sees another party's columns."""
        party = next(s for s in self.slices if s.party_id == self.forget.party)
        view = party.take(self.dataset.features[ids])
        if self.forget.kind == ForgetKind.FEATURES:
            view = view[..., list(self.forget.columns)]
        return view.reshape(ids.size, -1)

    def check_audit(self) -> None:
        """Fail before training when the audit samples cannot support a linear probe."""
        if self.forget.removes_data_of_a_party:
            return  # no forgotten samples to probe for
        frame = self.audit_frame()
        rows = probe_samples(frame, 0)
        try:
            stratified_split(frame.forget[rows], eval_fraction=self.cfg.audit.probe_eval_fraction)
        except ValueError as exc:
            where = (
                "test samples of the forgotten classes" if self.forget.kind == ForgetKind.CLASS else "forgotten samples"
            )
            raise ConfigError(
                f"audit: too few {where} for the probe ({exc}); use more data (data.test_fraction, "
                "data.synthetic.samples) or a larger forget request"
            ) from None

    def gather(self, server: Server, models: list[str]) -> AuditData:
        """Ask the parties for every model's embeddings of the audit samples."""
        frame = self.audit_frame()
        ids = frame.meta["ids"]
        views: dict[str, ModelEmbeddings] = {}
        layers = not self.forget.removes_data_of_a_party  # only the representation audit probes layers
        shuffled: dict[str, np.ndarray] = {}
        diverged: dict[str, str] = {}
        for name in models:
            loaded = server.load_state(name)
            embeddings, per_layer = server.embed(torch.from_numpy(ids), layers=layers)
            logits = server.logits(embeddings).cpu().numpy()
            if self.forget.kind == ForgetKind.PARTY:
                shuffled[name] = self._logits_with_party_shuffled(server, embeddings)
            view = ModelEmbeddings(
                parties={pid: e.cpu().numpy() for pid, e in zip(server.party_ids, embeddings)},
                logits=logits,
                # The last named layer is the embedding itself, already probed as the party's view.
                layers={pid: {k: t.cpu().numpy() for k, t in list(d.items())[:-1]} for pid, d in per_layer.items()},
            )
            reason = _divergence(server.states[name], loaded, view)
            if reason is not None:
                log.warning("%s diverged (%s): it is reported, not certified", name, reason)
                diverged[name] = reason
                view = _finite_view(view)  # the auditors run on zeros; the certificate ignores them
            views[name] = view
        meta = {**frame.meta, "shuffled_party_logits": shuffled} if shuffled else dict(frame.meta)
        if diverged:
            meta["diverged"] = diverged
        return AuditData(
            kind=frame.kind, labels=frame.labels, split=frame.split, forget=frame.forget, models=views, meta=meta
        )

    def _logits_with_party_shuffled(self, server: Server, embeddings: list[torch.Tensor]) -> np.ndarray:
        """The model's logits when the departed party's embedding rows are permuted across
        samples: a model that no longer reads the party answers exactly as before. (A party
        that left is not asked for embeddings; the server reads zeros for it.)"""
        k = server.party_ids.index(str(self.forget.party))
        perm = torch_generator(self.audit_seed("party-shuffle"))
        order = torch.randperm(embeddings[k].shape[0], generator=perm)
        swapped = [e[order.to(e.device)] if i == k else e for i, e in enumerate(embeddings)]
        return server.logits(swapped).cpu().numpy()

    def audit(self, data: AuditData, timings: dict[str, float] | None = None) -> dict[str, dict[str, dict[str, Any]]]:
        """Run the auditors on the gathered arrays; returns ``{model: {section: result}}``
        (``timings`` gets the seconds each auditor took)."""
        a = self.cfg.audit
        auditors: list[Auditor] = [OutputAuditor(seed=self.audit_seed("membership"))]
        if not self.forget.removes_data_of_a_party:  # the probe looks for forgotten samples
            auditors.append(
                RepresentationAuditor(
                    eval_fraction=a.probe_eval_fraction,
                    C=a.probe_C,
                    seed=self.audit_seed("probe"),
                    repeats=a.probe_repeats,
                )
            )
            if a.reference_free.enabled:
                auditors.append(
                    ReferenceFreeAuditor(
                        n_models=a.reference_free.models,
                        fraction=a.reference_free.fraction,
                        seed=self.audit_seed("reference_free"),
                    )
                )
        else:  # a party's columns went: can the remaining embeddings still read them?
            auditors.append(
                FeatureRecoveryAuditor(
                    eval_fraction=a.probe_eval_fraction,
                    seed=self.audit_seed("feature_recovery"),
                    repeats=a.probe_repeats,
                )
            )
        auditors += [build_auditor(spec.name, spec.params) for spec in a.auditors]
        out: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in data.models}
        # The auditors make hundreds of small fits and products: a second BLAS or OpenMP
        # thread only competes with torch's (measured: 1.7x slower on 2 cores, 5x under load).
        with threadpool_limits(limits=1):
            for auditor in auditors:
                start = time.perf_counter()
                for model, result in auditor.audit(data).items():
                    out[model][auditor.section] = result
                if timings is not None:
                    timings[auditor.section] = time.perf_counter() - start
        return out

    def save_checkpoint(self, server: Server, name: str, folder: Path, run: dict[str, Any]) -> None:
        """Write snapshot ``name``: the server its top model, each party its own bottom (parties'
        files never travel through the server); then the marker that makes it complete."""
        target = folder / name
        target.mkdir(parents=True, exist_ok=True)
        (target / DONE_MARK).unlink(missing_ok=True)
        torch.save(server.states[name], target / "top.pt")
        server.transport.exchange(
            {pid: LocalOp("checkpoint", {"path": str(target / f"{pid}.pt"), "name": name}) for pid in server.party_ids}
        )
        tmp = target / (DONE_MARK + ".tmp")
        tmp.write_text(json.dumps(run))
        os.replace(tmp, target / DONE_MARK)

    def restore_checkpoint(self, server: Server, name: str, folder: Path) -> bool:
        """Load snapshot ``name`` from a complete checkpoint (server and parties); False if none.

        Raises
        ------
        CheckpointError
            A file of the checkpoint is gone or cannot be read (truncated, overwritten), or
            holds another model; nothing is loaded then.
        """
        target = folder / name
        if self._check_checkpoint_files(target, name, server.party_ids) is None:
            return False
        top = _load_tensors(target / "top.pt", name, map_location=server.device)
        want = {k: tuple(v.shape) for k, v in server.top.state_dict().items()}
        if {k: tuple(v.shape) for k, v in top.items()} != want:
            raise CheckpointError(name, target / "top.pt", "its tensors do not fit this config's top model")
        try:
            server.transport.exchange(
                {
                    pid: LocalOp("load_checkpoint", {"path": str(target / f"{pid}.pt"), "name": name})
                    for pid in server.party_ids
                }
            )
        except Exception as exc:  # a party could not read what this process could
            raise CheckpointError(name, target, _reason(exc)) from None
        server.states[name] = top
        return True

    def _restored(self, server: Server, name: str, folder: Path) -> bool:
        """:meth:`restore_checkpoint`, with an unreadable checkpoint taken as absent (logged),
        so that ``resume`` runs that model again."""
        try:
            return self.restore_checkpoint(server, name, folder)
        except CheckpointError as exc:
            log.warning("%s; running '%s' again", exc, name)
            return False

    def report(
        self,
        runs: dict[str, dict[str, Any]],
        results: dict[str, dict[str, Any]],
        timings: dict[str, float],
        data: AuditData,
        certification: Certification,
    ) -> dict[str, Any]:
        roles = self.control_roles
        models = {name: {**runs[name], **results[name]} for name in runs if name not in roles}
        controls = {name: {"role": roles[name], **runs[name], **results[name]} for name in runs if name in roles}
        # Training the controls is part of what the audit costs (counted in runtime_s), apart
        # from the audit's own steps.
        timings = dict(timings)
        for role, key in (("calibration", "calibration"), ("negative", "controls"), ("suppression", "controls")):
            spent = sum(runs[n]["runtime_s"] for n, r in roles.items() if r == role and n in runs)
            if any(r == role for r in roles.values()):
                timings[key] = timings.get(key, 0.0) + spent
        return {
            "schema_version": SCHEMA_VERSION,
            "vfl_sim_version": __version__,
            "name": self.cfg.name,
            "seed": self.cfg.seed,
            "runtime": self.cfg.runtime,
            # What the server computed with; every party of the run uses the same count.
            "threads": torch.get_num_threads(),
            "dataset": self.dataset.describe(),
            "parties": [s.describe() for s in self.slices],
            "forget_request": self.forget.describe(),
            "audit": {
                "runtime_s": sum(timings.values()),
                "timings_s": timings,
                "samples": {g: int(data.mask(g).sum()) for g in ("test", "forget_train", "retain_train")},
                "seed": self.cfg.seed if self.cfg.audit.seed is None else self.cfg.audit.seed,
                "certificate_thresholds": self.cfg.audit.certificate.model_dump(),
                "certificate": {
                    "controls": roles,
                    "calibration": {
                        "retrains": list(certification.calibration),
                        "quantile": self.cfg.audit.calibration.quantile,
                        "enabled": bool(certification.calibration),
                    },
                    "power": certification.power,
                    "tolerances": certification.tolerances_dict(),
                },
            },
            "models": models,
            "controls": controls,
        }


def build_auditor(name: str, params: dict[str, Any]) -> Auditor:
    """The registered auditor ``name`` built with ``params``; a ConfigError names what is wrong."""
    cls = get_auditor(name)
    if cls.section in BUILT_IN_SECTIONS:
        raise ConfigError(f"audit.auditors: '{name}' writes section '{cls.section}', which a built-in audit owns")
    try:
        return cls(**params)
    except TypeError as exc:
        raise ConfigError(f"audit.auditors.{name}.params: {exc}") from None


def _divergence(top: dict[str, torch.Tensor], parties: dict[str, dict[str, Any]], view: ModelEmbeddings) -> str | None:
    """Why a model is not one that can be audited (a non-finite weight, embedding or output),
    or ``None``: ``top`` is its top model's state, ``parties`` what each party answered when
    the model was loaded."""
    bad_top = next((k for k, t in top.items() if t.is_floating_point() and not t.isfinite().all()), None)
    if bad_top is not None:
        return f"non-finite top-model tensor {bad_top}"
    for pid, info in parties.items():
        if info.get("finite") is False:
            return f"non-finite bottom-model tensor {info['tensor']} at {pid}"
    for pid, e in view.parties.items():
        if not np.isfinite(e).all():
            return f"non-finite embeddings from {pid}"
    if not np.isfinite(view.logits).all():
        return "non-finite outputs"
    for pid, layers in view.layers.items():
        for layer, a in layers.items():
            if not np.isfinite(a).all():
                return f"non-finite activations at {pid}/{layer}"
    return None


def _finite_view(view: ModelEmbeddings) -> ModelEmbeddings:
    """``view`` with every non-finite number replaced by 0 (a diverged model's arrays)."""

    def clean(a: np.ndarray) -> np.ndarray:
        return np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)

    return ModelEmbeddings(
        parties={pid: clean(e) for pid, e in view.parties.items()},
        logits=clean(view.logits),
        layers={pid: {k: clean(a) for k, a in d.items()} for pid, d in view.layers.items()},
    )


def _embedding_arrays(data: AuditData) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {
        "ids": np.asarray(data.meta["ids"]),
        "labels": data.labels,
        "split": data.split,
        "forget": data.forget,
    }
    for name, m in data.models.items():
        arrays[f"{name}/logits"] = m.logits
        for pid, e in m.parties.items():
            arrays[f"{name}/{pid}"] = e
        for pid, layers in m.layers.items():
            for layer, a in layers.items():
                arrays[f"{name}/{pid}/{layer}"] = a
    return arrays


class CheckpointError(RunFolderError):
    """A checkpoint file of a run folder is gone, cannot be read, or holds another model."""

    def __init__(self, model: str, path: Path, reason: str) -> None:
        super().__init__(f"the checkpoint of '{model}' is unreadable: {path}: {reason}")
        self.model, self.path, self.reason = model, path, reason


def _reason(exc: BaseException) -> str:
    """An exception in one short line (its type and the first line of its message)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0].split(". ")[0] if lines else ""  # torch's messages run on with advice
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _load_tensors(path: Path, model: str, **kwargs: Any) -> dict[str, torch.Tensor]:
    """A state dict saved with ``torch.save``; a :class:`CheckpointError` when it cannot be."""
    try:
        state = torch.load(path, weights_only=True, **kwargs)
    except Exception as exc:  # truncated, not a torch file, gone: torch raises many kinds
        raise CheckpointError(model, path, _reason(exc)) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(model, path, "not a state dict of tensors")
    return state


def read_report(folder: Path) -> dict[str, Any]:
    """The ``report.json`` of a finished run, checked for what a re-audit and a resume read;
    a :class:`RunFolderError` names the file when it is unreadable."""
    path = folder / "report.json"
    try:
        report = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise RunFolderError(f"{path} is unreadable ({_reason(exc)})") from None
    models = report.get("models") if isinstance(report, dict) else None
    if not isinstance(models, dict) or not all(
        isinstance(m, dict) and "runtime_s" in m and "communication" in m for m in models.values()
    ):
        raise RunFolderError(f"{path} is damaged (no 'models' with each model's runtime_s and communication)")
    return report


def physical_memory() -> int | None:
    """Bytes of physical memory of this machine, None where the OS does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def check_model_memory(cfg: ExperimentConfig, shapes: list[tuple[int, ...]], num_classes: int) -> None:
    """Refuse model sizes this machine cannot hold, before anything is allocated.

    The bottoms and the top are built on the ``meta`` device (shapes only, no memory) and
    their parameters counted; a run holds each as float32 weights, gradients, optimizer state
    and one saved copy per model (the original and every method).
    """
    m = cfg.model
    widths = {"model.embedding_dim": m.embedding_dim}
    kinds = {resolve_bottom_kind(m, shape) for shape in shapes}
    if "mlp" in kinds and m.bottom_hidden:
        widths["model.bottom_hidden"] = max(m.bottom_hidden)
    if "cnn" in kinds and m.cnn_channels:
        widths["model.cnn_channels"] = max(m.cnn_channels)
    if m.top == "mlp" and m.top_hidden:
        widths["model.top_hidden"] = max(m.top_hidden)
    field = max(widths, key=lambda k: widths[k])
    try:
        with torch.device("meta"):
            params = sum(sum(p.numel() for p in build_bottom(m, shape).parameters()) for shape in shapes)
            top = build_top(m, [m.embedding_dim] * len(shapes), num_classes)
            params += sum(p.numel() for p in top.parameters())
    except ConfigError:
        raise
    except Exception as exc:  # sizes beyond what torch can index
        raise ConfigError(f"{field} ({widths[field]}) is too large to build the models ({_reason(exc)})") from None
    models = 1 + len(expand_methods(cfg.methods, cfg.forget.kind))
    optimizer = 2 if cfg.train.optimizer == "adam" else 1
    need = 4 * params * (2 + optimizer + models)
    have = physical_memory()
    if have is not None and need > have:
        raise ConfigError(
            f"{field} ({widths[field]}) makes the models too large: they need about {need / 1e9:,.1f} GB "
            f"({params:,} parameters as weights, gradients, optimizer state and {models} saved copies), more than "
            f"this machine's {have / 1e9:,.1f} GB of memory; lower it"
        )


def expand_methods(specs: list[MethodSpec], kind: str) -> list[MethodSpec]:
    """``specs`` with the entry ``all`` replaced by every registered method that supports
    requests of ``kind`` and is not listed on its own (``retrain`` first, then by name)."""
    if not any(m.name == ALL_METHODS for m in specs):
        return specs
    if sum(m.name == ALL_METHODS for m in specs) > 1 or any(m.params for m in specs if m.name == ALL_METHODS):
        raise ConfigError("methods: 'all' stands alone, once and without params")
    listed = {m.model_name for m in specs}
    supporting = [n for n in available_methods() if kind in get_method(n).supports and n not in listed]
    supporting.sort(key=lambda n: (n != RETRAIN, n))
    out: list[MethodSpec] = []
    for m in specs:
        out.extend(MethodSpec(name=n) for n in supporting) if m.name == ALL_METHODS else out.append(m)
    return out


def prepare(cfg: ExperimentConfig) -> Experiment:
    """Validate and build everything a run needs; raises a :class:`~vfl_sim.errors.VflSimError`
    on bad input before anything is written."""
    import_plugins(cfg.plugins)
    device = resolve_device(cfg.device)
    dataset = load_dataset(cfg.data, parties=cfg.partition.parties, seed=cfg.seed)
    slices = partition_features(cfg.partition, dataset.sample_shape, derive_seed(cfg.seed, "partition"))
    shapes = party_shapes(dataset, slices)
    check_model_memory(cfg, shapes, dataset.num_classes)  # before any model is allocated
    for shape in shapes:
        build_bottom(cfg.model, shape)  # raises ConfigError when a bottom does not fit its party
    forget = resolve_forget_request(
        cfg.forget,
        train_ids=dataset.train_ids,
        test_ids=dataset.test_ids,
        labels=dataset.labels,
        num_classes=dataset.num_classes,
        seed=cfg.seed,
        slices=slices,
        column_names=dataset.column_names,
    )
    methods = [build_method(m.name, m.params, forget.kind, m.label) for m in expand_methods(cfg.methods, forget.kind)]
    reserved = [m.label for m in methods if is_reserved(m.label)]
    if reserved:
        raise ConfigError(
            f"methods: '{reserved[0]}' is the name of a built-in control or reference model; "
            "give the method another label"
        )
    retrain = next((m for m in methods if m.label == RETRAIN), None)
    controls = build_controls(forget.kind, calibration_retrains=cfg.audit.calibration.retrains, retrain=retrain)
    for auditor in AUDITORS:
        get_auditor(auditor)
    for spec in cfg.audit.auditors:
        build_auditor(spec.name, spec.params)  # unknown names and bad params fail before training
    exp = Experiment(cfg, dataset, slices, forget, methods, device, controls)
    exp.check_audit()
    return exp
