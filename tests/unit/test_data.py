"""Dataset loaders read the shipped files; tokenization caches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from privfed.data import dataset_names, load_dataset
from privfed.data.loaders import load_fortunes, parse_fortune_file
from privfed.errors import DataError


def test_registry_lists_every_shipped_dataset() -> None:
    assert set(dataset_names()) == {"bbc_news", "tweets", "drug_reviews", "fortunes", "digits", "mnist"}


def test_bbc_news() -> None:
    d = load_dataset("bbc_news")
    assert d.label_names == ("business", "entertainment", "politics", "sports", "tech")
    assert 2100 <= len(d) <= 2225  # 2,225 articles less exact duplicates
    assert len(set(d.texts or ())) == len(d)
    counts = np.bincount(d.labels)
    assert counts.min() > 300 and abs(d.majority_class_rate() - counts.max() / len(d)) < 1e-12


def test_tweets_deduplicated_three_classes() -> None:
    d = load_dataset("tweets")
    assert d.label_names == ("negative", "neutral", "positive")
    assert 36_000 < len(d) < 38_158  # ~915 duplicate texts removed
    assert len({" ".join(t.split()) for t in d.texts or ()}) == len(d)


def test_drug_reviews_have_conditions_and_clean_text() -> None:
    d = load_dataset("drug_reviews")
    assert 950 <= len(d) <= 979
    assert d.groups is not None and len(set(d.groups)) > 150
    assert not any("&#039;" in t for t in d.texts or ())
    assert "Birth Control" in set(d.groups)


def test_image_datasets() -> None:
    digits = load_dataset("digits")
    assert digits.images is not None and digits.images.shape == (1797, 1, 8, 8)
    assert digits.images.min() >= 0.0 and digits.images.max() <= 1.0
    mnist = load_dataset("mnist")
    assert mnist.images is not None and mnist.images.shape == (5000, 1, 28, 28)
    assert np.array_equal(np.bincount(mnist.labels), np.full(10, 500))


def test_fortune_parser_and_loader_on_generated_files(tmp_path: Path) -> None:
    assert parse_fortune_file("one\nline\n%\ntwo\n%\n%\n") == ["one\nline", "two"]
    (tmp_path / "cats").write_text("Meow.\n%\nPurr\nloudly.\n%\n")
    (tmp_path / "cats.dat").write_bytes(b"\x00")
    (tmp_path / "dogs").write_text("Woof.\n%\nMeow.\n")  # duplicate text across files is dropped
    (tmp_path / "dogs.dat").write_bytes(b"\x00")
    (tmp_path / "README").write_text("not a fortune file: no .dat index beside it")
    d = load_fortunes(tmp_path)
    assert d.texts == ("Meow.", "Purr\nloudly.", "Woof.")
    assert d.groups is not None and list(d.groups) == ["cats", "cats", "dogs"]
    assert d.label_names == ("cats", "dogs")
    with pytest.raises(DataError, match="does not exist"):
        load_fortunes(tmp_path / "missing")


def test_debian_fortunes_installed_by_setup() -> None:
    d = load_dataset("fortunes")
    assert len(d) > 10_000
    assert d.groups is not None and len(set(d.groups)) >= 30


def test_tokenization_cache_hits_and_trims(tmp_path: Path) -> None:
    from privfed.data.tokenize import tokenize_texts
    from privfed.models import load_base_model

    tokenizer = load_base_model("tiny-bert", num_labels=2).tokenizer
    texts = ["a short one", "a rather longer sentence with several more words in it", "mid size text"]
    first = tokenize_texts(tokenizer, texts, max_length=8, cache_root=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    assert first.input_ids.shape == (3, 8)  # truncated to max_length
    second = tokenize_texts(tokenizer, texts, max_length=8, cache_root=tmp_path)
    assert np.array_equal(first.input_ids, second.input_ids)
    other = tokenize_texts(tokenizer, texts, max_length=16, cache_root=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 2 and other.input_ids.shape[1] > 8
    short = first.take(np.array([0], dtype=np.int64))
    assert short.attention_mask.all() and short.input_ids.shape[1] == int(first.attention_mask[0].sum())


def test_a_text_dataset_with_empty_texts_is_refused() -> None:
    """Empty texts on the causal LM crashed the run; refuse them where the dataset is built."""
    from privfed.data import Dataset

    labels = np.zeros(3, dtype=np.int64)
    common = {"name": "mine", "modality": "text", "labels": labels, "label_names": ("a",), "source": "", "license": ""}
    with pytest.raises(DataError, match=r"dataset 'mine' has 2 empty text\(s\) \(first at index 1\)"):
        Dataset(texts=("fine", "", "  \n"), **common)  # type: ignore[arg-type]
    assert len(Dataset(texts=("a", "b", "c"), **common)) == 3  # type: ignore[arg-type]


def test_shards_partition_says_how_many_shards_fit() -> None:
    from privfed.data import shards_partition

    labels = np.repeat(np.arange(4, dtype=np.int64), 50)  # 200 examples
    with pytest.raises(DataError) as info:
        shards_partition(labels, num_clients=10, shards_per_client=1000, rng=np.random.default_rng(0))
    message = str(info.value)
    assert "10000 shards" in message and "only 200 training examples" in message
    assert "shards_per_client can be at most 20" in message
    parts = shards_partition(labels, num_clients=10, shards_per_client=20, rng=np.random.default_rng(0))
    assert sorted(np.concatenate(parts).tolist()) == list(range(200))


def test_dirichlet_failure_advice_fits_alpha() -> None:
    """A near-IID split that fails the minimum must not say 'raise alpha'."""
    from privfed.data import dirichlet_partition

    labels = np.repeat(np.arange(2, dtype=np.int64), 50)  # 100 examples, 10 clients: about 10 each
    with pytest.raises(DataError) as info:
        dirichlet_partition(
            labels, num_clients=10, alpha=1000.0, min_examples=10, rng=np.random.default_rng(0), max_attempts=20
        )
    message = str(info.value)
    assert "raise partition.alpha" not in message and "already close to IID" in message
    assert "partition.min_examples_per_client" in message
    with pytest.raises(DataError, match=r"raise partition\.alpha \(now 0\.001\)"):
        dirichlet_partition(
            labels, num_clients=10, alpha=1e-3, min_examples=5, rng=np.random.default_rng(0), max_attempts=20
        )
