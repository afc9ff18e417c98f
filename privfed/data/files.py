"""Users' own data, without writing Python.

``data.path`` names a local table file, ``.csv``, ``.tsv``, ``.jsonl`` (one JSON
object per line) or ``.parquet``; ``data.name = "hf:<dir>"`` names a Hugging
Face ``datasets`` dataset saved with ``save_to_disk`` (read offline with
``datasets.load_from_disk``; every split of a ``DatasetDict``, in sorted split
order: privfed holds out its own evaluation split). Both read
``data.text_column``, ``data.label_column`` and, if set, ``data.client_column``,
whose values become the dataset's natural ``groups`` (``partition.method =
"natural"``: one client per value).

What happens to the rows, as for the built-in loaders:

- labels may be strings or integers; the classes are the sorted distinct
  values (numerically when every label is an integer, so ``"10"`` follows
  ``"9"``), or the names of a ``datasets.ClassLabel`` column;
- rows whose text is empty or blank are dropped, with a warning giving their
  number (privfed's :class:`~privfed.data.records.Dataset` refuses empty texts;
  in a user's file a few blank rows are common and not worth a failed run);
- exact duplicate texts (after whitespace normalisation) keep their first row
  only, with a warning, so that membership labels in later audits do not lie.

Everything else that is wrong is a one-line :class:`~privfed.errors.DataError`
naming the file, the column and the line or row: a missing file, a missing
column (with the columns found), an empty file, text that is not UTF-8 (with
the byte offset), a row without a label or client, a single class (a file that
is one client's own data may hold one: ``min_classes=1``).
Parquet needs ``pyarrow`` and ``hf:`` needs ``datasets``; without them the
loader raises an ``ImportError`` that says what to install.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from privfed.config import DataConfig
from privfed.data.loaders import _dedupe
from privfed.data.records import Dataset
from privfed.data.registry import DatasetSpec, get_dataset_spec, load_dataset
from privfed.errors import DataError

__all__ = ["dataset_spec_for", "load_data", "load_hf_dir", "load_table_file"]

_INTEGER = re.compile(r"[+-]?\d+")


def dataset_spec_for(data: DataConfig) -> DatasetSpec:
    """The registry entry of ``data.name``, or a text-classification entry for the user's own data."""
    if not data.user_data:
        return get_dataset_spec(data.name)
    where = data.path or data.name
    return DatasetSpec(data.name, "text", "classification", lambda: load_data(data), f"user data {where}")


def load_data(data: DataConfig) -> Dataset:
    """The dataset ``data`` describes: a registered one, the user's table file or a saved ``datasets`` dataset.

    Raises:
        DataError: the file or directory cannot be read or does not hold usable data (see the module doc).
        ImportError: ``.parquet`` without ``pyarrow``, ``hf:`` without ``datasets``.
    """
    columns = {"text_column": data.text_column, "label_column": data.label_column}
    columns["client_column"] = data.client_column
    if data.path:
        path = Path(data.path)
        return _load_table_cached(data.name, str(path.resolve()), _stamp(path, "data.path"), **columns)
    hf_dir = data.hf_dir
    if hf_dir is not None:
        path = Path(hf_dir)
        return _load_hf_cached(data.name, str(path.resolve()), _stamp(path, "data.name 'hf:<dir>'"), **columns)
    return load_dataset(data.name)


def _stamp(path: Path, field: str) -> tuple[int, int]:
    """(mtime, size) of ``path``: the memo sees an edited file as a new one."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise DataError(f"{field} {str(path)!r} does not exist (relative paths start at {str(Path.cwd())!r})") from None
    except OSError as exc:
        raise DataError(f"{field} {str(path)!r} cannot be read: {exc.strerror}") from None
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=8)
def _load_table_cached(
    name: str, path: str, stamp: tuple[int, int], *, text_column: str, label_column: str, client_column: str
) -> Dataset:
    return load_table_file(
        path, name=name, text_column=text_column, label_column=label_column, client_column=client_column
    )


@functools.lru_cache(maxsize=8)
def _load_hf_cached(
    name: str, path: str, stamp: tuple[int, int], *, text_column: str, label_column: str, client_column: str
) -> Dataset:
    return load_hf_dir(path, name=name, text_column=text_column, label_column=label_column, client_column=client_column)


@dataclasses.dataclass(frozen=True)
class _Row:
    where: str  # "line 7", "row 12", "split 'train' row 3": for error messages
    values: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class _Table:
    source: str  # "data file 'x.csv'": the start of every message
    columns: tuple[str, ...]
    rows: Sequence[_Row]
    label_names: tuple[str, ...] | None = None  # a ClassLabel column's names


def load_table_file(
    path: str | Path,
    *,
    name: str,
    text_column: str = "text",
    label_column: str = "label",
    client_column: str = "",
    min_classes: int = 2,
) -> Dataset:
    """Read a ``.csv``, ``.tsv``, ``.jsonl`` or ``.parquet`` file into a text-classification :class:`Dataset`.

    Args:
        path: the file; its suffix says the format.
        name: the dataset's name (``data.name``).
        text_column / label_column: the columns holding each example's text and class.
        client_column: a column naming each example's client (natural partition), or ``""``.
        min_classes: the fewest distinct classes the rows must hold (2 for a dataset a run is
            split from; 1 for one client's own file, which may hold a single class).

    Raises:
        DataError: see the module doc.
        ImportError: a ``.parquet`` file without ``pyarrow`` installed.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    needed = [c for c in (text_column, label_column, client_column) if c]
    if suffix in (".csv", ".tsv"):
        table = _read_csv(path, delimiter="\t" if suffix == ".tsv" else ",")
    elif suffix == ".jsonl":
        table = _read_jsonl(path, needed)
    elif suffix == ".parquet":
        table = _read_parquet(path, needed)
    else:
        raise DataError(f"data file {str(path)!r} must end in .csv, .tsv, .jsonl or .parquet")
    return _build(
        table,
        name=name,
        text_column=text_column,
        label_column=label_column,
        client_column=client_column,
        min_classes=min_classes,
    )


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"data file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise DataError(f"data file {str(path)!r} is a directory, not a file") from None
    except OSError as exc:
        raise DataError(f"data file {str(path)!r} cannot be read: {exc.strerror}") from None
    if not data.strip():
        raise DataError(f"data file {str(path)!r} is empty")
    return data


def _decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8-sig")  # a BOM (as Excel writes) is not part of the first column's name
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"data file {str(path)!r} is not UTF-8 text: byte {data[exc.start]:#04x} at offset {exc.start} "
            f"(line {line}); save it as UTF-8"
        ) from None


def _read_csv(path: Path, *, delimiter: str) -> _Table:
    text = _decode(_read_bytes(path), path)
    source = f"data file {str(path)!r}"
    limit = csv.field_size_limit()
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long documents in one cell; the default is 128 KiB
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
        try:
            header = next(reader)
            rows: list[_Row] = []
            for record in reader:
                if not any(cell.strip() for cell in record):
                    continue  # a blank line
                if len(record) > len(header):
                    raise DataError(
                        f"{source} line {reader.line_num} has {len(record)} fields; the header has {len(header)}"
                    )
                rows.append(_Row(f"line {reader.line_num}", dict(zip(header, record, strict=False))))
        except csv.Error as exc:
            raise DataError(f"{source} is not valid CSV at line {reader.line_num}: {exc}") from None
    finally:
        csv.field_size_limit(limit)
    columns = tuple(c.strip() for c in header)
    if len(set(columns)) < len(columns):
        duplicated = sorted({c for c in columns if columns.count(c) > 1})
        raise DataError(f"{source} has duplicate column names in its header: {', '.join(map(repr, duplicated))}")
    rows = [_Row(r.where, {k.strip(): v for k, v in r.values.items()}) for r in rows]
    if not rows:
        raise DataError(f"{source} has a header ({', '.join(map(repr, columns))}) but no rows")
    return _Table(source, columns, rows)


def _read_jsonl(path: Path, needed: Sequence[str]) -> _Table:
    text = _decode(_read_bytes(path), path)
    source = f"data file {str(path)!r}"
    rows: list[_Row] = []
    columns: dict[str, None] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{source} line {number} is not valid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(value, dict):
            raise DataError(f"{source} line {number} is a JSON {type(value).__name__}, not an object")
        columns.update(dict.fromkeys(value))
        rows.append(_Row(f"line {number}", value))
    for row in rows:  # every needed column must be in every row: a missing key is a missing value
        for column in needed:
            if column not in row.values and column in columns:
                raise DataError(f"{source} {row.where} has no key {column!r}")
    return _Table(source, tuple(columns), rows)


def _read_parquet(path: Path, needed: Sequence[str]) -> _Table:
    try:
        import pyarrow.parquet as pq  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise ImportError(
            f"reading the Parquet file {str(path)!r} (data.path) needs pyarrow: pip install pyarrow"
        ) from None
    source = f"data file {str(path)!r}"
    _read_bytes(path)  # missing, a directory or empty: the same messages as the other formats
    try:
        columns = tuple(pq.read_schema(path).names)
        present = [c for c in needed if c in columns]
        table = pq.read_table(path, columns=present)
    except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
        raise DataError(f"{source} cannot be read as Parquet: {exc}") from None
    values = {c: table.column(c).to_pylist() for c in present}
    rows = [_Row(f"row {i}", {c: values[c][i] for c in present}) for i in range(table.num_rows)]
    if not rows:
        raise DataError(f"{source} has columns ({', '.join(map(repr, columns))}) but no rows")
    return _Table(source, columns, rows)


def load_hf_dir(
    path: str | Path,
    *,
    name: str,
    text_column: str = "text",
    label_column: str = "label",
    client_column: str = "",
    min_classes: int = 2,
) -> Dataset:
    """Read a ``datasets`` dataset saved with ``save_to_disk`` (offline) into a text-classification :class:`Dataset`.

    A ``DatasetDict`` contributes every split, in sorted split order. A
    ``ClassLabel`` label column keeps its class names. ``min_classes`` as for
    :func:`load_table_file`.

    Raises:
        DataError: see the module doc.
        ImportError: ``datasets`` is not installed.
    """
    try:
        import datasets  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise ImportError(
            f"reading the saved Hugging Face dataset {str(path)!r} (data.name 'hf:<dir>') needs the datasets "
            "package: pip install datasets"
        ) from None
    path = Path(path)
    source = f"saved dataset {str(path)!r}"
    if not path.is_dir():
        raise DataError(f"{source} is not a directory (data.name 'hf:<dir>' names a save_to_disk directory)")
    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise DataError(f"{source} cannot be read with datasets.load_from_disk: {exc}") from None
    parts = (
        [(str(split), loaded[split]) for split in sorted(loaded)]
        if isinstance(loaded, datasets.DatasetDict)
        else [("", loaded)]
    )
    columns = tuple(dict.fromkeys(c for _, part in parts for c in part.column_names))
    needed = [c for c in (text_column, label_column, client_column) if c and c in columns]
    rows: list[_Row] = []
    label_names: tuple[str, ...] | None = None
    for split, part in parts:
        missing = [c for c in needed if c not in part.column_names]
        if missing:
            raise DataError(f"{source} split {split!r} has no column {missing[0]!r}")
        feature = part.features.get(label_column)
        if isinstance(feature, datasets.ClassLabel):
            names = tuple(str(n) for n in feature.names)
            if label_names is not None and names != label_names:
                raise DataError(f"{source}: the splits' {label_column!r} columns have different class names")
            label_names = names
        values = {c: part[c] for c in needed}
        prefix = f"split {split!r} row" if split else "row"
        rows += [_Row(f"{prefix} {i}", {c: values[c][i] for c in needed}) for i in range(part.num_rows)]
    if not rows:
        raise DataError(f"{source} has columns ({', '.join(map(repr, columns))}) but no rows")
    return _build(
        _Table(source, columns, rows, label_names),
        name=name,
        text_column=text_column,
        label_column=label_column,
        client_column=client_column,
        min_classes=min_classes,
    )


def _check_columns(table: _Table, **columns: str) -> None:
    for field, column in columns.items():
        if column and column not in table.columns:
            found = ", ".join(map(repr, table.columns[:30])) + (", ..." if len(table.columns) > 30 else "")
            raise DataError(f"{table.source} has no column {column!r} (data.{field}); columns found: {found}")


def _cell(table: _Table, row: _Row, column: str, *, kind: str) -> Any:
    value = row.values.get(column)
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{table.source} {row.where} column {column!r} is not UTF-8 text (byte {value[exc.start]:#04x} at "
                f"offset {exc.start})"
            ) from None
    if kind == "text":
        if value is not None and not isinstance(value, str):
            raise DataError(
                f"{table.source} {row.where} column {column!r} holds {type(value).__name__} {value!r:.60}, not text"
            )
        return value or ""
    # labels and clients: a string or an integer, never missing
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        found = "nothing" if value is None else f"{type(value).__name__} {value!r:.60}"
        raise DataError(
            f"{table.source} {row.where} column {column!r} ({kind}) must be text or an integer; got {found}"
        )
    if isinstance(value, str) and not value.strip():
        raise DataError(f"{table.source} {row.where} has an empty {kind} in column {column!r}")
    return value.strip() if isinstance(value, str) else value


def _class_names(labels: Sequence[str | int]) -> tuple[list[str], tuple[str, ...]]:
    """Labels as strings and the sorted class names (numeric order when every label is an integer)."""
    as_text = [str(label) for label in labels]
    distinct = set(as_text)
    if all(isinstance(label, int) or _INTEGER.fullmatch(str(label)) for label in labels):
        by_value = {int(t): t for t in distinct}
        if len(by_value) < len(distinct):  # "1" and "01": keep them apart, sorted as text
            return as_text, tuple(sorted(distinct))
        return as_text, tuple(by_value[v] for v in sorted(by_value))
    return as_text, tuple(sorted(distinct))


def _build(
    table: _Table, *, name: str, text_column: str, label_column: str, client_column: str, min_classes: int
) -> Dataset:
    if isinstance(min_classes, bool) or not isinstance(min_classes, int) or min_classes < 1:
        raise ValueError(f"min_classes must be an integer >= 1; got {min_classes!r}")
    _check_columns(table, text_column=text_column, label_column=label_column, client_column=client_column)
    texts: list[str] = []
    labels: list[str | int] = []
    groups: list[str] | None = [] if client_column else None
    blank: list[str] = []
    for row in table.rows:
        text = _cell(table, row, text_column, kind="text")
        label = _cell(table, row, label_column, kind="label")
        group = _cell(table, row, client_column, kind="client") if client_column else None
        if not text.strip():
            blank.append(row.where)
            continue
        texts.append(text.strip())
        labels.append(label)
        if groups is not None:
            groups.append(str(group))
    if blank:
        warnings.warn(
            f"{table.source}: dropped {len(blank)} row(s) with an empty text in column {text_column!r} "
            f"(first at {blank[0]})",
            UserWarning,
            stacklevel=4,
        )
    if not texts:
        raise DataError(f"{table.source} has no row with text in column {text_column!r}")
    if table.label_names is not None:
        names = table.label_names
        index = _class_label_indices(table, labels, label_column)
    else:
        label_text, names = _class_names(labels)
        position = {label: i for i, label in enumerate(names)}
        index = [position[label] for label in label_text]
    kept_texts, kept_index, kept_groups = _dedupe(texts, [str(i) for i in index], groups)
    duplicates = len(texts) - len(kept_texts)
    if duplicates:
        warnings.warn(
            f"{table.source}: dropped {duplicates} row(s) whose text repeats an earlier row's (first kept)",
            UserWarning,
            stacklevel=4,
        )
    present = sorted({int(i) for i in kept_index})
    if len(present) < min_classes:
        found = ", ".join(repr(names[i]) for i in present[:5]) + (", ..." if len(present) > 5 else "")
        count = "one class only" if len(present) == 1 else f"{len(present)} classes only"
        raise DataError(
            f"{table.source} column {label_column!r} (data.label_column) has {count} "
            f"({found} in {len(kept_texts)} rows); classification needs at least {min_classes}"
        )
    return Dataset(
        name=name,
        modality="text",
        texts=tuple(kept_texts),
        labels=np.array([int(i) for i in kept_index], dtype=np.int64),
        label_names=names,
        groups=None if kept_groups is None else np.array(kept_groups, dtype=np.str_),
        source=table.source,
        license="the user's own data",
    )


def _class_label_indices(table: _Table, labels: Sequence[str | int], column: str) -> list[int]:
    assert table.label_names is not None
    out = []
    for label in labels:
        if isinstance(label, str):  # a ClassLabel column holds ints; tolerate its names too
            if label not in table.label_names:
                raise DataError(f"{table.source} column {column!r} holds {label!r}, not one of its class names")
            out.append(table.label_names.index(label))
        elif not 0 <= label < len(table.label_names):
            raise DataError(
                f"{table.source} column {column!r} holds {label}, outside its {len(table.label_names)} classes"
            )
        else:
            out.append(label)
    return out
