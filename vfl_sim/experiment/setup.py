"""Preparation: validate everything a run needs and build the :class:`Experiment`.

:func:`prepare` checks plugins, dataset, partition, model sizes, forget request, methods and
auditors before anything is written, so bad input fails with one error and leaves no
half-written run folder.
"""

from __future__ import annotations

import os

import torch

import vfl_sim.methods  # noqa: F401  (registers the built-in methods and their parties' steps)
from vfl_sim.config import ALL_METHODS, ExperimentConfig, MethodSpec
from vfl_sim.data.loaders import load_dataset
from vfl_sim.data.partition import partition_features
from vfl_sim.errors import ConfigError
from vfl_sim.experiment.checkpoints import error_reason
from vfl_sim.experiment.compute import resolve_device
from vfl_sim.experiment.core import Experiment
from vfl_sim.forget import RETRAIN
from vfl_sim.methods.controls import build_controls, is_reserved
from vfl_sim.methods.registry import available_methods, build_method, get_method
from vfl_sim.models.zoo import build_bottom, build_top, resolve_bottom_kind
from vfl_sim.parties.build import party_shapes
from vfl_sim.plugins import import_plugins
from vfl_sim.seeding import derive_seed
from vfl_sim.server.coordinator import resolve_forget_request


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
        raise ConfigError(f"{field} ({widths[field]}) is too large to build the models ({error_reason(exc)})") from None
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
    slices = partition_features(
        cfg.partition, dataset.sample_shape, derive_seed(cfg.seed, "partition"), dataset.column_names
    )
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
    exp = Experiment(cfg, dataset, slices, forget, methods, device, controls)
    exp.auditors()  # unknown names and bad params fail before training
    exp.check_audit()
    return exp
