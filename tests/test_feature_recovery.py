"""Tests of audits.feature_recovery: ridge read-out of removed columns from embeddings."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

import vfl_sim.audits.feature_recovery as fr
from vfl_sim.audits.base import AuditData, ModelEmbeddings, get_auditor
from vfl_sim.audits.feature_recovery import (
    FeatureRecovery,
    FeatureRecoveryAuditor,
    FeatureRecoveryGap,
    feature_recovery,
    feature_recovery_many,
    paired_recovery_gap,
    recovery_gap_ci,
    target_components,
)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


# --------------------------------------------------------------------------------------------
# Known answers on plain arrays
# --------------------------------------------------------------------------------------------


def test_embedding_that_contains_the_target_linearly_recovers_it(rng: np.random.Generator) -> None:
    n = 600
    v = rng.normal(size=(n, 5)) * [1.0, 3.0, 0.5, 10.0, 2.0] + 4.0
    mix = rng.normal(size=(5, 12))
    x = v @ mix + 1e-3 * rng.normal(size=(n, 12))
    res = feature_recovery(x, v)
    assert res.r2.mean > 0.995
    assert min(res.r2.values) > 0.99
    assert (res.n_fit, res.n_eval) == (420, 180)
    assert len(res.r2.values) == 5


def test_independent_embedding_gives_about_zero(rng: np.random.Generator) -> None:
    # n_eval = 900: the sampling spread of R^2 around its expectation (about -(d + 1) / n_fit)
    # is below 0.01, so the bounds are several standard errors wide.
    n = 3000
    res = feature_recovery(rng.normal(size=(n, 8)), rng.normal(size=(n, 3)), repeats=3)
    assert -0.03 < res.r2.mean < 0.005
    assert max(res.r2.values) < 0.01


def test_partially_informative_embedding_is_variance_weighted(rng: np.random.Generator) -> None:
    # Two independent target columns, variances 4 and 1; the embedding holds only the first.
    n = 4000
    v = rng.normal(size=(n, 2)) * [2.0, 1.0]
    x = np.c_[v[:, :1], rng.normal(size=(n, 3))]
    standardized = feature_recovery(x, v, repeats=2)
    raw = feature_recovery(x, v, repeats=2, standardize_targets=False)
    # Standardized columns weigh equally: half the variance is readable. Unstandardized, the
    # readable column holds 4 / (4 + 1) of it.
    assert standardized.r2.mean == pytest.approx(0.5, abs=0.03)
    assert raw.r2.mean == pytest.approx(0.8, abs=0.03)


def test_r2_matches_sklearn_ridge_on_each_split(rng: np.random.Generator) -> None:
    n = 300
    v = rng.normal(size=(n, 4))
    x = v[:, :2] @ rng.normal(size=(2, 6)) + rng.normal(size=(n, 6)) * [1, 1, 1, 5, 0.1, 2]
    res = feature_recovery(x, v, repeats=3, alpha=2.5, seed=11)
    t = target_components(v).values
    for r in range(3):
        fit, ev = train_test_split(np.arange(n), test_size=0.3, random_state=11 + r, shuffle=True)
        scaler = StandardScaler().fit(x[fit])
        pred = Ridge(alpha=2.5).fit(scaler.transform(x[fit]), t[fit]).predict(scaler.transform(x[ev]))
        assert res.r2.values[r] == pytest.approx(r2_score(t[ev], pred, multioutput="variance_weighted"), abs=1e-10)


def test_wide_embedding_uses_the_dual_form_with_the_same_answer(rng: np.random.Generator) -> None:
    n, d = 80, 150  # d > n_fit = 56
    v = rng.normal(size=(n, 3))
    x = np.c_[v @ rng.normal(size=(3, 10)), rng.normal(size=(n, d - 10))]
    res = feature_recovery(x, v, repeats=1, alpha=3.0)
    t = target_components(v).values
    fit, ev = train_test_split(np.arange(n), test_size=0.3, random_state=0, shuffle=True)
    scaler = StandardScaler().fit(x[fit])
    pred = Ridge(alpha=3.0).fit(scaler.transform(x[fit]), t[fit]).predict(scaler.transform(x[ev]))
    assert res.r2.values[0] == pytest.approx(r2_score(t[ev], pred, multioutput="variance_weighted"), abs=1e-9)


def test_constant_and_nonfinite_embedding_columns_are_harmless(rng: np.random.Generator) -> None:
    n = 400
    v = rng.normal(size=(n, 2))
    x = np.c_[v, np.full(n, 0.1), np.zeros(n)]
    x_nan = x.copy()
    x_nan[::7, 3] = np.nan  # a dead unit that emits NaN reads as 0, the convention of every audit
    a, b, c = feature_recovery_many([x, x_nan, x[:, :2]], v)
    assert a.r2.values == pytest.approx(b.r2.values, abs=1e-12)
    assert a.r2.values == pytest.approx(c.r2.values, abs=1e-9)
    assert a.r2.mean > 0.99


# --------------------------------------------------------------------------------------------
# Target reduction
# --------------------------------------------------------------------------------------------


def test_target_components_keep_the_leading_structure(rng: np.random.Generator) -> None:
    n = 500
    latent = rng.normal(size=(n, 2))
    v = latent @ rng.normal(size=(2, 40)) + 0.05 * rng.normal(size=(n, 40))
    tc = target_components(v, n_components=2)
    assert tc.values.shape == (n, 2) and (tc.columns, tc.components) == (40, 2)
    assert tc.explained_variance > 0.95
    by_fraction = target_components(v, n_components=0.9)
    assert by_fraction.components <= 2
    assert target_components(v, n_components=100).components == 40  # capped at m, no reduction
    assert target_components(v, n_components=np.int64(2)).components == 2
    # Wider than tall: the sample-side Gram gives the same scores up to each column's sign.
    wide = target_components(v[:30], n_components=3)
    u = (v[:30] - v[:30].mean(0)) / v[:30].std(0)
    _, s, vt = np.linalg.svd(u, full_matrices=False)
    assert np.allclose(np.abs(wide.values), np.abs(u @ vt[:3].T), atol=1e-8)
    assert wide.explained_variance == pytest.approx(float(np.sum(s[:3] ** 2) / np.sum(s**2)))


def test_all_components_equal_no_reduction(rng: np.random.Generator) -> None:
    # R^2 is a ratio of sums over target columns, invariant to rotating them.
    n = 400
    v = rng.normal(size=(n, 6)) @ rng.normal(size=(6, 6))
    x = v[:, :3] + rng.normal(size=(n, 3))
    none = feature_recovery(x, v)
    full = feature_recovery(x, v, n_components=1.0)
    assert full.target.components == 6
    assert none.r2.values == pytest.approx(full.r2.values, abs=1e-10)


# --------------------------------------------------------------------------------------------
# Paired gap, batching and determinism
# --------------------------------------------------------------------------------------------


def test_paired_gap_of_identical_models_is_zero(rng: np.random.Generator) -> None:
    n = 300
    v = rng.normal(size=(n, 3))
    x = v[:, :1] + rng.normal(size=(n, 4))
    a, b = feature_recovery_many([x, x.copy()], v)
    gap = paired_recovery_gap(a, b)
    assert gap.gap.values == pytest.approx((0.0,) * 5, abs=1e-12)
    assert gap.gap.covers(0.0)
    assert a.r2.high - a.r2.low > 0.0  # the splits differ, the pairing cancels that


def test_paired_gap_is_positive_for_an_informative_model(rng: np.random.Generator) -> None:
    n = 600
    kept = rng.normal(size=(n, 3))
    v = kept @ rng.normal(size=(3, 4)) + rng.normal(size=(n, 4))  # partly explained by kept columns
    retrain = kept + 0.1 * rng.normal(size=(n, 3))
    audited = np.c_[retrain, v]
    gap = recovery_gap_ci(audited, retrain, v)
    assert gap.retrain.r2.mean > 0.3  # the retrained model reads them through the kept columns
    assert gap.gap.low > 0.2 and gap.gap.mean > 0.3
    assert all(g > 0 for g in gap.gap.values)


def test_paired_gap_refuses_results_from_different_splits_or_targets(rng: np.random.Generator) -> None:
    n = 200
    v = rng.normal(size=(n, 2))
    x = rng.normal(size=(n, 3))
    base = feature_recovery(x, v)
    with pytest.raises(ValueError, match="seed"):
        paired_recovery_gap(base, feature_recovery(x, v, seed=1))
    with pytest.raises(ValueError, match="split_digest"):
        paired_recovery_gap(base, feature_recovery(x, v + rng.normal(size=(n, 2))))
    with pytest.raises(ValueError, match="alpha"):
        paired_recovery_gap(base, feature_recovery(x, v, alpha=2.0))


def test_deterministic_and_batching_does_not_change_results(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 250
    v = rng.normal(size=(n, 3))
    xs = [v[:, :1] * k + rng.normal(size=(n, 5)) for k in range(4)] + [rng.normal(size=(n, 9))]
    first = feature_recovery_many(xs, v, seed=3)
    again = feature_recovery_many(xs, v, seed=3)
    assert [r.r2.values for r in first] == [r.r2.values for r in again]
    assert feature_recovery_many(xs, v, seed=4)[1].r2.values != first[1].r2.values
    alone = feature_recovery(xs[2], v, seed=3)
    assert alone.r2.values == pytest.approx(first[2].r2.values, abs=1e-12)
    monkeypatch.setattr(fr, "_BATCH_BYTES", 1)  # one model per stacked solve
    chunked = feature_recovery_many(xs, v, seed=3)
    for a, b in zip(first, chunked, strict=True):
        assert a.r2.values == pytest.approx(b.r2.values, abs=1e-12)


def test_accepts_torch_tensors(rng: np.random.Generator) -> None:
    torch = pytest.importorskip("torch")
    v = rng.normal(size=(120, 2))
    x = v @ rng.normal(size=(2, 4))
    a = feature_recovery(torch.tensor(x, dtype=torch.float32), torch.tensor(v[:, 0]))
    b = feature_recovery(x.astype(np.float32), v[:, :1])
    assert a.r2.values == pytest.approx(b.r2.values, abs=1e-9)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_mismatched_rows_and_shapes_are_refused(rng: np.random.Generator) -> None:
    v = rng.normal(size=(100, 2))
    with pytest.raises(ValueError, match=r"embeddings_list\[0\] has 99 rows but targets have 100"):
        feature_recovery(rng.normal(size=(99, 3)), v)
    with pytest.raises(ValueError, match="2-D"):
        feature_recovery(rng.normal(size=(100,)), v)
    with pytest.raises(ValueError, match="2-D"):
        feature_recovery(rng.normal(size=(100, 3)), rng.normal(size=(100, 2, 2)))
    with pytest.raises(ValueError, match="no columns"):
        feature_recovery(rng.normal(size=(100, 3)), np.empty((100, 0)))


def test_too_few_samples_are_refused(rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match="at least 2 samples in both the fit and the eval part"):
        feature_recovery(rng.normal(size=(3, 2)), rng.normal(size=(3, 1)), eval_fraction=0.3)


def test_nonfinite_or_constant_targets_are_refused(rng: np.random.Generator) -> None:
    x = rng.normal(size=(50, 3))
    v = rng.normal(size=(50, 2))
    v[4, 1] = np.nan
    with pytest.raises(ValueError, match=r"non-finite values \(first at row 4, column 1\)"):
        feature_recovery(x, v)
    with pytest.raises(ValueError, match="constant"):
        feature_recovery(x, np.full((50, 3), 2.5))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eval_fraction": 1.0}, "eval_fraction"),
        ({"alpha": 0.0}, "alpha must be positive"),
        ({"repeats": 0}, "repeats"),
        ({"level": 1.5}, "level"),
        ({"n_components": 0}, "n_components"),
        ({"n_components": 1.5}, "fraction of variance"),
    ],
)
def test_bad_settings_are_refused(rng: np.random.Generator, kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        feature_recovery(rng.normal(size=(40, 2)), rng.normal(size=(40, 2)), **kwargs)
    with pytest.raises(ValueError, match=match):
        FeatureRecovery(**kwargs)


# --------------------------------------------------------------------------------------------
# Minibatch forms
# --------------------------------------------------------------------------------------------


def test_minibatch_forms_equal_the_functions(rng: np.random.Generator) -> None:
    n = 240
    v = rng.normal(size=(n, 3))
    a = np.c_[v[:, :2], v[:, :2]] + rng.normal(size=(n, 4))
    b = rng.normal(size=(n, 4))
    metric = FeatureRecovery(n_components=2, seed=5)
    gap_metric = FeatureRecoveryGap(seed=5)
    for lo in range(0, n, 64):
        metric.update(a[lo : lo + 64], v[lo : lo + 64])
        gap_metric.update(a[lo : lo + 64], b[lo : lo + 64], v[lo : lo + 64])
    assert metric.n_samples == n
    assert metric.compute().r2.values == feature_recovery(a, v, n_components=2, seed=5).r2.values
    assert gap_metric.compute().gap.values == recovery_gap_ci(a, b, v, seed=5).gap.values
    metric.reset()
    with pytest.raises(ValueError, match="before any update"):
        metric.compute()
    metric.update(a[:10], v[:10])
    with pytest.raises(ValueError, match="width changed"):
        metric.update(a[:10, :3], v[:10])
    with pytest.raises(TypeError, match="unexpected"):
        FeatureRecovery(C=1.0)


# --------------------------------------------------------------------------------------------
# The auditor on AuditData
# --------------------------------------------------------------------------------------------


def _party_data(rng: np.random.Generator, kind: str) -> AuditData:
    """Three parties; party_2's columns are removed (kind 'party': it leaves).

    The removed columns are correlated with the kept ones (party_0 and party_1 hold ``kept``),
    so a retrained model still predicts part of them. The original model's party_1 embedding
    also carries the removed columns themselves (memorized), an unlearned model that "hides"
    only at the departed party's embedding keeps that, and retrain has none of it.
    """
    n_train, n_test = 500, 100
    n = n_train + n_test
    kept = rng.normal(size=(n, 4))
    removed = kept[:, :2] @ rng.normal(size=(2, 6)) + rng.normal(size=(n, 6))
    split = np.array(["retain_train"] * n_train + ["test"] * n_test)

    def model(leak: bool, departed: bool) -> ModelEmbeddings:
        e0 = kept[:, :2] @ rng.normal(size=(2, 5)) + 0.1 * rng.normal(size=(n, 5))
        e1 = kept[:, 2:] @ rng.normal(size=(2, 5)) + 0.1 * rng.normal(size=(n, 5))
        if leak:
            e1 = np.c_[e1, removed @ np.linalg.qr(rng.normal(size=(6, 6)))[0]]
        else:
            e1 = np.c_[e1, rng.normal(size=(n, 6))]
        e2 = removed @ rng.normal(size=(6, 8)) if departed else np.zeros((n, 8))
        return ModelEmbeddings(parties={"party_0": e0, "party_1": e1, "party_2": e2}, logits=np.zeros((n, 3)))

    models = {
        "original": model(leak=True, departed=True),
        "retrain": model(leak=False, departed=False),
        "hiding": model(leak=True, departed=False),
    }
    return AuditData(
        kind=kind,
        labels=np.zeros(n, dtype=int),
        split=split,
        forget=np.zeros(n, dtype=bool),
        models=models,
        ids=np.arange(n),
        removed_party="party_2",
        removed_features=removed,
    )


def test_auditor_is_registered() -> None:
    assert get_auditor("feature_recovery") is FeatureRecoveryAuditor
    assert FeatureRecoveryAuditor.section == "feature_recovery"


def test_auditor_party_request_gap_is_positive_for_the_original_and_zero_for_retrain(
    rng: np.random.Generator,
) -> None:
    data = _party_data(rng, "party")
    out = FeatureRecoveryAuditor(n_components=4).audit(data)
    assert set(out) == {"original", "retrain", "hiding"}
    orig, ret, hid = out["original"], out["retrain"], out["hiding"]
    # The departed party is excluded in every model, the original included.
    assert set(orig["parties"]) == {"party_0", "party_1"} and orig["excluded_party"] == "party_2"
    assert orig["target"]["columns"] == 6 and orig["target"]["components"] == 4
    assert 0.0 < orig["target"]["explained_variance"] <= 1.0
    assert orig["samples"] == {"rows": "train", "fit": 350, "eval": 150, "splits": 5}
    # Retrain reads the removed columns through the kept ones: absolute R^2 clearly above 0.
    assert ret["fused"]["r2"] > 0.2
    assert ret["fused"]["recovery_gap"] == 0.0 and ret["fused"]["recovery_gap_interval"] == [0.0, 0.0]
    for name, res in (("original", orig), ("hiding", hid)):
        fused = res["fused"]
        assert fused["r2"] > 0.95, name
        assert fused["recovery_gap"] > 0.3 and fused["recovery_gap_interval"][0] > 0.2, name
        assert res["parties"]["party_1"]["recovery_gap_interval"][0] > 0.2, name
        # party_0 is built alike in every model: no memorized columns, gap about 0.
        assert abs(res["parties"]["party_0"]["recovery_gap"]) < 0.1, name
        lo, hi = fused["r2_interval"]
        assert lo <= fused["r2"] <= hi


def test_auditor_features_request_keeps_the_owning_party(rng: np.random.Generator) -> None:
    data = _party_data(rng, "features")
    out = FeatureRecoveryAuditor(samples="all", repeats=3).audit(data)
    orig = out["original"]
    assert set(orig["parties"]) == {"party_0", "party_1", "party_2"} and orig["excluded_party"] is None
    assert orig["samples"]["fit"] + orig["samples"]["eval"] == 600
    # party_2 still takes part; in the original its embedding is the removed columns.
    assert orig["parties"]["party_2"]["r2"] > 0.95
    assert orig["parties"]["party_2"]["recovery_gap_interval"][0] > 0.3
    assert orig["target"] == {"columns": 6, "components": 6, "explained_variance": 1.0}


def test_auditor_without_retrain_reports_no_gap(rng: np.random.Generator) -> None:
    data = _party_data(rng, "party")
    data.models.pop("retrain")
    out = FeatureRecoveryAuditor(repeats=2).audit(data)
    assert out["original"]["fused"]["recovery_gap"] is None
    assert out["original"]["fused"]["recovery_gap_interval"] is None


def test_auditor_refuses_a_broken_contract(rng: np.random.Generator) -> None:
    data = _party_data(rng, "party")
    auditor = FeatureRecoveryAuditor(repeats=1)
    with pytest.raises(ValueError, match="party and feature requests"):
        auditor.audit(replace(data, kind="class"))
    with pytest.raises(ValueError, match=r"needs data.removed_features"):
        auditor.audit(replace(data, removed_features=None))
    with pytest.raises(ValueError, match=r"needs data.removed_party"):
        auditor.audit(replace(data, removed_party=None))
    assert data.removed_features is not None
    with pytest.raises(ValueError, match="n = 600 audit samples"):
        auditor.audit(replace(data, removed_features=data.removed_features[:10]))
    with pytest.raises(ValueError, match="'party_9', not a party"):
        auditor.audit(replace(data, removed_party="party_9"))
    lacking = dict(data.models)
    lacking["retrain"] = ModelEmbeddings(parties={"party_0": data.models["retrain"].parties["party_0"]}, logits=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="model 'retrain' has no embedding of party 'party_1'"):
        auditor.audit(replace(data, models=lacking))
    with pytest.raises(ValueError, match="samples must be"):
        FeatureRecoveryAuditor(samples="test")  # type: ignore[arg-type]
