"""Unlearning methods: one module per method family, each holding the method's server side, its
params and its party-side steps; the registry; and what a method is written against.

This layer sits above the server and the parties: a method drives the server (the top model,
split-learning phases) and declares the steps its parties run (:func:`party_op`,
:func:`grad_hook`), which the server calls over the transport by the step's ``name``. Importing
this package registers every built-in method and every built-in party-side step, so each process
that hosts parties (the local run, a Ray actor, a Flower ClientApp) imports it.

A user method is one module listed under ``plugins:`` in the config: a subclass of
:class:`UnlearningMethod` decorated with ``@register_method("name")``, with its party-side steps
beside it (``docs/extending.md``).
"""

from vfl_sim.methods import baselines as _baselines  # noqa: F401  (registers the built-ins)
from vfl_sim.methods import boundary as _boundary  # noqa: F401
from vfl_sim.methods import cmf as _cmf  # noqa: F401
from vfl_sim.methods import importance as _importance  # noqa: F401
from vfl_sim.methods import mixup as _mixup  # noqa: F401
from vfl_sim.methods import relabel as _relabel  # noqa: F401
from vfl_sim.methods import saliency as _saliency  # noqa: F401
from vfl_sim.methods import scrub as _scrub  # noqa: F401
from vfl_sim.methods import unsir as _unsir  # noqa: F401
from vfl_sim.methods import vfl_removal as _vfl_removal  # noqa: F401
from vfl_sim.methods.registry import (
    available_methods,
    build_method,
    get_method,
    register_method,
)
from vfl_sim.parties.party import Party, PartyFunction, grad_hook, party_op
from vfl_sim.server.unlearning import (
    ForgetSet,
    MethodParams,
    PhaseParams,
    UnlearningContext,
    UnlearningMethod,
)

__all__ = [
    "ForgetSet",
    "MethodParams",
    "Party",
    "PartyFunction",
    "PhaseParams",
    "UnlearningContext",
    "UnlearningMethod",
    "available_methods",
    "build_method",
    "get_method",
    "grad_hook",
    "party_op",
    "register_method",
]
