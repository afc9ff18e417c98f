"""Federated LoRA fine-tuning from Python, with the same config files as the CLI.

    python examples/federated_lora.py configs/demo.toml --out runs/example
    python examples/federated_lora.py configs/demo.toml --dry-run   # tiny model, seconds

``--dry-run`` swaps in the tiny random model of the same architecture, a
small data subset and two rounds, to check a config end to end quickly.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from privfed import load_config, run_experiment
from privfed.config import ExperimentConfig, replace_path

TINY = {"minilm": "tiny-bert", "smollm2": "tiny-llama"}


def dry_run_config(config: ExperimentConfig) -> ExperimentConfig:
    """The same experiment shrunk to seconds: tiny model, 240 examples, 2 rounds."""
    for dotted, value in (
        ("model.name", TINY.get(config.model.name, config.model.name)),
        ("model.max_length", min(config.model.max_length, 32)),
        ("data.max_train_examples", 240),
        ("data.max_eval_examples", 40),
        ("partition.min_examples_per_client", 1),
        ("client.local_steps", 2),
        ("server.rounds", 2),
    ):
        config = replace_path(config, dotted, value)
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--dry-run", action="store_true", help="tiny model and data, two rounds")
    args = parser.parse_args()
    config = load_config(args.config)
    if args.dry_run:
        config = dry_run_config(config)
    out = args.out or Path(tempfile.mkdtemp(prefix="privfed-example-"))
    summary = run_experiment(config, out, quiet=args.dry_run)
    print(json.dumps({"run_dir": str(out), **summary}, indent=2))


if __name__ == "__main__":
    main()
