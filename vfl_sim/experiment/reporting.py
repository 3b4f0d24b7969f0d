"""The report of a run (``report.json``), from the models' costs and the audit's results."""

from __future__ import annotations

from typing import Any

import torch

from vfl_sim import __version__
from vfl_sim.audits.base import AuditData
from vfl_sim.audits.certificate import Certification
from vfl_sim.config import TrainConfig
from vfl_sim.defenses import gaussian_epsilon
from vfl_sim.experiment.spec import ExperimentSpec
from vfl_sim.report import SCHEMA_VERSION


def describe_defense(train: TrainConfig) -> dict[str, Any]:
    """The run's ``defense`` section: the settings of ``train.defense``, whether each message
    is defended, and the ``(epsilon, delta)`` bound per message for one trained model (each
    training sample's row is released once per epoch; ``None`` where no bound holds)."""
    d = train.defense
    return {
        **d.model_dump(mode="json"),
        "embeddings_defended": d.on_embeddings,
        "gradients_defended": d.on_gradients,
        "releases_per_sample": train.epochs,
        "epsilon": {
            "embeddings": gaussian_epsilon(d.embedding_noise, d.embedding_clip, train.epochs, d.delta),
            "gradients": gaussian_epsilon(d.gradient_noise, d.gradient_clip, train.epochs, d.delta),
        },
    }


def build_report(
    spec: ExperimentSpec,
    runs: dict[str, dict[str, Any]],
    results: dict[str, dict[str, Any]],
    timings: dict[str, float],
    data: AuditData,
    certification: Certification,
) -> dict[str, Any]:
    """The run's ``report.json``: what ran (config, dataset, parties, request), each model's
    costs and audit results, the controls, and how the audit and the certificate were set up."""
    roles = spec.control_roles
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
        "name": spec.cfg.name,
        "seed": spec.cfg.seed,
        "runtime": spec.cfg.runtime,
        # What the server computed with; every party of the run uses the same count.
        "threads": torch.get_num_threads(),
        "defense": describe_defense(spec.cfg.train),
        "dataset": spec.dataset.describe(),
        "parties": [s.describe() for s in spec.slices],
        "forget_request": spec.forget.describe(),
        "audit": {
            "runtime_s": sum(timings.values()),
            "timings_s": timings,
            "samples": {g: int(data.mask(g).sum()) for g in ("test", "forget_train", "retain_train")},
            "seed": spec.cfg.seed if spec.cfg.audit.seed is None else spec.cfg.audit.seed,
            "certificate_thresholds": spec.cfg.audit.certificate.model_dump(),
            "certificate": {
                "controls": roles,
                "calibration": {
                    "retrains": list(certification.calibration),
                    "quantile": spec.cfg.audit.calibration.quantile,
                    "enabled": bool(certification.calibration),
                },
                "power": certification.power,
                "tolerances": certification.tolerances_dict(),
            },
        },
        "models": models,
        "controls": controls,
    }
