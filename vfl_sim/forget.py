"""The vocabulary of unlearning, in one place: the kinds of forget request and the names of the
models every run holds besides its methods.

These are plain strings (they travel in configs, reports, ledgers and Flower messages as they
are); compare against these names rather than spelling the strings again.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ORIGINAL", "RETRAIN", "ForgetKind"]


class ForgetKind:
    """The kinds of forget request (``forget.kind``).

    Attributes
    ----------
    CLASS
        Every training sample of some classes.
    SAMPLES
        Some training samples, by id or as a fraction.
    PARTY
        Everything one party holds: its bottom model leaves the federation.
    FEATURES
        Some columns of one party.
    ALL
        Every kind, in the order above.
    OF_A_PARTY
        The kinds that remove data a party holds (columns), rather than samples.
    """

    CLASS: Final = "class"
    SAMPLES: Final = "samples"
    PARTY: Final = "party"
    FEATURES: Final = "features"
    ALL: Final = (CLASS, SAMPLES, PARTY, FEATURES)
    OF_A_PARTY: Final = frozenset({PARTY, FEATURES})


ORIGINAL: Final = "original"
"""The model trained on all data, before any forget request: the start of every method."""

RETRAIN: Final = "retrain"
"""The method that trains from scratch without the forgotten data: the reference of the audits."""
