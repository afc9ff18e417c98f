"""Frozen, validated experiment configuration.

A config is a tree of small frozen dataclasses, one per concern. It is read
from TOML with :func:`load_config` (or built from a mapping with
:func:`config_from_dict`); every value is checked at the boundary, and a bad
one raises :class:`~privfed.errors.ConfigError` naming the field, the value
found and what is allowed. :func:`config_to_dict` gives back the fully
resolved config (defaults filled in), which a run directory stores as
``config.resolved.toml``.

Range rules live next to each field as dataclass metadata (``ge``, ``gt``,
``le``, ``lt``, ``choices``, ``off`` for a value that switches a feature off
and skips the bounds, ``text`` for a short printable name), so adding a field
is one line. A strategy or adapter method with settings of its own registers a
small config class of the same kind with its factory (:mod:`privfed.config_fields`);
its table sits inside its section (``[server.fedadam]``, ``[adapter.lora]``) and
the selected method's instance is ``ServerConfig.strategy_config`` /
``AdapterConfig.method_config``. The registries never import this module, and
this module reads them only while validating (no import cycle). Keys that moved
into a method's table (``server.beta1``, ``adapter.rank``, ...) are still read
where older configs and run directories set them, with a ``DeprecationWarning``.

A config *file* must set ``name``: an empty or truncated file would otherwise
start a long run with every default.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import tomllib
import types
import typing
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import tomli_w

from privfed.config_fields import config_field
from privfed.config_fields import config_field as _f
from privfed.errors import ConfigError

__all__ = [
    "AdapterConfig",
    "ClientConfig",
    "CompressionConfig",
    "DataConfig",
    "EvalConfig",
    "ExperimentConfig",
    "ModelConfig",
    "PartitionConfig",
    "PrivacyConfig",
    "RunConfig",
    "SampleDPConfig",
    "SecAggConfig",
    "ServerConfig",
    "TrackingConfig",
    "TransportConfig",
    "UserDPConfig",
    "apply_overrides",
    "check_section",
    "config_field",
    "config_from_dict",
    "config_to_dict",
    "dump_config",
    "load_config",
    "method_tables",
    "parse_override",
    "read_config_file",
    "replace_path",
    "replace_paths",
    "required_positions",
    "schema_fields",
    "section_from_dict",
    "validate_against_model",
]


def _choices_from(registry_names: Callable[[], Iterable[str]]) -> Callable[[], tuple[str, ...]]:
    return lambda: tuple(sorted(registry_names()))


def _model_names() -> Iterable[str]:
    from privfed.models.registry import model_names

    return model_names()


def _dataset_names() -> Iterable[str]:
    from privfed.data.registry import dataset_names

    return dataset_names()


def _adapter_names() -> Iterable[str]:
    from privfed.adapters.methods import adapter_method_names

    return adapter_method_names()


def _strategy_names() -> Iterable[str]:
    from privfed.server.strategies import strategy_names

    return strategy_names()


def _transport_names() -> Iterable[str]:
    import importlib

    importlib.import_module("privfed.transport")  # registers the built-in transports
    from privfed.transport.base import transport_names

    return transport_names()


def _strategy_section(name: str) -> tuple[str, type[Any]] | None:
    from privfed.server.strategies import strategy_config_class, strategy_names

    if name not in strategy_names():
        return None
    cls = strategy_config_class(name)
    return None if cls is None else (name, cls)


def _adapter_section(name: str) -> tuple[str, type[Any]] | None:
    from privfed.adapters.methods import adapter_config_section, adapter_method_names

    return adapter_config_section(name) if name in adapter_method_names() else None


def _tracker_names() -> Iterable[str]:
    from privfed.tracking import tracker_names

    return tracker_names()


def _partition_names() -> Iterable[str]:
    from privfed.data.partition import partitioner_names

    return partitioner_names()


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which frozen base model to fine-tune (an entry of the model registry)."""

    name: str = _f("minilm", choices=_choices_from(_model_names))
    max_length: int = _f(128, ge=8, le=4096)
    # Where the model trains and evaluates. "cuda" needs a visible GPU (checked when a run
    # starts); numbers from a GPU are not bit-identical to the CPU's for the same seed.
    device: str = _f("cpu", choices=lambda: ("cpu", "cuda"))


# Suffixes of the table files ``data.path`` reads (privfed.data.files).
_DATA_FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")
_HF_PREFIX = "hf:"
_DEFAULT_DATASET = "bbc_news"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which dataset to use and how to hold part of it out for evaluation.

    The data is one of: a registered offline dataset (``name``, see ``privfed
    datasets``); a Hugging Face ``datasets`` dataset saved with ``save_to_disk``
    (``name = "hf:<dir>"``, read offline); or a local ``.csv``, ``.tsv``,
    ``.jsonl`` or ``.parquet`` file (``path``; ``name`` is then only a label,
    by default the file's name without its suffix). The last two read the
    ``text_column``, ``label_column`` and, if set, ``client_column`` (one natural
    group per value, for ``partition.method = "natural"``). A relative ``path``
    or ``hf:`` directory is relative to the working directory.
    """

    name: str = _f(
        _DEFAULT_DATASET,
        text=True,
        help="Registered dataset (`privfed datasets`), or `hf:<dir>` for a Hugging Face dataset saved with "
        "`save_to_disk`; with `data.path`, only a label (default: the file's name).",
    )
    path: str = _f("", help="A local `.csv`, `.tsv`, `.jsonl` or `.parquet` file to use instead; empty = none.")
    text_column: str = _f("text", text=True, help="Column holding each example's text (`data.path`, `hf:`).")
    label_column: str = _f(
        "label", text=True, help="Column holding each example's class, text or integer (`data.path`, `hf:`)."
    )
    client_column: str = _f(
        "",
        help='Column naming each example\'s client, for `partition.method = "natural"`; empty = none.',
    )
    eval_fraction: float = _f(0.2, gt=0.0, lt=1.0)
    max_train_examples: int = _f(0, ge=0)  # 0 = use every training example
    max_eval_examples: int = _f(0, ge=0)  # 0 = use every held-out example

    @property
    def hf_dir(self) -> str | None:
        """The directory of ``name = "hf:<dir>"``, else ``None``."""
        return self.name[len(_HF_PREFIX) :] if self.name.startswith(_HF_PREFIX) else None

    @property
    def user_data(self) -> bool:
        """Whether the data comes from the user's file or saved dataset (not the registry)."""
        return bool(self.path) or self.hf_dir is not None

    def __post_init__(self) -> None:
        if self.path:
            _check_data_path(self.path)
            if self.hf_dir is not None:
                raise ConfigError(
                    f"data.name {_short(self.name)} and data.path {_short(self.path)} both say where the data "
                    "is; set one of them"
                )
            if self.name == _DEFAULT_DATASET:  # not set: label the data after its file
                stem = Path(self.path).stem
                label = stem if 1 <= len(stem) <= _MAX_TEXT and stem.isprintable() else "file"
                object.__setattr__(self, "name", label)
        elif self.hf_dir is not None:
            if not self.hf_dir.strip():
                raise ConfigError(f"data.name 'hf:<dir>' needs the directory after 'hf:'; got {_short(self.name)}")
        else:
            allowed = tuple(sorted(_dataset_names()))
            if self.name not in allowed:
                raise ConfigError(
                    f"data.name must be one of {', '.join(map(repr, allowed))}, or 'hf:<dir>' for a saved Hugging "
                    f"Face dataset (or set data.path to a file); got {_short(self.name)}"
                )
            if self.client_column:
                raise ConfigError(
                    f"data.client_column applies only to data.path or data.name = 'hf:<dir>' (data.name "
                    f"{self.name!r} brings its own groups); got {_short(self.client_column)}"
                )
        if self.client_column and not (len(self.client_column) <= _MAX_TEXT and self.client_column.isprintable()):
            raise ConfigError(
                f"data.client_column must be printable text or '' (none); got {_short(self.client_column)}"
            )
        if self.text_column in (self.label_column, self.client_column):
            other = "label_column" if self.text_column == self.label_column else "client_column"
            raise ConfigError(
                f"data.text_column and data.{other} must be different columns; both are {_short(self.text_column)}"
            )


def _check_data_path(path: str) -> None:
    if not (len(path) <= 4096 and path.isprintable()):
        raise ConfigError(f"data.path must be a printable file path of at most 4096 characters; got {_short(path)}")
    if not path.lower().endswith(_DATA_FILE_SUFFIXES):
        raise ConfigError(f"data.path must end in {', '.join(_DATA_FILE_SUFFIXES)}; got {_short(path)}")


@dataclasses.dataclass(frozen=True)
class PartitionConfig:
    """How training examples are split among clients."""

    method: str = _f("iid", choices=_choices_from(_partition_names))
    num_clients: int = _f(10, ge=1, le=1_000_000)
    # Dirichlet concentration (dirichlet only). Below 1e-3 every class lands on one client
    # (0.01 already does, up to rounding); above 1e3 the split is IID: use method = "iid".
    alpha: float = _f(0.5, ge=1e-3, le=1e3)
    # shards only; whether num_clients * shards_per_client shards fit the data is checked
    # against the training set when it is partitioned.
    shards_per_client: int = _f(2, ge=1, le=100_000)
    min_examples_per_client: int = _f(1, ge=1)


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
    """The PEFT method; only its parameters are trained.

    A method's own settings are in its table (``[adapter.lora]``,
    ``[adapter.prompt_tuning]``, ...; below), which its registration names. In
    Python: ``AdapterConfig(method="lora", method_config=LoraAdapterConfig(rank=4))``;
    ``method_config`` left out means the method's defaults.
    """

    method: str = _f("lora", choices=_choices_from(_adapter_names), sections=_adapter_section)
    train_head: bool = _f(True)  # classification head trained with the adapter
    # The selected method's settings (an instance of its registered config class), or None for a
    # method without settings. Tables given for other methods are kept (validated) in other_method_configs,
    # so a sweep or --set that changes the method uses them.
    method_config: Any = dataclasses.field(default=None, metadata={"method_config": "method"})
    other_method_configs: tuple[tuple[str, Any], ...] = dataclasses.field(
        default=(), metadata={"other_method_configs": "method"}
    )

    def __post_init__(self) -> None:
        _settle_method_configs(self, "adapter", "method", "method_config", "other_method_configs")


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """Local training on each selected client."""

    local_epochs: int = _f(1, ge=1, le=1000)
    local_steps: int = _f(0, ge=0)  # > 0: exactly this many steps instead of epochs
    batch_size: int = _f(16, ge=1, le=65536)
    learning_rate: float = _f(1e-3, gt=0.0, le=10.0)
    optimizer: str = _f("adamw", choices=lambda: ("adamw", "sgd"))
    weight_decay: float = _f(0.0, ge=0.0)
    max_grad_norm: float = _f(0.0, ge=0.0)  # 0 = no clipping of the batch gradient
    # > 0: each client's (expected) batch is this fraction of its examples instead of
    # batch_size, so under record-level DP every client has the same Poisson rate and
    # spends the same epsilon, and clients with more data average over larger batches.
    sampling_rate: float = _f(0.0, ge=0.0, le=1.0)


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Round orchestration and the server optimizer over aggregated deltas.

    A strategy's own settings are in its table (``[server.fedadam]``, ...;
    below). In Python: ``ServerConfig(strategy="fedadam", strategy_config=FedAdamConfig(beta1=0.8))``.
    """

    strategy: str = _f("fedavg", choices=_choices_from(_strategy_names), sections=_strategy_section)
    rounds: int = _f(5, ge=1, le=1_000_000)
    clients_per_round: int = _f(10, ge=1)
    learning_rate: float = _f(1.0, gt=0.0, le=100.0)
    weighting: str = _f("examples", choices=lambda: ("examples", "uniform"))
    # As AdapterConfig.method_config / other_method_configs, for the strategy.
    strategy_config: Any = dataclasses.field(default=None, metadata={"method_config": "strategy"})
    other_strategy_configs: tuple[tuple[str, Any], ...] = dataclasses.field(
        default=(), metadata={"other_method_configs": "strategy"}
    )

    def __post_init__(self) -> None:
        _settle_method_configs(self, "server", "strategy", "strategy_config", "other_strategy_configs")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation of the global adapter."""

    every: int = _f(1, ge=1)  # evaluate every this many rounds (and after the last)
    batch_size: int = _f(32, ge=1, le=65536)


@dataclasses.dataclass(frozen=True)
class TransportConfig:
    """How messages move between server and clients."""

    kind: str = _f("simulation", choices=_choices_from(_transport_names))  # a registered transport
    # Distributed engines (Flower): seconds to wait for the replies of one exchange; a node
    # that has not answered by then counts as dropped for the rest of the round.
    reply_timeout: float = _f(120.0, gt=0.0, le=86400.0)
    # Flower Simulation Engine: Ray resources reserved per client (a fraction of a GPU is allowed).
    num_cpus: float = _f(1.0, gt=0.0, le=1024.0)
    num_gpus: float = _f(0.0, ge=0.0, le=64.0)  # Ray GPUs per client; a fraction shares one GPU


@dataclasses.dataclass(frozen=True)
class SecAggConfig:
    """Secure aggregation (SecAgg+) of quantized client updates.

    The server learns only the sum of the surviving clients' updates. Updates
    are clipped per coordinate to ``[-clip, clip]`` and stochastically rounded
    to fixed point modulo ``2**bits`` with room for a full cohort.
    """

    enabled: bool = _f(False)
    bits: int = _f(32, ge=2, le=52)  # modulus 2**bits; must hold a sum of the whole cohort; float64-exact up to 52
    # Per-coordinate range of a client's delta. Bounded so that the codec's scale
    # (2**(bits-1) - 1) / (summands * clip) is a positive finite number for every bits and
    # cohort a config accepts (1e308 used to make it 0 and the model NaN).
    clip: float = _f(1.0, ge=1e-6, le=1e6)
    # Range of the (securely summed) local training loss; the same range carries the
    # "unclipped" indicator under user-level DP, so it must hold a bit of size 1.
    loss_clip: float = _f(100.0, ge=1.0, le=1e6)
    degree: int = _f(0, ge=0)  # neighbours per client; 0 = about 2*log2(cohort); cohort-1 = classic SecAgg
    threshold: int = _f(0, ge=0)  # Shamir threshold; 0 = strict majority of each neighbourhood
    dropout_rate: float = _f(0.0, ge=0.0, lt=1.0)  # injected: chance a client drops before each stage

    def resolved_degree(self, cohort: int) -> int:
        from privfed.secagg.graph import recommended_degree

        return min(self.degree or recommended_degree(cohort), cohort - 1)

    def resolved_threshold(self, cohort: int, *, clamp: bool = False) -> int:
        """The Shamir threshold for a cohort: more than half of each neighbourhood (degree + 1).

        A lower one lets a server that splits its unmask requests recover one
        client's input, so clients refuse it (Bonawitz et al. 2017, App. A;
        Bell et al. 2020). With ``clamp`` (rounds whose Poisson cohort differs
        from ``clients_per_round``) an explicit threshold is moved into
        ``[holders // 2 + 1, holders]`` instead of raising.

        Raises:
            ConfigError: an explicit threshold at or below half of the neighbourhood.
        """
        holders = self.resolved_degree(cohort) + 1
        minimum = holders // 2 + 1
        if not self.threshold:
            return minimum
        if clamp:
            return min(max(self.threshold, minimum), holders)
        if self.threshold < minimum:
            raise ConfigError(
                f"secagg.threshold must exceed half of secagg.degree + 1 ({holders}), i.e. be at least "
                f"{minimum}, or 0 for that minimum; got {self.threshold}"
            )
        return self.threshold


@dataclasses.dataclass(frozen=True)
class CompressionConfig:
    """Upload compression: stages between a client's delta and the wire (issue 16).

    Under secure aggregation the stages run before the masks (``secagg.bits`` is the
    code width and ``secagg.clip`` the per-coordinate range); without it they make
    plain uploads smaller (``bits`` and ``clip`` below). Decoding is the server's.
    """

    # Randomized Hadamard rotation (public per-round signs, zero padding to a power of two)
    # before quantization: flattens the coordinates so a small per-coordinate range rarely clips.
    rotation: bool = _f(False)
    # Fraction of coordinates not uploaded (after rotation). 0 = upload all.
    sparsity: float = _f(0.0, ge=0.0, lt=1.0)
    # How the kept coordinates are chosen: "random" (one shared subset per round for every
    # client, unbiased, works with SecAgg) or "topk" (each client's largest; plain uploads only).
    sparsify: str = _f("random", choices=lambda: ("random", "topk"))
    # Plain uploads only: code width in bits per coordinate (2..32), 0 = float32 values.
    bits: int = _f(0, off=0, ge=2, le=32)
    # Plain uploads with bits: per-coordinate range of the delta (values beyond are clipped).
    clip: float = _f(1.0, ge=1e-6, le=1e6)
    # Conditional randomized rounding (Kairouz, Liu, Steinke 2021): re-draw the rounding until the
    # rounded delta's L2 norm is within a bound much tighter than the worst case, which the user-level
    # DP sensitivity then uses. Needs secagg.enabled and user-level DP (a known L2 clip).
    conditional_rounding: bool = _f(False)


# epsilon above 100 bounds the likelihood ratio by e**100 (~1e43): no protection at all, and
# calibrating to it gives a noise multiplier near 1e-9 whose reported epsilon is ~1e18.
_MAX_EPSILON = 100.0
# Noise multipliers: above 1e4 epsilon no longer moves (the RDP bound is flat from ~1e3 on,
# and calibration searches below 1e4); huge values overflow the accountants (1e308 raised
# OverflowError) and tiny ones divide by zero in them (1e-200). 1e-6 still accounts fine.
_MIN_NOISE = 1e-6
_MAX_NOISE = 1e4


def _accountant_names() -> Iterable[str]:
    from privfed.privacy.accountants import accountant_names

    return accountant_names()


@dataclasses.dataclass(frozen=True)
class SampleDPConfig:
    """Record-level DP-SGD on each client (Opacus), over the adapter parameters only.

    Give ``target_epsilon`` (sigma is calibrated so that a client taking part in
    every round stays within it), or ``noise_multiplier``, or both (then the
    target is only the budget at which the run stops).
    """

    noise_multiplier: float = _f(0.0, off=0.0, ge=_MIN_NOISE, le=_MAX_NOISE)  # 0 = calibrate from the target
    target_epsilon: float = _f(0.0, off=0.0, gt=0.0, le=_MAX_EPSILON)  # the per-client budget (0 = none)
    max_grad_norm: float = _f(1.0, gt=0.0)
    grad_sample_mode: str = _f("hooks", choices=lambda: ("hooks", "ghost"))  # ghost clipping saves memory


@dataclasses.dataclass(frozen=True)
class UserDPConfig:
    """User-level DP-FedAvg: clip each client delta to ``clip_norm``, Gaussian noise on the sum.

    Clients are Poisson-sampled with rate clients_per_round / num_clients (so
    the accounting is exact); the noised sum is divided by the expected cohort.
    ``noise_multiplier`` / ``target_epsilon`` work as in :class:`SampleDPConfig`.
    """

    noise_multiplier: float = _f(0.0, off=0.0, ge=_MIN_NOISE, le=_MAX_NOISE)  # 0 = calibrate from the target
    target_epsilon: float = _f(0.0, off=0.0, gt=0.0, le=_MAX_EPSILON)  # the budget the ledger enforces (0 = none)
    clip_norm: float = _f(0.1, gt=0.0, le=1e6)
    adaptive_clipping: bool = _f(False)
    target_quantile: float = _f(0.5, gt=0.0, lt=1.0)
    clip_learning_rate: float = _f(0.2, gt=0.0)
    count_stddev: float = _f(0.0, ge=0.0)  # 0 = expected cohort / 20 (Andrew et al. 2021)
    # Who adds the noise: "central" (the server, to the decoded sum: it sees the noiseless sum),
    # "distributed_gaussian" (each client adds its share of discrete Gaussian noise to its integer
    # vector before the SecAgg masks; Kairouz, Liu, Steinke 2021) or "skellam" (Agarwal, Kairouz,
    # Liu 2021). The distributed ones need secagg.enabled: nothing the server decodes is noiseless.
    mechanism: str = _f("central", choices=lambda: ("central", "distributed_gaussian", "skellam"))


@dataclasses.dataclass(frozen=True)
class PrivacyConfig:
    """Which DP guarantees to give and how to account them."""

    mode: str = _f("none", choices=lambda: ("none", "sample", "user", "both"))
    delta: float = _f(1e-5, gt=0.0, lt=1.0)
    accountant: str = _f("rdp", choices=_choices_from(_accountant_names))
    secure_noise: bool = _f(False)  # draw DP noise from the OS CSPRNG (not reproducible)
    sample: SampleDPConfig = dataclasses.field(default_factory=SampleDPConfig)
    user: UserDPConfig = dataclasses.field(default_factory=UserDPConfig)

    @property
    def sample_level(self) -> bool:
        return self.mode in ("sample", "both")

    @property
    def user_level(self) -> bool:
        return self.mode in ("user", "both")


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
    """Experiment tracking: metrics mirrored to a tracker once per round and once per run.

    The run directory stays the source of truth; a tracker only gets a copy. The
    backends are optional extras (``pip install privfed[tracking]``).
    """

    # "none", "tensorboard" (event files), "mlflow" (a local file store; no server) or a
    # tracker registered with privfed.register_tracker.
    backend: str = _f("none", choices=_choices_from(_tracker_names))
    # Where the tracker writes; empty = <run dir>/tensorboard or <run dir>/mlruns.
    dir: str = _f("", help="Directory the tracker writes to; empty = inside the run directory.")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Run-directory housekeeping."""

    checkpoint_every: int = _f(1, ge=1)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """The whole experiment. ``seed`` drives every random draw of the run."""

    name: str = _f("experiment", text=True)
    seed: int = _f(0, ge=0, lt=2**63)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    partition: PartitionConfig = dataclasses.field(default_factory=PartitionConfig)
    adapter: AdapterConfig = dataclasses.field(default_factory=AdapterConfig)
    client: ClientConfig = dataclasses.field(default_factory=ClientConfig)
    server: ServerConfig = dataclasses.field(default_factory=ServerConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    transport: TransportConfig = dataclasses.field(default_factory=TransportConfig)
    secagg: SecAggConfig = dataclasses.field(default_factory=SecAggConfig)
    compression: CompressionConfig = dataclasses.field(default_factory=CompressionConfig)
    privacy: PrivacyConfig = dataclasses.field(default_factory=PrivacyConfig)
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        if self.server.clients_per_round > self.partition.num_clients:
            raise ConfigError(
                "server.clients_per_round must be between 1 and partition.num_clients "
                f"({self.partition.num_clients}); got {self.server.clients_per_round}"
            )
        if self.secagg.enabled:
            self._check_secagg()
            self._check_secagg_codec()
        self._check_privacy()
        self._check_compression()
        self._check_model_positions()

    def _check_compression(self) -> None:
        c, secure = self.compression, self.secagg.enabled
        if secure and c.sparsify == "topk" and c.sparsity > 0:
            raise ConfigError(
                "compression.sparsify = 'topk' cannot be used with secagg.enabled: each client would keep different "
                "coordinates, so the masked vectors would not line up for the secure sum; use 'random' (one shared "
                "subset per round)"
            )
        if secure and c.bits:
            raise ConfigError(
                f"compression.bits is for plain uploads; under secagg.enabled the code width is secagg.bits; "
                f"got compression.bits = {c.bits}"
            )
        if c.conditional_rounding and not (secure and self.privacy.user_level):
            raise ConfigError(
                "compression.conditional_rounding needs secagg.enabled and user-level DP (privacy.mode 'user' or "
                "'both'): it bounds the rounded norm of an L2-clipped update"
            )

    def _check_model_positions(self) -> None:
        from privfed.models.registry import get_model_spec

        limit = get_model_spec(self.model.name).max_positions
        if limit is not None:
            _check_positions(self, limit, source=f"model {self.model.name!r}")

    def _check_secagg_codec(self) -> None:
        """The fixed-point codec must hold the whole sum with at least one step per client.

        Mirrors ``privfed.server`` : the codec leaves room for ``num_clients`` summands under
        user-level DP (Poisson cohorts can exceed clients_per_round), else for the cohort.
        """
        s = self.secagg
        user_level = self.privacy.user_level
        summands = self.partition.num_clients if user_level else self.server.clients_per_round
        top = 2 ** (s.bits - 1) - 1
        if top < summands:
            needed = (summands).bit_length() + 1
            who = "partition.num_clients under user-level DP" if user_level else "server.clients_per_round"
            raise ConfigError(
                f"secagg.bits must be at least {needed} to sum {summands} clients ({who}) without "
                f"wrapping, with one fixed-point step per client; got {s.bits}"
            )
        for field, clip in (("clip", s.clip), ("loss_clip", s.loss_clip)):
            scale = top / (summands * clip)
            if not (math.isfinite(scale) and scale > 0):  # pragma: no cover - the field bounds prevent it
                raise ConfigError(
                    f"secagg.{field} = {clip!r} gives fixed-point scale {scale!r} at {s.bits} bits and "
                    f"{summands} summands; it must be a positive finite number"
                )

    def _check_privacy(self) -> None:
        p = self.privacy
        for level, section in (("sample", p.sample), ("user", p.user)):
            wanted = p.sample_level if level == "sample" else p.user_level
            if wanted and section.noise_multiplier == 0 and section.target_epsilon == 0:
                raise ConfigError(
                    f"privacy.{level} needs noise_multiplier > 0 or target_epsilon > 0 (privacy.mode is "
                    f"{p.mode!r}); got neither"
                )
        if p.user.mechanism != "central" and not (p.user_level and self.secagg.enabled):
            raise ConfigError(
                f"privacy.user.mechanism = {p.user.mechanism!r} needs privacy.mode 'user' or 'both' and "
                "secagg.enabled: each client adds only a share of the noise, so without secure aggregation "
                "the server would see every upload almost noiseless; use 'central' instead"
            )
        if p.user_level and p.user.mechanism != "central" and p.user.adaptive_clipping:
            raise ConfigError(
                f"privacy.user.adaptive_clipping is not implemented yet with privacy.user.mechanism = "
                f"{p.user.mechanism!r} (the unclipped count would need its own distributed noise); use a fixed "
                "clip_norm"
            )
        if p.user_level and p.delta >= 1 / self.partition.num_clients:
            raise ConfigError(
                f"privacy.delta must be < 1/partition.num_clients ({1 / self.partition.num_clients:g}) "
                f"for user-level DP; got {p.delta:g}"
            )

    def _check_secagg(self) -> None:
        s, cohort = self.secagg, self.server.clients_per_round
        if cohort < 3:
            raise ConfigError(f"secagg needs server.clients_per_round >= 3; got {cohort}")
        if self.server.weighting != "uniform":
            raise ConfigError(
                "secagg.enabled needs server.weighting = 'uniform' (the server sees only the sum, "
                f"so it cannot weight clients by example count); got {self.server.weighting!r}"
            )
        degree = s.resolved_degree(cohort)
        if degree < cohort - 1 and (degree < 2 or degree % 2):
            raise ConfigError(
                "secagg.degree must be even and >= 2, or >= server.clients_per_round - 1 "
                f"({cohort - 1}); got {s.degree}"
            )
        threshold = s.resolved_threshold(cohort)
        if not 2 <= threshold <= degree + 1:
            raise ConfigError(
                f"secagg.threshold must be between 2 and secagg.degree + 1 ({degree + 1}); got {s.threshold}"
            )


_T = TypeVar("_T")

# Keys that moved from [server] / [adapter] into one method's table. Config files and run
# directories written before still set them there; they are read with a DeprecationWarning
# naming the new key (see _migrate_moved_keys).
_MOVED_KEYS: dict[type, tuple[str, ...]] = {
    ServerConfig: ("beta1", "beta2", "tau"),
    AdapterConfig: ("rank", "alpha", "dropout", "target_modules", "num_virtual_tokens"),
}

_SectionLookup = Callable[[str], "tuple[str, type] | None"]


def _method_selector(cls: type) -> tuple[str, _SectionLookup] | None:
    """``(selector field, lookup)`` of a section with method tables (``server.strategy``), else ``None``."""
    for field in dataclasses.fields(cls):
        if "sections" in field.metadata:
            return field.name, field.metadata["sections"]
    return None


def _is_holder(field: dataclasses.Field[Any]) -> bool:
    """Whether a field holds method tables (not a TOML key of its own)."""
    return "method_config" in field.metadata or "other_method_configs" in field.metadata


def schema_fields(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    """The fields of a config section that are keys (or sub-tables) in a config file.

    Leaves out the fields that hold method tables (``ServerConfig.strategy_config``, ...):
    those are written as ``[server.<strategy>]`` tables, see :func:`method_tables`.
    """
    return tuple(f for f in dataclasses.fields(cls) if not _is_holder(f))


def _holders(cls: type) -> tuple[str, str] | None:
    """Names of the fields holding the selected method's config and the other tables."""
    selected = [f.name for f in dataclasses.fields(cls) if "method_config" in f.metadata]
    others = [f.name for f in dataclasses.fields(cls) if "other_method_configs" in f.metadata]
    return (selected[0], others[0]) if selected and others else None


def method_tables(cls: type) -> dict[str, type]:
    """The method tables a config section may hold, as registered now: ``{table name: config class}``.

    ``method_tables(ServerConfig)`` is ``{"fedadam": FedAdamConfig}`` with the built-in strategies;
    a section without method tables gives ``{}``.
    """
    selector = _method_selector(cls)
    if selector is None:
        return {}
    name, lookup = selector
    choices = next(f for f in dataclasses.fields(cls) if f.name == name).metadata["choices"]
    tables: dict[str, type] = {}
    for method in choices():
        found = lookup(method)
        if found is not None:
            tables.setdefault(found[0], found[1])
    return dict(sorted(tables.items()))


def _settle_method_configs(self: Any, prefix: str, selector: str, config_attr: str, others_attr: str) -> None:
    """Normalise a section's method tables: the selected method's config (its defaults when not given)
    in ``config_attr``, every other table, sorted, in ``others_attr``; check each has its method's class."""
    cls = type(self)
    lookup: _SectionLookup = next(f for f in dataclasses.fields(cls) if f.name == selector).metadata["sections"]
    method = getattr(self, selector)
    given = getattr(self, config_attr)
    pairs = getattr(self, others_attr)
    try:
        others = {name: value for name, value in pairs}
    except (TypeError, ValueError):
        raise ConfigError(f"{prefix}.{others_attr} must be (table name, config) pairs; got {_short(pairs)}") from None
    if len(others) != len(pairs):
        raise ConfigError(f"{prefix}.{others_attr} names a table twice; got {_short(pairs)}")
    tables = method_tables(cls)
    for name, value in others.items():
        if name not in tables:
            raise ConfigError(_unknown_section(cls, prefix, name))
        if not isinstance(value, tables[name]):
            raise ConfigError(f"{prefix}.{name} must be a {tables[name].__name__}; got {_describe(value)}")
    found = lookup(method) if isinstance(method, str) else None
    if found is None:
        if given is not None:
            raise ConfigError(
                f"{prefix}.{config_attr}: {prefix}.{selector} {method!r} has no settings of its own; "
                f"got {_describe(given)}"
            )
    else:
        section, section_cls = found
        if given is None:
            given = others.pop(section, None)
            given = section_cls() if given is None else given
        elif not isinstance(given, section_cls):
            raise ConfigError(
                f"{prefix}.{config_attr} must be a {section_cls.__name__} for {prefix}.{selector} {method!r}; "
                f"got {_describe(given)}"
            )
        elif others.pop(section, given) != given:
            raise ConfigError(f"{prefix}.{section} is given twice ({config_attr} and {others_attr}); give it once")
        object.__setattr__(self, config_attr, given)
    object.__setattr__(self, others_attr, tuple(sorted(others.items())))


def _unknown_section(cls: type, prefix: str, name: str) -> str:
    keys = ", ".join(sorted(f.name for f in dataclasses.fields(cls) if not _is_holder(f)))
    tables = ", ".join(method_tables(cls)) or "none"
    dotted = f"{prefix}.{name}" if prefix else name
    return f"unknown config section {dotted}; allowed keys: {keys}; method tables: {tables}"


def _migrate_moved_keys(cls: type, raw: Mapping[str, Any], prefix: str) -> Mapping[str, Any]:
    """Move the old flat keys of a section (``server.beta1``) into the selected method's table.

    A key the selected method does not use is checked as before and dropped (it was ignored
    before too). One DeprecationWarning per section names the new keys.
    """
    moved = [key for key in _MOVED_KEYS.get(cls, ()) if key in raw]
    selector = _method_selector(cls)
    if not moved or selector is None:
        return raw
    selector_name, lookup = selector
    out = dict(raw)
    default = next(f for f in dataclasses.fields(cls) if f.name == selector_name).default
    method = out.get(selector_name, default)
    found = lookup(method) if isinstance(method, str) else None  # None for an unknown method (refused later)
    tables = method_tables(cls)
    notes: list[str] = []
    for key in moved:
        value = out.pop(key)
        if found is not None and key in {f.name for f in dataclasses.fields(found[1])}:
            section = found[0]
            table = out.get(section, {})
            if not isinstance(table, Mapping):
                raise ConfigError(f"{prefix}.{section} must be a table; got {_describe(table)}")
            if key in table:
                raise ConfigError(
                    f"{prefix}.{key} and {prefix}.{section}.{key} are both set; keep {prefix}.{section}.{key} "
                    f"({prefix}.{key} is where older configs set it)"
                )
            out[section] = {**table, key: value}
            notes.append(f"{prefix}.{key} -> {prefix}.{section}.{key}")
        else:
            home = next((name for name, c in tables.items() if key in {f.name for f in dataclasses.fields(c)}), None)
            if home is not None:  # checked as it was before the move, then dropped
                field = next(f for f in dataclasses.fields(tables[home]) if f.name == key)
                checked = _coerce(f"{prefix}.{key}", value, _type_hints(tables[home])[key])
                _check_rules(f"{prefix}.{key}", checked, field.metadata)
            notes.append(f"{prefix}.{key} ignored ({prefix}.{selector_name} {method!r} does not use it)")
    warnings.warn(
        f"[{prefix}] keys of one method are deprecated; set them in the method's table "
        f"([{prefix}.<method>]): {'; '.join(notes)}",
        DeprecationWarning,
        stacklevel=4,
    )
    return out


def _virtual_tokens(config: ExperimentConfig) -> int:
    """Trainable virtual tokens the adapter method prepends to every sequence (its ``num_virtual_tokens``)."""
    tokens = getattr(config.adapter.method_config, "num_virtual_tokens", 0)
    return tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else 0


def _virtual_tokens_key(config: ExperimentConfig) -> str:
    found = _adapter_section(config.adapter.method)
    return f"adapter.{found[0] if found else config.adapter.method}.num_virtual_tokens"


def required_positions(config: ExperimentConfig) -> int:
    """Positions one sequence can occupy: ``model.max_length``, plus the adapter's virtual tokens (prompt tuning)."""
    return config.model.max_length + _virtual_tokens(config)


def _check_positions(config: ExperimentConfig, limit: int, *, source: str) -> None:
    needed = required_positions(config)
    if needed <= limit:
        return
    if needed == config.model.max_length:
        raise ConfigError(
            f"model.max_length must be <= {limit} ({source} has {limit} positions); got {config.model.max_length}"
        )
    raise ConfigError(
        f"model.max_length + {_virtual_tokens_key(config)} must be <= {limit} ({source} has {limit} positions); "
        f"got {config.model.max_length} + {_virtual_tokens(config)} = {needed}"
    )


def validate_against_model(config: ExperimentConfig, model: Any) -> None:
    """Check ``config`` against a loaded ``transformers`` model, before any training.

    Registered models that declare ``ModelSpec.max_positions`` are checked when the
    config is built; this covers the others, from the model's own config
    (``max_position_embeddings``, or ``n_positions`` for GPT-2-style models).

    Raises:
        ConfigError: ``model.max_length`` (plus prompt-tuning virtual tokens) exceeds
            the model's positions.
    """
    model_config = getattr(model, "config", None)
    for attribute in ("max_position_embeddings", "n_positions"):
        limit = getattr(model_config, attribute, None)
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            _check_positions(config, limit, source=f"model {config.model.name!r}")
            return


_MAX_TEXT = 200


def _short(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: error messages stay one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(value: object) -> str:
    return f"{_short(value)} ({type(value).__name__})"


def _check_rules(path: str, value: Any, rules: Mapping[str, Any]) -> None:
    if rules.get("text") and not (1 <= len(value) <= _MAX_TEXT and value.isprintable()):
        raise ConfigError(
            f"{path} must be 1 to {_MAX_TEXT} printable characters (no newlines or control characters); "
            f"got {_short(value)}"
        )
    if "choices" in rules:
        allowed = tuple(rules["choices"]())
        if value not in allowed:
            raise ConfigError(f"{path} must be one of {', '.join(map(repr, allowed))}; got {_short(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{path} must be a finite number; got {value!r}")
    if "off" in rules and value == rules["off"]:
        return
    bounds = []
    ok = True
    for key, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if key in rules:
            bound = rules[key]
            bounds.append(f"{symbol} {bound}")
            ok = ok and {"ge": value >= bound, "gt": value > bound, "le": value <= bound, "lt": value < bound}[key]
    if not ok:
        off = f"{rules['off']!r} (off) or " if "off" in rules else ""
        raise ConfigError(f"{path} must be {off}{' and '.join(bounds)}; got {value!r}")


def _coerce(path: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field's type; return it in canonical form."""
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path} must be a table; got {_describe(value)}")
        return _from_mapping(annotation, value, path)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false; got {_describe(value)}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be an integer; got {_describe(value)}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number; got {_describe(value)}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string; got {_describe(value)}")
        return value
    origin = typing.get_origin(annotation)
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(annotation)
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list; got {_describe(value)}")
        return tuple(_coerce(f"{path}[{i}]", item, item_type) for i, item in enumerate(value))
    if origin in (typing.Union, types.UnionType):  # pragma: no cover - no optional fields yet
        raise TypeError(f"unsupported config annotation at {path}: {annotation}")
    raise TypeError(f"unsupported config annotation at {path}: {annotation}")


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """Resolved field annotations of a config class (resolving them is most of a load's cost)."""
    return typing.get_type_hints(cls)


def _from_mapping(cls: type[_T], raw: Mapping[str, Any], prefix: str = "") -> _T:
    assert dataclasses.is_dataclass(cls)
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not _is_holder(f)}
    holders = _holders(cls)
    if cls in _MOVED_KEYS:
        raw = _migrate_moved_keys(cls, raw, prefix)
    sections = method_tables(cls) if holders else {}
    tables = {k: v for k, v in raw.items() if k not in fields and k in sections}
    unknown = sorted(set(raw) - set(fields) - set(tables))
    if unknown:
        if holders and isinstance(raw[unknown[0]], Mapping):
            raise ConfigError(_unknown_section(cls, prefix, unknown[0]))
        where = prefix or "the top level"
        raise ConfigError(
            f"unknown key {'.'.join(filter(None, [prefix, unknown[0]]))!s} in {where}; "
            f"allowed keys: {', '.join(sorted(fields))}"
        )
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        if name not in raw:
            continue
        path = f"{prefix}.{name}" if prefix else name
        value = _coerce(path, raw[name], hints[name])
        _check_rules(path, value, field.metadata)
        kwargs[name] = value
    # Defaults are validated too: a rule may depend on a registry.
    for name, field in fields.items():
        if name not in kwargs and field.metadata:
            path = f"{prefix}.{name}" if prefix else name
            if field.default is not dataclasses.MISSING:
                default = field.default
            else:
                assert field.default_factory is not dataclasses.MISSING
                default = field.default_factory()
            _check_rules(path, default, field.metadata)
    if holders:
        config_attr, others_attr = holders
        parsed = {
            name: _coerce(f"{prefix}.{name}" if prefix else name, value, sections[name])
            for name, value in sorted(tables.items())
        }
        selector_name, lookup = _method_selector(cls) or ("", None)
        assert lookup is not None
        found = lookup(kwargs.get(selector_name, fields[selector_name].default))
        if found is not None and found[0] in parsed:
            kwargs[config_attr] = parsed.pop(found[0])
        kwargs[others_attr] = tuple(parsed.items())
    return cls(**kwargs)


def check_section(section: Any, *, prefix: str) -> None:
    """Check each field of a constructed section against its :func:`config_field` rules.

    For a settings class's ``__post_init__``: direct construction is validated as a parsed
    table is (``ConfigError`` naming ``<prefix>.<field>``).
    """
    for field in dataclasses.fields(section):
        if field.metadata and not _is_holder(field):
            _check_rules(f"{prefix}.{field.name}", getattr(section, field.name), field.metadata)


def section_from_dict(cls: type[_T], raw: Mapping[str, Any], *, prefix: str) -> _T:
    """Build and validate one settings section from a TOML table, as a config section is.

    ``cls`` is a dataclass whose fields carry :func:`config_field` rules (an attack's ``[audit]``
    table, a method's settings); ``prefix`` names the table in errors. Unknown keys, wrong types
    and values out of range are the one-line ``ConfigError`` of any config key
    (``"audit.num_canaries must be >= 2; got 1"``).
    """
    return _from_mapping(cls, raw, prefix)


def config_from_dict(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from a nested mapping.

    Raises:
        ConfigError: on unknown keys, wrong types or out-of-range values.
    """
    return _from_mapping(ExperimentConfig, raw)


# Deepest table/array nesting a config file may use. The schema nests three deep
# (privacy.user.*); the parser recurses per level, and 5,000 levels raised RecursionError.
_MAX_DEPTH = 32


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into a plain mapping, with one-line errors for every way it can fail.

    The file must be UTF-8, valid TOML, nest at most a few levels deep and not be
    empty. Callers that strip their own extra tables (``[audit]``, ``[exposure]``)
    before :func:`config_from_dict` read files with this.

    Raises:
        ConfigError: missing, unreadable, not UTF-8, not TOML, too deeply nested, or empty.
    """
    path = Path(path)
    where = f"config file {str(path)!r}"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{where} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{where} is a directory, not a TOML file") from None
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where} is not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{where} nests tables or arrays too deeply (at most {_MAX_DEPTH} levels)") from None
    depth = _mapping_depth(raw)
    if depth > _MAX_DEPTH:
        raise ConfigError(f"{where} nests tables or arrays more than {_MAX_DEPTH} levels deep (the limit)")
    if not raw:
        raise ConfigError(
            f"{where} is empty; a config file must set at least `name` (every other key has a "
            "default: `privfed config FILE` prints them)"
        )
    return raw


def _mapping_depth(value: Any, limit: int = _MAX_DEPTH + 1) -> int:
    """Nesting depth of tables and arrays, counted up to ``limit`` (no deeper recursion)."""
    if limit <= 0 or not isinstance(value, (dict, list)):
        return 0
    children = value.values() if isinstance(value, dict) else value
    return 1 + max((_mapping_depth(child, limit - 1) for child in children), default=0)


def load_config(path: str | Path, *, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read and validate a TOML experiment config.

    The file must set ``name``: every other key has a default, so a file that sets
    nothing is far more likely to be a mistake (an empty or truncated file, the
    wrong path) than a wish for the defaults, which ``privfed config`` prints.
    ``overrides`` are ``KEY=VALUE`` assignments (``privfed run --set``) applied to
    the file's values before anything is validated (see :func:`apply_overrides`).

    Raises:
        ConfigError: if the file is missing, unreadable, not UTF-8, not valid TOML,
            nested too deeply, does not set ``name``, or holds a bad value.
    """
    raw = apply_overrides(read_config_file(path), overrides)
    config = config_from_dict(raw)
    if "name" not in raw:
        raise ConfigError(
            f"name is required in config file {str(path)!r} (a short label for the run); "
            f"found only {', '.join(sorted(raw))}"
        )
    return config


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _section_dict(section: Any, prefix: str = "") -> dict[str, Any]:
    """A config section as plain TOML-able values; method configs become their tables."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(section):
        value = getattr(section, field.name)
        path = f"{prefix}.{field.name}" if prefix else field.name
        if "method_config" in field.metadata:
            if value is not None:
                selector = field.metadata["method_config"]
                method = getattr(section, selector)
                selector_info = _method_selector(type(section))
                found = selector_info[1](method) if selector_info else None
                if found is None:
                    raise ConfigError(f"{prefix}.{selector} {method!r} is no longer registered with a config table")
                out[found[0]] = _section_dict(value, f"{prefix}.{found[0]}")
        elif "other_method_configs" in field.metadata:
            for name, other in value:
                out[name] = _section_dict(other, f"{prefix}.{name}")
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            out[field.name] = _section_dict(value, path)
        else:
            out[field.name] = _plain(value)
    return out


def config_to_dict(config: ExperimentConfig) -> dict[str, Any]:
    """The fully resolved config as plain TOML-able values (method settings as their tables)."""
    return _section_dict(config)


def dump_config(config: ExperimentConfig) -> str:
    """The fully resolved config as TOML text (loads back to an equal config)."""
    return tomli_w.dumps(config_to_dict(config))


def replace_path(config: ExperimentConfig, dotted: str, value: Any) -> ExperimentConfig:
    """A copy of ``config`` with one dotted field (``"server.rounds"``) replaced and re-validated."""
    return replace_paths(config, {dotted: value})


def replace_paths(config: ExperimentConfig, changes: Mapping[str, Any]) -> ExperimentConfig:
    """A copy of ``config`` with several dotted fields replaced, validated once all are in.

    Together, e.g. ``privacy.mode = "sample"`` with the
    ``privacy.sample.target_epsilon`` it needs.
    """
    raw = config_to_dict(config)
    for dotted, value in changes.items():
        node = raw
        *parents, leaf = _moved_key_path(raw, dotted.split("."))  # server.beta1 -> server.fedadam.beta1
        for depth, part in enumerate(parents):
            if part not in node and _schema_section(parents[: depth + 1]) is not None:
                node[part] = {}  # a method's table not written yet (its defaults)
            if part not in node or not isinstance(node[part], dict):
                raise ConfigError(f"unknown config section {dotted!r}")
            node = node[part]
        if leaf not in node:
            section = _schema_section(parents)
            if section is None or leaf not in {f.name for f in dataclasses.fields(section)}:
                raise ConfigError(f"unknown config key {dotted!r}")
        node[leaf] = value
    return config_from_dict(raw)


def parse_override(text: str) -> tuple[str, str]:
    """``"server.rounds=5"`` -> ``("server.rounds", "5")`` (the value still as text).

    Raises:
        ConfigError: no ``=``, or nothing before it.
    """
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set needs KEY=VALUE with a dotted key (e.g. server.rounds=5); got {_short(text)}")
    return key, value.strip()


def _schema_annotation(dotted: str) -> Any:
    """The annotation of the config field at a dotted path; ``ConfigError`` for a path the schema lacks.

    A method's table is a section (``server.fedadam.beta1``); an old flat key that moved into one
    (``server.beta1``) has the type it has there.
    """
    node: Any = ExperimentConfig
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth])
        if not (dataclasses.is_dataclass(node) and isinstance(node, type)):
            raise ConfigError(f"--set {dotted}: {where} is a value, not a section; it has no key {part!r}")
        hints = _type_hints(node)
        keys = {f.name for f in dataclasses.fields(node) if not _is_holder(f)}
        tables = method_tables(node)
        if part in keys:
            node = hints[part]
        elif part in tables:
            node = tables[part]
        elif part in _MOVED_KEYS.get(node, ()) and depth == len(parts) - 1:
            home = next(c for c in tables.values() if part in {f.name for f in dataclasses.fields(c)})
            node = _type_hints(home)[part]
        else:
            more = f"; method tables: {', '.join(tables)}" if tables else ""
            raise ConfigError(
                f"--set {dotted}: unknown key {part!r} in {where or 'the top level'}; "
                f"allowed keys: {', '.join(sorted(keys))}{more}"
            )
    if dataclasses.is_dataclass(node):
        keys_text = ", ".join(f.name for f in dataclasses.fields(node) if not _is_holder(f))
        raise ConfigError(f"--set {dotted}: {dotted} is a section; set one of its keys ({keys_text})")
    return node


def _schema_section(parts: Sequence[str]) -> type | None:
    """The section class at a dotted path (method tables included), or ``None``."""
    node: Any = ExperimentConfig
    for part in parts:
        if not (dataclasses.is_dataclass(node) and isinstance(node, type)):
            return None
        fields = {f.name for f in dataclasses.fields(node) if not _is_holder(f)}
        tables = method_tables(node)
        node = _type_hints(node)[part] if part in fields else tables.get(part)
    return node if dataclasses.is_dataclass(node) and isinstance(node, type) else None


def _moved_key_path(raw: Mapping[str, Any], parts: list[str]) -> list[str]:
    """``[..., "adapter", "rank"]`` -> ``[..., "adapter", "lora", "rank"]`` when ``rank`` moved into the table of
    the method ``raw`` selects; else ``parts`` unchanged (the old key is then read as from a file)."""
    section = _schema_section(parts[:-1])
    if section is None or parts[-1] not in _MOVED_KEYS.get(section, ()):
        return parts
    selector = _method_selector(section)
    assert selector is not None
    node: Any = raw
    for part in parts[:-1]:
        node = node.get(part, {}) if isinstance(node, Mapping) else {}
    default = next(f for f in dataclasses.fields(section) if f.name == selector[0]).default
    method = node.get(selector[0], default) if isinstance(node, Mapping) else default
    found = selector[1](method) if isinstance(method, str) else None
    if found is None or parts[-1] not in {f.name for f in dataclasses.fields(found[1])}:
        return parts
    new = [*parts[:-1], found[0], parts[-1]]
    warnings.warn(
        f"{'.'.join(parts)} is deprecated; it is {'.'.join(new)} (the setting lives in the method's table)",
        DeprecationWarning,
        stacklevel=3,
    )
    return new


def _toml_value(dotted: str, text: str) -> Any:
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        raise ConfigError(f"--set {dotted}: {_short(text)} is not a TOML value") from None


def _override_value(dotted: str, text: str, annotation: Any) -> Any:
    """A ``--set`` value as the schema types the field; the range is checked later, with the file's values."""
    if annotation is str:
        quoted = len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""
        return text[1:-1] if quoted else text
    if annotation is bool:
        if text.lower() not in ("true", "false"):
            raise ConfigError(f"{dotted} must be true or false; got {_short(text)}")
        return text.lower() == "true"
    if annotation in (int, float):
        kind = "an integer" if annotation is int else "a number"
        try:
            value = tomllib.loads(f"value = {text}")["value"]
        except tomllib.TOMLDecodeError:
            raise ConfigError(f"{dotted} must be {kind}; got {_short(text)}") from None
        return value  # an int where a float is wanted is fine; a float where an int is wanted is refused
    if typing.get_origin(annotation) is tuple:
        if text.startswith("["):
            return _toml_value(dotted, text)
        return [part.strip() for part in text.split(",")] if text else []
    raise TypeError(f"unsupported config annotation at {dotted}: {annotation}")  # pragma: no cover


def apply_overrides(
    raw: Mapping[str, Any], assignments: Sequence[str], *, tables: Collection[str] = ()
) -> dict[str, Any]:
    """A copy of a config mapping with ``KEY=VALUE`` assignments applied (``--set``).

    Keys are dotted paths of the schema (``server.rounds=5``,
    ``privacy.user.target_epsilon=3``); the value is read as the field's type
    (``str`` as given, ``true``/``false``, TOML numbers such as ``1e-5``, lists as
    ``a,b`` or a TOML array) and is validated afterwards exactly like a value from
    the file. Keys under one of ``tables`` (a command's own table, e.g. ``audit``)
    are not in the schema: their values are read as TOML (else as text) and the
    command checks them. Later assignments win.

    Raises:
        ConfigError: a malformed assignment, a key the schema does not have, or a
            value that cannot be the field's type.
    """
    out = copy.deepcopy(dict(raw))
    for text in assignments:
        dotted, value_text = parse_override(text)
        parts = dotted.split(".")
        if parts[0] in tables:
            try:
                value = tomllib.loads(f"value = {value_text}")["value"]
            except tomllib.TOMLDecodeError:
                value = value_text
        else:
            value = _override_value(dotted, value_text, _schema_annotation(dotted))
            parts = _moved_key_path(out, parts)
        node = out
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"--set {dotted}: {where} is {_describe(child)} in the config file, not a table")
            node = child
        node[parts[-1]] = value
    return out
