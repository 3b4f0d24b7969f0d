"""Audits: did a model forget, at its output and in its representations?

Every auditor works on plain arrays (:class:`AuditData`), so it runs on a live experiment,
on saved embeddings, or on arrays from elsewhere. Metrics come as functions and as classes
with an ``update``/``compute``/``reset`` life cycle.
"""

from vfl_sim.audits.base import (
    AuditData,
    Auditor,
    ModelEmbeddings,
    available_auditors,
    get_auditor,
    register_auditor,
)
from vfl_sim.audits.certificate import Certificate, CertificateThresholds, Check, Verdict, certify, trilemma_region
from vfl_sim.audits.cka import LinearCKA, linear_cka
from vfl_sim.audits.class_recovery import ClassRecoveryResult, forgotten_class_recovery
from vfl_sim.audits.consistency import ConsistencyResult, RetrainConsistency, retrain_consistency

# `feature_recovery` (the function) stays in its module: exported here it would shadow the module.
from vfl_sim.audits.feature_recovery import (
    FeatureRecovery,
    FeatureRecoveryAuditor,
    FeatureRecoveryGap,
    RecoveryGap,
    RecoveryResult,
    TargetComponents,
    feature_recovery_many,
    paired_recovery_gap,
    recovery_gap_ci,
    target_components,
)
from vfl_sim.audits.interval import Interval
from vfl_sim.audits.membership import (
    MembershipInference,
    MembershipResult,
    auc_by_ranks,
    bootstrap_auc_ci,
    membership_inference,
    membership_scores,
)
from vfl_sim.audits.metric import Metric, RowBuffer
from vfl_sim.audits.model_completion import (
    CompletionResult,
    ModelCompletion,
    ModelCompletionAuditor,
    model_completion,
    model_completion_many,
)
from vfl_sim.audits.output import OutputAuditor, accuracy, output_metrics
from vfl_sim.audits.probe import LinearProbeRecovery, ProbeResult, linear_probe_recovery, probe_many
from vfl_sim.audits.probe_ci import LinearProbeRecoveryCI, ProbeCI, probe_ci, probe_many_ci
from vfl_sim.audits.probe_gap import LinearProbeGap, ProbeGapCI, paired_gap, probe_gap_ci
from vfl_sim.audits.reference_free import (
    ReferenceFreeAudit,
    ReferenceFreeAuditor,
    ReferenceFreeResult,
    ignorance_test,
    reference_free_audit,
)
from vfl_sim.audits.relearning import (
    RelearningSummary,
    compare_relearning,
    relearning_area,
    steps_to_recover,
    summarize_relearning,
)
from vfl_sim.audits.representation import RepresentationAuditor
from vfl_sim.audits.separability import (
    FisherRatio,
    ForgetSilhouette,
    KNNPurity,
    PurityResult,
    fisher_ratio,
    forget_silhouette,
    knn_purity,
)

__all__ = [
    "ReferenceFreeAudit",
    "ReferenceFreeAuditor",
    "ReferenceFreeResult",
    "ignorance_test",
    "reference_free_audit",
    "RelearningSummary",
    "compare_relearning",
    "relearning_area",
    "steps_to_recover",
    "summarize_relearning",
    "Certificate",
    "CertificateThresholds",
    "Check",
    "Verdict",
    "certify",
    "trilemma_region",
    "FeatureRecovery",
    "FeatureRecoveryAuditor",
    "FeatureRecoveryGap",
    "RecoveryGap",
    "RecoveryResult",
    "TargetComponents",
    "feature_recovery_many",
    "paired_recovery_gap",
    "recovery_gap_ci",
    "target_components",
    "FisherRatio",
    "ForgetSilhouette",
    "KNNPurity",
    "PurityResult",
    "fisher_ratio",
    "forget_silhouette",
    "knn_purity",
    "AuditData",
    "Auditor",
    "ClassRecoveryResult",
    "Interval",
    "LinearCKA",
    "LinearProbeGap",
    "LinearProbeRecovery",
    "LinearProbeRecoveryCI",
    "Metric",
    "CompletionResult",
    "ModelCompletion",
    "ModelCompletionAuditor",
    "model_completion",
    "model_completion_many",
    "ModelEmbeddings",
    "OutputAuditor",
    "ProbeCI",
    "ProbeGapCI",
    "ProbeResult",
    "RepresentationAuditor",
    "RowBuffer",
    "accuracy",
    "available_auditors",
    "get_auditor",
    "linear_cka",
    "forgotten_class_recovery",
    "linear_probe_recovery",
    "output_metrics",
    "paired_gap",
    "probe_ci",
    "probe_gap_ci",
    "probe_many",
    "probe_many_ci",
    "register_auditor",
    "ConsistencyResult",
    "MembershipInference",
    "MembershipResult",
    "RetrainConsistency",
    "auc_by_ranks",
    "bootstrap_auc_ci",
    "membership_inference",
    "membership_scores",
    "retrain_consistency",
]
