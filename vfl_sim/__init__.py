"""vfl-sim: a vertical federated learning simulator with machine-unlearning audits.

The core (this package's config, data, models, protocol and transport modules) sits at the
bottom; the roles (:mod:`vfl_sim.parties`, :mod:`vfl_sim.server`) and :mod:`vfl_sim.audits` build on it; the
orchestration (:mod:`vfl_sim.experiment`, runtimes, the CLI) sits on top. This module imports
nothing heavy so that any layer can import it.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
