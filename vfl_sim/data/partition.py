"""Vertical partitioning: which feature columns each passive party holds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vfl_sim.config import PartitionConfig
from vfl_sim.errors import ConfigError


def contiguous_groups(n_columns: int, parties: int) -> list[list[int]]:
    """Split ``range(n_columns)`` into ``parties`` contiguous groups of equal size.

    Each group holds ``n_columns // parties`` columns and the last takes the remainder, as in
    the Mirage protocol.
    """
    if parties > n_columns:
        raise ConfigError(f"partition.parties is {parties} but there are only {n_columns} columns to split")
    width = n_columns // parties
    bounds = [k * width for k in range(parties)] + [n_columns]
    return [list(range(bounds[k], bounds[k + 1])) for k in range(parties)]


@dataclass(frozen=True)
class PartySlice:
    """What one party holds: image strip ``[col_start, col_stop)`` of the width, or flat columns."""

    party_id: str
    columns: tuple[int, ...] | None = None
    strip: tuple[int, int] | None = None

    def take(self, features: np.ndarray) -> np.ndarray:
        """This party's view of ``features`` (all samples), as one contiguous array."""
        if self.strip is not None:
            start, stop = self.strip
            return np.ascontiguousarray(features[:, :, :, start:stop])
        assert self.columns is not None
        flat = features.reshape(features.shape[0], -1)
        return np.ascontiguousarray(flat[:, list(self.columns)])

    def describe(self) -> dict[str, object]:
        if self.strip is not None:
            return {"party": self.party_id, "strip": list(self.strip), "width": self.strip[1] - self.strip[0]}
        assert self.columns is not None
        return {"party": self.party_id, "columns": list(self.columns), "n_columns": len(self.columns)}


def party_ids(parties: int) -> list[str]:
    return [f"party_{k}" for k in range(parties)]


def column_index(column: int | str, column_names: Sequence[str] | None) -> int:
    """The index of ``column``: an index as it is, a name looked up in ``column_names``.

    Raises
    ------
    KeyError
        With the reason (the data names no columns, or not this one) as its message.
    """
    if isinstance(column, int):
        return column
    if not column_names:
        raise KeyError("its columns have no names; give indices")
    if column not in column_names:
        raise KeyError(f"no column '{column}'")
    return list(column_names).index(column)


def partition_features(
    cfg: PartitionConfig, sample_shape: tuple[int, ...], seed: int, column_names: Sequence[str] | None = None
) -> list[PartySlice]:
    """Assign the feature columns of samples of ``sample_shape`` to ``cfg.parties`` parties.

    ``column_names`` (the dataset's, if it names its columns) resolves names in
    ``cfg.columns``.

    Raises
    ------
    ConfigError
        When a scheme does not fit the data (strips on flat features, more parties than
        columns, explicit columns out of range, overlapping, empty, or names the data lacks).
    """
    is_image = len(sample_shape) == 3
    scheme = cfg.scheme
    if scheme == "auto":
        scheme = "strips" if is_image else "contiguous"
    ids = party_ids(cfg.parties)
    n_flat = int(np.prod(sample_shape))

    if scheme == "strips":
        if not is_image:
            raise ConfigError("partition.scheme 'strips' needs image data; use contiguous, random or columns")
        width = sample_shape[2]
        if cfg.parties > width:
            raise ConfigError(
                f"partition.parties is {cfg.parties} but the images are only {width} pixels wide: "
                "each party needs a strip of at least one column"
            )
        groups = contiguous_groups(width, cfg.parties)
        return [PartySlice(pid, strip=(g[0], g[-1] + 1)) for pid, g in zip(ids, groups)]

    if scheme == "contiguous":
        groups = contiguous_groups(n_flat, cfg.parties)
    elif scheme == "random":
        if cfg.parties > n_flat:
            raise ConfigError(f"partition.parties is {cfg.parties} but there are only {n_flat} columns to split")
        order = np.random.default_rng(seed).permutation(n_flat)
        groups = [sorted(int(c) for c in order[g]) for g in contiguous_groups(n_flat, cfg.parties)]
    else:
        assert cfg.columns is not None
        groups = []
        for pid, given in zip(ids, cfg.columns):
            try:
                groups.append([column_index(c, column_names) for c in given])
            except KeyError as exc:
                raise ConfigError(f"partition.columns for {pid}: {exc.args[0]}") from None
        seen: set[int] = set()
        for pid, group in zip(ids, groups):
            if not group:
                raise ConfigError(f"partition.columns for {pid} is empty")
            bad = [c for c in group if c >= n_flat]
            if bad:
                raise ConfigError(
                    f"partition.columns for {pid} has column {bad[0]} "
                    f"but the data has {n_flat} columns (0..{n_flat - 1})"
                )
            if len(set(group)) != len(group):
                dup = next(c for c in group if group.count(c) > 1)
                raise ConfigError(f"partition.columns for {pid} lists column {dup} more than once")
            overlap = seen.intersection(group)
            if overlap:
                raise ConfigError(f"partition.columns: column {min(overlap)} is given to more than one party")
            seen.update(group)
    return [PartySlice(pid, columns=tuple(g)) for pid, g in zip(ids, groups)]
