"""The life cycle every stateful audit metric shares: ``update``, ``compute``, ``reset``.

Each metric of :mod:`vfl_sim.audits` comes twice: as a function on whole arrays
(``linear_probe_recovery(x, y)``) and as a class fed with minibatches, as torchmetrics does::

    metric = LinearProbeRecovery(seed=0)
    for emb, forget in batches:
        metric.update(emb, forget)    # signature per metric; returns the metric
    metric.compute()                  # the function's value on the concatenated batches
    metric.reset()                    # back to the state after construction

:class:`Metric` holds what they all share: the count of samples and of ``update`` calls, the
refusal of ``compute`` before any ``update``, and ``reset``. A metric keeps one of two kinds
of state:

* **rows** (:class:`RowBuffer`): the metric needs every sample at once (a seeded split, a
  rank statistic, a fitted readout), so each ``update`` stores its validated batch and
  ``compute`` runs the functional form on the concatenation; memory grows with ``n``;
* **sufficient statistics**: the metric is a sum over samples (Fisher ratio, CKA, the
  consistency residuals), so ``update`` adds to ``O(d^2)`` accumulators kept by the subclass
  and cleared in :meth:`Metric._clear`; memory does not grow with ``n``.

``compute`` never changes the state: ``update`` after ``compute`` continues the same stream.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Generic, Self, TypeVar

import numpy as np

__all__ = ["Metric", "RowBuffer"]

R = TypeVar("R", covariant=True)


class RowBuffer:
    """Aligned batches of named arrays, row ``i`` of each being sample ``i``, joined on demand.

    Every batch gives one array per column, all with the same number of rows; a column's
    trailing shape (its width) must stay as it was in the first batch. A column may be
    optional: given as ``None`` with every batch or with none.

    Parameters
    ----------
    *names : str
        Column names, used in error messages and by :meth:`column`.
    """

    def __init__(self, *names: str) -> None:
        self.names = names
        self._batches: list[tuple[np.ndarray | None, ...]] = []

    def append(self, *arrays: np.ndarray | None) -> int:
        """Add one batch, one array (or ``None``) per column in order; returns its row count."""
        if len(arrays) != len(self.names):
            raise ValueError(f"a batch needs {len(self.names)} arrays ({', '.join(self.names)}), got {len(arrays)}")
        given = [(n, a) for n, a in zip(self.names, arrays, strict=True) if a is not None]
        if not given:
            raise ValueError("a batch needs at least one array")
        rows = given[0][1].shape[0]
        for name, a in given[1:]:
            if a.shape[0] != rows:
                raise ValueError(f"{name} has {a.shape[0]} rows but {given[0][0]} has {rows}")
        if self._batches:
            for name, old, new in zip(self.names, self._batches[0], arrays, strict=True):
                if (old is None) != (new is None):
                    raise ValueError(f"{name} must be given with every batch or with none")
                if old is not None and new is not None and old.shape[1:] != new.shape[1:]:
                    raise ValueError(f"{name} width changed between batches: {_width(old)} then {_width(new)}")
        self._batches.append(arrays)
        return int(rows)

    def optional(self, name: str) -> np.ndarray | None:
        """The column's batches concatenated along rows; ``None`` for an absent optional column."""
        k = self.names.index(name)
        if not self._batches or self._batches[0][k] is None:
            return None
        return np.concatenate([b[k] for b in self._batches if b[k] is not None], axis=0)

    def column(self, name: str) -> np.ndarray:
        """The column's batches concatenated along rows; a ValueError if there are none."""
        a = self.optional(name)
        if a is None:
            raise ValueError(f"no rows of {name} were given")
        return a

    def clear(self) -> None:
        """Drop every batch (a new width is accepted after this)."""
        self._batches.clear()

    @property
    def n_rows(self) -> int:
        """Rows stored."""
        return int(sum(next(a.shape[0] for a in b if a is not None) for b in self._batches))


def _width(a: np.ndarray) -> int | tuple[int, ...]:
    return a.shape[1] if a.ndim == 2 else a.shape[1:]


class Metric(ABC, Generic[R]):
    """Base of every stateful audit metric (see the module docstring).

    A subclass writes ``update(...)`` (validate the batch, then :meth:`_append` it to the row
    buffer, or add it to its statistics and :meth:`_count` it; return ``self``) and
    :meth:`_compute`; a statistics metric also writes :meth:`_clear`. Row metrics name their
    columns with ``super().__init__(columns=(...))`` and read them with
    ``self._rows.column(name)``.

    Parameters
    ----------
    columns : tuple of str
        Columns of the row buffer; empty for a metric of sufficient statistics.
    """

    def __init__(self, *, columns: tuple[str, ...] = ()) -> None:
        self._rows = RowBuffer(*columns)
        self._n_updates = 0
        self._n_samples = 0
        self._clear()

    @abstractmethod
    def update(self, *args: Any, **kwargs: Any) -> Self:
        """Add one batch; returns ``self``. Arguments are the metric's own."""

    def compute(self) -> R:
        """The metric over every batch since construction or the last ``reset``.

        Raises
        ------
        ValueError
            Before any ``update``, and where the metric's functional form refuses the data.
        """
        if self._n_updates == 0:
            raise ValueError(f"{type(self).__name__}.compute() called before any update()")
        return self._compute()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self._rows.clear()
        self._n_updates = 0
        self._n_samples = 0
        self._clear()

    @property
    def n_samples(self) -> int:
        """Number of samples accumulated since construction or the last ``reset``."""
        return self._n_samples

    @abstractmethod
    def _compute(self) -> R:
        """The value over the accumulated state; at least one ``update`` has run."""

    def _clear(self) -> None:
        """Reset the subclass's own statistics (row metrics keep none)."""

    def _append(self, *arrays: np.ndarray | None) -> None:
        """Store one validated batch in the row buffer and count its rows."""
        self._count(self._rows.append(*arrays))

    def _count(self, n: int) -> None:
        """Record one ``update`` of ``n`` samples."""
        self._n_updates += 1
        self._n_samples += int(n)
