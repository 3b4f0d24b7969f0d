"""The parts of a prepared experiment, and what follows from them alone (seeds, the server)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

import vfl_sim.methods  # noqa: F401  (in-process parties answer the built-in methods' party steps)
from vfl_sim.config import ExperimentConfig
from vfl_sim.data.dataset import VflDataset
from vfl_sim.data.partition import PartySlice
from vfl_sim.methods.controls import Control
from vfl_sim.models.state import reset_parameters
from vfl_sim.models.zoo import build_top
from vfl_sim.parties.build import local_transport
from vfl_sim.seeding import derive_seed
from vfl_sim.server.server import Server
from vfl_sim.server.unlearning import ForgetSet, UnlearningMethod
from vfl_sim.transport import Transport


@dataclass
class ExperimentSpec:
    """What a validated experiment is made of: its config, the dataset and its partition into
    parties, the resolved forget request, the methods and the certificate's controls; and the
    seeds derived from them. :class:`~vfl_sim.experiment.Experiment` runs it; the modules of
    this package each do one job with it."""

    cfg: ExperimentConfig
    dataset: VflDataset
    slices: list[PartySlice]
    forget: ForgetSet
    methods: list[UnlearningMethod]
    device: torch.device
    controls: list[Control] = field(default_factory=list)

    # -- building ------------------------------------------------------------------------------

    def build_server(self, transport: Transport | None = None) -> Server:
        """The server, freshly initialized, talking to the parties through ``transport``
        (default: in-process parties built here)."""
        transport = transport or local_transport(self.cfg, self.dataset, self.slices, self.device)
        dims = [self.cfg.model.embedding_dim] * len(self.slices)  # every bottom ends in this width
        top = build_top(self.cfg.model, dims, self.dataset.num_classes)
        reset_parameters(top, self.top_seed)
        return Server(
            torch.from_numpy(self.dataset.labels), top, transport, fusion=self.cfg.model.fusion, device=self.device
        )

    @property
    def top_seed(self) -> int:
        return derive_seed(self.cfg.seed, "init", "top")

    def audit_seed(self, purpose: str) -> int:
        """Seed of one source of the audit's randomness (probe splits, bootstrap, attack
        samples...): derived from ``audit.seed``, or from ``seed`` when that is unset."""
        base = self.cfg.seed if self.cfg.audit.seed is None else self.cfg.audit.seed
        return derive_seed(base, purpose)

    @property
    def all_methods(self) -> list[UnlearningMethod]:
        """The configured methods, then the built-in controls (:mod:`vfl_sim.methods.controls`)."""
        return [*self.methods, *(c.method for c in self.controls)]

    @property
    def control_roles(self) -> dict[str, str]:
        """``{model: role}`` of the controls of this run (the original is not among them)."""
        return {c.method.label: c.role for c in self.controls}
