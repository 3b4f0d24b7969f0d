"""A party's state in a Flower node's ``Context.state``.

Flower builds the ClientApp anew for every message, so nothing in the party's Python objects
survives between messages; ``Context.state`` (a ``RecordDict`` kept per node) does. The party
is rebuilt from its configuration on each message, its state restored from the context, the
request answered, and the state written back. The autograd graph between an ``Embed`` and its
``Backward`` cannot be stored, so such parties run with ``replay_backward``.
"""

from __future__ import annotations

import json
import secrets

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from vfl_sim.parties.party import Party

ARRAYS, META = "party.arrays", "party.meta"


def save_party(party: Party, state: RecordDict) -> None:
    """Write ``party``'s state into a node's context state (replacing what was there)."""
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
        return False
    arrays = state.array_records[ARRAYS]
    tensors = {k: torch.from_numpy(np.array(a.numpy(), copy=True)) for k, a in arrays.items()}
    meta = json.loads(str(state.config_records[META]["json"]))
    for key in meta["scalars"]:
        tensors[key] = tensors[key].reshape(())
    party.import_state(tensors, meta["party"])
    return True
