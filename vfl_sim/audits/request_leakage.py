"""What an unlearning method's messages tell an honest-but-curious party about the request.

While a method runs, a passive party sees which sample ids it is asked to embed and the
gradients it receives for them; the forget request itself is never sent, only those messages.
From its own view alone, can it tell which of its samples were forgotten? Two scores per
training sample, each judged by the AUC of separating the forgotten samples from the retained
ones (0.5: no signal; 0 or 1: the set is given away, since the party knows the protocol and so
the direction):

- **ids**: how many times the method asked for the sample. A method that trains on the forget
  set alone (gradient ascent) or on the retained set alone (fine-tuning, retraining) gives the
  set away by the ids themselves.
- **gradient norm**: the mean L2 norm of the gradient rows the party received for the sample,
  over the samples that got one. The norm is the attack of Li, Sun, Yang, Gao, Zhang, Xie,
  Smith and Wang, "Label Leakage and Protection in Two-party Split Learning" (ICLR 2022,
  arXiv 2102.08504), here aimed at forget-set membership instead of the label: samples whose
  loss a method pushes up, or that the model has not fitted, get larger gradients.

``advantage = 2 |AUC - 0.5|`` puts both on [0, 1]. The measurement covers every message of the
method's phase (training and inference requests, what the party gets in ``Backward``, the ids
and next ids of party operations), for every party; it is the party's view, not the server's.
Gradient rows that party operations receive (the cotangents of Fisher forgetting's, SSD's and
SalUn's statistics, Boundary Shrink's attack, UNSIR's steps) are scored apart, as
``op_gradient_norm``, so that the ``Backward`` score means what it always did.
:class:`PartyViewRecorder` collects the view from a transport's requests (``Transport.taps``);
:func:`request_leakage` is the functional form on plain arrays.

**Cover** (``forget.cover``, :mod:`vfl_sim.server.cover`) pads every message of a method with
decoy ids, k-anonymity-style, so that each party is asked about every training sample equally
often: the ids AUC is 0.5. The decoys are counted as asked (they are), and their gradient rows,
which are exactly zero so that they leave the party's update as it was, as received rows of
norm 0. Such a zero-effect decoy is recognisable by the party that gets it: the row is all
zeros, and the party, which holds its own bottom model, can compute each sample's contribution
to its parameter gradient (none for a decoy). Cover therefore hides the forget set from the ids
channel only; the gradient-norm channels keep whatever leakage the method has, and this audit
reports it (the decoys are not given fake gradients).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vfl_sim.audits.membership import auc_by_ranks
from vfl_sim.protocol import Backward, Embed, LocalOp, Request


def _auc(member: np.ndarray, score: np.ndarray) -> float | None:
    """AUC of ``score`` for ``member``; ``None`` without both groups (a constant score is 0.5:
    every member-non-member pair ties)."""
    if member.all() or not member.any():
        return None
    return auc_by_ranks(score, member)


def _advantage(auc: float | None) -> float | None:
    return None if auc is None else 2.0 * abs(auc - 0.5)


def _norm_auc(
    grad_norm_sum: np.ndarray, grad_count: np.ndarray, member: np.ndarray, train_ids: np.ndarray
) -> tuple[float | None, int]:
    """AUC of the mean received row norm over the training samples that got a row, and how many did."""
    got = grad_count[train_ids] > 0
    mean_norm = grad_norm_sum[train_ids][got] / grad_count[train_ids][got]
    return _auc(member[got], mean_norm), int(got.sum())


def request_leakage(
    asked: np.ndarray,
    grad_norm_sum: np.ndarray,
    grad_count: np.ndarray,
    forget_ids: np.ndarray,
    train_ids: np.ndarray,
    op_grad_norm_sum: np.ndarray | None = None,
    op_grad_count: np.ndarray | None = None,
) -> dict[str, Any]:
    """One party's leakage of the forget set (see the module's description).

    Parameters
    ----------
    asked, grad_norm_sum, grad_count
        Per sample id (all samples): times asked for, sum and count of the received gradient
        rows' L2 norms (``Backward``).
    forget_ids, train_ids
        The forgotten training ids, and every training id (the samples scored).
    op_grad_norm_sum, op_grad_count
        The same for the gradient rows party operations received (``grad`` of a ``LocalOp``);
        none by default.
    """
    member = np.isin(train_ids, forget_ids)
    ids_auc = _auc(member, asked[train_ids].astype(np.float64))
    grad_auc, grad_samples = _norm_auc(grad_norm_sum, grad_count, member, train_ids)
    if op_grad_norm_sum is None or op_grad_count is None:
        op_grad_norm_sum, op_grad_count = np.zeros_like(grad_norm_sum), np.zeros_like(grad_count)
    op_auc, op_samples = _norm_auc(op_grad_norm_sum, op_grad_count, member, train_ids)
    return {
        "ids_auc": ids_auc,
        "ids_advantage": _advantage(ids_auc),
        "gradient_norm_auc": grad_auc,
        "gradient_norm_advantage": _advantage(grad_auc),
        "asked_train_samples": int((asked[train_ids] > 0).sum()),
        "asked_forget_samples": int((asked[train_ids] > 0)[member].sum()),
        "gradient_samples": grad_samples,
        "op_gradient_norm_auc": op_auc,
        "op_gradient_norm_advantage": _advantage(op_auc),
        "op_gradient_samples": op_samples,
    }


class PartyViewRecorder:
    """Each party's view of the messages it receives, per sample id.

    Call :meth:`observe` with every round's requests (a transport tap); a ``Backward``'s
    gradient rows belong to the ids of that party's previous training ``Embed`` (the protocol's
    one round trip per step), and its ``then`` is the next ``Embed``. A party operation
    (``LocalOp``) names samples in its tensors ``ids`` and ``next_ids`` (both count as asked;
    ids outside ``0 .. n_samples - 1``, such as UNSIR's noise rows, are not samples); its
    ``grad`` rows belong to its own ``ids``, or, without ``ids``, to the ``next_ids`` of that
    party's previous operation (UNSIR's split-learning steps).

    Parameters
    ----------
    party_ids
        The parties to watch.
    n_samples
        Number of sample ids (ids are ``0 .. n_samples - 1``).
    """

    def __init__(self, party_ids: Sequence[str], n_samples: int) -> None:
        self.asked = {pid: np.zeros(n_samples, dtype=np.int64) for pid in party_ids}
        self.grad_norm_sum = {pid: np.zeros(n_samples, dtype=np.float64) for pid in party_ids}
        self.grad_count = {pid: np.zeros(n_samples, dtype=np.int64) for pid in party_ids}
        self.op_grad_norm_sum = {pid: np.zeros(n_samples, dtype=np.float64) for pid in party_ids}
        self.op_grad_count = {pid: np.zeros(n_samples, dtype=np.int64) for pid in party_ids}
        self.n_samples = n_samples
        self._last_train: dict[str, np.ndarray | None] = dict.fromkeys(party_ids)
        self._last_op: dict[str, np.ndarray | None] = dict.fromkeys(party_ids)

    def observe(self, requests: Mapping[str, Request]) -> None:
        """Record one round's requests."""
        for pid, request in requests.items():
            if pid not in self.asked:
                continue
            if isinstance(request, LocalOp):
                self._observe_op(pid, request)
                continue
            embed: Request | None = request
            if isinstance(request, Backward):
                ids = self._last_train[pid]
                grad = request.grad.detach().reshape(request.grad.shape[0], -1)
                if ids is not None and ids.size == grad.shape[0]:
                    np.add.at(self.grad_norm_sum[pid], ids, grad.norm(dim=1).double().cpu().numpy())
                    np.add.at(self.grad_count[pid], ids, 1)
                self._last_train[pid] = None
                embed = request.then
            if isinstance(embed, Embed):
                ids = embed.ids.detach().cpu().numpy().astype(np.int64)
                np.add.at(self.asked[pid], ids, 1)
                if embed.train:
                    self._last_train[pid] = ids

    def _observe_op(self, pid: str, op: LocalOp) -> None:
        ids = op.tensors.get("ids")
        rows_of = self._sample_ids(ids) if ids is not None else self._last_op[pid]
        if ids is not None:
            self._ask(pid, ids)
        grad = op.tensors.get("grad")
        if grad is not None and rows_of is not None and grad.ndim > 0 and grad.shape[0] == rows_of.size:
            norms = grad.detach().reshape(grad.shape[0], -1).norm(dim=1).double().cpu().numpy()
            valid = (rows_of >= 0) & (rows_of < self.n_samples)
            np.add.at(self.op_grad_norm_sum[pid], rows_of[valid], norms[valid])
            np.add.at(self.op_grad_count[pid], rows_of[valid], 1)
        nxt = op.tensors.get("next_ids")
        if nxt is not None:
            self._ask(pid, nxt)
            self._last_op[pid] = self._sample_ids(nxt)
        elif grad is not None and ids is None:
            self._last_op[pid] = None

    @staticmethod
    def _sample_ids(ids: Any) -> np.ndarray:
        return np.asarray(ids.detach().cpu().numpy() if hasattr(ids, "detach") else ids, dtype=np.int64).reshape(-1)

    def _ask(self, pid: str, ids: Any) -> None:
        """Count the samples among ``ids`` as asked (ids outside the sample range are not samples)."""
        arr = self._sample_ids(ids)
        arr = arr[(arr >= 0) & (arr < self.n_samples)]
        np.add.at(self.asked[pid], arr, 1)

    def compute(self, forget_ids: np.ndarray, train_ids: np.ndarray) -> dict[str, dict[str, Any]]:
        """:func:`request_leakage` per party."""
        return {
            pid: request_leakage(
                self.asked[pid],
                self.grad_norm_sum[pid],
                self.grad_count[pid],
                forget_ids,
                train_ids,
                self.op_grad_norm_sum[pid],
                self.op_grad_count[pid],
            )
            for pid in self.asked
        }
