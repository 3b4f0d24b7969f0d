"""Unlearning methods: the base class, the registry, and the built-in methods.

Importing this package registers the built-in methods. A user method is a subclass of
:class:`UnlearningMethod` decorated with ``@register_method("name")`` in a module listed under
``plugins:`` in the config.
"""

from vfl_sim.server.methods import baselines as _baselines  # noqa: F401  (registers the built-ins)
from vfl_sim.server.methods import boundary as _boundary  # noqa: F401
from vfl_sim.server.methods import cmf as _cmf  # noqa: F401
from vfl_sim.server.methods import importance as _importance  # noqa: F401
from vfl_sim.server.methods import mixup as _mixup  # noqa: F401
from vfl_sim.server.methods import relabel as _relabel  # noqa: F401
from vfl_sim.server.methods import saliency as _saliency  # noqa: F401
from vfl_sim.server.methods import scrub as _scrub  # noqa: F401
from vfl_sim.server.methods import unsir as _unsir  # noqa: F401
from vfl_sim.server.methods import vfl_removal as _vfl_removal  # noqa: F401
from vfl_sim.server.methods.base import (
    ForgetSet,
    MethodParams,
    PhaseParams,
    UnlearningContext,
    UnlearningMethod,
)
from vfl_sim.server.methods.registry import (
    available_methods,
    build_method,
    get_method,
    register_method,
)

__all__ = [
    "ForgetSet",
    "MethodParams",
    "PhaseParams",
    "UnlearningContext",
    "UnlearningMethod",
    "available_methods",
    "build_method",
    "get_method",
    "register_method",
]
