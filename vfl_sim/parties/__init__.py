"""The passive-party role: a feature slice, a bottom model, and answers to protocol requests.

The party-side steps of unlearning methods live with their methods (:mod:`vfl_sim.methods`);
a process that hosts parties imports that package (or a plugin) to register them.
"""

from vfl_sim.parties.party import Party, PartyFunction, grad_hook, party_op, registered_ops

__all__ = ["Party", "PartyFunction", "grad_hook", "party_op", "registered_ops"]
