"""One experiment, end to end: build roles, train, forget, unlearn, audit, report.

:func:`prepare` validates everything a run needs (plugins, dataset, partition, models, forget
request, methods) before anything is written, so bad input fails with one error and leaves no
half-written run folder. :meth:`Experiment.run` then does the work and writes the run folder
atomically (into a temporary sibling that is renamed at the end).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

import server.methods  # noqa: F401  (registers the built-in methods)
from audits.base import AuditData, Auditor, ModelEmbeddings, get_auditor
from audits.certificate import RETRAIN, certify
from audits.feature_recovery import FeatureRecoveryAuditor
from audits.output import OutputAuditor
from audits.probe import stratified_split
from audits.reference_free import ReferenceFreeAuditor
from audits.relearning import compare_relearning
from audits.representation import RepresentationAuditor, probe_samples
from server.coordinator import ORIGINAL, UnlearningCoordinator, resolve_forget_request
from server.ledger import COMPLETED, LEDGER_FILE, RequestLedger
from server.methods.base import ForgetSet, UnlearningMethod
from server.methods.registry import available_methods, build_method, get_method
from server.relearning import default_attack_optim, relearning_curves, relearning_split
from server.server import Server, count_batches
from vfl_sim import __version__
from vfl_sim.config import ALL_METHODS, ExperimentConfig, MethodSpec, dump_config, load_config
from vfl_sim.data.dataset import VflDataset
from vfl_sim.data.loaders import load_dataset
from vfl_sim.data.partition import PartySlice, partition_features
from vfl_sim.errors import ConfigError
from vfl_sim.models.state import reset_parameters
from vfl_sim.models.zoo import build_bottom, build_top
from vfl_sim.plots import write_plots
from vfl_sim.progress import ProgressReporter
from vfl_sim.protocol import LocalOp
from vfl_sim.report import SCHEMA_VERSION, write_markdown
from vfl_sim.runtimes.local import local_transport, party_shapes
from vfl_sim.seeding import derive_seed, seed_everything, torch_generator
from vfl_sim.transport import Transport

log = logging.getLogger("vfl_sim")

CHECKPOINTS = "checkpoints"
DONE_MARK = "run.json"  # written last in a model's checkpoint folder: the checkpoint is complete
AUDITORS = ("output", "representation", "reference_free", "feature_recovery")
# Report sections written by the run itself: a user auditor may not overwrite them.
BUILT_IN_SECTIONS = (*AUDITORS, "relearning", "certificate", "runtime_s", "communication")


def import_plugins(modules: list[str]) -> None:
    """Import user modules so their ``@register_method`` / ``@register_auditor`` run.

    The working directory is importable, as it is for ``python -m``, so a plugin module next
    to the config is found when ``vfl-sim`` is run from there.
    """
    if modules and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"plugins: cannot import '{name}': {exc}") from None


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

        ``transport`` reaches parties that live elsewhere (Flower nodes, Ray actors); by
        default the parties are built in this process. Returns the report (also written as
        ``report.json``).
        """
        out = Path(out_dir)
        progress = progress or ProgressReporter(enabled=False)
        work = partial_dir(out)
        if resume and not work.exists() and (out / "report.json").is_file():
            return self._replay_completed(out)
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
                shutil.rmtree(work)
            work.mkdir(parents=True)
        try:
            report = self._run(work, progress, transport)
            if out.exists():
                shutil.rmtree(out)
            os.replace(work, out)
        except BaseException:
            # An error (or Ctrl-C) before the original model was saved leaves nothing to resume.
            if not (work / CHECKPOINTS / ORIGINAL / DONE_MARK).exists():
                shutil.rmtree(work, ignore_errors=True)
            else:
                log.error("the partial run is kept in %s; rerun with --resume to finish it", work)
            raise
        return report

    def _check_same_config(self, folder: Path) -> None:
        saved = folder / "config.yaml"
        if saved.is_file() and saved.read_text() != dump_config(self.cfg):
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

    def _replay_completed(self, out: Path) -> dict[str, Any]:
        """``resume`` on a completed run: a no-op if its ledger has this request and methods."""
        self._check_same_config(out)
        entry = RequestLedger(out / LEDGER_FILE).get(self.forget.request_id)
        names = [m.label for m in self.methods]
        if entry is None or entry.status != COMPLETED or any(n not in entry.done for n in names):
            raise ConfigError(
                f"{out} is a completed run without forget request '{self.forget.request_id}' and methods "
                f"{names}; write to another --out, or pass --overwrite to run again"
            )
        log.info("forget request %s is already completed in %s; nothing to do", self.forget.request_id, out)
        report: dict[str, Any] = json.loads((out / "report.json").read_text())
        return report

    def _run(self, work: Path, progress: ProgressReporter, transport: Transport | None) -> dict[str, Any]:
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed)
        (work / "config.yaml").write_text(dump_config(cfg))
        server = self.build_server(transport)
        checkpoints = work / CHECKPOINTS
        runs: dict[str, dict[str, Any]] = {}
        if self.restore_checkpoint(server, ORIGINAL, checkpoints):
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
            if method.label in entry.done and self.restore_checkpoint(server, method.label, checkpoints):
                log.info("%s: already applied to request %s; loaded its checkpoint", method.label, rid)
                runs[method.label] = entry.done[method.label]
                continue
            ledger.method_started(rid, method.label)
            ctx = coordinator.context(method)
            with progress.phase(method.label, method.estimated_steps(ctx)) as on_step:
                ctx.on_step = on_step
                result = coordinator.run(method, ctx)
            log.info("%s done in %.2fs", method.label, result.runtime_s)
            runs[method.label] = result.to_dict()
            self.save_checkpoint(server, method.label, checkpoints, runs[method.label])
            ledger.method_done(rid, method.label, runs[method.label])
        ledger.completed(rid)
        if server.digests(ORIGINAL) != original_digest:  # a method wrote to the original snapshot
            raise RuntimeError("the original model changed while running methods")

        data, results, timings = self.audit_models(server, list(runs))
        np.savez_compressed(work / "audit_embeddings.npz", **_embedding_arrays(data))  # type: ignore[arg-type]

        report = self.report(runs, results, timings, data)
        report["ledger"] = [e.to_dict() for e in ledger.entries().values()]
        (work / "report.json").write_text(json.dumps(report, indent=2))
        (work / "report.md").write_text(write_markdown(report))
        self.write_plots(report, work)
        return report

    def audit_models(
        self, server: Server, names: list[str]
    ) -> tuple[AuditData, dict[str, dict[str, Any]], dict[str, float]]:
        """Gather every model's embeddings, run the auditors and (class requests) the
        relearning attack, and certify; returns the audit data, ``{model: {section: result}}``
        and the seconds each step took."""
        timings: dict[str, float] = {}
        start = time.perf_counter()
        data = self.gather(server, names)
        timings["gather"] = time.perf_counter() - start
        results = self.audit(data, timings)
        if self.forget.kind == "class" and self.cfg.audit.relearning.enabled:
            start = time.perf_counter()
            for name, section in self.relearning(server, names).items():
                results[name]["relearning"] = section
            timings["relearning"] = time.perf_counter() - start
        for model, cert in certify(results, self.forget.kind, self.cfg.audit.certificate).items():
            results[model]["certificate"] = cert.to_dict()
        return data, results, timings

    def relearning(self, server: Server, names: list[str]) -> dict[str, dict[str, Any]]:
        """The relearning attack on every model, each phase compared with ``retrain``'s curve."""
        r = self.cfg.audit.relearning
        split = relearning_split(
            self.forget,
            self.dataset.labels,
            self.dataset.test_ids,
            per_class=r.per_class,
            max_eval=self.cfg.audit.max_samples,
            seed=derive_seed(self.cfg.seed, "relearning-split"),
        )
        optim = default_attack_optim().model_copy(update={"lr": r.lr})
        curves = relearning_curves(
            server,
            names,
            split,
            steps=r.steps,
            optim=optim,
            phases=r.phases,
            seed=derive_seed(self.cfg.seed, "relearn"),
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
        old: dict[str, Any] = json.loads(report_path.read_text())
        names = list(old["models"])
        server = self.build_server()
        missing = [n for n in names if not self.restore_checkpoint(server, n, folder / CHECKPOINTS)]
        if missing:
            raise ConfigError(f"{folder}: no complete checkpoint of {', '.join(missing)} under {CHECKPOINTS}/")
        data, results, timings = self.audit_models(server, names)
        runs = {n: {k: old["models"][n][k] for k in ("runtime_s", "communication")} for n in names}
        report = self.report(runs, results, timings, data)
        if "ledger" in old:
            report["ledger"] = old["ledger"]
        _write_atomic(folder / "report.json", json.dumps(report, indent=2).encode())
        _write_atomic(folder / "report.md", write_markdown(report).encode())
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
        rng = np.random.default_rng(derive_seed(self.cfg.seed, "audit-samples"))

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
        if self.forget.kind == "class":
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
        if self.forget.kind == "features":
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
            where = "test samples of the forgotten classes" if self.forget.kind == "class" else "forgotten samples"
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
        for name in models:
            server.load_state(name)
            embeddings, per_layer = server.embed(torch.from_numpy(ids), layers=layers)
            logits = server.logits(embeddings).cpu().numpy()
            if self.forget.kind == "party":
                shuffled[name] = self._logits_with_party_shuffled(server, embeddings)
            views[name] = ModelEmbeddings(
                parties={pid: e.cpu().numpy() for pid, e in zip(server.party_ids, embeddings)},
                logits=logits,
                # The last named layer is the embedding itself, already probed as the party's view.
                layers={pid: {k: t.cpu().numpy() for k, t in list(d.items())[:-1]} for pid, d in per_layer.items()},
            )
        meta = {**frame.meta, "shuffled_party_logits": shuffled} if shuffled else frame.meta
        return AuditData(
            kind=frame.kind, labels=frame.labels, split=frame.split, forget=frame.forget, models=views, meta=meta
        )

    def _logits_with_party_shuffled(self, server: Server, embeddings: list[torch.Tensor]) -> np.ndarray:
        """The model's logits when the departed party's embedding rows are permuted across
        samples: a model that no longer reads the party answers exactly as before. (A party
        that left is not asked for embeddings; the server reads zeros for it.)"""
        k = server.party_ids.index(str(self.forget.party))
        perm = torch_generator(derive_seed(self.cfg.seed, "party-shuffle"))
        order = torch.randperm(embeddings[k].shape[0], generator=perm)
        swapped = [e[order.to(e.device)] if i == k else e for i, e in enumerate(embeddings)]
        return server.logits(swapped).cpu().numpy()

    def audit(self, data: AuditData, timings: dict[str, float] | None = None) -> dict[str, dict[str, dict[str, Any]]]:
        """Run the auditors on the gathered arrays; returns ``{model: {section: result}}``
        (``timings`` gets the seconds each auditor took)."""
        a = self.cfg.audit
        auditors: list[Auditor] = [OutputAuditor(seed=derive_seed(self.cfg.seed, "membership"))]
        if not self.forget.removes_data_of_a_party:  # the probe looks for forgotten samples
            auditors.append(
                RepresentationAuditor(
                    eval_fraction=a.probe_eval_fraction,
                    C=a.probe_C,
                    seed=derive_seed(self.cfg.seed, "probe"),
                    repeats=a.probe_repeats,
                )
            )
            if a.reference_free.enabled:
                auditors.append(
                    ReferenceFreeAuditor(
                        n_models=a.reference_free.models,
                        fraction=a.reference_free.fraction,
                        seed=derive_seed(self.cfg.seed, "reference_free"),
                    )
                )
        else:  # a party's columns went: can the remaining embeddings still read them?
            auditors.append(
                FeatureRecoveryAuditor(
                    eval_fraction=a.probe_eval_fraction,
                    seed=derive_seed(self.cfg.seed, "feature_recovery"),
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
        """Load snapshot ``name`` from a complete checkpoint (server and parties); False if none."""
        target = folder / name
        if not (target / DONE_MARK).is_file():
            return False
        server.states[name] = torch.load(target / "top.pt", map_location=server.device, weights_only=True)
        server.transport.exchange(
            {
                pid: LocalOp("load_checkpoint", {"path": str(target / f"{pid}.pt"), "name": name})
                for pid in server.party_ids
            }
        )
        return True

    def report(
        self,
        runs: dict[str, dict[str, Any]],
        results: dict[str, dict[str, Any]],
        timings: dict[str, float],
        data: AuditData,
    ) -> dict[str, Any]:
        models = {name: {**runs[name], **results[name]} for name in runs}
        return {
            "schema_version": SCHEMA_VERSION,
            "vfl_sim_version": __version__,
            "name": self.cfg.name,
            "seed": self.cfg.seed,
            "runtime": self.cfg.runtime,
            "dataset": self.dataset.describe(),
            "parties": [s.describe() for s in self.slices],
            "forget_request": self.forget.describe(),
            "audit": {
                "runtime_s": sum(timings.values()),
                "timings_s": timings,
                "samples": {g: int(data.mask(g).sum()) for g in ("test", "forget_train", "retain_train")},
                "certificate_thresholds": self.cfg.audit.certificate.model_dump(),
            },
            "models": models,
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


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def partial_dir(out: Path) -> Path:
    """Where the run folder ``out`` is built until it is complete."""
    return out.parent / f".{out.name}.partial"


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse to replace a non-empty run folder unless asked to."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"output folder {out} exists and is not empty; choose another --out or pass --overwrite")


def expand_methods(specs: list[MethodSpec], kind: str) -> list[MethodSpec]:
    """``specs`` with the entry ``all`` replaced by every registered method that supports
    requests of ``kind`` and is not listed on its own (``retrain`` first, then by name)."""
    if not any(m.name == ALL_METHODS for m in specs):
        return specs
    if sum(m.name == ALL_METHODS for m in specs) > 1 or any(m.params for m in specs if m.name == ALL_METHODS):
        raise ConfigError("methods: 'all' stands alone, once and without params")
    listed = {m.model_name for m in specs}
    supporting = [n for n in available_methods() if kind in get_method(n).supports and n not in listed]
    supporting.sort(key=lambda n: (n != "retrain", n))
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
    for shape in party_shapes(dataset, slices):
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
    for auditor in AUDITORS:
        get_auditor(auditor)
    for spec in cfg.audit.auditors:
        build_auditor(spec.name, spec.params)  # unknown names and bad params fail before training
    exp = Experiment(cfg, dataset, slices, forget, methods, device)
    exp.check_audit()
    return exp
