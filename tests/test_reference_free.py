"""Tests of audits.reference_free: the proof-of-ignorance agreement audit (Ye et al., arXiv:2606.16110)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from statistics import NormalDist

import numpy as np
import pytest
from sklearn.datasets import load_digits, make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from vfl_sim.audits.reference_free import (
    ReferenceFreeAudit,
    ReferenceFreeResult,
    ignorance_test,
    reference_free_audit,
)


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread() -> Iterator[None]:
    # The reference models below are tiny; BLAS threads on shared cores made them ~40x slower.
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _logreg() -> object:
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


def _padded_proba(model: object, x: np.ndarray, n_classes: int) -> np.ndarray:
    """predict_proba spread over all label columns, as a C-output network would emit it."""
    p = np.zeros((x.shape[0], n_classes))
    p[:, model.classes_] = model.predict_proba(x)  # type: ignore[attr-defined]
    return p


@pytest.fixture(scope="module")
def noisy() -> dict[str, np.ndarray]:
    """Sample request on hard data: 20% flipped labels, so forget labels are not implied by the rest."""
    x, y = make_classification(n_samples=2000, n_features=20, n_informative=10, n_classes=4, flip_y=0.2, random_state=0)
    forget = np.random.default_rng(0).random(y.size) < 0.1
    return {"x": x, "y": y, "forget": forget}


@pytest.fixture(scope="module")
def digits_class() -> dict[str, np.ndarray]:
    """Class request on digits: every sample of class 3 is forgotten."""
    x, y = load_digits(return_X_y=True)
    return {"x": x, "y": y, "forget": y == 3}


@pytest.fixture(scope="module")
def noisy_audit(noisy: dict[str, np.ndarray]) -> ReferenceFreeAudit:
    f = noisy["forget"]
    return ReferenceFreeAudit(seed=1).fit(noisy["x"][~f], noisy["y"][~f])


# --------------------------------------------------------------------------------------------
# Known answers
# --------------------------------------------------------------------------------------------


def test_ignorant_model_passes_sample_request(noisy: dict[str, np.ndarray], noisy_audit: ReferenceFreeAudit) -> None:
    x, y, f = noisy["x"], noisy["y"], noisy["forget"]
    retrained = _logreg().fit(x[~f], y[~f])
    res = noisy_audit.score(retrained.predict_proba(x[f]), x[f], y[f])
    assert res.passed
    assert res.request == "sample"
    # A stronger ignorant model agrees with the ensemble at least as well as one weak model does.
    assert res.agreement >= res.reference_agreement
    assert res.p_value > 0.5
    assert res.n_forget == int(f.sum()) and res.n_models == 5


def test_memorising_model_fails_sample_request(noisy: dict[str, np.ndarray], noisy_audit: ReferenceFreeAudit) -> None:
    x, y, f = noisy["x"], noisy["y"], noisy["forget"]
    memoriser = KNeighborsClassifier(n_neighbors=1).fit(x, y)
    res = noisy_audit.score(memoriser.predict_proba(x[f]), x[f], y[f])
    assert res.forget_accuracy == 1.0
    # Predicting every training label exactly, it agrees with the ensemble where the ensemble is right.
    assert res.agreement == pytest.approx(res.verifier_accuracy)
    assert not res.passed
    assert res.agreement < res.threshold < res.reference_agreement
    assert res.p_value < 0.01


def test_degraded_model_fails(noisy: dict[str, np.ndarray], noisy_audit: ReferenceFreeAudit) -> None:
    # Gradient ascent pushes the forget predictions away from their labels; the extreme case never
    # predicts the label, which the ignorant models mostly do.
    x, y, f = noisy["x"], noisy["y"], noisy["forget"]
    logits = -5.0 * np.eye(4)[y[f]]
    res = noisy_audit.score(logits, x[f], y[f])
    assert res.forget_accuracy == 0.0
    assert not res.passed
    assert res.agreement < 1.0 - res.verifier_accuracy + 1e-12


def test_class_request_ignorant_passes_and_remembering_fails(digits_class: dict[str, np.ndarray]) -> None:
    x, y, f = digits_class["x"], digits_class["y"], digits_class["forget"]
    audit = ReferenceFreeAudit(seed=0).fit(x[~f], y[~f])
    # The verification models never saw class 3 and can never predict it.
    probs = audit.verifier_probabilities(x[f], n_classes=10)
    assert probs.shape == (5, int(f.sum()), 10)
    assert np.all(probs[:, :, 3] == 0.0)
    np.testing.assert_allclose(probs.sum(axis=2), 1.0)

    retrained = _logreg().fit(x[~f], y[~f])
    ignorant = audit.update(_padded_proba(retrained, x[f], 10), x[f], y[f]).compute()
    assert ignorant.request == "class"
    assert ignorant.forget_accuracy == 0.0 and ignorant.verifier_accuracy == 0.0
    assert ignorant.passed

    original = _logreg().fit(x, y)
    audit.reset()  # the next audited model, against the same verification models
    remembering = audit.update(original.predict_proba(x[f]), x[f], y[f]).compute()
    assert remembering.forget_accuracy > 0.95
    assert remembering.agreement <= 1.0 - remembering.forget_accuracy
    assert not remembering.passed
    assert remembering.p_value < 1e-6


def test_statistic_by_hand() -> None:
    # Two verification models on four samples, three classes. Ensemble argmax: [0, 1, 1, 2].
    p1 = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    p2 = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.1, 0.6, 0.3]])
    outputs = np.log(np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.9, 0.05, 0.05], [0.05, 0.05, 0.9]]))
    res = ignorance_test(outputs, np.stack([p1, p2]), y_forget=[0, 1, 1, 2], retained_classes=[0, 1, 2])
    assert res.agreement == 0.75  # disagrees on sample 2
    # Leave-one-out: model 1 vs model 2 agree on samples 0 and 1 only, and vice versa.
    assert res.reference_values == (0.5, 0.5)
    assert res.reference_agreement == 0.5 and res.reference_std == 0.0
    se = math.sqrt(0.5 * 0.5 / 4)
    assert res.standard_error == pytest.approx(se)
    assert res.threshold == pytest.approx(0.5 - NormalDist().inv_cdf(0.95) * se)
    assert res.p_value == pytest.approx(NormalDist().cdf(0.25 / se))
    assert res.passed and res.threshold_source == "calibrated"
    assert res.forget_accuracy == 0.75 and res.verifier_accuracy == 1.0
    assert res.request == "sample" and res.n_fit is None and res.n_forget_seen is None


def test_fixed_threshold_is_used_as_given(noisy: dict[str, np.ndarray]) -> None:
    x, y, f = noisy["x"], noisy["y"], noisy["forget"]
    outputs = _logreg().fit(x[~f], y[~f]).predict_proba(x[f])
    base = reference_free_audit(outputs, x[f], x[~f], y[~f], seed=1)
    strict = reference_free_audit(outputs, x[f], x[~f], y[~f], seed=1, threshold=0.99)
    assert strict.threshold == 0.99 and strict.threshold_source == "fixed" and not strict.passed
    assert strict.agreement == base.agreement and strict.p_value == base.p_value


# --------------------------------------------------------------------------------------------
# Verification models: seeded, stratified, never trained on forget samples
# --------------------------------------------------------------------------------------------


def test_subsets_are_seeded_stratified_and_exclude_forget(noisy: dict[str, np.ndarray]) -> None:
    y, f = noisy["y"], noisy["forget"]
    retain_rows = np.flatnonzero(~f)
    audit = ReferenceFreeAudit(n_models=4, fraction=0.15, seed=3).fit(noisy["x"][~f], y[~f])
    y_r = y[~f]
    counts = np.bincount(y_r)
    assert len(audit.subset_indices_) == 4
    for idx in audit.subset_indices_:
        assert np.intersect1d(retain_rows[idx], np.flatnonzero(f)).size == 0
        assert idx.min() >= 0 and idx.max() < y_r.size and np.unique(idx).size == idx.size
        np.testing.assert_array_equal(np.bincount(y_r[idx], minlength=4), np.ceil(0.15 * counts).astype(int))
    # 4 x 15% fits in every class, so the subsets are disjoint.
    allidx = np.concatenate(audit.subset_indices_)
    assert np.unique(allidx).size == allidx.size
    np.testing.assert_array_equal(audit.classes_, [0, 1, 2, 3])


def test_same_seed_same_result_other_seed_other_subsets(noisy: dict[str, np.ndarray]) -> None:
    x, y, f = noisy["x"], noisy["y"], noisy["forget"]
    outputs = KNeighborsClassifier(1).fit(x, y).predict_proba(x[f])
    a = ReferenceFreeAudit(seed=7).fit(x[~f], y[~f])
    b = ReferenceFreeAudit(seed=7).fit(x[~f], y[~f])
    c = ReferenceFreeAudit(seed=8).fit(x[~f], y[~f])
    for ia, ib in zip(a.subset_indices_, b.subset_indices_, strict=True):
        np.testing.assert_array_equal(ia, ib)
    assert not np.array_equal(a.subset_indices_[0], c.subset_indices_[0])
    assert a.score(outputs, x[f], y[f]) == b.update(outputs, x[f], y[f]).compute()
    assert reference_free_audit(outputs, x[f], x[~f], y[~f], y[f], seed=7) == a.score(outputs, x[f], y[f])


def test_mlp_and_custom_estimators_are_seeded(digits_class: dict[str, np.ndarray]) -> None:
    x, y, f = digits_class["x"][:360], digits_class["y"][:360], digits_class["forget"][:360]
    outputs = np.eye(10)[y[f]]
    r1 = reference_free_audit(outputs, x[f], x[~f], y[~f], y[f], estimator="mlp", n_models=3, seed=2)
    r2 = reference_free_audit(outputs, x[f], x[~f], y[~f], y[f], estimator="mlp", n_models=3, seed=2)
    assert r1 == r2 and not r1.passed
    nb = reference_free_audit(outputs, x[f], x[~f], y[~f], y[f], estimator=lambda seed: GaussianNB())
    assert nb.request == "class" and not nb.passed


def test_duplicate_of_forget_row_in_retained_data_is_reported(noisy: dict[str, np.ndarray]) -> None:
    x, y, f = noisy["x"], noisy["y"], noisy["forget"]
    audit = ReferenceFreeAudit(fraction=1.0, n_models=2).fit(
        np.vstack([x[~f], x[f][:3]]), np.concatenate([y[~f], y[f][:3]])
    )
    with pytest.warns(UserWarning, match="3 forget sample"):
        res = audit.update(np.eye(4)[y[f]], x[f], y[f]).compute()
    assert res.n_forget_seen == 3
    clean = ReferenceFreeAudit(fraction=1.0, n_models=2).fit(x[~f], y[~f])
    assert clean.score(np.eye(4)[y[f]], x[f]).n_forget_seen == 0


def test_ignorance_test_matches_class_on_its_verifier_outputs(
    noisy: dict[str, np.ndarray], noisy_audit: ReferenceFreeAudit
) -> None:
    x, y, f = noisy["x"], noisy["y"], noisy["forget"]
    outputs = KNeighborsClassifier(1).fit(x, y).predict_proba(x[f])
    probs = noisy_audit.verifier_probabilities(x[f], n_classes=4)
    full = noisy_audit.score(outputs, x[f], y[f])
    # Logits of the same models (log-probabilities) give the same argmaxes after softmax.
    ext = ignorance_test(outputs, np.log(probs + 1e-12), y[f], retained_classes=noisy_audit.classes_)
    assert ext.agreement == full.agreement
    assert ext.reference_values == full.reference_values
    assert ext.threshold == pytest.approx(full.threshold) and ext.passed == full.passed


def test_to_dict_is_json() -> None:
    x, y = load_digits(return_X_y=True)
    f = np.arange(y.size) % 10 == 0
    res = reference_free_audit(np.eye(10)[y[f]], x[f], x[~f], y[~f], y[f])
    assert isinstance(res, ReferenceFreeResult)
    d = json.loads(json.dumps(res.to_dict()))
    assert set(d) == {
        "agreement", "reference_agreement", "reference_std", "reference_low", "reference_high",
        "reference_values", "standard_error", "threshold", "threshold_source", "passed", "p_value",
        "alpha", "n_forget", "n_models", "n_fit", "request", "forget_accuracy", "verifier_accuracy",
        "n_forget_seen",
    }  # fmt: skip
    assert isinstance(d["passed"], bool) and isinstance(d["reference_values"], list)
    assert d["reference_low"] <= d["reference_agreement"] <= d["reference_high"]
    assert ignorance_test(np.eye(3), np.stack([np.eye(3)] * 2)).to_dict()["request"] is None


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fraction": 0.0}, "fraction must lie in"),
        ({"fraction": 1.5}, "fraction must lie in"),
        ({"n_models": 1}, "n_models must be at least 2"),
        ({"alpha": 1.0}, "alpha must lie in"),
        ({"threshold": 1.2}, "threshold must lie in"),
        ({"estimator": "svm"}, "estimator must be"),
    ],
)
def test_bad_settings(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ReferenceFreeAudit(**kwargs)  # type: ignore[arg-type]


def test_bad_fit_inputs() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    y = np.repeat([0, 1], 20)
    audit = ReferenceFreeAudit()
    with pytest.raises(ValueError, match="x_retain is empty"):
        audit.fit(np.empty((0, 3)), np.empty(0, dtype=int))
    with pytest.raises(ValueError, match="y_retain has 39 entries but there are 40 samples"):
        audit.fit(x, y[:-1])
    with pytest.raises(ValueError, match="single class"):
        audit.fit(x, np.zeros(40, dtype=int))
    with pytest.raises(ValueError, match=r"too few retained samples per class \(class 2: 1\)"):
        audit.fit(x, np.concatenate([y[:-1], [2]]))
    with pytest.raises(ValueError, match="integer class indices"):
        audit.fit(x, y + 0.5)
    with pytest.raises(ValueError, match="non-negative"):
        audit.fit(x, y - 1)
    with pytest.raises(ValueError, match="x_retain must be 2-D"):
        audit.fit(x[:, 0], y)


def test_bad_update_inputs() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    y = np.repeat([0, 1, 2], 20)
    audit = ReferenceFreeAudit()
    with pytest.raises(ValueError, match="not fitted"):
        audit.update(np.zeros((2, 3)), x[:2])
    audit.fit(x, y)
    with pytest.raises(ValueError, match="outputs is empty"):
        audit.update(np.zeros((0, 3)), np.zeros((0, 3)))
    with pytest.raises(ValueError, match="x_forget has 4 rows but outputs has 5"):
        audit.update(np.zeros((5, 3)), x[:4])
    with pytest.raises(ValueError, match="x_forget has 2 features but x_retain had 3"):
        audit.update(np.zeros((4, 3)), x[:4, :2])
    with pytest.raises(ValueError, match="2 output columns cannot hold retained label 2"):
        audit.update(np.zeros((4, 2)), x[:4])
    with pytest.raises(ValueError, match="y_forget has 3 entries but there are 4 samples"):
        audit.update(np.zeros((4, 3)), x[:4], y[:3])
    with pytest.raises(ValueError, match="2 output columns cannot hold retained label 2"):
        audit.score(np.zeros((4, 2)), x[:4])
    assert audit.n_samples == 0  # refused batches leave nothing behind
    with pytest.raises(ValueError, match=r"ReferenceFreeAudit.compute\(\) called before any update\(\)"):
        audit.compute()
    audit.update(np.zeros((4, 3)), x[:4], y[:4])
    with pytest.raises(ValueError, match="y_forget must be given with every batch or with none"):
        audit.update(np.zeros((4, 3)), x[:4])
    with pytest.raises(ValueError, match="outputs width changed between batches: 3 then 4"):
        audit.update(np.zeros((4, 4)), x[:4], y[:4])


def test_minibatches_equal_one_batch_and_reset_keeps_the_fit(
    noisy: dict[str, np.ndarray], noisy_audit: ReferenceFreeAudit
) -> None:
    x, y, f = noisy["x"], noisy["y"], noisy["forget"]
    outputs = KNeighborsClassifier(1).fit(x, y).predict_proba(x[f])
    one = noisy_audit.score(outputs, x[f], y[f])
    audit = ReferenceFreeAudit(seed=1).fit(x[~f], y[~f])
    for rows in np.array_split(np.arange(int(f.sum())), 4):
        assert audit.update(outputs[rows], x[f][rows], y[f][rows]) is audit
    assert audit.n_samples == int(f.sum())
    assert audit.compute() == one
    audit.reset()
    assert audit.is_fitted and audit.n_samples == 0
    assert audit.update(outputs, x[f]).compute() == noisy_audit.score(outputs, x[f])
    audit.fit(x[~f], y[~f])  # a new fit drops the batches checked against the old one
    assert audit.n_samples == 0


def test_bad_ignorance_test_inputs() -> None:
    o = np.eye(3)
    with pytest.raises(ValueError, match="at least 2 verification models"):
        ignorance_test(o, o[None])
    with pytest.raises(ValueError, match="must be 3-D"):
        ignorance_test(o, o)
    with pytest.raises(ValueError, match=r"per-model shape \(2, 3\) but outputs has shape \(3, 3\)"):
        ignorance_test(o, np.stack([o[:2]] * 2))
    with pytest.raises(ValueError, match="outputs must be 2-D"):
        ignorance_test(o[0], np.stack([o] * 2))


def test_auditor_skips_when_one_class_remains() -> None:
    """A binary task with one class forgotten leaves nothing to train a verifier on: no result,
    rather than a crash of the whole audit."""
    from vfl_sim.audits.base import AuditData, ModelEmbeddings
    from vfl_sim.audits.reference_free import ReferenceFreeAuditor

    rng = np.random.default_rng(0)
    labels = np.array([0] * 20 + [1] * 20)
    split = np.array(["forget_train"] * 20 + ["retain_train"] * 20)
    model = ModelEmbeddings(parties={"party_0": rng.normal(size=(40, 4))}, logits=rng.normal(size=(40, 2)))
    data = AuditData(
        kind="class",
        labels=labels,
        split=split,
        forget=labels == 0,
        models={"original": model},
        inputs=rng.normal(size=(40, 6)),
    )
    assert ReferenceFreeAuditor().audit(data) == {"original": None}
    three = AuditData(
        kind="class",
        labels=np.array([0] * 20 + [1] * 10 + [2] * 10),
        split=split,
        forget=labels == 0,
        models={"original": ModelEmbeddings(parties=model.parties, logits=rng.normal(size=(40, 3)))},
        inputs=rng.normal(size=(40, 6)),
    )
    assert ReferenceFreeAuditor().audit(three)["original"]["n_forget"] == 20
