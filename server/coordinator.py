"""The unlearning coordinator: resolves forget requests and runs methods on copies of the original.

The coordinator lives on the server, which alone knows the labels, so it alone can turn
"forget class 3" into sample ids. Parties then only ever receive ids, instructions and
embedding gradients. Each method starts from the snapshot ``original`` (loaded on the server
and at every party) and its result is snapshotted under the method's name; the original
snapshot itself is never written to.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from server.methods.base import ForgetSet, UnlearningContext, UnlearningMethod
from server.server import Server
from vfl_sim.config import ForgetConfig, TrainConfig
from vfl_sim.errors import ForgetRequestError
from vfl_sim.seeding import derive_seed, torch_generator
from vfl_sim.transport import CommStats

ORIGINAL = "original"


def resolve_forget_request(
    request: ForgetConfig,
    *,
    train_ids: np.ndarray,
    test_ids: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    seed: int,
) -> ForgetSet:
    """Turn a forget request into forget and retain training ids.

    Raises
    ------
    ForgetRequestError
        Unknown classes, ids that are not training samples, or a request that would forget
        every training sample.
    """
    train_labels = labels[train_ids]
    if request.kind == "class":
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
            n = max(1, int(round(request.fraction * train_ids.size)))
            chosen = np.random.default_rng(derive_seed(seed, "forget-fraction")).choice(
                train_ids.size, n, replace=False
            )
            mask = np.zeros(train_ids.size, dtype=bool)
            mask[chosen] = True
    if mask.all():
        raise ForgetRequestError("the forget request covers every training sample; nothing would be retained")
    return ForgetSet(
        kind=request.kind,
        forget_ids=torch.from_numpy(train_ids[mask].copy()),
        retain_ids=torch.from_numpy(train_ids[~mask].copy()),
        classes=classes,
        request=request.model_dump(mode="json", exclude_none=True),
    )


@dataclass(frozen=True)
class MethodRun:
    """What running one method cost: wall time and the traffic between server and parties."""

    name: str
    runtime_s: float
    comm: CommStats

    def to_dict(self) -> dict[str, Any]:
        return {"runtime_s": self.runtime_s, "communication": self.comm.to_dict()}


class UnlearningCoordinator:
    """Runs unlearning methods for one resolved forget request, each from the original model."""

    def __init__(self, server: Server, forget: ForgetSet, train: TrainConfig, *, seed: int, top_seed: int) -> None:
        self.server = server
        self.forget = forget
        self.train = train
        self.seed = seed
        self.top_seed = top_seed

    def context(self, method: UnlearningMethod, on_step: Any = None) -> UnlearningContext:
        method_seed = derive_seed(self.seed, "method", method.name)
        return UnlearningContext(
            server=self.server,
            forget=self.forget,
            train=self.train,
            generator=torch_generator(method_seed),
            seed=method_seed,
            top_seed=self.top_seed,
            on_step=on_step,
        )

    def run(self, method: UnlearningMethod, ctx: UnlearningContext | None = None) -> MethodRun:
        """Load the original, run ``method``, snapshot the result under the method's name."""
        if method.name == ORIGINAL:
            raise ValueError("'original' is reserved for the trained model")
        ctx = ctx or self.context(method)
        self.server.load_state(ORIGINAL)
        self.server.party_op("clear_buffers")
        before = self.server.transport.stats.snapshot()
        start = time.perf_counter()
        # Methods may draw from the global RNG (dropout); seed it so each method is reproducible alone.
        torch.manual_seed(ctx.seed)
        method.unlearn(ctx)
        runtime = time.perf_counter() - start
        comm = self.server.transport.stats.since(before)
        self.server.save_state(method.name)
        return MethodRun(method.name, runtime, comm)
