"""One experiment, end to end: prepare, train, forget, unlearn, gather, audit, report.

:func:`prepare` validates a config into an :class:`Experiment`; :meth:`Experiment.run` runs it
into a run folder. The modules each do one job:

- :mod:`.setup`: preparation and validation (dataset, partition, model sizes, methods);
- :mod:`.spec`: what a prepared experiment is made of, and the seeds derived from it;
- :mod:`.compute`: device and thread count, the same in every process of a run;
- :mod:`.core`: the run itself (run folder, resume, the order of the steps) and re-audits;
- :mod:`.resume` and :mod:`.checkpoints`: what a resumed or re-audited run folder must hold;
- :mod:`.training`: the original model and each method;
- :mod:`.gathering`: every model's view of the audit samples;
- :mod:`.auditing`: the auditors, the relearning attack and the certificate;
- :mod:`.reporting`: ``report.json``.
"""

from vfl_sim.experiment.auditing import BUILT_IN_AUDITORS, BUILT_IN_SECTIONS, build_auditor
from vfl_sim.experiment.checkpoints import CHECKPOINTS, DONE_MARK, CheckpointError, read_report
from vfl_sim.experiment.compute import apply_threads, resolve_device, resolve_threads
from vfl_sim.experiment.core import Experiment
from vfl_sim.experiment.setup import check_model_memory, expand_methods, physical_memory, prepare
from vfl_sim.experiment.spec import ExperimentSpec

__all__ = [
    "BUILT_IN_AUDITORS",
    "BUILT_IN_SECTIONS",
    "CHECKPOINTS",
    "DONE_MARK",
    "CheckpointError",
    "Experiment",
    "ExperimentSpec",
    "apply_threads",
    "build_auditor",
    "check_model_memory",
    "expand_methods",
    "physical_memory",
    "prepare",
    "read_report",
    "resolve_device",
    "resolve_threads",
]
