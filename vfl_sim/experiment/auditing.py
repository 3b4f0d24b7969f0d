"""Auditing: which auditors a run uses, running them on the gathered arrays, the relearning
attack, and the certificate over their results.

The built-in auditors are registered like plugin ones and set themselves up from the ``audit``
section (:meth:`~vfl_sim.audits.base.Auditor.from_config`); ``audit.auditors`` adds registered
ones with their params. Each runs for the request kinds it declares.
"""

from __future__ import annotations

import time
from typing import Any

from threadpoolctl import threadpool_limits

import vfl_sim.audits  # noqa: F401  (registers the built-in auditors)
from vfl_sim.audits.base import AuditData, Auditor, get_auditor
from vfl_sim.audits.certificate import Certification, certify_run
from vfl_sim.audits.relearning import compare_relearning
from vfl_sim.errors import ConfigError
from vfl_sim.experiment.gathering import gather
from vfl_sim.experiment.spec import ExperimentSpec
from vfl_sim.forget import RETRAIN, ForgetKind
from vfl_sim.server.relearning import default_attack_optim, default_head_optim, relearning_curves, relearning_split
from vfl_sim.server.server import Server

# The auditors every run sets up from its `audit` section, in the order of the report's sections.
BUILT_IN_AUDITORS = ("output", "representation", "reference_free", "feature_recovery", "model_completion")
# Report sections written by the run itself: a user auditor may not overwrite them.
BUILT_IN_SECTIONS = (*BUILT_IN_AUDITORS, "relearning", "certificate", "diverged", "runtime_s", "communication")


def build_auditor(name: str, params: dict[str, Any]) -> Auditor:
    """The registered auditor ``name`` built with ``params``; a ConfigError names what is wrong."""
    cls = get_auditor(name)
    if cls.section in BUILT_IN_SECTIONS:
        raise ConfigError(f"audit.auditors: '{name}' writes section '{cls.section}', which a built-in audit owns")
    try:
        return cls(**params)
    except TypeError as exc:
        raise ConfigError(f"audit.auditors.{name}.params: {exc}") from None


def auditors(spec: ExperimentSpec) -> list[Auditor]:
    """The auditors of this run: the built-in ones (:data:`BUILT_IN_AUDITORS`, as the
    ``audit`` section sets them up) and those of ``audit.auditors``, each where it audits
    this request's kind."""
    built_in = [get_auditor(name).from_config(spec.cfg.audit, spec.audit_seed) for name in BUILT_IN_AUDITORS]
    mine = [build_auditor(entry.name, entry.params) for entry in spec.cfg.audit.auditors]
    return [a for a in [*built_in, *mine] if a is not None and spec.forget.kind in a.kinds]


def audit_needs(spec: ExperimentSpec) -> frozenset[str]:
    """What the auditors of this run need gathered (:attr:`Auditor.needs`)."""
    return frozenset[str]().union(*(type(a).needs for a in auditors(spec)))


def run_auditors(
    spec: ExperimentSpec, data: AuditData, timings: dict[str, float] | None = None
) -> dict[str, dict[str, Any]]:
    """Run the auditors on the gathered arrays; returns ``{model: {section: result}}``
    (``timings`` gets the seconds each auditor took)."""
    chosen = auditors(spec)
    out: dict[str, dict[str, Any]] = {name: {} for name in data.models}
    # The auditors make hundreds of small fits and products: a second BLAS or OpenMP
    # thread only competes with torch's (measured: 1.7x slower on 2 cores, 5x under load).
    with threadpool_limits(limits=1):
        for auditor in chosen:
            start = time.perf_counter()
            for model, result in auditor.audit(data).items():
                out[model][auditor.section] = result
            if timings is not None:
                timings[auditor.section] = time.perf_counter() - start
    return out


def audit_models(
    spec: ExperimentSpec, server: Server, names: list[str]
) -> tuple[AuditData, dict[str, dict[str, Any]], dict[str, float], Certification]:
    """Gather every model's embeddings (controls included), run the auditors and (class
    requests) the relearning attack, and certify; returns the audit data, ``{model:
    {section: result}}``, the seconds each step took and the certification."""
    timings: dict[str, float] = {}
    start = time.perf_counter()
    data = gather(spec, server, names, audit_needs(spec))
    timings["gather"] = time.perf_counter() - start
    results = run_auditors(spec, data, timings)
    if spec.forget.kind == ForgetKind.CLASS and spec.cfg.audit.relearning.enabled:
        start = time.perf_counter()
        for name, section in relearning(spec, server, names).items():
            results[name]["relearning"] = section
        timings["relearning"] = time.perf_counter() - start
    for name, reason in data.diverged.items():
        results[name]["diverged"] = reason
    certification = certify_run(
        results,
        spec.forget.kind,
        spec.cfg.audit.certificate,
        controls=spec.control_roles,
        quantile=spec.cfg.audit.calibration.quantile,
    )
    for model, cert in certification.certificates.items():
        results[model]["certificate"] = cert.to_dict()
    return data, results, timings, certification


def relearning(spec: ExperimentSpec, server: Server, names: list[str]) -> dict[str, dict[str, Any]]:
    """The relearning attack on every model, each phase compared with ``retrain``'s curve."""
    r = spec.cfg.audit.relearning
    split = relearning_split(
        spec.forget,
        spec.dataset.labels,
        spec.dataset.test_ids,
        per_class=r.per_class,
        max_eval=spec.cfg.audit.max_samples,
        seed=spec.audit_seed("relearning-split"),
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
        seed=spec.audit_seed("relearn"),
    )
    out: dict[str, dict[str, Any]] = {name: {"attack": split.describe()} for name in names}
    for phase, per_model in curves.items():
        reference = per_model.get(RETRAIN)
        for name, curve in per_model.items():
            summary = compare_relearning(curve, reference, threshold=r.threshold)
            out[name][phase] = {**summary.to_dict(), "curve": curve.to_dict()}
    return out
