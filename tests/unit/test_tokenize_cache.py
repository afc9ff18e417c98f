"""The tokenization cache is checked, never trusted: bad entries are rebuilt with a warning."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from privfed.data.tokenize import TokenizedTexts, tokenize_texts
from privfed.errors import DataError

TEXTS = ["the first example text", "a second, somewhat longer example text here"]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from privfed.models import load_base_model

    return load_base_model("tiny-bert", num_labels=2).tokenizer


def _fresh(tokenizer: Any, texts: list[str] = TEXTS, max_length: int = 16) -> TokenizedTexts:
    return tokenize_texts(tokenizer, texts, max_length=max_length, cache=False)


def _entry(root: Path) -> Path:
    (path,) = root.glob("*.npz")
    return path


def _same(a: TokenizedTexts, b: TokenizedTexts) -> bool:
    return (
        a.input_ids.dtype == b.input_ids.dtype
        and a.attention_mask.dtype == b.attention_mask.dtype
        and np.array_equal(a.input_ids, b.input_ids)
        and np.array_equal(a.attention_mask, b.attention_mask)
    )


def _bad_entry(path: Path, kind: str) -> None:
    if kind == "garbage":
        path.write_bytes(b"\x89not a zip file at all" * 10)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif kind == "five_rows":  # the case: 5 rows stored for 2 texts, used silently
        with np.load(path) as stored:
            key = stored["key"]
        ids = np.ones((5, 4), dtype=np.int32)
        np.savez(path.with_suffix(".tmp.npz"), input_ids=ids, attention_mask=np.ones((5, 4), np.int8), key=key)
        path.with_suffix(".tmp.npz").replace(path)
    elif kind == "wrong_dtype":
        with np.load(path) as stored:
            arrays = {name: stored[name] for name in stored.files}
        arrays["input_ids"] = arrays["input_ids"].astype(np.float64)
        np.savez(path.with_suffix(".tmp.npz"), **arrays)
        path.with_suffix(".tmp.npz").replace(path)
    elif kind == "ids_out_of_range":
        with np.load(path) as stored:
            arrays = {name: stored[name] for name in stored.files}
        arrays["input_ids"][0, 0] = 10**9
        np.savez(path.with_suffix(".tmp.npz"), **arrays)
        path.with_suffix(".tmp.npz").replace(path)
    elif kind == "left_padded":
        with np.load(path) as stored:
            arrays = {name: stored[name] for name in stored.files}
        arrays["attention_mask"] = arrays["attention_mask"][:, ::-1].copy()
        np.savez(path.with_suffix(".tmp.npz"), **arrays)
        path.with_suffix(".tmp.npz").replace(path)
    elif kind == "no_key":  # the old format: arrays without the key that names them
        with np.load(path) as stored:
            ids, mask = stored["input_ids"], stored["attention_mask"]
        np.savez(path.with_suffix(".tmp.npz"), input_ids=ids, attention_mask=mask)
        path.with_suffix(".tmp.npz").replace(path)
    else:  # pragma: no cover
        raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    ["garbage", "empty", "truncated", "five_rows", "wrong_dtype", "ids_out_of_range", "left_padded", "no_key"],
)
def test_a_bad_entry_is_rebuilt_with_a_warning(tokenizer: Any, tmp_path: Path, kind: str) -> None:
    expected = _fresh(tokenizer)
    first = tokenize_texts(tokenizer, TEXTS, max_length=16, cache_root=tmp_path)
    assert _same(first, expected)
    path = _entry(tmp_path)
    _bad_entry(path, kind)
    with pytest.warns(UserWarning, match="tokenization cache entry .* rebuilding it"):
        rebuilt = tokenize_texts(tokenizer, TEXTS, max_length=16, cache_root=tmp_path)
    assert _same(rebuilt, expected)
    # ... and the rebuilt entry is good again: the next run reads it without a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = tokenize_texts(tokenizer, TEXTS, max_length=16, cache_root=tmp_path)
    assert _same(again, expected)


def test_another_entry_copied_under_this_name_is_not_used(tokenizer: Any, tmp_path: Path) -> None:
    """A file with the right format but another entry's content (other texts) is caught by its key."""
    other_root = tmp_path / "other"
    tokenize_texts(tokenizer, ["one text", "two text"], max_length=16, cache_root=other_root)
    tokenize_texts(tokenizer, TEXTS, max_length=16, cache_root=tmp_path)
    shutil.copyfile(_entry(other_root), _entry(tmp_path))
    with pytest.warns(UserWarning, match="key mismatch"):
        result = tokenize_texts(tokenizer, TEXTS, max_length=16, cache_root=tmp_path)
    assert _same(result, _fresh(tokenizer))


def test_the_key_covers_texts_length_and_tokenizer(tokenizer: Any, tmp_path: Path) -> None:
    tokenize_texts(tokenizer, TEXTS, max_length=16, cache_root=tmp_path)
    tokenize_texts(tokenizer, TEXTS, max_length=8, cache_root=tmp_path)
    tokenize_texts(tokenizer, [*TEXTS[:1], TEXTS[1] + "!"], max_length=16, cache_root=tmp_path)
    tokenize_texts(tokenizer, TEXTS[::-1], max_length=16, cache_root=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 4
    # Same name and size, different vocabulary: a different entry.
    changed = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    changed.add_tokens(["zzqqxx"])
    changed_result = tokenize_texts(changed, ["zzqqxx " + TEXTS[0]], max_length=16, cache_root=tmp_path)
    plain_result = tokenize_texts(tokenizer, ["zzqqxx " + TEXTS[0]], max_length=16, cache_root=tmp_path)
    assert not np.array_equal(changed_result.input_ids, plain_result.input_ids)


def test_entries_are_written_atomically(tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed write leaves no entry and no temporary file; the run goes on uncached."""

    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", fail)
    with pytest.warns(UserWarning, match="not caching"):
        result = tokenize_texts(tokenizer, TEXTS, max_length=16, cache_root=tmp_path)
    assert _same(result, _fresh(tokenizer))
    assert list(tmp_path.iterdir()) == []


def test_texts_without_tokens_are_refused(tmp_path: Path) -> None:
    """Empty texts on the causal LM crashed the run (a [n, 0] batch)."""
    from privfed.models.builtin import smollm2_tokenizer

    tokenizer = smollm2_tokenizer()
    assert tokenizer("")["input_ids"] == []  # no BOS: an empty text has no tokens at all
    with pytest.raises(DataError, match=r"1 of 3 texts give no tokens \(the first, index 1"):
        tokenize_texts(tokenizer, ["hello there", "", "more text"], max_length=16, cache_root=tmp_path)
    with pytest.raises(DataError, match="2 of 2 texts give no tokens"):
        tokenize_texts(tokenizer, ["", ""], max_length=16, cache_root=tmp_path)
    assert list(tmp_path.glob("*.npz")) == []
