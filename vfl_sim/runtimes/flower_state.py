"""A party's state in a Flower node's ``Context.state``.

Flower builds the ClientApp anew for every message, so nothing in the party's Python objects
survives between messages; ``Context.state`` (a ``RecordDict`` kept per node) does. The party
is rebuilt from its configuration on each message, its state restored from the context, the
request answered, and the state written back. The autograd graph between an ``Embed`` and its
``Backward`` cannot be stored, so such parties run with ``replay_backward``.

A process that is the only one ever to serve its node's messages (the party process of
``vfl-sim-supernode``, :mod:`vfl_sim.runtimes.flower_exec`) calls :func:`keep_state_in_process`:
the party then stays in that process and the context carries only a stamp, so the SuperNode
does not ship the party's weights and optimizer state to the process and back with every
message (about 270 KB each way for the digits demo's party, a third of a round's cost). Should
another process ever receive such a context, :func:`restore_party` refuses it by name instead
of going on from an empty party.
"""

from __future__ import annotations

import json
import os
import secrets

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from vfl_sim.parties.party import Party

ARRAYS, META = "party.arrays", "party.meta"

_IN_PROCESS = False


class PartyStateLostError(RuntimeError):
    """The node's context says its party lives in a process that is not this one."""


def keep_state_in_process(on: bool = True) -> None:
    """Keep parties' state in this process only: :func:`save_party` then writes a stamp and no
    arrays. Only for a process that serves every message of its node for the whole run."""
    global _IN_PROCESS
    _IN_PROCESS = on


def save_party(party: Party, state: RecordDict) -> None:
    """Write ``party``'s state into a node's context state (replacing what was there); only a
    stamp naming this process under :func:`keep_state_in_process`."""
    if _IN_PROCESS:
        if ARRAYS in state.array_records:
            del state[ARRAYS]
        state[META] = ConfigRecord({"json": json.dumps({"resident_pid": os.getpid()}), "stamp": secrets.randbits(62)})
        return
    tensors, meta = party.export_state()
    # Flower's Array stores 0-d tensors (batch-norm counters, optimizer steps) with shape (1,).
    scalars = [k for k, v in tensors.items() if v.ndim == 0]
    state[ARRAYS] = ArrayRecord({k: Array(np.ascontiguousarray(v.detach().cpu().numpy())) for k, v in tensors.items()})
    state[META] = ConfigRecord({"json": json.dumps({"party": meta, "scalars": scalars}), "stamp": secrets.randbits(62)})


def state_stamp(state: RecordDict) -> int:
    """A number that changes with every :func:`save_party` into ``state`` (0: nothing saved).

    Random rather than counted, so that stamps written by different processes serving the same
    node cannot coincide.
    """
    if META not in state.config_records:
        return 0
    return int(str(state.config_records[META]["stamp"]))


def restore_party(party: Party, state: RecordDict) -> bool:
    """Load the state saved by :func:`save_party` into a freshly built ``party``.

    Returns ``False`` (and leaves the party as built) when the context holds no state yet,
    which is the case on a node's first message.
    """
    if ARRAYS not in state.array_records:
        if META in state.config_records:
            pid = json.loads(str(state.config_records[META]["json"])).get("resident_pid")
            raise PartyStateLostError(
                f"this node's party was kept only in its party process (pid {pid}), which is gone or is not "
                "this one; the run cannot go on from here: start it again (vfl-sim run --resume)"
            )
        return False
    arrays = state.array_records[ARRAYS]
    tensors = {k: torch.from_numpy(np.array(a.numpy(), copy=True)) for k, a in arrays.items()}
    meta = json.loads(str(state.config_records[META]["json"]))
    for key in meta["scalars"]:
        tensors[key] = tensors[key].reshape(())
    party.import_state(tensors, meta["party"])
    return True
