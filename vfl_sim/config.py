"""Typed, validated experiment configuration.

A config is a YAML file, optionally amended with dotted ``--set key=value`` overrides, that
is validated into :class:`ExperimentConfig` before anything is built or written. Every
validation failure becomes one :class:`~vfl_sim.errors.ConfigError` line naming the field
and, where there is a fixed set, the allowed values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from vfl_sim.errors import ConfigError
from vfl_sim.forget import ORIGINAL, ForgetKind
from vfl_sim.plugins import resolve_plugins

EMBEDDED_DATASETS = ("digits", "breast_cancer", "wine", "synthetic")
VISION_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "svhn")
DATASETS = EMBEDDED_DATASETS + VISION_DATASETS

NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.=+-]*$"
"""A run, sweep or model name: it names folders, so it is one path component (no ``/``, no
leading ``.``)."""
MAX_SEED = 2**63 - 1
MAX_EPOCHS = 100_000
MAX_COUNT = 1_000_000_000  # samples, batch sizes: more than any machine here holds


class _Section(BaseModel):
    # No inf or nan in any float field: `train.lr=.inf` is a typo, not a setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class SyntheticConfig(_Section):
    """Seeded synthetic tabular data, for scale tests and audits with known answers.

    ``structure: planted`` gives every class its own feature directions, spread over all
    parties (each party holds ``informative_per_party`` informative columns), so the forgotten
    class is linearly separable in every party's raw view by construction. ``structure: mixed``
    draws random class means in the same informative columns, as in a Gaussian mixture.
    """

    samples: Annotated[int, Field(ge=20, le=MAX_COUNT)] = 2000
    """Samples drawn (split into train and test like the embedded datasets)."""
    features: Annotated[int, Field(ge=1, le=1_000_000)] = 20
    """Feature columns, spread over the parties by the partition."""
    classes: Annotated[int, Field(ge=2, le=100_000)] = 4
    """Number of classes."""
    informative_per_party: Annotated[int, Field(ge=1, le=1_000_000)] = 4
    """Informative columns in every party's share."""
    structure: Literal["planted", "mixed"] = "planted"
    """``planted``: each class its own columns in every party; ``mixed``: random class means."""
    separation: Annotated[float, Field(gt=0)] = 2.0
    """Distance of the class means in the informative columns."""
    noise: Annotated[float, Field(gt=0)] = 1.0
    """Standard deviation of the Gaussian noise of every column."""


class DataConfig(_Section):
    name: Literal[DATASETS] = "digits"  # type: ignore[valid-type]
    """The dataset: the embedded ``digits``, ``breast_cancer``, ``wine``, ``synthetic``, or a torchvision set
    read from ``root``."""
    root: str | None = None
    """Folder of a torchvision dataset, laid out as torchvision writes it (no checksum step)."""
    download: bool = False
    """Let torchvision download the dataset into ``root`` (only where there is internet)."""
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    """Held-out share of the stratified split of the embedded datasets (torchvision sets keep their official split)."""
    # The split has its own seed so that sweeping `seed` varies training, not which samples are held out.
    split_seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0
    """Seed of the train/test split, apart from ``seed``."""
    synthetic: SyntheticConfig = SyntheticConfig()
    """Settings of ``name: synthetic``."""


class PartitionConfig(_Section):
    """How the feature columns are split among the passive parties.

    ``strips`` cuts images into vertical strips along the width (the usual VFL protocol; the
    last party takes the remainder); ``contiguous`` cuts flat features into K contiguous
    groups; ``random`` shuffles the columns with the seed first; ``columns`` takes an explicit
    list of columns per party: indices, or names where the dataset names its columns (as a
    feature request accepts them). ``auto`` is ``strips`` for images and ``contiguous``
    otherwise.
    """

    parties: Annotated[int, Field(ge=1, le=10_000)] = 2
    """Number of passive parties."""
    scheme: Literal["auto", "strips", "contiguous", "random", "columns"] = "auto"
    """How the columns are split among the parties (see above)."""
    columns: list[list[Annotated[int, Field(ge=0)] | str]] | None = None
    """With ``scheme: columns``: one list per party of column indices, or names where the dataset names its columns."""

    @model_validator(mode="after")
    def _columns_match_scheme(self) -> PartitionConfig:
        if self.scheme == "columns":
            if not self.columns:
                raise ValueError(
                    "scheme 'columns' needs partition.columns: one list of column indices or names per party"
                )
            if len(self.columns) != self.parties:
                raise ValueError(
                    f"partition.columns has {len(self.columns)} lists but partition.parties is {self.parties}"
                )
        elif self.columns is not None:
            raise ValueError(f"partition.columns is only used with scheme 'columns', not '{self.scheme}'")
        return self


class ModelConfig(_Section):
    """Bottom models (one per party) and the top model (on the server).

    ``bottom: auto`` picks ``cnn`` for images and ``mlp`` for flat features; ``mirage`` is the
    published Mirage setup (six 3x3 conv layers 64-64-128-128-256-256, 256-d embedding; its top
    is ``mlp`` with hidden ``[512, 256]`` and dropout 0.5).
    """

    bottom: Literal["auto", "mlp", "cnn", "mirage"] = "auto"
    """Each party's bottom model: ``mlp``, ``cnn`` (one conv-BN-ReLU-pool block per ``cnn_channels`` entry),
    ``mirage``; ``auto``: ``cnn`` for images, ``mlp`` otherwise."""
    embedding_dim: Annotated[int, Field(ge=1)] = 32
    """Width of each party's embedding (256 with ``bottom: mirage`` unless given)."""
    bottom_hidden: list[Annotated[int, Field(ge=1)]] = [64]
    """Hidden widths of an ``mlp`` bottom."""
    batch_norm: bool = True
    """Batch normalization in the bottom models."""
    bottom_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """Dropout in the bottom models."""
    cnn_channels: list[Annotated[int, Field(ge=1)]] = [32, 64]
    """Channels of the ``cnn`` bottom's blocks."""
    top: Literal["linear", "mlp"] = "mlp"
    """The server's top model."""
    top_hidden: list[Annotated[int, Field(ge=1)]] = [64]
    """Hidden widths of an ``mlp`` top."""
    top_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """Dropout in the top model."""
    fusion: Literal["concat", "sum", "mean"] = "concat"
    """How the top model combines the party embeddings."""

    @model_validator(mode="after")
    def _mirage_preset(self) -> ModelConfig:
        if self.bottom == "mirage" and "embedding_dim" not in self.model_fields_set:
            object.__setattr__(self, "embedding_dim", 256)
        return self


class OptimConfig(_Section):
    optimizer: Literal["sgd", "adam"] = "sgd"
    """Optimizer of every role."""
    lr: Annotated[float, Field(gt=0)] = 0.05
    """Learning rate."""
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    """SGD momentum."""
    weight_decay: Annotated[float, Field(ge=0)] = 5e-4
    """Weight decay."""
    schedule: Literal["constant", "cosine"] = "cosine"
    """Learning-rate schedule; ``cosine`` is per step."""


class DefenseConfig(_Section):
    """Defenses of the training messages (:mod:`vfl_sim.defenses`): per-sample clipping and
    Gaussian noise on the embeddings parties send, and on the gradients the server sends back,
    and sparsification of those gradients. They apply while a model is trained with
    ``train`` (the original and ``retrain``), not to a method's own phases, inference or the
    audits. With a clip, the noise's standard deviation is ``noise * clip`` and the report
    gives the ``(epsilon, delta)`` bound of :func:`vfl_sim.defenses.gaussian_epsilon`; without
    one it is ``noise`` itself and no bound is claimed. All zero (the default): no defense,
    and nothing of a run changes.
    """

    embedding_clip: Annotated[float, Field(gt=0)] | None = None
    """Clip every embedding row a party sends to this L2 norm (``None``: no clipping)."""
    embedding_noise: Annotated[float, Field(ge=0, le=1e6)] = 0.0
    """Gaussian noise multiplier on the embeddings parties send (std ``noise * clip``)."""
    gradient_clip: Annotated[float, Field(gt=0)] | None = None
    """Clip every gradient row the server sends a party to this L2 norm (``None``: no clipping)."""
    gradient_noise: Annotated[float, Field(ge=0, le=1e6)] = 0.0
    """Gaussian noise multiplier on the gradients parties receive (std ``noise * clip``)."""
    gradient_sparsity: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """Fraction of each gradient row's entries, smallest in magnitude, set to zero."""
    delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    """The ``delta`` of the reported ``(epsilon, delta)`` bound."""

    @property
    def on_embeddings(self) -> bool:
        """Whether the embeddings parties send are changed."""
        return self.embedding_clip is not None or self.embedding_noise > 0

    @property
    def on_gradients(self) -> bool:
        """Whether the gradients parties receive are changed."""
        return self.gradient_clip is not None or self.gradient_noise > 0 or self.gradient_sparsity > 0

    @property
    def active(self) -> bool:
        """Whether any training message is changed."""
        return self.on_embeddings or self.on_gradients


class TrainConfig(OptimConfig):
    """How the original model is trained (and retrained).

    ``local_steps`` (Q) is the number of local updates per communication round, as in FedBCD-p
    (Liu, Kang, Zhang, Li, Cheng, Chen, Hong, Yang, "A Communication-Efficient Collaborative
    Learning Framework for Distributed Features", arXiv 1912.11187, 2019): per batch the server
    steps the top model Q times on the same party embeddings, and each party steps its bottom
    model Q times with the one (stale) gradient of its embedding it receives. Rounds per epoch
    stay the same; optimizer steps (and the per-step schedule) are Q per batch. ``1`` is exact
    split learning. Both sides move on stale information at once, so a larger Q may need a
    smaller ``lr``.
    """

    epochs: Annotated[int, Field(ge=1, le=MAX_EPOCHS)] = 30
    """Epochs of the original model (and of ``retrain``)."""
    batch_size: Annotated[int, Field(ge=1, le=MAX_COUNT)] = 64
    """Minibatch size; one communication round per batch."""
    local_steps: Annotated[int, Field(ge=1, le=10_000)] = 1
    """FedBCD-p local updates Q per round (see above); 1 is exact split learning."""
    defense: DefenseConfig = DefenseConfig()
    """Clipping, noise and sparsification of the training messages (see ``DefenseConfig``)."""


class ForgetConfig(_Section):
    """A forget request.

    Kinds: ``class`` (``classes``), ``samples`` (``ids``, or a seeded ``fraction`` of the
    training set, ``stratified`` by class if asked), ``party`` (passive party ``party`` leaves:
    remove its contribution), ``features`` (``columns`` of party ``party``: names where the
    dataset names its columns, or column indices). ``id`` names the request in the run's ledger
    (default: derived from the request itself).
    """

    kind: Literal["class", "samples", "party", "features"] = "class"
    """What is forgotten: ``class``, ``samples``, ``party`` or ``features``."""
    id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")] | None = None
    """The request's id in the ledger (default: derived from the request's content)."""
    classes: list[Annotated[int, Field(ge=0)]] | None = None
    """``kind: class``: the classes whose training samples go."""
    ids: list[Annotated[int, Field(ge=0)]] | None = None
    """``kind: samples``: training sample ids (a test id or an unknown id is an error)."""
    fraction: Annotated[float, Field(gt=0, lt=1)] | None = None
    """``kind: samples``: a seeded fraction of the training set instead of ids."""
    stratified: bool = False
    """With ``fraction``: the same fraction of every class (at least one each)."""
    party: str | None = None
    """``kind: party`` or ``features``: the party, such as ``party_1``."""
    columns: list[int | str] | None = None
    """``kind: features``: the party's columns, by name or global index."""
    cover: bool = False
    """``kind: class`` or ``samples``: while each unlearning method runs, pad every message that names
    samples with decoy ids so that each party is asked about every training sample equally often and
    cannot tell the forget set from the ids (decoys get zero gradient rows: the gradient channel keeps
    its leakage; cost in ``models.<name>.cover``; see ``vfl_sim.server.cover``)."""

    @model_validator(mode="after")
    def _one_target(self) -> ForgetConfig:
        fields = {
            "class": {"classes"},
            "samples": {"ids", "fraction", "stratified"},
            "party": {"party"},
            "features": {"party", "columns"},
        }
        given = {k for k in ("classes", "ids", "fraction", "party", "columns") if getattr(self, k) is not None}
        if self.stratified:
            given.add("stratified")
        stray = sorted(given - fields[self.kind])
        if stray:
            owners = " or ".join(f"'{k}'" for k, fs in fields.items() if stray[0] in fs)
            raise ValueError(f"forget.{stray[0]} is for kind {owners}, not '{self.kind}'")
        if self.kind == ForgetKind.CLASS and not self.classes:
            raise ValueError("forget.kind 'class' needs forget.classes, a non-empty list of class indices")
        if self.kind == ForgetKind.SAMPLES:
            if (self.ids is None) == (self.fraction is None):
                raise ValueError("forget.kind 'samples' needs exactly one of forget.ids or forget.fraction")
            if self.ids is not None and not self.ids:
                raise ValueError("forget.ids is empty")
            if self.stratified and self.fraction is None:
                raise ValueError("forget.stratified applies to forget.fraction, not to explicit ids")
        if self.kind in ForgetKind.OF_A_PARTY and not self.party:
            raise ValueError(f"forget.kind '{self.kind}' needs forget.party, a party id such as party_1")
        if self.kind == ForgetKind.FEATURES and not self.columns:
            raise ValueError("forget.kind 'features' needs forget.columns, a non-empty list of column names or indices")
        if self.cover and self.kind in ForgetKind.OF_A_PARTY:
            raise ValueError(
                f"forget.cover hides a forget set among the training samples; a '{self.kind}' request forgets "
                "no samples (every sample stays), so there is nothing to cover: remove forget.cover"
            )
        return self


ALL_METHODS = "all"
"""The entry of ``methods`` that stands for every registered method supporting the request."""


class MethodSpec(_Section):
    """One unlearning method to run: a registered name, its hyperparameters, and the name of
    its model in the report (``label``, by default ``name``; set it to run a method twice)."""

    name: str
    """A registered method (``vfl-sim methods`` lists them), or ``all`` for every method that takes the
    request's kind."""
    params: dict[str, Any] = {}
    """The method's parameters (its defaults otherwise; see the methods catalogue)."""
    # The label names the model's checkpoint folder: one path component.
    label: Annotated[str, Field(min_length=1, max_length=100, pattern=NAME_PATTERN)] | None = None
    """The model's name in the report and its checkpoint folder (default: ``name``)."""

    @property
    def model_name(self) -> str:
        return self.label or self.name


class CertificateThresholds(_Section):
    """Tolerance floors of the forgetting certificate (:mod:`vfl_sim.audits.certificate`), as fractions.

    With calibration (``audit.calibration``) the tolerance of a check is the calibrated
    retrain-vs-retrain spread of that check, never below these floors; with
    ``audit.calibration.retrains: 0`` these values are the tolerances.

    Each is how far a model may be from the retrained reference and still pass that check:
    ``utility`` (retained test accuracy below retrain's), ``forget_accuracy`` (forgotten
    accuracy, either side of retrain's), ``membership_auc`` (membership attack AUC, either side
    of retrain's), ``lpr_gap`` (mean LPR gap of the fused and of every party's embedding),
    ``layer_lpr_gap`` (mean LPR gap at every bottom-model layer: a wider floor, since early
    layers of every model hold more of the input),
    ``class_recovery`` (multi-class probe accuracy on the forgotten classes above retrain's),
    ``feature_recovery_gap`` (R^2 gap of the removed columns, party and feature requests),
    ``party_dependence`` (share of predictions that change when a departed party's embedding is
    shuffled), ``relearning_gap`` (mean forgotten accuracy over the relearning attack above
    retrain's, per phase), ``model_completion`` (a passive party's model-completion accuracy on
    the forgotten classes, or membership AUC on the forgotten samples, away from retrain's; with
    ``audit.model_completion.enabled``).
    """

    utility: Annotated[float, Field(ge=0, le=1)] = 0.03
    """Retained test accuracy below retrain's."""
    forget_accuracy: Annotated[float, Field(ge=0, le=1)] = 0.05
    """Forgotten test and train accuracy, either side of retrain's."""
    membership_auc: Annotated[float, Field(ge=0, le=1)] = 0.05
    """Membership attack AUC, either side of retrain's."""
    lpr_gap: Annotated[float, Field(ge=0, le=1)] = 0.05
    """Mean LPR gap, fused and per party."""
    layer_lpr_gap: Annotated[float, Field(ge=0, le=1)] = 0.10
    """Mean LPR gap at every bottom-model layer."""
    class_recovery: Annotated[float, Field(ge=0, le=1)] = 0.10
    """Multi-class probe accuracy on the forgotten classes above retrain's."""
    feature_recovery_gap: Annotated[float, Field(ge=0, le=1)] = 0.05
    """R^2 gap of the removed columns (party and feature requests)."""
    party_dependence: Annotated[float, Field(ge=0, le=1)] = 0.0
    """Share of predictions that change when a departed party's embedding is shuffled."""
    relearning_gap: Annotated[float, Field(ge=0, le=1)] = 0.10
    """Mean forgotten accuracy over the relearning attack above retrain's, per phase."""
    model_completion: Annotated[float, Field(ge=0, le=1)] = 0.10
    """A party's model-completion accuracy (or membership AUC) on the forgotten data above retrain's."""


class RelearningConfig(_Section):
    """The relearning attack of class requests (:mod:`vfl_sim.server.relearning`) on ``per_class``
    labeled training samples of every class, in each of ``phases``: ``top`` (the top model
    alone) and ``full`` (top and every bottom) take ``steps`` full-batch SGD updates (``lr``,
    momentum 0.9); ``head`` re-initializes the top model's output layer and fits it alone on
    the frozen features, ``head_steps`` full-batch Adam updates at ``head_lr`` (an edit of the
    output layer alone, such as a masked class, cannot hide from it). ``threshold`` is the
    forgotten accuracy that counts as recovered."""

    enabled: bool = True
    """Run the relearning attack (class requests)."""
    steps: Annotated[int, Field(ge=1, le=1000)] = 10
    """Full-batch SGD steps of the ``top`` and ``full`` phases."""
    per_class: Annotated[int, Field(ge=1)] = 8
    """Labeled training samples of every class the attacker fine-tunes on."""
    lr: Annotated[float, Field(gt=0)] = 0.01
    """SGD learning rate of the ``top`` and ``full`` phases."""
    phases: list[Literal["top", "full", "head"]] = ["top", "full", "head"]
    """The phases to run, each from the model's snapshot."""
    head_steps: Annotated[int, Field(ge=1, le=10000)] = 50
    """Updates of the re-initialized output layer in the ``head`` phase (50: enough for a fresh
    layer to fit the attack set on digits)."""
    head_lr: Annotated[float, Field(gt=0)] = 0.1
    """Adam learning rate of the ``head`` phase."""
    threshold: Annotated[float, Field(gt=0, le=1)] = 0.5
    """Forgotten test accuracy that counts as recovered (``steps_to_recover``)."""

    @field_validator("phases")
    @classmethod
    def _phases(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError("list each of top, full and head at most once, and at least one of them")
        return value


class ReferenceFreeConfig(_Section):
    """The reference-free audit (:mod:`vfl_sim.audits.reference_free`): ``models`` verification models,
    each trained on ``fraction`` of the retained training audit samples."""

    enabled: bool = True
    """Run the reference-free audit (class and sample requests)."""
    models: Annotated[int, Field(ge=2, le=50)] = 5
    """Verification models."""
    fraction: Annotated[float, Field(gt=0, le=1)] = 0.15
    """Share of the retained training audit samples each verification model trains on."""


class ModelCompletionConfig(_Section):
    """The model-completion audit (:mod:`vfl_sim.audits.model_completion`; Fu et al., USENIX
    Security 2022): each passive party fits a head on its own bottom model's embeddings of
    ``labeled`` labeled training samples (class-balanced), once per each of ``draws`` seeded
    draws of that set; ``C`` is the head's inverse L2 strength (multinomial logistic regression).
    Off by default."""

    enabled: bool = False
    """Run the model-completion audit."""
    labeled: Annotated[int, Field(ge=2, le=MAX_COUNT)] = 40
    """Labeled training samples the party has (40 in the attack papers)."""
    draws: Annotated[int, Field(ge=1, le=1000)] = 10
    """Seeded draws of the labeled set; the interval is over them."""
    C: Annotated[float, Field(gt=0)] = 1.0
    """Inverse L2 strength of the party's logistic-regression head."""


class CalibrationConfig(_Section):
    """Calibration of the certificate's tolerances (:mod:`vfl_sim.audits.certificate`): ``retrains``
    extra retrained models, each from its own initialization and batch order, audited like any
    model; the tolerance of a check is the ``quantile`` of its spread among them (each one's
    deviation from ``retrain``), never below the floor in ``audit.certificate``. ``retrains: 0``
    turns calibration off: the floors are the tolerances."""

    retrains: Annotated[int, Field(ge=0, le=20)] = 2
    """Extra retrains, each from its own seed; 0 turns calibration off."""
    quantile: Annotated[float, Field(gt=0, le=1)] = 0.95
    """Quantile of their spread around ``retrain`` that sets each tolerance."""


class AuditorSpec(_Section):
    """A registered auditor to run besides the built-in ones, and its constructor arguments."""

    name: str
    """A registered auditor."""
    params: dict[str, Any] = {}
    """Keyword arguments of its constructor."""


class AuditConfig(_Section):
    """Settings of the built-in audits; ``auditors`` adds registered ones (e.g. from ``plugins``),
    whose results land in ``models.<model>.<section>`` of the report."""

    auditors: list[AuditorSpec] = []
    """Registered auditors to run besides the built-in ones: names, or ``{name: ..., params: {...}}``."""
    probe_eval_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.3
    """Held-out share of each linear probe's stratified split."""
    probe_C: Annotated[float, Field(gt=0)] = 1.0
    """Inverse L2 regularization of the logistic-regression probes."""
    max_samples: Annotated[int, Field(ge=10)] = 5000
    """Cap on the audit samples of each group (test, forget train, retain train)."""
    probe_repeats: Annotated[int, Field(ge=1, le=100)] = 5
    """Stratified probe splits behind the LPR intervals (1: no interval)."""
    seed: Annotated[int, Field(ge=0, lt=2**63)] | None = None
    """Seed of the audit's own randomness (audit samples, probe splits, bootstraps, the
    relearning attack's samples); unset: derived from ``seed``. Re-auditing a run with other
    audit seeds shows how much a verdict owes to them."""
    certificate: CertificateThresholds = CertificateThresholds()
    """Tolerance floors of the certificate."""
    calibration: CalibrationConfig = CalibrationConfig()
    """Calibration retrains that set the tolerances."""
    relearning: RelearningConfig = RelearningConfig()
    """The relearning attack."""
    reference_free: ReferenceFreeConfig = ReferenceFreeConfig()
    """The reference-free audit."""
    model_completion: ModelCompletionConfig = ModelCompletionConfig()
    """The model-completion audit (a passive party's head on its own embeddings)."""
    plots: bool = True
    """Write ``plots/*.png``."""

    @field_validator("auditors", mode="before")
    @classmethod
    def _auditor_shorthand(cls, value: Any) -> Any:
        # `auditors: [mine, {name: other, params: {k: 1}}]`, as for methods.
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value


class FlowerConfig(_Section):
    """How the Flower runtimes (``runtime: flower-sim`` and ``flower-deploy``) run.

    ``superlink: null`` starts the processes on 127.0.0.1: a simulation SuperLink (Ray backend)
    for ``flower-sim``, a SuperLink and one SuperNode per party for ``flower-deploy``. An
    address (``host:port``) submits the run to a SuperLink that is already running, with one
    SuperNode per party connected to it (``flower-deploy`` only), as in the docker-compose demo.
    """

    superlink: str | None = None
    """``flower-deploy``: ``host:port`` of a running SuperLink with one SuperNode per party; none: start them
    on 127.0.0.1."""
    root_certificates: str | None = None
    """CA certificate of a TLS SuperLink at ``superlink``."""
    connect_timeout: Annotated[float, Field(gt=0)] = 120.0
    """Seconds to wait for every party's SuperNode; then an error naming the missing parties."""
    round_timeout: Annotated[float, Field(gt=0)] = 120.0
    """Seconds to wait for one round's replies; then an error naming the silent parties."""
    run_timeout: Annotated[float, Field(gt=0)] = 24 * 3600.0
    """Seconds for the whole run; then it is stopped."""
    poll_interval: Annotated[float, Field(gt=0)] = 0.02
    """Seconds between the ServerApp's pulls of replies."""
    client_cpus: Annotated[int, Field(ge=1)] = 1
    """``flower-sim``: CPUs of each simulated ClientApp (``client-resources-num-cpus``)."""

    @field_validator("superlink")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            host, sep, port = value.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"flower.superlink must be host:port, for example superlink:8000 (got {value!r})")
        return value


class RayConfig(_Section):
    """How ``runtime: ray`` runs: every party is a Ray actor (:mod:`vfl_sim.runtimes.ray_runtime`).

    ``address: null`` starts a local Ray for the run (unless the environment variable
    ``RAY_ADDRESS`` names a cluster) with ``num_cpus`` logical CPUs (default: what the party
    actors ask for) and shuts it down afterwards. An address joins a running cluster: ``host:port``
    (its GCS, as ``ray start --head`` prints it), ``ray://host:port`` (Ray Client) or ``auto``.
    Every actor asks Ray for ``party_cpus`` CPUs and ``party_gpus`` GPUs; ``start_timeout`` bounds
    the wait for all actors to be placed and built, ``round_timeout`` the wait for one round's
    replies.
    """

    address: str | None = None
    """A running cluster: ``host:port``, ``ray://host:port`` or ``auto``; none: ``$RAY_ADDRESS``, else a local Ray."""
    num_cpus: Annotated[int, Field(ge=1)] | None = None
    """Logical CPUs of the local Ray (default: parties x ``party_cpus``; not with an address)."""
    party_cpus: Annotated[float, Field(gt=0)] = 1.0
    """CPUs each party actor asks Ray for."""
    party_gpus: Annotated[float, Field(ge=0)] = 0.0
    """GPUs each party actor asks Ray for; ``device: cuda`` needs more than 0."""
    start_timeout: Annotated[float, Field(gt=0)] = 120.0
    """Seconds for every actor to be placed and built."""
    round_timeout: Annotated[float, Field(gt=0)] = 600.0
    """Seconds for one round's replies."""

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and value != "auto":
            host, sep, port = value.removeprefix("ray://").rpartition(":")
            if not sep or not host or "/" in host or not port.isdigit():
                raise ValueError(
                    "ray.address must be host:port (a running cluster's GCS), ray://host:port (Ray Client) "
                    f"or auto (got {value!r})"
                )
        return value

    @field_validator("party_cpus", "party_gpus")
    @classmethod
    def _whole_above_one(cls, value: float) -> float:
        # Ray refuses fractional resource requests above 1 only when the actor is created.
        if value > 1 and not float(value).is_integer():
            raise ValueError(f"Ray takes fractions of one CPU or GPU, or whole numbers (got {value})")
        return value

    @model_validator(mode="after")
    def _local_only(self) -> RayConfig:
        if self.num_cpus is not None and self.address is not None:
            raise ValueError("ray.num_cpus sizes a local Ray; the cluster at ray.address has its own CPUs")
        return self


HONEST: Final = "honest"
IGNORE_UNLEARNING: Final = "ignore_unlearning"
PartyBehaviour = Literal["honest", "ignore_unlearning"]


class PartyConfig(_Section):
    """How one passive party behaves (``parties.<party_id>``).

    ``behaviour: honest`` (the default) follows the protocol. ``ignore_unlearning`` simulates a
    lazy or malicious party: it acknowledges every unlearning instruction (resets, gradient
    steps, method-specific operations) but keeps its pre-unlearning bottom model, so every
    unlearned model holds that party's original bottom (:class:`vfl_sim.parties.party.Party`).
    Training the original and the audit's attacks are unaffected.
    """

    behaviour: PartyBehaviour = HONEST
    """``honest`` follows the protocol; ``ignore_unlearning`` keeps its pre-unlearning bottom."""


class ExperimentConfig(_Section):
    """The whole experiment: data, partition, models, training, forget request, methods, audit."""

    # The default run folder is runs/<name>-<time>: a name is one path component.
    name: Annotated[str, Field(min_length=1, max_length=100, pattern=NAME_PATTERN)] = "experiment"
    """Run name: the report's title and the default run folder ``runs/<name>-<time>``."""
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0
    """Seeds every initialization, batch order, method and probe (derived per purpose)."""
    runtime: Annotated[str, Field(min_length=1)] = "local"
    """Where the parties live: ``local``, ``ray``, ``flower-sim``, ``flower-deploy``, or a runtime
    that a plugin registers (checked against the runtime registry once the plugins are
    imported: :func:`vfl_sim.runtimes.base.check_runtime`)."""
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    """Torch device of every role."""
    threads: Annotated[int, Field(ge=0, le=4096)] = 0
    """Torch intra-op threads of every process that computes for the run: the driver, every Ray
    party actor, Flower's ServerApp and every ClientApp. 0: the count torch uses in the process
    that starts the run, resolved there once and handed to the others, so that every runtime
    gives the same numbers (they depend on the count); the report's ``threads`` records it."""
    plugins: list[str] = []
    """Modules (``mymethods``) or files (``lib/mymethods.py``), found next to the config or in the working
    directory, imported first so their registrations run."""
    data: DataConfig = DataConfig()
    """The dataset."""
    partition: PartitionConfig = PartitionConfig()
    """How the columns are split among the parties."""
    model: ModelConfig = ModelConfig()
    """Bottom and top models."""
    train: TrainConfig = TrainConfig()
    """The training recipe of the original model."""
    forget: ForgetConfig = ForgetConfig(kind="class", classes=[0])
    """The forget request."""
    methods: list[MethodSpec] = [MethodSpec(name="retrain"), MethodSpec(name="finetune"), MethodSpec(name="neggrad")]
    """Methods to run: names, ``all``, or ``{name: ..., params: {...}, label: ...}``."""
    parties: dict[str, PartyConfig] = {}
    """Per-party settings, keyed by party id (``party_0`` ... ``party_<K-1>``)."""
    audit: AuditConfig = AuditConfig()
    """The audits and the certificate."""
    flower: FlowerConfig = FlowerConfig()
    """The Flower runtimes."""
    ray: RayConfig = RayConfig()
    """``runtime: ray``."""

    @field_validator("methods", mode="before")
    @classmethod
    def _methods_shorthand(cls, value: Any) -> Any:
        # YAML users write `methods: [retrain, {name: neggrad, params: {lr: 1e-3}}]`, or
        # `methods: all` (every registered method that supports the request kind).
        if value == ALL_METHODS:
            value = [ALL_METHODS]
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _unique_methods(self) -> ExperimentConfig:
        names = [m.model_name for m in self.methods]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"methods lists {', '.join(dup)} more than once; give each a distinct label")
        if ORIGINAL in names:
            raise ValueError("'original' is the trained model, not a method; remove it from methods")
        known = [f"party_{k}" for k in range(self.partition.parties)]
        stray = sorted(set(self.parties) - set(known))
        if stray:
            raise ValueError(
                f"parties.{stray[0]} is not a party of this run; parties are "
                f"{', '.join(known) if len(known) <= 3 else f'{known[0]} ... {known[-1]}'}"
            )
        if self.runtime == "flower-sim" and self.flower.superlink is not None:
            raise ValueError("flower.superlink is for runtime 'flower-deploy'; flower-sim starts its own SuperLink")
        if self.flower.root_certificates is not None and self.flower.superlink is None:
            raise ValueError("flower.root_certificates needs flower.superlink (the TLS SuperLink to trust)")
        need = self.partition.parties * self.ray.party_cpus
        if self.runtime == "ray" and self.ray.num_cpus is not None and self.ray.num_cpus < need:
            raise ValueError(
                f"ray.num_cpus is {self.ray.num_cpus} but the {self.partition.parties} party actors ask for {need:g} "
                "CPUs (partition.parties x ray.party_cpus); raise ray.num_cpus or lower ray.party_cpus"
            )
        return self


# --------------------------------------------------------------------------------------------
# Loading, overrides and error formatting


def _format_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if first["type"] == "extra_forbidden":
        parent = ".".join(str(p) for p in first["loc"][:-1])
        allowed = _allowed_keys(first["loc"][:-1])
        where = f" in {parent}" if parent else ""
        return f"unknown field '{first['loc'][-1]}'{where}; allowed: {', '.join(allowed)}"
    if first["type"] == "string_pattern_mismatch" and first.get("ctx", {}).get("pattern") == NAME_PATTERN:
        msg = "must be one folder name: letters, digits and - _ . = +, not starting with '.'"
    got = first.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    prefix = f"{loc}: " if loc else ""
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{prefix}{msg}{shown}{more}"


def _allowed_keys(loc: Iterable[Any]) -> list[str]:
    model: Any = ExperimentConfig
    keyed = False  # the next part is a key of a mapping of sections (`parties.<party_id>`)
    for part in loc:
        if isinstance(part, int) or keyed:
            keyed = False
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        keyed = get_origin(field.annotation) is dict
        model = _model_in(field.annotation)
    return sorted(getattr(model, "model_fields", {}))


def _model_in(annotation: Any) -> Any:
    """The pydantic model inside an annotation such as ``list[MethodSpec]`` or ``X | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


class DuplicateKeyError(yaml.YAMLError):
    """A key given twice in one YAML mapping (PyYAML would keep the last silently)."""

    def __init__(self, key: Any, line: int) -> None:
        super().__init__(f"line {line}: duplicate key '{key}' (each key may appear once in a mapping)")
        self.key, self.line = key, line


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys in a mapping (merge keys ``<<`` aside)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                dup = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if dup:
                raise DuplicateKeyError(key, key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: the problem and where (PyYAML's own text spans several lines)."""
    if isinstance(exc, DuplicateKeyError):
        return str(exc)
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem:
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        return f"{where}{problem}"
    return " ".join(str(exc).split())


def parse_yaml(text: str) -> Any:
    """YAML text to Python values, refusing duplicate keys (raises ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506  (StrictLoader is a SafeLoader)


def read_yaml(path: str | Path) -> Any:
    """The YAML file at ``path`` parsed (``None`` when empty); a :class:`ConfigError` names the
    file when it is missing, unreadable, not UTF-8 text or not valid YAML."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not a config file")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not a UTF-8 text file (byte {exc.start} is {data[exc.start : exc.start + 1]!r}); "
            "save the config as UTF-8 YAML"
        ) from None
    try:
        return parse_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None


def _parse_scalar(text: str, key: str) -> Any:
    # YAML scalars so that `--set train.lr=1e-3` and `--set forget.classes=[0,1]` behave as in the file.
    try:
        return parse_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key!r}: cannot parse value {text!r} as YAML: {_yaml_problem(exc)}") from None


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides to a raw config mapping (returns a new mapping)."""
    out: dict[str, Any] = deep_copy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (for example train.epochs=5)")
        key, value = item.split("=", 1)
        if not all(key.strip().split(".")):
            raise ConfigError(f"override key {key!r} is empty or has an empty part")
        set_dotted(out, key.strip(), _parse_scalar(value, key.strip()), where=f"override {key!r}")
    return out


def set_dotted(raw: dict[str, Any], key: str, value: Any, *, where: str) -> None:
    """Set the dotted ``key`` of a raw config mapping to ``value`` in place, making sections as
    needed; ``where`` names the source in the error when a part of the key is not a section."""
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: '{part}' is not a section")
        node = child
    node[parts[-1]] = deep_copy(value) if isinstance(value, Mapping) else value


def deep_copy(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a raw (nested) config mapping; lists and scalars are shared."""
    return {k: deep_copy(v) if isinstance(v, Mapping) else v for k, v in raw.items()}


def config_from_dict(raw: Mapping[str, Any], overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Validate a raw mapping (plus dotted overrides) into an :class:`ExperimentConfig`."""
    if not isinstance(raw, Mapping):
        raise ConfigError("the config must be a mapping of sections (data, partition, model, train, ...)")
    merged = apply_overrides(dict(raw), overrides)
    try:
        return ExperimentConfig.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Read a YAML config file and validate it with the overrides applied."""
    raw = read_yaml(path)
    if raw is None:  # deliberately not "every default": an empty file is more likely a mistake
        raise ConfigError(
            f"{path} is empty; write the settings that differ from the defaults (at least `name: my-run`), "
            "or `{}` for every default, or run `vfl-sim demo`"
        )
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: the config must be a mapping of sections (data, partition, model, train, ...)")
    cfg = config_from_dict(raw, overrides)
    # Plugins named by the config are found next to it as well as in the working directory.
    plugins = resolve_plugins(cfg.plugins, Path(path).expanduser().parent)
    return cfg if plugins == cfg.plugins else cfg.model_copy(update={"plugins": plugins})


def dump_config(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML, in a form :func:`load_config` reads back to the same value."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
