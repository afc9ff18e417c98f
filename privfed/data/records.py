"""In-memory dataset records shared by loaders, partitioners and trainers."""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import numpy.typing as npt

from privfed.errors import DataError

__all__ = ["Dataset", "Modality"]

Modality = Literal["text", "image"]


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled offline dataset, fully in memory.

    Attributes:
        name: registry key.
        modality: ``"text"`` (``texts`` set) or ``"image"`` (``images`` set).
        labels: int64[n], class index of each example (for language-modelling
            corpora, the category, so label-skew partitions still apply).
        label_names: names of the classes, indexed by label.
        groups: str[n] natural attribute per example (drug condition, fortune
            category) for the ``natural`` partitioner, or ``None``.
        texts: the examples' text (text modality), none of them empty or blank.
        images: float32[n, channels, height, width] in [0, 1] (image modality).
        source: where the data comes from.
        license: its license.
    """

    name: str
    modality: Modality
    labels: npt.NDArray[np.int64]
    label_names: tuple[str, ...]
    source: str
    license: str
    groups: npt.NDArray[np.str_] | None = None
    texts: tuple[str, ...] | None = None
    images: npt.NDArray[np.float32] | None = None

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.labels.dtype != np.int64 or self.labels.ndim != 1:
            raise ValueError("labels must be int64[n]")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.label_names)):
            raise ValueError("labels must index label_names")
        if self.modality == "text" and (self.texts is None or len(self.texts) != n):
            raise ValueError("a text dataset needs one text per label")
        if self.modality == "text" and self.texts is not None:
            # An empty text has nothing to classify and no token to predict (the causal LM
            # crashed on a batch of them); dropping it here would silently shift indices.
            empty = [i for i, text in enumerate(self.texts) if not text.strip()]
            if empty:
                raise DataError(
                    f"dataset {self.name!r} has {len(empty)} empty text(s) (first at index {empty[0]}); "
                    "drop them in its loader"
                )
        if self.modality == "image" and (self.images is None or len(self.images) != n):
            raise ValueError("an image dataset needs one image per label")
        if self.groups is not None and len(self.groups) != n:
            raise ValueError("groups must have one entry per example")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def majority_class_rate(self, indices: npt.NDArray[np.int64] | None = None) -> float:
        """Accuracy of always predicting the most common label (over ``indices``)."""
        labels = self.labels if indices is None else self.labels[indices]
        if len(labels) == 0:
            return 0.0
        return float(np.bincount(labels, minlength=self.num_classes).max() / len(labels))
