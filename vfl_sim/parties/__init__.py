"""The passive-party role: a feature slice, a bottom model, and answers to protocol requests."""

from vfl_sim.parties import methods as _methods  # noqa: F401  (registers the built-in party-side steps)
from vfl_sim.parties.party import Party, grad_hook, party_op, registered_ops

__all__ = ["Party", "grad_hook", "party_op", "registered_ops"]
