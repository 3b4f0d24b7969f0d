"""Representation-level audit: is the forgotten information still in the embeddings?

For every model, on the fused embedding and on each party's own embedding:

- ``lpr``, ``lpr_auroc``: linear probe recovery (Mirage, arXiv 2605.20282) of "sample is
  forgotten" from the embeddings (see :mod:`audits.probe`). For class requests the probe runs on
  test samples (forgotten class vs the rest); for sample requests on training samples: every
  forgotten sample against as many retained ones, drawn with the seed, so that a probe that
  always answers "retained" scores 0.5 rather than hiding in the imbalance. That measures
  membership rather than class structure (about 0.5 is expected for random removal).
- ``lpr_gap``: ``lpr(model) - lpr(retrain)`` on the same samples and split. Absolute LPR is
  not informative on its own (a retrained model may still separate a class it never saw);
  the gap to the model that never saw the data is.
- ``cka_original``, ``cka_retrain``: centered linear CKA (Kornblith et al., ICML 2019) to the
  original model's and the retrained model's embeddings of the same samples.

Every probe of one audit shares one stratified split, so models and parties are compared on
identical samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from audits.base import AuditData, Auditor, register_auditor
from audits.cka import linear_cka
from audits.probe import probe_many

ORIGINAL, RETRAIN = "original", "retrain"


def probe_samples(data: AuditData, seed: int = 0) -> np.ndarray:
    """Which audit samples the probes and CKA use for this request kind (a boolean mask)."""
    if data.kind == "class":
        return data.mask("test")
    forget = data.mask("forget_train")
    retain = np.flatnonzero(data.mask("retain_train"))
    n = min(int(forget.sum()), retain.size)
    chosen = np.random.default_rng(seed).choice(retain, n, replace=False)
    rows = forget.copy()
    rows[chosen] = True
    return rows


@register_auditor("representation")
class RepresentationAuditor(Auditor):
    """Linear probe recovery and CKA per model, fused and per party.

    Parameters
    ----------
    eval_fraction, C, seed
        Probe settings (70/30 split, ``C = 1``, as in Mirage).
    """

    def __init__(self, *, eval_fraction: float = 0.3, C: float = 1.0, seed: int = 0) -> None:
        self.eval_fraction = eval_fraction
        self.C = C
        self.seed = seed

    def audit(self, data: AuditData) -> dict[str, dict[str, Any]]:
        rows = probe_samples(data, self.seed)
        is_forget = data.forget[rows]
        names = list(data.models)
        views: dict[str, dict[str, np.ndarray]] = {
            name: {"fused": m.fused[rows], **{pid: e[rows] for pid, e in m.parties.items()}}
            for name, m in data.models.items()
        }
        keys = list(views[names[0]])
        # One split for every probe: fit all (model, view) pairs on identical samples.
        flat = [views[n][k] for n in names for k in keys]
        results = iter(probe_many(flat, is_forget, eval_fraction=self.eval_fraction, C=self.C, seed=self.seed))
        probes = {n: {k: next(results) for k in keys} for n in names}

        out: dict[str, dict[str, Any]] = {}
        for n in names:
            per_view: dict[str, dict[str, Any]] = {}
            for k in keys:
                p = probes[n][k]
                ref = probes[RETRAIN][k] if RETRAIN in probes else None
                per_view[k] = {
                    "lpr": p.balanced_accuracy,
                    "lpr_auroc": p.auroc,
                    "lpr_gap": None if ref is None else p.balanced_accuracy - ref.balanced_accuracy,
                    "cka_original": linear_cka(views[n][k], views[ORIGINAL][k]),
                    "cka_retrain": None if RETRAIN not in views else linear_cka(views[n][k], views[RETRAIN][k]),
                    "probe_samples": {"fit": p.n_fit, "eval": p.n_eval, "forget": int(is_forget.sum())},
                }
            out[n] = {"fused": per_view["fused"], "parties": {k: per_view[k] for k in keys if k != "fused"}}
        return out
