"""Tokenization with an on-disk cache.

Texts are tokenized once per (tokenizer, max_length, texts) and stored as a
``.npz`` of int32 arrays (loaded with ``allow_pickle=False``) under
``cache_dir()/tokenized``. Arrays are right-padded to the longest example, and
batches are trimmed to their own longest example at batch time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from privfed.paths import cache_dir

__all__ = ["TokenizedTexts", "tokenize_texts"]


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


def _fingerprint(tokenizer: Any, texts: Sequence[str], max_length: int) -> str:
    digest = hashlib.sha256()
    digest.update(type(tokenizer).__name__.encode())
    digest.update(str(getattr(tokenizer, "name_or_path", "")).encode())
    digest.update(str(len(tokenizer)).encode())
    digest.update(str(tokenizer.pad_token_id).encode())
    digest.update(str(max_length).encode())
    for text in texts:
        digest.update(hashlib.sha256(text.encode("utf-8")).digest())
    return digest.hexdigest()[:32]


def tokenize_texts(
    tokenizer: Any, texts: Sequence[str], *, max_length: int, cache: bool = True, cache_root: Path | None = None
) -> TokenizedTexts:
    """Tokenize ``texts`` (truncating to ``max_length`` tokens), using the cache when allowed."""
    path = (cache_root or cache_dir() / "tokenized") / f"{_fingerprint(tokenizer, texts, max_length)}.npz"
    if cache and path.exists():
        with np.load(path, allow_pickle=False) as stored:
            return TokenizedTexts(stored["input_ids"], stored["attention_mask"])
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, padding="longest", return_tensors="np")
    result = TokenizedTexts(
        np.ascontiguousarray(encoded["input_ids"], dtype=np.int32),
        np.ascontiguousarray(encoded["attention_mask"], dtype=np.int8),
    )
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".npz", dir=path.parent)
        os.close(fd)
        np.savez(tmp, input_ids=result.input_ids, attention_mask=result.attention_mask)
        os.replace(tmp, path)
    return result
