"""The unlearning coordinator: resolves forget requests and runs methods on copies of the original.

The coordinator lives on the server, which alone knows the labels, so it alone can turn
"forget class 3" into sample ids. Parties then only ever receive ids, instructions and
embedding gradients. Each method starts from the snapshot ``original`` (loaded on the server
and at every party) and its result is snapshotted under the method's name; the original
snapshot itself is never written to.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vfl_sim.config import ForgetConfig, TrainConfig
from vfl_sim.data.partition import PartySlice, column_index
from vfl_sim.errors import ForgetRequestError
from vfl_sim.forget import ORIGINAL, ForgetKind
from vfl_sim.protocol import CoreStep, LocalOp
from vfl_sim.seeding import derive_seed, torch_generator
from vfl_sim.server.server import Server
from vfl_sim.server.unlearning import ForgetSet, UnlearningContext, UnlearningMethod
from vfl_sim.transport import CommStats


def _request_fields(request: ForgetConfig) -> dict[str, Any]:
    """The request as the ledger and the report name it: ``cover`` only when on (a request
    without it keeps the id and the ledger entry it had before the field existed)."""
    fields = request.model_dump(mode="json", exclude_none=True)
    if not request.cover:
        fields.pop("cover", None)
    return fields


def request_id(request: ForgetConfig) -> str:
    """The request's ``id``, or one derived from its content (the same request, the same id)."""
    if request.id is not None:
        return request.id
    body = json.dumps({k: v for k, v in _request_fields(request).items() if k != "id"}, sort_keys=True)
    return f"{request.kind}-{hashlib.sha256(body.encode()).hexdigest()[:12]}"


def resolve_forget_request(
    request: ForgetConfig,
    *,
    train_ids: np.ndarray,
    test_ids: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    seed: int,
    slices: Sequence[PartySlice] = (),
    column_names: Sequence[str] | None = None,
) -> ForgetSet:
    """Turn a forget request into forget and retain training ids (and, for party and feature
    requests, the party and its columns).

    Party and feature requests keep every training sample (``forget_ids`` is empty): what goes
    is a party's contribution, or some of its columns, for all samples.

    Raises
    ------
    ForgetRequestError
        Unknown classes, ids that are not training samples, a request that would forget every
        training sample, an unknown party, columns the party does not hold.
    """
    rid = request_id(request)
    described = {**_request_fields(request), "id": rid}
    if request.kind in ForgetKind.OF_A_PARTY:
        party, columns = _resolve_party(request, slices, column_names)
        return ForgetSet(
            kind=request.kind,
            forget_ids=torch.zeros(0, dtype=torch.int64),
            retain_ids=torch.from_numpy(train_ids.copy()),
            request=described,
            request_id=rid,
            party=party,
            columns=columns,
        )
    train_labels = labels[train_ids]
    if request.kind == ForgetKind.CLASS:
        assert request.classes is not None
        classes = tuple(sorted(set(request.classes)))
        bad = [c for c in classes if c >= num_classes]
        if bad:
            raise ForgetRequestError(f"forget.classes: class {bad[0]} does not exist; classes are 0..{num_classes - 1}")
        absent = [c for c in classes if not np.any(train_labels == c)]
        if absent:
            raise ForgetRequestError(f"forget.classes: class {absent[0]} has no training samples")
        mask = np.isin(train_labels, classes)
    else:
        classes = ()
        if request.ids is not None:
            ids = np.asarray(sorted(set(request.ids)), dtype=np.int64)
            in_train = np.isin(ids, train_ids)
            if not in_train.all():
                bad_id = int(ids[~in_train][0])
                where = "a test sample" if np.isin(bad_id, test_ids) else "not a sample id"
                raise ForgetRequestError(
                    f"forget.ids: {bad_id} is {where}; forget requests name training samples "
                    f"({train_ids.size} of them, ids between {int(train_ids.min())} and {int(train_ids.max())})"
                )
            mask = np.isin(train_ids, ids)
        else:
            assert request.fraction is not None
            rng = np.random.default_rng(derive_seed(seed, "forget-fraction"))
            mask = np.zeros(train_ids.size, dtype=bool)
            if request.stratified:
                # The same fraction of every class (at least one sample each), so the forget set
                # has the training set's class proportions.
                for c in np.unique(train_labels):
                    rows = np.flatnonzero(train_labels == c)
                    n_c = max(1, int(round(request.fraction * rows.size)))
                    mask[rng.choice(rows, n_c, replace=False)] = True
            else:
                n = max(1, int(round(request.fraction * train_ids.size)))
                mask[rng.choice(train_ids.size, n, replace=False)] = True
    if mask.all():
        raise ForgetRequestError("the forget request covers every training sample; nothing would be retained")
    return ForgetSet(
        kind=request.kind,
        forget_ids=torch.from_numpy(train_ids[mask].copy()),
        retain_ids=torch.from_numpy(train_ids[~mask].copy()),
        classes=classes,
        request=described,
        request_id=rid,
    )


def _resolve_party(
    request: ForgetConfig, slices: Sequence[PartySlice], column_names: Sequence[str] | None
) -> tuple[str, tuple[int, ...]]:
    """The party of a party or feature request, and the requested columns as positions in that
    party's own view (flat columns, or pixel columns of its image strip)."""
    by_id = {s.party_id: s for s in slices}
    if request.party not in by_id:
        raise ForgetRequestError(f"forget.party: '{request.party}' is not a party; parties: {', '.join(by_id)}")
    if request.kind == ForgetKind.PARTY and len(slices) < 2:
        raise ForgetRequestError("forget.kind 'party': the only party cannot leave; nothing would remain")
    piece = by_id[request.party]
    if request.kind == ForgetKind.PARTY:
        return piece.party_id, ()
    assert request.columns is not None
    if piece.strip is not None:
        start, stop = piece.strip
        held = list(range(start, stop))
        what = f"pixel columns {start}..{stop - 1} of the image width"
    else:
        assert piece.columns is not None
        held = list(piece.columns)
        what = f"{len(held)} columns"
    local: list[int] = []
    for col in request.columns:
        try:
            col = column_index(col, column_names)
        except KeyError as exc:
            raise ForgetRequestError(f"forget.columns: {exc.args[0]}") from None
        if col not in held:
            raise ForgetRequestError(
                f"forget.columns: column {col} is not held by {piece.party_id} (it holds {what}); "
                "a feature request names columns of one party"
            )
        local.append(held.index(col))
    if len(set(local)) == len(held):
        raise ForgetRequestError(
            f"forget.columns: that is every column of {piece.party_id}; use forget.kind 'party' to remove the party"
        )
    return piece.party_id, tuple(sorted(set(local)))


@dataclass(frozen=True)
class MethodRun:
    """What running one method cost: wall time and the traffic between server and parties,
    and under ``forget.cover`` what the decoys cost (:meth:`vfl_sim.server.cover.Cover.to_dict`)."""

    name: str
    runtime_s: float
    comm: CommStats
    cover: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"runtime_s": self.runtime_s, "communication": self.comm.to_dict()}
        if self.cover is not None:
            total = self.comm.total_bytes
            out["cover"] = {**self.cover, "decoy_bytes_share": self.cover["decoy_bytes"] / total if total else 0.0}
        return out


class UnlearningCoordinator:
    """Runs unlearning methods for one resolved forget request, each from the original model."""

    def __init__(
        self, server: Server, forget: ForgetSet, train: TrainConfig, *, seed: int, top_seed: int, cover: bool = False
    ) -> None:
        if cover and forget.forget_ids.numel() == 0:
            raise ForgetRequestError(
                f"forget.cover hides a forget set among the training samples; a {forget.kind} request forgets none"
            )
        self.server = server
        self.forget = forget
        self.train = train
        self.seed = seed
        self.top_seed = top_seed
        self.cover = cover

    def context(self, method: UnlearningMethod, on_step: Any = None) -> UnlearningContext:
        method_seed = derive_seed(self.seed, "method", method.label)
        return UnlearningContext(
            server=self.server,
            forget=self.forget,
            train=self.train,
            generator=torch_generator(method_seed),
            seed=method_seed,
            top_seed=self.top_seed,
            on_step=on_step,
            apply_removal=self.apply_removal,
        )

    def run(self, method: UnlearningMethod, ctx: UnlearningContext | None = None) -> MethodRun:
        """Load the original, run ``method``, snapshot the result under the method's name."""
        if method.label == ORIGINAL:
            raise ValueError("'original' is reserved for the trained model")
        ctx = ctx or self.context(method)
        self.server.load_state(ORIGINAL)
        # `model` names what the method makes: a party that ignores unlearning keeps its bottom until then.
        self.server.party_op(CoreStep.BEGIN_METHOD, seed=ctx.seed, model=method.label)
        before = self.server.transport.stats.snapshot()
        start = time.perf_counter()
        # A party or feature request defines the unlearned model as one without that party (or
        # those columns): every method starts from the original with them cut off.
        self.apply_removal()
        # Methods may draw from the global RNG (dropout); seed it so each method is reproducible alone.
        torch.manual_seed(ctx.seed)
        cover = None
        if self.cover:
            # forget.cover: the method's messages carry decoys (vfl_sim.server.cover), drawn from
            # a stream of their own so the method's own draws stay as they are.
            pool = torch.cat([self.forget.forget_ids, self.forget.retain_ids])
            with self.server.covering(pool, derive_seed(self.seed, "cover", method.label)) as covering:
                method.unlearn(ctx)
            cover = covering.to_dict()
        else:
            method.unlearn(ctx)
        runtime = time.perf_counter() - start
        comm = self.server.transport.stats.since(before)
        self.check_removal(method.label)
        self.server.save_state(method.label)
        return MethodRun(method.label, runtime, comm, cover)

    def apply_removal(self) -> None:
        """Cut the request's party (or its columns) out of the current model."""
        f = self.forget
        if f.kind == ForgetKind.PARTY:
            assert f.party is not None
            self.server.remove_party(f.party)
        elif f.kind == ForgetKind.FEATURES:
            assert f.party is not None
            self.server.transport.exchange({f.party: LocalOp(CoreStep.MASK_COLUMNS, {"columns": list(f.columns)})})

    def check_removal(self, method: str) -> None:
        """Fail when a method's model reads the removed party or columns again."""
        f = self.forget
        if f.kind == ForgetKind.PARTY and f.party in self.server.active_party_ids:
            raise RuntimeError(f"method '{method}' left a model that reads the removed party {f.party}")
        if f.kind == ForgetKind.FEATURES:
            assert f.party is not None
            reply = self.server.transport.exchange({f.party: LocalOp(CoreStep.MASKED_COLUMNS)})[f.party]
            masked = set(getattr(reply, "info", {}).get("columns", []))
            if not set(f.columns) <= masked:
                raise RuntimeError(f"method '{method}' left a model that reads removed columns of {f.party}")
