"""privfed: federated fine-tuning of PEFT adapters under formal privacy.

The public API is re-exported here; ``attacks`` and users' code import from
``privfed`` only. Heavy dependencies (torch, transformers) load when first used.
"""

from __future__ import annotations

from privfed.adapters import AdapterLayout, ParameterSlot, adapter_method_names, register_adapter_method, wrap_model
from privfed.compression import FixedPointCodec
from privfed.config import ExperimentConfig, config_from_dict, config_to_dict, dump_config, load_config
from privfed.data import Dataset, DatasetSpec, dataset_names, load_dataset, partition, register_dataset
from privfed.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ModelError,
    PrivacyBudgetExceeded,
    PrivfedError,
    ProtocolError,
)
from privfed.experiments import RunDirectory, build_experiment, resume_experiment, run_experiment
from privfed.models import load_base_model, model_names, register_model
from privfed.privacy import (
    DPFedAvgServer,
    PrivacyLedger,
    SampledGaussianEvent,
    calibrate_noise_multiplier,
    compute_epsilon,
)
from privfed.secagg import SecAggAborted, SecAggClient, SecAggServer, run_secagg_round
from privfed.server import FedAdam, FedAvg, FederatedServer, Strategy, make_strategy, register_strategy, weighted_mean
from privfed.transport import ClientUpdate, GlobalModel, SimulationTransport

__version__ = "0.1.0"

__all__ = [
    "AdapterLayout",
    "CheckpointError",
    "ClientUpdate",
    "ConfigError",
    "DPFedAvgServer",
    "DataError",
    "Dataset",
    "DatasetSpec",
    "ExperimentConfig",
    "FedAdam",
    "FedAvg",
    "FederatedServer",
    "FixedPointCodec",
    "GlobalModel",
    "ModelError",
    "ParameterSlot",
    "PrivacyBudgetExceeded",
    "PrivacyLedger",
    "PrivfedError",
    "ProtocolError",
    "RunDirectory",
    "SampledGaussianEvent",
    "SecAggAborted",
    "SecAggClient",
    "SecAggServer",
    "SimulationTransport",
    "Strategy",
    "__version__",
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
    "register_adapter_method",
    "register_dataset",
    "register_model",
    "register_strategy",
    "resume_experiment",
    "run_experiment",
    "run_secagg_round",
    "weighted_mean",
    "wrap_model",
]
