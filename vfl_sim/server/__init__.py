"""The server (active party) role: labels, the top model, split-learning training, and the
unlearning coordinator with the contract every method implements (:mod:`vfl_sim.server.unlearning`;
the methods themselves are :mod:`vfl_sim.methods`)."""

from vfl_sim.server.coordinator import UnlearningCoordinator, resolve_forget_request
from vfl_sim.server.server import Server

__all__ = ["Server", "UnlearningCoordinator", "resolve_forget_request"]
