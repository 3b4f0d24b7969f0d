"""``forget.cover``: decoy ids, so that a party cannot tell the forget set from what it is asked.

An honest-but-curious passive party learns the forget set from the ids it is asked about
while a method runs (:mod:`vfl_sim.audits.request_leakage`): fine-tuning and retraining ask
only about retained samples, gradient ascent only about forgotten ones. With ``forget.cover``
the server pads every message that names samples, for as long as an unlearning method runs
(not while the original is trained, not during the audits), so that each party is asked about
every training sample equally often. It is padding in the spirit of k-anonymity: each real id
hides among the whole training set, every sample being asked as often as every other.

- **Training phases** (:meth:`Server.run_epoch <vfl_sim.server.server.Server.run_epoch>`):
  the method's batches stay exactly as they are. Per epoch, every training id is brought up to
  the count of the most-asked one (for an epoch over distinct ids: the training ids the epoch
  does not ask about); those decoys are shuffled with the cover's own seeded generator, never
  the method's batch generator, and split as evenly as possible over the epoch's batches. Each
  ``Embed`` carries its batch's real ids and decoys in a seeded shuffled order, so position
  does not reveal them. The top model and the loss read only the real rows; the gradient rows
  of decoys in ``Backward`` are exactly zero, and a gradient defense (``train.defense``)
  applies to the real rows only, so the decoys stay zero.
- **Inference** (:meth:`Server.embed <vfl_sim.server.server.Server.embed>`): each call asks
  about every training sample (the requested ids, and the rest of the training ids as decoys,
  as often as the most-requested id) and returns the requested rows only.
- **Party operations that name samples** (tensors ``ids``/``next_ids`` of a
  :class:`~vfl_sim.protocol.LocalOp`): the built-in ones are planned the same way
  (``accumulate_grads`` of Fisher forgetting, SSD and SalUn; ``boundary_fgsm`` of Boundary
  Shrink; ``unsir_train_step`` of UNSIR) with zero cotangent rows for decoys; few-shot mixup
  pads its own ``Embed``/``Backward`` rounds per epoch. A request that names samples and did
  not come from the cover is counted in ``uncovered_requests`` (a plugin method that sends its
  own requests, for example) and logged. Ids passed as JSON arguments (``args``) instead of
  tensors are not seen by that check. ReMisVFU's operations (``remisvfu_embed``/``_step``) name
  samples too, but the method takes party and feature requests only.

**Zero-effect.** A decoy's gradient row is zero, so without batch normalization (and without
dropout) a party's update is the one it would make without cover, up to float rounding (the
batch's reductions run over more rows, in another order), and the method's model is the same.
Batch normalization in training mode normalizes with the padded batch's statistics, so decoys
shift every real row's activation and the running statistics: the update is not the same (its
expectation drifts towards the whole training set's statistics). Dropout masks and a party's
embedding noise are drawn for the padded batch, so real rows get other (equally distributed)
draws.

**What cover does not hide.** A zero-effect decoy is recognisable by the party: it sees an
all-zero gradient row, and it holds its own bottom model, so it can compute each sample's
contribution to its parameter gradient (zero for every decoy). Cover hides the forget set from
the *ids* channel only; the *gradient* channel keeps whatever leakage the method has (for
gradient ascent, the forget samples are exactly the ones with non-zero rows). The request
leakage audit counts decoys as asked (they are) and their zero rows as received rows of norm 0,
so ``report.json`` shows both channels honestly. Hiding the gradient channel would need
decoys that move the model, which changes the method.

**Cost.** Every padded row is embedded by every party and (in training) sent back a gradient
row: ``cover`` in each model's report entry counts decoy and real rows and the bytes of the
decoys' ids, embeddings, layer activations and gradient rows; the method's ``runtime_s`` and
``communication`` include them.

Party and feature requests forget no samples (every training sample stays), so there is no set
to hide: ``forget.cover`` is a configuration error for them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vfl_sim.protocol import Backward, Embed, LocalOp, Request
from vfl_sim.seeding import torch_generator

log = logging.getLogger(__name__)

ID_TENSORS = ("ids", "next_ids")
"""Names of a :class:`~vfl_sim.protocol.LocalOp`'s tensors that name samples."""


@dataclass(frozen=True)
class Padded:
    """One message's ids: what is sent (``ids``) and where the real rows are in it.

    ``real[i]`` is the position in ``ids`` of the ``i``-th real id (in the order the method
    gave them); ``None`` means nothing was added (no cover): ``ids`` are the real ids.
    """

    ids: torch.Tensor
    real: torch.Tensor | None = None

    @classmethod
    def plain(cls, ids: torch.Tensor) -> Padded:
        """The ids as they are (cover off)."""
        return cls(ids)

    @property
    def decoys(self) -> int:
        return 0 if self.real is None else int(self.ids.numel() - self.real.numel())

    def take(self, rows: torch.Tensor) -> torch.Tensor:
        """The real rows of ``rows`` (one row per sent id), in the real ids' order."""
        if self.real is None:
            return rows
        return rows[self.real.to(rows.device)]

    def scatter(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows`` of the real ids placed at their positions, zero rows for the decoys."""
        if self.real is None:
            return rows
        out = rows.new_zeros((self.ids.numel(), *rows.shape[1:]))
        out[self.real.to(rows.device)] = rows
        return out


def _row_nbytes(t: torch.Tensor) -> int:
    return 0 if t.shape[0] == 0 else t[0].numel() * t.element_size()


class Cover:
    """The decoys of one method's run: plans padded messages and counts what they cost.

    Parameters
    ----------
    pool
        Every training id (the samples each party must be asked about equally often).
    seed
        Seed of the cover's own generator (decoy order and positions).
    """

    def __init__(self, pool: torch.Tensor, seed: int) -> None:
        self.pool = torch.unique(pool.to(torch.int64).cpu())
        if self.pool.numel() == 0:
            raise ValueError("cover needs the training ids")
        self.generator = torch_generator(seed)
        self.decoy_rows = 0
        self.real_rows = 0
        self.decoy_bytes = 0
        self.uncovered_requests = 0
        self._vouched: dict[int, torch.Tensor] = {}

    # -- planning ----------------------------------------------------------------------------

    def decoys_for(self, batches: Sequence[torch.Tensor]) -> torch.Tensor:
        """Decoy ids that bring every training id up to the count of the most-asked one in
        ``batches``, shuffled (ids outside the training set are not counted)."""
        asked = torch.cat([b.to(torch.int64).cpu().reshape(-1) for b in batches]) if batches else self.pool[:0]
        asked = asked[torch.isin(asked, self.pool)]
        counts = torch.bincount(torch.searchsorted(self.pool, asked), minlength=self.pool.numel())
        top = int(counts.max()) if asked.numel() else 0
        decoys = torch.repeat_interleave(self.pool, top - counts)
        return decoys[torch.randperm(decoys.numel(), generator=self.generator)]

    def plan(self, batches: Sequence[torch.Tensor]) -> list[Padded]:
        """Pad the batches of one pass (an epoch): the pass's decoys (:meth:`decoys_for`),
        split as evenly as possible over the batches, each batch's ids shuffled."""
        if not batches:
            return []
        decoys = self.decoys_for(batches)
        return [self._pad(b, d) for b, d in zip(batches, torch.tensor_split(decoys, len(batches)))]

    def pad(self, ids: torch.Tensor) -> Padded:
        """One message asking about every training sample: ``ids`` and the decoys they need."""
        return self.plan([ids])[0]

    def _pad(self, real: torch.Tensor, decoys: torch.Tensor) -> Padded:
        real = real.to(torch.int64).cpu()
        ids = torch.cat([real, decoys])
        order = torch.randperm(ids.numel(), generator=self.generator)
        where = torch.empty_like(order)
        where[order] = torch.arange(ids.numel())
        padded = Padded(ids[order], where[: real.numel()].clone())
        self.decoy_rows += int(decoys.numel())
        self.real_rows += int(real.numel())
        self.vouch(padded.ids)
        return padded

    # -- accounting --------------------------------------------------------------------------

    def count(self, padded: Padded, *tensors: torch.Tensor | None) -> None:
        """Add the bytes of the decoy rows of ``tensors`` (one row per id of ``padded``: the
        ids themselves, an embedding, a gradient) of one message to one party."""
        if padded.decoys:
            self.decoy_bytes += padded.decoys * sum(_row_nbytes(t) for t in tensors if t is not None)

    def vouch(self, ids: torch.Tensor) -> None:
        """Mark ``ids`` (this tensor object) as covered, for :meth:`check`."""
        self._vouched[id(ids)] = ids

    def check(self, requests: Mapping[str, Request]) -> None:
        """Transport tap: count requests that name samples with ids the cover did not vouch for."""
        for pid, request in requests.items():
            for ids in _sample_ids(request):
                if id(ids) not in self._vouched:
                    self.uncovered_requests += 1
                    if self.uncovered_requests == 1:
                        log.warning(
                            "forget.cover: %s was sent %s with ids the cover did not pad (the ids channel is "
                            "not covered for this method)",
                            pid,
                            type(request).__name__ if not isinstance(request, LocalOp) else f"'{request.name}'",
                        )

    def close(self) -> None:
        self._vouched.clear()

    def to_dict(self) -> dict[str, Any]:
        return {
            "decoy_rows": self.decoy_rows,
            "real_rows": self.real_rows,
            "decoy_bytes": self.decoy_bytes,
            "uncovered_requests": self.uncovered_requests,
        }


def _sample_ids(request: Request) -> list[torch.Tensor]:
    """The id tensors a request sends to a party."""
    if isinstance(request, Backward):
        return [request.then.ids] if request.then is not None else []
    if isinstance(request, Embed):
        return [request.ids]
    return [request.tensors[k] for k in ID_TENSORS if k in request.tensors]
