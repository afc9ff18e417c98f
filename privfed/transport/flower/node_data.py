"""What a Flower client process needs to serve a node: the run's trainer and the node's examples.

A node without ``data-path`` in its node config takes partition ``partition-id`` of the
config's dataset; with it, the node reads its own file (:func:`local_examples`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from privfed.client.data import ExampleSet
from privfed.client.trainer import ClientTrainer
from privfed.config import ExperimentConfig, config_from_dict
from privfed.errors import DataError

__all__ = ["DATA_PATH_KEY", "ClientSide", "client_side", "local_examples"]

#: Node config key naming this SuperNode's own data (a table file or a ``save_to_disk`` directory).
DATA_PATH_KEY = "data-path"


@dataclasses.dataclass(eq=False)
class ClientSide:
    """What one process needs to serve a client: its config, examples and a trainer.

    ``label_names`` are the run's classes (a node's own data is mapped onto them by name).
    """

    config: ExperimentConfig
    client_data: list[ExampleSet]
    trainer: ClientTrainer
    label_names: tuple[str, ...] = ()
    num_labels: int | None = None  # the classifier's number of classes; None for a causal LM
    _tokenizer: Any = None

    def tokenizer(self) -> Any:
        """The run's tokenizer (loaded once, only when a node reads its own data)."""
        if self._tokenizer is None:
            from privfed.models import load_base_model

            self._tokenizer = load_base_model(self.config.model.name, num_labels=self.num_labels).tokenizer
        return self._tokenizer


_CACHE: dict[str, ClientSide] = {}
_LOCAL: dict[tuple[int, str, int, int], ExampleSet] = {}  # (id of the ClientSide, path, mtime, size)


def client_side(config_toml: str) -> ClientSide:
    """The client side of the experiment ``config_toml`` describes, built once per process."""
    import tomllib

    digest = hashlib.sha256(config_toml.encode()).hexdigest()
    cached = _CACHE.get(digest)
    if cached is not None:
        return cached
    from privfed.experiments.runner import _prepare_privacy, build_experiment

    config = config_from_dict(tomllib.loads(config_toml))
    exp = build_experiment(config)
    # The trainer exactly as the in-process run builds it (DP-SGD with the calibrated sigma).
    trainer = _prepare_privacy(exp).trainer
    _CACHE.clear()  # one experiment per process
    _LOCAL.clear()
    _CACHE[digest] = built = ClientSide(
        config=config,
        client_data=exp.client_data,
        trainer=trainer,
        label_names=exp.dataset.label_names,
        num_labels=exp.dataset.num_classes if exp.task.name == "classification" else None,
    )
    return built


def local_examples(side: ClientSide, path: str) -> ExampleSet:
    """This node's own examples: the file or ``save_to_disk`` directory ``path``, tokenized for the run.

    Read with :func:`~privfed.data.files.load_table_file` (or :func:`~privfed.data.files.load_hf_dir`
    for a directory) and the run's ``data.text_column`` / ``data.label_column``; its class names
    are mapped onto the run's (``side.label_names``). Cached per process, keyed by the file's
    path, mtime and size.

    Raises:
        DataError: missing or unreadable file, wrong columns, too few classes, a label that is
            not a class of the run, or record-level DP (whose accounting assumes the partition).
    """
    from privfed.data.files import load_hf_dir, load_table_file
    from privfed.data.tokenize import tokenize_texts

    config = side.config
    if config.privacy.sample_level:
        raise DataError(
            f"{DATA_PATH_KEY} (a SuperNode's own data) does not support record-level DP yet "
            f"(privacy.mode = {config.privacy.mode!r}): the server accounts for the partition of "
            f"data.name {config.data.name!r}; allowed: privacy.mode 'none' or 'user'"
        )
    file = Path(path)
    try:
        stat = file.stat()
    except OSError as exc:
        reason = "does not exist" if isinstance(exc, FileNotFoundError) else f"cannot be read: {exc.strerror}"
        raise DataError(f"{DATA_PATH_KEY} {path!r} of this SuperNode {reason}") from None
    key = (id(side), str(file.resolve()), stat.st_mtime_ns, stat.st_size)
    cached = _LOCAL.get(key)
    if cached is not None:
        return cached
    columns = {"text_column": config.data.text_column, "label_column": config.data.label_column}
    if file.is_dir():
        dataset = load_hf_dir(file, name=config.data.name, **columns)
    else:
        dataset = load_table_file(file, name=config.data.name, **columns)
    assert dataset.texts is not None
    position = {name: i for i, name in enumerate(side.label_names)}
    unknown = [name for name in dataset.label_names if name not in position]
    if unknown:
        shown = ", ".join(map(repr, unknown[:5])) + (", ..." if len(unknown) > 5 else "")
        raise DataError(
            f"{DATA_PATH_KEY} {path!r} column {config.data.label_column!r} has label(s) {shown} that are not "
            f"classes of this run; allowed: {', '.join(map(repr, side.label_names))}"
        )
    to_run = np.array([position[name] for name in dataset.label_names], dtype=np.int64)
    tokens = tokenize_texts(side.tokenizer(), dataset.texts, max_length=config.model.max_length)
    _LOCAL[key] = examples = ExampleSet(tokens=tokens, labels=to_run[dataset.labels])
    return examples
