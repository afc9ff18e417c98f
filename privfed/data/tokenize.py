"""Tokenization with an on-disk cache.

Texts are tokenized once per (tokenizer, max_length, texts) and stored as a
``.npz`` of int32/int8 arrays (loaded with ``allow_pickle=False``) under
``cache_dir()/tokenized``. Arrays are right-padded to the longest example, and
batches are trimmed to their own longest example at batch time.

The cache is never trusted: an entry is named by a content hash of the texts,
the tokenizer (its full serialized vocabulary and rules when it has one) and
``max_length``; it stores that key and is checked on load (key, shapes, dtypes,
right padding, id range). An entry that fails a check (garbage, empty, another
entry's content, the wrong shape) is rebuilt with a warning, and entries are
written to a temporary file and renamed into place, so a crash never leaves a
half-written entry under the final name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from privfed.errors import DataError
from privfed.paths import cache_dir

__all__ = ["TokenizedTexts", "tokenize_texts"]

# Bump when the stored layout or the tokenization call changes: old entries are then never read.
_FORMAT = "privfed-tokenized-v2"
_KEYS = frozenset({"input_ids", "attention_mask", "key"})


@dataclasses.dataclass(frozen=True, eq=False)
class TokenizedTexts:
    """Token ids of a list of texts.

    Attributes:
        input_ids: int32[n, length], right-padded with the tokenizer's pad id.
        attention_mask: int8[n, length], 1 on real tokens.
    """

    input_ids: npt.NDArray[np.int32]
    attention_mask: npt.NDArray[np.int8]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def take(self, indices: npt.NDArray[np.int64]) -> TokenizedTexts:
        """The rows at ``indices``, trimmed to their longest example."""
        mask = self.attention_mask[indices]
        width = max(1, int(mask.sum(axis=1).max())) if len(indices) else 1
        return TokenizedTexts(self.input_ids[indices, :width], mask[:, :width])


def _tokenizer_fingerprint(tokenizer: Any) -> bytes:
    """What determines the ids a tokenizer gives: its class, rules and vocabulary, pad token and sides."""
    digest = hashlib.sha256()
    for part in (
        type(tokenizer).__name__,
        str(getattr(tokenizer, "name_or_path", "")),
        str(len(tokenizer)),
        str(tokenizer.pad_token_id),
        str(getattr(tokenizer, "padding_side", "")),
        str(getattr(tokenizer, "truncation_side", "")),
    ):
        digest.update(part.encode() + b"\0")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # fast tokenizers: vocabulary, merges, normalizer, post-processor
        state = json.loads(backend.to_str())
        # Truncation and padding are per-call settings the last call leaves behind, not rules.
        state.pop("truncation", None)
        state.pop("padding", None)
        digest.update(json.dumps(state, sort_keys=True).encode())
    elif hasattr(tokenizer, "get_vocab"):
        for token, index in sorted(tokenizer.get_vocab().items()):
            digest.update(f"{token}\0{index}\0".encode())
    return digest.digest()


def _fingerprint(tokenizer: Any, texts: Sequence[str], max_length: int) -> str:
    digest = hashlib.sha256()
    digest.update(_FORMAT.encode() + b"\0")
    digest.update(_tokenizer_fingerprint(tokenizer))
    digest.update(f"{max_length}\0{len(texts)}\0".encode())
    for text in texts:
        digest.update(hashlib.sha256(text.encode("utf-8")).digest())
    return digest.hexdigest()[:32]


def _problem(
    stored: Any, *, key: str, num_texts: int, max_length: int, vocab_size: int
) -> tuple[str | None, TokenizedTexts | None]:
    """Why a loaded cache entry cannot be used (``None`` if it can), and the entry."""
    if set(stored.files) != _KEYS:
        return f"holds arrays {sorted(stored.files)}, expected {sorted(_KEYS)}", None
    stored_key = stored["key"]
    if stored_key.shape != () or str(stored_key) != key:
        return "belongs to other texts or another tokenizer (key mismatch)", None
    ids, mask = stored["input_ids"], stored["attention_mask"]
    if ids.dtype != np.int32 or mask.dtype != np.int8:
        return f"has dtypes {ids.dtype}/{mask.dtype}, expected int32/int8", None
    if ids.ndim != 2 or ids.shape != mask.shape:
        return f"has shapes {ids.shape} and {mask.shape}, expected two equal [n, length]", None
    if ids.shape[0] != num_texts or not 1 <= ids.shape[1] <= max_length:
        return f"has shape {ids.shape} for {num_texts} texts of at most {max_length} tokens", None
    if num_texts:
        if not np.isin(mask, (0, 1)).all() or (np.diff(mask.astype(np.int16), axis=1) > 0).any():
            return "has an attention mask that is not right-padded 0/1", None
        if not mask[:, 0].all():
            return "has a text with no tokens", None
        if ids.min() < 0 or ids.max() >= vocab_size:
            return f"has token ids outside [0, {vocab_size})", None
    return None, TokenizedTexts(np.ascontiguousarray(ids), np.ascontiguousarray(mask))


def _load_entry(path: Path, *, key: str, num_texts: int, max_length: int, vocab_size: int) -> TokenizedTexts | None:
    """The cached entry at ``path``, or ``None`` (with a warning if a bad file was there)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            problem, result = _problem(
                stored, key=key, num_texts=num_texts, max_length=max_length, vocab_size=vocab_size
            )
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        problem, result = f"cannot be read ({type(exc).__name__}: {exc})", None
    if problem is not None:
        warnings.warn(f"tokenization cache entry {str(path)!r} {problem}; rebuilding it", stacklevel=3)
    return result


def _store_entry(path: Path, result: TokenizedTexts, key: str) -> None:
    """Write atomically (temporary file in the same folder, fsync, rename); warn and go on if it fails."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, input_ids=result.input_ids, attention_mask=result.attention_mask, key=np.array(key))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        warnings.warn(f"tokenization cache {str(path.parent)!r} is not writable ({exc}); not caching", stacklevel=3)
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def tokenize_texts(
    tokenizer: Any, texts: Sequence[str], *, max_length: int, cache: bool = True, cache_root: Path | None = None
) -> TokenizedTexts:
    """Tokenize ``texts`` (truncating to ``max_length`` tokens), using the cache when allowed.

    Returns:
        int32[n, length] ids and int8[n, length] mask, right-padded, ``length <= max_length``.

    Raises:
        DataError: ``max_length < 1``, or a text gives no tokens at all (an empty
            text has nothing to classify or predict; drop it from the dataset).
    """
    if max_length < 1:
        raise DataError(f"max_length must be >= 1; got {max_length}")
    key = _fingerprint(tokenizer, texts, max_length)
    path = (cache_root or cache_dir() / "tokenized") / f"{key}.npz"
    if cache:
        found = _load_entry(path, key=key, num_texts=len(texts), max_length=max_length, vocab_size=len(tokenizer))
        if found is not None:
            return found
    if not texts:
        result = TokenizedTexts(np.zeros((0, 1), dtype=np.int32), np.zeros((0, 1), dtype=np.int8))
    else:
        encoded = tokenizer(list(texts), truncation=True, max_length=max_length, padding="longest", return_tensors="np")
        result = TokenizedTexts(
            np.ascontiguousarray(encoded["input_ids"], dtype=np.int32),
            np.ascontiguousarray(encoded["attention_mask"], dtype=np.int8),
        )
        lengths = result.attention_mask.sum(axis=1) if result.attention_mask.shape[1] else np.zeros(len(texts))
        empty = np.flatnonzero(lengths == 0)
        if empty.size:
            first = int(empty[0])
            raise DataError(
                f"{empty.size} of {len(texts)} texts give no tokens (the first, index {first}, is "
                f"{texts[first][:40]!r}); drop empty texts from the dataset before tokenizing"
            )
    if cache:
        _store_entry(path, result, key)
    return result
