"""Input conversion shared by the audit metrics: plain arrays in, float64 matrices out."""

from __future__ import annotations

from typing import Any

import numpy as np


def to_numpy(a: Any) -> np.ndarray:
    """Array view of ``a``; torch tensors are detached and moved to the CPU first."""
    if hasattr(a, "detach"):
        a = a.detach().cpu()
        # numpy has no bfloat16, so low-precision tensors would fail in np.asarray.
        if getattr(a, "is_floating_point", lambda: False)():
            a = a.double()
    return np.asarray(a)


def feature_matrix(a: Any, name: str, n: int | None = None) -> np.ndarray:
    """``a`` as a finite float64 ``(n, d)`` array, or a ValueError saying what is wrong.

    Non-finite entries become 0: a diverged or aggressively unlearned model can emit NaN or
    inf, which would poison every Gram entry and which scikit-learn refuses outright; zero is
    what a dead unit emits, so the remaining features are still measured.
    """
    m = to_numpy(a)
    if m.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (n_samples, n_features), got shape {m.shape}; "
            "reshape a single feature with .reshape(-1, 1)"
        )
    if n is not None and m.shape[0] != n:
        raise ValueError(f"{name} has {m.shape[0]} rows but is_forget has {n} labels")
    if m.shape[1] == 0:
        raise ValueError(f"{name} has no features (shape {m.shape})")
    m = np.asarray(m, dtype=np.float64)
    if not np.all(np.isfinite(m)):
        m = np.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0)
    return m
