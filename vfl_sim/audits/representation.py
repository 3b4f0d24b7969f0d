"""Representation-level audit: is the forgotten information still in the embeddings?

For every model, on the fused embedding and on each party's own embedding:

- ``lpr``, ``lpr_auroc``: linear probe recovery (Mirage, arXiv 2605.20282) of "sample is
  forgotten" from the embeddings (see :mod:`vfl_sim.audits.probe`). For class requests the probe runs on
  test samples (forgotten class vs the rest); for sample requests on training samples: every
  forgotten sample against as many retained ones, drawn with the seed, so that a probe that
  always answers "retained" scores 0.5 rather than hiding in the imbalance. That measures
  membership rather than class structure (about 0.5 is expected for random removal).
- ``lpr_gap``: ``lpr(model) - lpr(retrain)`` on the same samples and split. Absolute LPR is
  not informative on its own (a retrained model may still separate a class it never saw);
  the gap to the model that never saw the data is.
- ``lpr_interval``, ``lpr_gap_interval``, ``lpr_mean``, ``lpr_gap_mean``: 95 % percentile
  intervals and means of LPR and of the gap over ``repeats`` stratified splits (split 0 is the
  one ``lpr`` reports), the gap paired split by split (:func:`vfl_sim.audits.probe_ci.probe_many_ci`); the
  reference code reports one split. The certificate judges the mean, which is steadier than
  any single split.
- ``cka_original``, ``cka_retrain``: centered linear CKA (Kornblith et al., ICML 2019) to the
  original model's and the retrained model's embeddings of the same samples;
  ``..._unbiased``: the debiased-HSIC estimator (Song et al., JMLR 2012; Nguyen et al., ICLR
  2021), about 0 for unrelated embeddings; ``..._uncentered``: CKA without centering, as the
  Mirage reference code computes it (pushed toward 1 for non-negative features), only for
  comparison with published tables.
- ``separability``: Fisher ratio, silhouette and kNN purity (with its chance level) of the
  forgotten samples among the probe samples (:mod:`vfl_sim.audits.separability`).
- ``consistency``: retraining consistency against ``retrain`` (after "Erased, but Not Gone",
  arXiv 2606.25001): residual of the best linear map onto retrain's embedding, on forgotten
  and on held-out retained samples, and the share of it in retrain's top principal directions
  (:mod:`vfl_sim.audits.consistency`).
- ``same_as_original``: the view's embeddings of the probe samples equal the original's bit
  for bit (``None`` for the original): the parties behind it kept their original bottom
  models (a party that ignores unlearning, or a method that leaves it alone); the certificate
  reads it for ``retrain``, which re-initializes every bottom model.
- ``layers``: ``{party: {layer: {"lpr", "lpr_gap", "lpr_mean", "lpr_gap_mean",
  "lpr_gap_interval"}}}``, LPR and its gap to ``retrain`` at every named layer of every
  party's bottom model before the embedding (pooled activations, gathered with the
  embeddings). ``lpr`` and ``lpr_gap`` are split 0; ``lpr_mean`` is the mean of ``LPR_r`` over
  the same ``repeats`` stratified splits as the fused view, ``lpr_gap_mean`` the mean and
  ``lpr_gap_interval`` the 95 % percentile interval ``[low, high]`` of the paired per-split gaps
  ``gap_r = LPR_r(model) - LPR_r(retrain)`` at the same layer (``None`` without retrain;
  ``[0, 0]`` for retrain itself).
- ``class_recovery`` (class requests, fused embedding): a multi-class probe trained on the
  training embeddings of every class, its accuracy on the forgotten classes' test samples next
  to the model's own output accuracy and a nearest-class-mean rule ("An Illusion of
  Unlearning?", arXiv 2604.08271). With ``retrain`` among the models,
  ``class_recovery.vs_retrain = {"diff", "interval", "n"}`` pairs ``probe_accuracy`` with
  retrain's probe sample by sample: ``d_i = hit_model_i - hit_retrain_i`` over the ``n``
  forgotten-class test samples, ``diff = probe_accuracy(model) - probe_accuracy(retrain)``,
  ``interval = diff -/+ 1.96 sd(d) / sqrt(n)`` (``ddof=1``; ``[diff, diff]`` when ``sd(d) = 0``
  or ``n = 1``), clipped to ``[-1, 1]`` (:func:`vfl_sim.audits.output.paired_accuracy_difference`).

Every probe of one audit shares the same stratified splits, so models and parties are compared
on identical samples.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from vfl_sim.audits.base import LAYERS, AuditData, Auditor, register_auditor
from vfl_sim.audits.cka import linear_cka
from vfl_sim.audits.class_recovery import forgotten_class_recovery
from vfl_sim.audits.consistency import retrain_consistency
from vfl_sim.audits.output import paired_accuracy_difference
from vfl_sim.audits.probe_ci import ProbeCI, probe_many_ci
from vfl_sim.audits.probe_gap import paired_gap
from vfl_sim.audits.separability import fisher_ratio, forget_silhouette, knn_purity
from vfl_sim.config import AuditConfig
from vfl_sim.forget import ORIGINAL, RETRAIN, ForgetKind


def probe_samples(data: AuditData, seed: int = 0) -> np.ndarray:
    """Which audit samples the probes and CKA use for this request kind (a boolean mask)."""
    if data.kind == ForgetKind.CLASS:
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
    """Linear probe recovery (with intervals), CKA, separability and retraining consistency per
    model, fused and per party; multi-class recovery of forgotten classes.

    Parameters
    ----------
    eval_fraction, C, seed
        Probe settings (70/30 split, ``C = 1``, as in Mirage).
    repeats
        Stratified splits behind the LPR intervals (1: a single split, no interval).
    """

    # Party and feature requests forget no samples: nothing to probe for.
    kinds = frozenset({ForgetKind.CLASS, ForgetKind.SAMPLES})
    needs = frozenset({LAYERS})

    def __init__(self, *, eval_fraction: float = 0.3, C: float = 1.0, seed: int = 0, repeats: int = 5) -> None:
        self.eval_fraction = eval_fraction
        self.C = C
        self.seed = seed
        self.repeats = repeats

    @classmethod
    def from_config(cls, audit: AuditConfig, seed: Callable[[str], int]) -> RepresentationAuditor:
        return cls(
            eval_fraction=audit.probe_eval_fraction, C=audit.probe_C, seed=seed("probe"), repeats=audit.probe_repeats
        )

    def audit(self, data: AuditData) -> dict[str, dict[str, Any]]:
        rows = probe_samples(data, self.seed)
        is_forget = data.forget[rows]
        names = list(data.models)
        views: dict[str, dict[str, np.ndarray]] = {
            name: {"fused": m.fused[rows], **{pid: e[rows] for pid, e in m.parties.items()}}
            for name, m in data.models.items()
        }
        keys = list(views[names[0]])
        # The same splits for every probe: all (model, view) pairs are fit on identical samples.
        flat = [views[n][k] for n in names for k in keys]
        results = iter(
            probe_many_ci(
                flat,
                is_forget,
                n_repeats=self.repeats,
                eval_fraction=self.eval_fraction,
                C=self.C,
                seed=self.seed,
            )
        )
        probes = {n: {k: next(results) for k in keys} for n in names}
        recovery = self._class_recovery(data) if data.kind == ForgetKind.CLASS else {}
        layers = self._layers(data, rows, is_forget)

        out: dict[str, dict[str, Any]] = {}
        for n in names:
            per_view = {k: self._view(n, k, views, probes, is_forget) for k in keys}
            out[n] = {"fused": per_view["fused"], "parties": {k: per_view[k] for k in keys if k != "fused"}}
            if n in recovery:
                out[n]["class_recovery"] = recovery[n]
            if n in layers:
                out[n]["layers"] = layers[n]
        return out

    def _layers(self, data: AuditData, rows: np.ndarray, is_forget: np.ndarray) -> dict[str, Any]:
        """LPR at every named layer of every party's bottom model, and its gap to retrain at
        the same layer, over the same ``repeats`` splits as the views: ``lpr`` and ``lpr_gap``
        on split 0, means and the paired gap's interval over all splits."""
        keys = [(pid, layer) for pid, d in next(iter(data.models.values())).layers.items() for layer in d]
        if not keys:
            return {}
        names = [n for n, m in data.models.items() if all(layer in m.layers.get(pid, {}) for pid, layer in keys)]
        flat = [data.models[n].layers[pid][layer][rows] for n in names for pid, layer in keys]
        # One call: every (model, layer) pair on the same splits; repeat 0 is the probe_many split.
        results = iter(
            probe_many_ci(
                flat,
                is_forget,
                n_repeats=self.repeats,
                eval_fraction=self.eval_fraction,
                C=self.C,
                seed=self.seed,
            )
        )
        probes = {n: {key: next(results) for key in keys} for n in names}
        out: dict[str, Any] = {}
        for n in names:
            per_party: dict[str, dict[str, Any]] = {}
            for pid, layer in keys:
                p = probes[n][(pid, layer)]
                gap = paired_gap(p, probes[RETRAIN][(pid, layer)]).balanced_accuracy_gap if RETRAIN in probes else None
                per_party.setdefault(pid, {})[layer] = {
                    "lpr": p.balanced_accuracy.values[0],
                    "lpr_gap": None if gap is None else gap.values[0],
                    "lpr_mean": p.balanced_accuracy.mean,
                    "lpr_gap_mean": None if gap is None else gap.mean,
                    "lpr_gap_interval": None if gap is None else [gap.low, gap.high],
                }
            out[n] = per_party
        return out

    def _view(
        self,
        name: str,
        key: str,
        views: dict[str, dict[str, np.ndarray]],
        probes: dict[str, dict[str, ProbeCI]],
        is_forget: np.ndarray,
    ) -> dict[str, Any]:
        x, p = views[name][key], probes[name][key]
        retrain = views[RETRAIN][key] if RETRAIN in views else None
        gap = paired_gap(p, probes[RETRAIN][key]) if RETRAIN in probes else None
        purity = knn_purity(x, is_forget)

        def cka(other: str) -> dict[str, float | None]:
            if other not in views:
                return {f"cka_{other}": None, f"cka_{other}_unbiased": None, f"cka_{other}_uncentered": None}
            y = views[other][key]
            return {
                f"cka_{other}": linear_cka(x, y),
                f"cka_{other}_unbiased": linear_cka(x, y, estimator="unbiased"),
                f"cka_{other}_uncentered": linear_cka(x, y, centered=False),
            }

        original = views[ORIGINAL][key] if ORIGINAL in views and name != ORIGINAL else None
        return {
            "same_as_original": None if original is None else bool(np.array_equal(x, original)),
            "lpr": p.balanced_accuracy.values[0],  # split 0: the Mirage single-split value
            "lpr_auroc": p.auroc.values[0],
            "lpr_gap": None if gap is None else gap.balanced_accuracy_gap.values[0],
            "lpr_gap_mean": None if gap is None else gap.balanced_accuracy_gap.mean,
            "lpr_mean": p.balanced_accuracy.mean,
            "lpr_interval": [p.balanced_accuracy.low, p.balanced_accuracy.high],
            "lpr_gap_interval": None
            if gap is None
            else [gap.balanced_accuracy_gap.low, gap.balanced_accuracy_gap.high],
            **cka(ORIGINAL),
            **cka(RETRAIN),
            "separability": {
                "fisher_ratio": fisher_ratio(x, is_forget),
                "silhouette": forget_silhouette(x, is_forget),
                "knn_purity": purity.purity,
                "knn_chance": purity.chance,
            },
            "consistency": None
            if retrain is None
            else retrain_consistency(x, retrain, is_forget, seed=self.seed).to_dict(),
            "probe_samples": {"fit": p.n_fit, "eval": p.n_eval, "forget": int(is_forget.sum()), "splits": self.repeats},
        }

    def _class_recovery(self, data: AuditData) -> dict[str, dict[str, Any]]:
        train = data.mask("retain_train") | data.mask("forget_train")
        test = data.mask("test")
        classes = sorted({int(c) for c in data.labels[data.forget]})
        results = {}
        for name, m in data.models.items():
            fused = m.fused
            results[name] = forgotten_class_recovery(
                fused[train],
                data.labels[train],
                fused[test],
                data.labels[test],
                classes,
                test_logits=m.logits[test],
                C=self.C,
            )
        out: dict[str, dict[str, Any]] = {}
        for name, result in results.items():
            out[name] = result.to_dict()
            if RETRAIN in results:
                # Same forgotten-class test samples in the same order for every model.
                out[name]["vs_retrain"] = paired_accuracy_difference(result.probe_hits, results[RETRAIN].probe_hits)
        return out
