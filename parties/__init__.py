"""The passive-party role: a feature slice, a bottom model, and answers to protocol requests."""

from parties.party import Party, party_op, registered_ops

__all__ = ["Party", "party_op", "registered_ops"]
