"""What a Flower client process needs to serve a node: the run's trainer and the node's examples.

A node without ``data-path`` in its node config takes partition ``partition-id`` of the
config's dataset: the process loads, splits and partitions that dataset exactly as the
in-process run does (:func:`~privfed.experiments.runner.build_experiment`). A node with
``data-path`` trains on its own file (:func:`local_examples`) and never reads the config's
dataset: what the server computed from its dataset comes with every message
(:func:`run_facts`): the run's class names (``"label-names"``) and, under record-level DP,
the DP-SGD noise multiplier (``"sample-noise-multiplier"``: calibrated on the partition's
sizes, which only the server knows; the node reads it rather than recomputing it). Its
model and trainer are then built from the config, the number of classes and that noise
multiplier alone, seeded as the in-process run seeds them, so they equal the in-process
ones. A message without them (a server that does not send them) makes the node build the
partition of the config's dataset, as before.

Both are built on first use and cached per process, keyed by the config's SHA-256.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from privfed.client.data import ExampleSet
from privfed.client.trainer import ClientTrainer
from privfed.config import ExperimentConfig, config_from_dict
from privfed.errors import DataError, ProtocolError

__all__ = [
    "DATA_PATH_KEY",
    "LABEL_NAMES_KEY",
    "SAMPLE_NOISE_KEY",
    "ClientSide",
    "RunFacts",
    "client_side",
    "local_examples",
    "record_label_names",
    "run_facts",
]

#: Node config key naming this SuperNode's own data (a table file or a ``save_to_disk`` directory).
DATA_PATH_KEY = "data-path"
#: Message record key holding the run's class names, in class-index order (sent by the server).
LABEL_NAMES_KEY = "label-names"
#: Message record key holding the run's record-level DP-SGD noise multiplier (as the server resolved it).
SAMPLE_NOISE_KEY = "sample-noise-multiplier"


@dataclasses.dataclass(frozen=True)
class RunFacts:
    """What the server computed from its dataset and sends with every message (``None``: not sent).

    Attributes:
        label_names: the run's class names, in class-index order.
        sample_noise_multiplier: the DP-SGD noise multiplier of record-level DP (calibrated by the
            server on the partition's sizes when the config gives a target epsilon).
    """

    label_names: tuple[str, ...] | None = None
    sample_noise_multiplier: float | None = None


class ClientSide:
    """What one process needs to serve a client of one run: its config, examples and a trainer.

    Built lazily: :attr:`client_data` (the partition of the config's dataset) loads and
    partitions that dataset on first use, and then the trainer is the in-process run's;
    a process that only serves nodes with their own data, told the run's classes and
    record-level noise multiplier (:meth:`learn`), builds the model and trainer without any
    dataset.

    Args:
        config: the run's config.
        client_data: per client, its examples (built on first use when ``None``).
        trainer: the trainer (built on first use when ``None``).
        label_names: the run's classes, if known.
        num_labels: the classifier's number of classes; ``None`` for a causal LM.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        client_data: list[ExampleSet] | None = None,
        trainer: ClientTrainer | None = None,
        label_names: Sequence[str] = (),
        num_labels: int | None = None,
    ) -> None:
        self.config = config
        self._client_data = client_data
        self._trainer = trainer
        self._label_names = tuple(label_names)
        self._num_labels = num_labels
        self._tokenizer: Any = None
        self._sample_sigma: float | None = None  # record-level DP-SGD sigma, as the server resolved it

    @property
    def client_data(self) -> list[ExampleSet]:
        """Per client, its partition of the config's dataset (loaded and partitioned on first use)."""
        if self._client_data is None:
            self._build_partition()
        assert self._client_data is not None
        return self._client_data

    @property
    def trainer(self) -> ClientTrainer:
        """The run's client trainer, equal to the in-process run's."""
        if self._trainer is None:
            if self._node_only():
                self._build_node()
            else:
                self._build_partition()
        assert self._trainer is not None
        return self._trainer

    @property
    def label_names(self) -> tuple[str, ...]:
        """The run's classes: as the server sent them, else from the config's dataset."""
        if not self._label_names:
            self._build_partition()
        return self._label_names

    @property
    def built_partition(self) -> bool:
        """Whether this process loaded and partitioned the config's dataset."""
        return self._client_data is not None

    def learn(self, run: RunFacts | None) -> None:
        """Take what the server sent for the run (its classes, its record-level noise multiplier).

        Raises:
            DataError: they differ from what this process already holds for the run.
        """
        if run is None:
            return
        if run.label_names is not None:
            self.set_label_names(run.label_names)
        sigma = run.sample_noise_multiplier
        if sigma is not None and self.config.privacy.sample_level:
            if self._sample_sigma is not None and sigma != self._sample_sigma:
                raise DataError(
                    f"the server's record-level noise multiplier {sigma:g} differs from this node's "
                    f"{self._sample_sigma:g} for the same run"
                )
            self._sample_sigma = sigma

    def set_label_names(self, names: Sequence[str]) -> None:
        """The run's classes, as the server sent them.

        Raises:
            DataError: they differ from the classes this process already holds for the run.
        """
        names = tuple(names)
        if self._label_names and names != self._label_names:
            raise DataError(
                f"the server's classes ({_shown(names)}) differ from the classes of data.name "
                f"{self.config.data.name!r} on this node ({_shown(self._label_names)})"
            )
        self._label_names = names

    def warm_up(self, *, own_data: bool, run: RunFacts | None) -> int:
        """Build what serving a node needs now (a long-lived process); returns the number of clients.

        A node with its own data (``own_data``) builds its model and trainer only, once the
        server has sent the run's classes; any other node its partition of the config's dataset.
        """
        if not own_data:
            return len(self.client_data)
        self.learn(run)
        if self._trainer is None and self._node_only():
            self._build_node()  # the node's file is read each round (a bad one declines the round)
        return self.config.partition.num_clients

    def tokenizer(self) -> Any:
        """The run's tokenizer (loaded once, only when a node reads its own data)."""
        if self._tokenizer is None and self._trainer is None and self._node_only():
            self._build_node()  # the model and its tokenizer in one load
        if self._tokenizer is None:
            from privfed.models import load_base_model

            self._tokenizer = load_base_model(self.config.model.name, num_labels=self._labels()).tokenizer
        return self._tokenizer

    def _node_only(self) -> bool:
        """Whether the trainer can be built without the config's dataset (classes and DP-SGD sigma known)."""
        known_sigma = not self.config.privacy.sample_level or self._sigma() is not None
        return self._client_data is None and bool(self._label_names) and known_sigma

    def _sigma(self) -> float | None:
        """Record-level DP-SGD sigma: the server's, else the config's explicit one (used as given)."""
        explicit = self.config.privacy.sample.noise_multiplier
        return self._sample_sigma if self._sample_sigma is not None else (explicit if explicit > 0 else None)

    def _labels(self) -> int | None:
        if self._num_labels is None and self._label_names:
            from privfed.models.registry import get_model_spec

            if get_model_spec(self.config.model.name).task == "classification":
                self._num_labels = len(self._label_names)
        return self._num_labels

    def _build_partition(self) -> None:
        from privfed.experiments.runner import _prepare_privacy, build_experiment

        exp = build_experiment(self.config)
        names = exp.dataset.label_names
        self.set_label_names(names)
        # The trainer exactly as the in-process run builds it (DP-SGD with the calibrated sigma).
        self._trainer = _prepare_privacy(exp).trainer
        self._client_data = exp.client_data
        self._sample_sigma = None if self._trainer.dp is None else self._trainer.dp.noise_multiplier
        self._num_labels = exp.dataset.num_classes if exp.task.name == "classification" else None

    def _build_node(self) -> None:
        from privfed.experiments.provenance import apply_determinism
        from privfed.experiments.runner import _build_model, _check_compatible, _sample_dp

        config = self.config
        _check_compatible(config)
        apply_determinism(device=config.model.device)
        built = _build_model(config, num_classes=len(self._label_names))
        sigma = self._sigma() if config.privacy.sample_level else None
        # As runner._prepare_privacy builds it, with the server's noise multiplier.
        self._trainer = ClientTrainer(
            model=built.model,
            layout=built.layout,
            task=built.task,
            config=config.client,
            dp=None if sigma is None else _sample_dp(config, noise_multiplier=sigma),
        )
        self._tokenizer = built.tokenizer
        self._labels()


def _shown(names: Sequence[str]) -> str:
    return ", ".join(map(repr, names[:5])) + (", ..." if len(names) > 5 else "")


_CACHE: dict[str, ClientSide] = {}
_LOCAL: dict[tuple[int, str, int, int], ExampleSet] = {}  # (id of the ClientSide, path, mtime, size)


def client_side(config_toml: str) -> ClientSide:
    """The client side of the experiment ``config_toml`` describes, one per process (built on first use)."""
    import tomllib

    digest = hashlib.sha256(config_toml.encode()).hexdigest()
    cached = _CACHE.get(digest)
    if cached is not None:
        return cached
    config = config_from_dict(tomllib.loads(config_toml))
    _CACHE.clear()  # one experiment per process
    _LOCAL.clear()
    _CACHE[digest] = built = ClientSide(config)
    return built


def record_label_names(record: Any) -> tuple[str, ...] | None:
    """The run's class names in a server message's record (``"label-names"``); ``None`` if absent.

    Raises:
        ProtocolError: present but not a non-empty list of distinct, non-empty strings.
    """
    value = record.get(LABEL_NAMES_KEY)
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(n, str) and n for n in value)
        or len(set(value)) < len(value)
    ):
        raise ProtocolError(
            f"Flower record field {LABEL_NAMES_KEY!r} must be a non-empty list of distinct class names; "
            f"got {str(value)[:80]}"
        )
    return tuple(value)


def run_facts(record: Any) -> RunFacts:
    """What the server sent for the run in a message's record (:class:`RunFacts`).

    Raises:
        ProtocolError: a field present but malformed.
    """
    sigma = record.get(SAMPLE_NOISE_KEY)
    if sigma is not None and (
        isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0
    ):
        raise ProtocolError(f"Flower record field {SAMPLE_NOISE_KEY!r} must be a finite number > 0; got {sigma!r:.40}")
    return RunFacts(
        label_names=record_label_names(record), sample_noise_multiplier=None if sigma is None else float(sigma)
    )


def local_examples(side: ClientSide, path: str, *, run: RunFacts | None = None) -> ExampleSet:
    """This node's own examples: the file or ``save_to_disk`` directory ``path``, tokenized for the run.

    Read with :func:`~privfed.data.files.load_table_file` (or :func:`~privfed.data.files.load_hf_dir`
    for a directory) and the run's ``data.text_column`` / ``data.label_column``; the file may hold a
    single class. Its class names are mapped onto the run's: as the server sent them (``run``; then
    the config's dataset is not read), else ``side.label_names``. Cached per process, keyed by the
    file's path, mtime and size.

    Raises:
        DataError: missing or unreadable file, wrong columns, no labelled row, a label that is
            not a class of the run. (Record-level DP is allowed: the node's own ledger accounts its
            data, see :mod:`privfed.client.policy`.)
    """
    from privfed.data.files import load_hf_dir, load_table_file
    from privfed.data.tokenize import tokenize_texts

    config = side.config
    side.learn(run)
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
    load = load_hf_dir if file.is_dir() else load_table_file
    dataset = load(
        file,
        name=config.data.name,
        text_column=config.data.text_column,
        label_column=config.data.label_column,
        min_classes=1,  # one node's data may well hold a single class (non-IID)
    )
    assert dataset.texts is not None
    run_names = side.label_names
    position = {name: i for i, name in enumerate(run_names)}
    unknown = [name for name in dataset.label_names if name not in position]
    if unknown:
        raise DataError(
            f"{DATA_PATH_KEY} {path!r} column {config.data.label_column!r} has label(s) {_shown(unknown)} that are not "
            f"classes of this run; allowed: {', '.join(map(repr, run_names))}"
        )
    to_run = np.array([position[name] for name in dataset.label_names], dtype=np.int64)
    tokens = tokenize_texts(side.tokenizer(), dataset.texts, max_length=config.model.max_length)
    _LOCAL[key] = examples = ExampleSet(tokens=tokens, labels=to_run[dataset.labels])
    return examples
