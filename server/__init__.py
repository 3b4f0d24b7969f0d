"""The server (active party) role: labels, the top model, split-learning training, and the
unlearning coordinator with its method registry."""

from server.coordinator import UnlearningCoordinator, resolve_forget_request
from server.server import Server

__all__ = ["Server", "UnlearningCoordinator", "resolve_forget_request"]
