"""Gathering: every model's view of the audit samples, asked of the parties.

The audit samples are each split's samples (test, forgotten training, retained training), each
capped at ``audit.max_samples``. The server asks the parties for their embeddings of them (and
intermediate activations where an auditor needs ``layers``); a model with non-finite weights,
embeddings or outputs is marked diverged and its arrays zeroed.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import torch

from vfl_sim.audits.base import INPUTS, LAYERS, REMOVED_FEATURES, SHUFFLED_PARTY_LOGITS, AuditData, ModelEmbeddings
from vfl_sim.audits.probe import stratified_split
from vfl_sim.audits.representation import probe_samples
from vfl_sim.errors import ConfigError
from vfl_sim.experiment.spec import ExperimentSpec
from vfl_sim.forget import ForgetKind
from vfl_sim.seeding import torch_generator
from vfl_sim.server.server import Server

log = logging.getLogger("vfl_sim")


def audit_ids(spec: ExperimentSpec) -> tuple[np.ndarray, np.ndarray]:
    """The audit samples (ids and their split name), each group capped at ``audit.max_samples``."""
    cap = spec.cfg.audit.max_samples
    rng = np.random.default_rng(spec.audit_seed("audit-samples"))

    def capped(ids: np.ndarray) -> np.ndarray:
        return np.sort(rng.choice(ids, cap, replace=False)) if ids.size > cap else ids

    groups = {
        "test": capped(spec.dataset.test_ids),
        "forget_train": capped(spec.forget.forget_ids.numpy()),
        "retain_train": capped(spec.forget.retain_ids.numpy()),
    }
    ids = np.concatenate(list(groups.values()))
    split = np.concatenate([np.full(g.size, name) for name, g in groups.items()])
    return ids, split


def audit_frame(spec: ExperimentSpec, needs: frozenset[str]) -> AuditData:
    """The audit samples, their labels and forget mask, with no model views yet; with what
    the auditors of this run need of the data itself (``needs``: raw inputs, removed columns)."""
    ids, split = audit_ids(spec)
    labels = spec.dataset.labels[ids]
    if spec.forget.kind == ForgetKind.CLASS:
        forget = np.isin(labels, spec.forget.classes)
    elif spec.forget.removes_data_of_a_party:
        forget = np.zeros(ids.size, dtype=bool)  # every sample stays; a party's data goes
    else:
        forget = np.isin(ids, spec.forget.forget_ids.numpy())
    of_a_party = spec.forget.removes_data_of_a_party
    return AuditData(
        kind=spec.forget.kind,
        labels=labels,
        split=split,
        forget=forget,
        models={},
        ids=ids,
        inputs=spec.dataset.features[ids].reshape(ids.size, -1) if INPUTS in needs else None,
        removed_party=spec.forget.party if of_a_party else None,
        removed_features=removed_features(spec, ids) if of_a_party and REMOVED_FEATURES in needs else None,
    )


def removed_features(spec: ExperimentSpec, ids: np.ndarray) -> np.ndarray:
    """Raw values ``(n, m)`` of what a party or feature request removes, for samples ``ids``:
    every column of the party that leaves, or the removed columns (flat columns, or pixel
    columns of an image strip, every channel and row), flattened. The audit reads them as the
    simulator, which holds all the data; no party or server role sees another party's columns."""
    party = next(s for s in spec.slices if s.party_id == spec.forget.party)
    view = party.take(spec.dataset.features[ids])
    if spec.forget.kind == ForgetKind.FEATURES:
        view = view[..., list(spec.forget.columns)]
    return view.reshape(ids.size, -1)


def check_audit(spec: ExperimentSpec, needs: frozenset[str]) -> None:
    """Fail before training when the audit samples cannot support a linear probe."""
    if spec.forget.removes_data_of_a_party:
        return  # no forgotten samples to probe for
    frame = audit_frame(spec, needs)
    rows = probe_samples(frame, 0)
    try:
        stratified_split(frame.forget[rows], eval_fraction=spec.cfg.audit.probe_eval_fraction)
    except ValueError as exc:
        where = "test samples of the forgotten classes" if spec.forget.kind == ForgetKind.CLASS else "forgotten samples"
        raise ConfigError(
            f"audit: too few {where} for the probe ({exc}); use more data (data.test_fraction, "
            "data.synthetic.samples) or a larger forget request"
        ) from None


def gather(spec: ExperimentSpec, server: Server, models: list[str], needs: frozenset[str]) -> AuditData:
    """Ask the parties for every model's embeddings of the audit samples (and what else the
    auditors of the run need: ``needs``)."""
    frame = audit_frame(spec, needs)
    assert frame.ids is not None  # noqa: S101  (audit_frame sets it)
    layers = LAYERS in needs
    shuffle = SHUFFLED_PARTY_LOGITS in needs and spec.forget.kind == ForgetKind.PARTY
    views: dict[str, ModelEmbeddings] = {}
    shuffled: dict[str, np.ndarray] = {}
    diverged: dict[str, str] = {}
    for name in models:
        loaded = server.load_state(name)
        embeddings, per_layer = server.embed(torch.from_numpy(frame.ids), layers=layers)
        logits = server.logits(embeddings).cpu().numpy()
        if shuffle:
            shuffled[name] = _logits_with_party_shuffled(spec, server, embeddings)
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
    return dataclasses.replace(frame, models=views, shuffled_party_logits=shuffled, diverged=diverged)


def _logits_with_party_shuffled(spec: ExperimentSpec, server: Server, embeddings: list[torch.Tensor]) -> np.ndarray:
    """The model's logits when the departed party's embedding rows are permuted across
    samples: a model that no longer reads the party answers exactly as before. (A party
    that left is not asked for embeddings; the server reads zeros for it.)"""
    k = server.party_ids.index(str(spec.forget.party))
    perm = torch_generator(spec.audit_seed("party-shuffle"))
    order = torch.randperm(embeddings[k].shape[0], generator=perm)
    swapped = [e[order.to(e.device)] if i == k else e for i, e in enumerate(embeddings)]
    return server.logits(swapped).cpu().numpy()


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


def embedding_arrays(data: AuditData) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {
        "ids": np.asarray(data.ids),
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
