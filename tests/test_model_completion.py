"""Model completion by a passive party (Fu et al., USENIX Security 2022): the statistic, its
batched solver against scikit-learn, and the known answers of the audit end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from tests.conftest import small_config
from vfl_sim.audits.model_completion import (
    ModelCompletion,
    completion_gap,
    fit_softmax_batch,
    labeled_draws,
    model_completion,
    model_completion_many,
)
from vfl_sim.config import config_from_dict
from vfl_sim.errors import ConfigError
from vfl_sim.experiment import prepare


def _clusters(seed: int = 0, n: int = 400, d: int = 8, k: int = 4, sep: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    mu = rng.normal(size=(k, d)) * sep
    return mu[y] + rng.normal(size=(n, d)), y


def test_the_batched_head_is_scikit_learns_logistic_regression() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 40, 6))
    y = np.tile(np.arange(4), (3, 10))
    w, b = fit_softmax_batch(x, y, 4, C=0.5)
    probe = rng.normal(size=(100, 6))
    for j in range(3):
        clf = LogisticRegression(C=0.5, tol=1e-10, max_iter=10_000).fit(x[j], y[j])
        mine = probe @ w[j] + b[j]
        theirs = clf.decision_function(probe)
        # Softmax logits are defined up to a per-row constant.
        np.testing.assert_allclose(
            mine - mine.mean(1, keepdims=True), theirs - theirs.mean(1, keepdims=True), atol=1e-3
        )


def test_labeled_draws_are_class_balanced_and_seeded() -> None:
    labels = np.arange(100) % 5
    pool = np.arange(100)
    draws = labeled_draws(labels, pool, 12, 3, seed=7)
    for d in draws:
        counts = np.bincount(labels[d], minlength=5)
        assert d.size == 12 and counts.min() == 2 and counts.max() == 3
    assert [list(d) for d in draws] == [list(d) for d in labeled_draws(labels, pool, 12, 3, seed=7)]
    assert list(draws[0]) != list(draws[1])


def test_completion_reads_what_the_embedding_holds() -> None:
    x, y = _clusters()
    pool = np.arange(y.size) < 200
    scored = ~pool
    target = scored & (y == 0)
    good = model_completion(x, y, pool, scored, target, n_labeled=20, draws=5)
    noise = np.random.default_rng(3).normal(size=x.shape)
    bad = model_completion(noise, y, pool, scored, target, n_labeled=20, draws=5)
    assert good.value.mean > 0.9 and bad.value.mean < 0.6
    assert good.n_labeled == 20 and good.n_target == int(target.sum())
    # Paired gap: the same draws for both; against itself exactly 0.
    gap = completion_gap(good, bad)
    assert gap.low > 0.2
    assert completion_gap(good, good).values == (0.0,) * 5
    # The metric twin fed in batches gives the function's value.
    metric = ModelCompletion(n_labeled=20, draws=5)
    for rows in np.array_split(np.arange(y.size), 3):
        metric.update(x[rows], y[rows], pool[rows], scored[rows], target[rows])
    assert metric.compute() == good
    metric.reset()
    with pytest.raises(ValueError, match="before any update"):
        metric.compute()


def test_membership_statistic_and_bad_inputs() -> None:
    x, y = _clusters(sep=1.0)
    pool = np.arange(y.size) < 200
    scored = ~pool
    target = scored & (np.arange(y.size) % 2 == 0)
    r = model_completion(x, y, pool, scored, target, statistic="membership_auc", draws=3)
    assert 0.3 < r.value.mean < 0.7  # the targets are like the other rows: no signal
    with pytest.raises(ValueError, match="overlap"):
        model_completion(x, y, pool, pool, pool & (y == 0))
    with pytest.raises(ValueError, match="statistic"):
        model_completion(x, y, pool, scored, target, statistic="auc")
    many = model_completion_many([x, x], y, pool, scored, target, draws=2)
    assert many[0] == many[1]


def _by_party(report: dict[str, Any], model: str) -> dict[str, Any]:
    m = report["models"].get(model) or report["controls"][model]
    return m["model_completion"]["parties"]


def test_retrain_passes_model_completion_and_the_original_and_an_output_edit_fail(tmp_path: Path) -> None:
    # Digits 1 and 7: a bottom model trained on them separates them; retrain's never saw them.
    cfg = small_config(
        train={"epochs": 10},
        methods=["retrain"],
        forget={"kind": "class", "classes": [1, 7]},
        audit={
            "plots": False,
            "model_completion": {"enabled": True},
            "relearning": {"enabled": False},
            "reference_free": {"enabled": False},
            "calibration": {"retrains": 0},
        },
    )
    report = prepare(cfg).run(tmp_path / "run")
    for pid, r in _by_party(report, "retrain").items():
        assert r["completion_gap"] == 0.0 and r["completion_gap_interval"] == [0.0, 0.0], pid
    certs = {n: m["certificate"] for n, m in {**report["models"], **report["controls"]}.items()}

    def checks(model: str) -> dict[str, str]:
        rep = certs[model]["representation_forgetting"]["checks"]
        return {c["name"]: c["status"] for c in rep if c["name"].startswith("model_completion.")}

    assert set(checks("retrain")) == {"model_completion.party_0", "model_completion.party_1"}
    assert set(checks("retrain").values()) == {"pass"}
    assert certs["retrain"]["removal"]
    for control in ("original", "output_mask"):
        assert "fail" in checks(control).values(), (control, checks(control))
        assert not certs[control]["removal"]
    # The output-only edit keeps every party's bottom: its completion is the original's, and it says so.
    assert _by_party(report, "output_mask") == {
        pid: {**r, "kept_original_bottom": True} for pid, r in _by_party(report, "original").items()
    }
    assert report["controls"]["output_mask"]["model_completion"]["kept_original_bottom"] == ["party_0", "party_1"]
    # The report's evidence names the party.
    assert "model completion" in (tmp_path / "run" / "report.md").read_text()


def test_bad_model_completion_settings_are_one_line_errors() -> None:
    for raw, where in [
        ({"audit": {"model_completion": {"labeled": 1}}}, "audit.model_completion.labeled"),
        ({"audit": {"model_completion": {"draws": 0}}}, "audit.model_completion.draws"),
        ({"audit": {"model_completion": {"C": -1}}}, "audit.model_completion.C"),
        ({"audit": {"certificate": {"model_completion": 2}}}, "audit.certificate.model_completion"),
    ]:
        with pytest.raises(ConfigError, match=where) as err:
            config_from_dict(raw)
        assert "\n" not in str(err.value)
