"""privfed: federated fine-tuning of PEFT adapters under formal privacy.

The public API, in two tiers (docs/extending.md, "Public API"):

1. ``privfed`` itself: running experiments, configs and their sections, errors,
   every ``register_*`` extension point and the protocols an extension implements.
2. The documented subpackages, each with its own ``__all__``: ``privfed.adapters``,
   ``privfed.cli``, ``privfed.client``, ``privfed.compression``, ``privfed.config``,
   ``privfed.data``, ``privfed.errors``, ``privfed.experiments``, ``privfed.models``,
   ``privfed.plotting``, ``privfed.privacy``, ``privfed.rng``, ``privfed.secagg``,
   ``privfed.server``, ``privfed.testing``, ``privfed.tracking``, ``privfed.transport``.

Everything else (modules inside those subpackages, names with a leading underscore)
is internal and may change. ``attacks`` and users' code import from these tiers only.

``import privfed`` is cheap: a name is imported from its subpackage the first time it
is used (PEP 562 module ``__getattr__``), so torch, transformers and flwr load only
when something needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from privfed._lazy import lazy_exports as _lazy_exports

if TYPE_CHECKING:
    from privfed.adapters import (
        AdapterLayout,
        IA3AdapterConfig,
        LoraAdapterConfig,
        ParameterSlot,
        PromptTuningAdapterConfig,
        adapter_method_names,
        register_adapter_method,
        wrap_model,
    )
    from privfed.cli import register_command, register_reproducer
    from privfed.client.stages import StageContext, Upload, UploadStage, register_upload_stage
    from privfed.compression import FixedPointCodec
    from privfed.config import (
        AdapterConfig,
        ClientConfig,
        CompressionConfig,
        DataConfig,
        EvalConfig,
        ExperimentConfig,
        ModelConfig,
        PartitionConfig,
        PrivacyConfig,
        RunConfig,
        SampleDPConfig,
        SecAggConfig,
        ServerConfig,
        TrackingConfig,
        TransportConfig,
        UserDPConfig,
        config_from_dict,
        config_to_dict,
        dump_config,
        load_config,
    )
    from privfed.data import (
        Dataset,
        DatasetSpec,
        dataset_names,
        load_dataset,
        partition,
        partitioner_names,
        register_dataset,
    )
    from privfed.data.partition import PartitionInputs, register_partitioner
    from privfed.errors import (
        CheckpointError,
        ConfigError,
        DataError,
        ModelError,
        PrivacyBudgetExceeded,
        PrivfedError,
        ProtocolError,
    )
    from privfed.experiments import (
        Experiment,
        RoundMetrics,
        RunDirectory,
        RunSummary,
        build_experiment,
        resume_experiment,
        run_experiment,
    )
    from privfed.models import ModelSpec, load_base_model, model_names, register_model
    from privfed.privacy import (
        DPFedAvgServer,
        PrivacyLedger,
        SampledGaussianEvent,
        accountant_names,
        calibrate_noise_multiplier,
        compute_epsilon,
        register_accountant,
    )
    from privfed.secagg import SecAggAborted, SecAggClient, SecAggServer, run_secagg_round
    from privfed.server import (
        FedAdam,
        FedAdamConfig,
        FedAvg,
        FederatedServer,
        Strategy,
        make_strategy,
        register_strategy,
        strategy_names,
        weighted_mean,
    )
    from privfed.server.strategies import SumStrategy
    from privfed.tracking import Tracker, register_tracker
    from privfed.transport import (
        ClientUpdate,
        Exchange,
        GlobalModel,
        Reply,
        SimulationTransport,
        Transport,
        register_transport,
        transport_names,
    )

__version__ = "0.1.0"

__all__ = [
    "AdapterConfig",
    "AdapterLayout",
    "CheckpointError",
    "ClientConfig",
    "ClientUpdate",
    "CompressionConfig",
    "ConfigError",
    "DPFedAvgServer",
    "DataConfig",
    "DataError",
    "Dataset",
    "DatasetSpec",
    "EvalConfig",
    "Exchange",
    "Experiment",
    "ExperimentConfig",
    "FedAdam",
    "FedAdamConfig",
    "FedAvg",
    "FederatedServer",
    "FixedPointCodec",
    "GlobalModel",
    "IA3AdapterConfig",
    "LoraAdapterConfig",
    "ModelConfig",
    "ModelError",
    "ModelSpec",
    "ParameterSlot",
    "PartitionConfig",
    "PartitionInputs",
    "PrivacyBudgetExceeded",
    "PrivacyConfig",
    "PrivacyLedger",
    "PrivfedError",
    "PromptTuningAdapterConfig",
    "ProtocolError",
    "Reply",
    "RoundMetrics",
    "RunConfig",
    "RunDirectory",
    "RunSummary",
    "SampleDPConfig",
    "SampledGaussianEvent",
    "SecAggAborted",
    "SecAggClient",
    "SecAggConfig",
    "SecAggServer",
    "ServerConfig",
    "SimulationTransport",
    "StageContext",
    "Strategy",
    "SumStrategy",
    "Tracker",
    "TrackingConfig",
    "Transport",
    "TransportConfig",
    "Upload",
    "UploadStage",
    "UserDPConfig",
    "__version__",
    "accountant_names",
    "adapter_method_names",
    "build_experiment",
    "calibrate_noise_multiplier",
    "compute_epsilon",
    "config_from_dict",
    "config_to_dict",
    "dataset_names",
    "dump_config",
    "load_base_model",
    "load_config",
    "load_dataset",
    "make_strategy",
    "model_names",
    "partition",
    "partitioner_names",
    "register_accountant",
    "register_adapter_method",
    "register_command",
    "register_dataset",
    "register_model",
    "register_partitioner",
    "register_reproducer",
    "register_strategy",
    "register_tracker",
    "register_transport",
    "register_upload_stage",
    "resume_experiment",
    "run_experiment",
    "run_secagg_round",
    "strategy_names",
    "transport_names",
    "weighted_mean",
    "wrap_model",
]

# Where each public name lives; a test checks this against __all__ and the TYPE_CHECKING imports.
_SOURCES: dict[str, tuple[str, ...]] = {
    "privfed.adapters": (
        "AdapterLayout",
        "IA3AdapterConfig",
        "LoraAdapterConfig",
        "ParameterSlot",
        "PromptTuningAdapterConfig",
        "adapter_method_names",
        "register_adapter_method",
        "wrap_model",
    ),
    "privfed.cli": (
        "register_command",
        "register_reproducer",
    ),
    "privfed.client.stages": (
        "StageContext",
        "Upload",
        "UploadStage",
        "register_upload_stage",
    ),
    "privfed.compression": ("FixedPointCodec",),
    "privfed.config": (
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
        "config_from_dict",
        "config_to_dict",
        "dump_config",
        "load_config",
    ),
    "privfed.data": (
        "Dataset",
        "DatasetSpec",
        "dataset_names",
        "load_dataset",
        "partition",
        "partitioner_names",
        "register_dataset",
    ),
    "privfed.data.partition": (
        "PartitionInputs",
        "register_partitioner",
    ),
    "privfed.errors": (
        "CheckpointError",
        "ConfigError",
        "DataError",
        "ModelError",
        "PrivacyBudgetExceeded",
        "PrivfedError",
        "ProtocolError",
    ),
    "privfed.experiments": (
        "Experiment",
        "RoundMetrics",
        "RunDirectory",
        "RunSummary",
        "build_experiment",
        "resume_experiment",
        "run_experiment",
    ),
    "privfed.models": (
        "ModelSpec",
        "load_base_model",
        "model_names",
        "register_model",
    ),
    "privfed.privacy": (
        "DPFedAvgServer",
        "PrivacyLedger",
        "SampledGaussianEvent",
        "accountant_names",
        "calibrate_noise_multiplier",
        "compute_epsilon",
        "register_accountant",
    ),
    "privfed.secagg": (
        "SecAggAborted",
        "SecAggClient",
        "SecAggServer",
        "run_secagg_round",
    ),
    "privfed.server": (
        "FedAdam",
        "FedAdamConfig",
        "FedAvg",
        "FederatedServer",
        "Strategy",
        "make_strategy",
        "register_strategy",
        "strategy_names",
        "weighted_mean",
    ),
    "privfed.server.strategies": ("SumStrategy",),
    "privfed.tracking": ("Tracker", "register_tracker"),
    "privfed.transport": (
        "ClientUpdate",
        "Exchange",
        "GlobalModel",
        "Reply",
        "SimulationTransport",
        "Transport",
        "register_transport",
        "transport_names",
    ),
}
_EXPORTS: dict[str, str] = {name: module for module, names in _SOURCES.items() for name in names}


if not TYPE_CHECKING:  # type checkers see the imports above; at run time names load on first use
    __getattr__, __dir__ = _lazy_exports(__name__, globals(), _EXPORTS, __all__)
