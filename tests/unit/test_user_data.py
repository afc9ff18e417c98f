"""Users' own data: CSV/TSV/JSONL/Parquet files and saved ``datasets`` directories, written by the tests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from privfed.config import DataConfig, config_from_dict, config_to_dict
from privfed.data import dataset_spec_for, load_data, load_hf_dir, load_table_file
from privfed.errors import ConfigError, DataError


def _csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_labels_clients_blank_and_duplicate_rows(tmp_path: Path) -> None:
    path = _csv(
        tmp_path / "r.csv",
        "review,stars,site\n"
        "good food,pos,a\n"
        "cold soup,neg,b\n"
        "   ,neg,a\n"  # blank text: dropped
        "good   food,neg,c\n"  # duplicate after whitespace normalisation: dropped
        '"two\nlines",pos,b\n',
    )
    with pytest.warns(UserWarning) as caught:
        d = load_table_file(path, name="r", text_column="review", label_column="stars", client_column="site")
    messages = [str(w.message) for w in caught]
    assert any("dropped 1 row(s) with an empty text" in m and "line 4" in m for m in messages), messages
    assert any("dropped 1 row(s) whose text repeats" in m for m in messages), messages
    assert d.texts == ("good food", "cold soup", "two\nlines")
    assert d.label_names == ("neg", "pos")
    assert d.labels.tolist() == [1, 0, 1]
    assert d.groups is not None and d.groups.tolist() == ["a", "b", "b"]
    assert d.modality == "text" and d.name == "r"


def test_integer_labels_sort_numerically(tmp_path: Path) -> None:
    path = _csv(tmp_path / "n.csv", "text,label\n" + "".join(f"t{i},{i % 11}\n" for i in range(22)))
    d = load_table_file(path, name="n")
    assert d.label_names == tuple(str(i) for i in range(11))  # "10" after "9", not after "1"
    assert [d.label_names[label] for label in d.labels[:11]] == [str(i) for i in range(11)]


def test_tsv_and_jsonl(tmp_path: Path) -> None:
    tsv = _csv(tmp_path / "t.tsv", "text\tlabel\nhello, world\t1\nbye\t0\n")
    d = load_table_file(tsv, name="t")
    assert d.texts == ("hello, world", "bye") and d.labels.tolist() == [1, 0]
    jsonl = tmp_path / "j.jsonl"
    rows = [{"text": "a b", "label": 3, "user": 7}, {"text": "c d", "label": 1, "user": "x"}, {"text": "e", "label": 3}]
    jsonl.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n\n", encoding="utf-8")
    d = load_table_file(jsonl, name="j", client_column="user")
    assert d.label_names == ("1", "3") and d.labels.tolist() == [1, 0]
    assert d.groups is not None and d.groups.tolist() == ["7", "x"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", ["is empty"]),
        (b"\n  \n", ["is empty"]),
        (b"text,label\n", ["header", "no rows"]),
        (b"text,label\nok,a\nbad \xff byte,b\n", ["not UTF-8", "0xff", "offset 20", "line 3"]),
        (b"text,label\nx,a\ny,a\n", ["one class only", "'a'", "data.label_column"]),
        (b"text,label\n ,a\n\t,b\n", ["no row with text"]),
        (b"text,label\nx,\ny,b\n", ["line 2", "empty label", "'label'"]),
        (b"text,label\nx,a,extra\n", ["line 2", "3 fields"]),
    ],
)
@pytest.mark.filterwarnings("ignore:.*dropped .* row")
def test_csv_errors_are_one_line_and_say_where(tmp_path: Path, content: bytes, expected: list[str]) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_table_file(path, name="bad")
    message = str(info.value)
    assert "\n" not in message and "bad.csv" in message
    for part in expected:
        assert part in message, (part, message)


def test_missing_file_and_missing_column_list_what_was_found(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_data(DataConfig(path=str(tmp_path / "nope.csv")))
    path = _csv(tmp_path / "c.csv", "body,label,city\nx,a\ny,b\n")
    with pytest.raises(DataError) as info:
        load_table_file(path, name="c")
    message = str(info.value)
    assert "no column 'text' (data.text_column)" in message and "'body', 'label', 'city'" in message
    with pytest.raises(DataError, match=r"no column 'site' \(data\.client_column\)"):
        load_table_file(path, name="c", text_column="body", client_column="site")


def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": \n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        load_table_file(path, name="j")
    path.write_text('{"text": "a", "label": 1}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2 is a JSON list, not an object"):
        load_table_file(path, name="j")
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 1.5}\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2 column 'label' \\(label\\) must be text or an integer; got float"):
        load_table_file(path, name="j")
    path.write_text('{"text": "a", "label": 1}\n{"text": 5, "label": 0}\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2 column 'text' holds int"):
        load_table_file(path, name="j")


def test_load_data_memo_sees_an_edited_file(tmp_path: Path) -> None:
    path = _csv(tmp_path / "m.csv", "text,label\na,x\nb,y\n")
    config = DataConfig(path=str(path))
    assert load_data(config) is load_data(config)
    _csv(path, "text,label\na,x\nb,y\nc,y\n")
    assert len(load_data(config)) == 3


def test_data_config_rules() -> None:
    c = DataConfig(path="data/reviews.csv")
    assert c.name == "reviews" and c.user_data  # label defaults to the file's name
    assert DataConfig(path="x.csv", name="my run").name == "my run"
    assert DataConfig(name="hf:/some/dir").hf_dir == "/some/dir"
    for kwargs, field in [
        ({"path": "notes.txt"}, "data.path"),
        ({"path": "a.csv", "name": "hf:/d"}, "data.path"),
        ({"name": "hf:"}, "data.name"),
        ({"name": "nope"}, "data.name"),
        ({"client_column": "site"}, "data.client_column"),
        ({"path": "a.csv", "text_column": "x", "label_column": "x"}, "data.text_column"),
    ]:
        with pytest.raises(ConfigError, match=field.replace(".", "\\.")):
            config_from_dict({"data": kwargs})
    # The resolved config keeps the label and reloads to the same config.
    config = config_from_dict({"data": {"path": "tweets.csv", "client_column": "user"}})
    assert config_from_dict(config_to_dict(config)) == config
    assert dataset_spec_for(config.data).task == "classification"


def test_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "p.parquet"
    table = pa.table({"text": ["a b", "c d", "", "e f"], "label": [2, 0, 0, 2], "client": ["u", "v", "u", "v"]})
    pq.write_table(table, path)
    with pytest.warns(UserWarning, match="dropped 1 row"):
        d = load_table_file(path, name="p", client_column="client")
    assert d.texts == ("a b", "c d", "e f") and d.label_names == ("0", "2") and d.labels.tolist() == [1, 0, 1]
    with pytest.raises(DataError, match=r"no column 'label2'.*columns found: 'text', 'label', 'client'"):
        load_table_file(path, name="p", label_column="label2")
    pq.write_table(pa.table({"text": pa.array([b"ok", b"\xfe"]), "label": [0, 1]}), path)
    with pytest.raises(DataError, match="row 1 column 'text' is not UTF-8"):
        load_table_file(path, name="p")


def test_hf_saved_dataset(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"sentence": datasets.Value("string"), "y": datasets.ClassLabel(names=["no", "yes"])})
    train = datasets.Dataset.from_dict({"sentence": ["a", "b", "c"], "y": [0, 1, 1]}, features=features)
    test = datasets.Dataset.from_dict({"sentence": ["d", "a"], "y": [1, 0]}, features=features)
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "hf"))
    config = DataConfig(name=f"hf:{tmp_path / 'hf'}", text_column="sentence", label_column="y")
    with pytest.warns(UserWarning, match="dropped 1 row"):
        d = load_data(config)
    # splits in sorted order (test, train); the duplicate "a" of train is dropped
    assert d.texts == ("d", "a", "b", "c") and d.label_names == ("no", "yes")
    assert d.labels.tolist() == [1, 0, 1, 1]
    with pytest.raises(DataError, match="not a directory"):
        load_hf_dir(tmp_path / "missing", name="x")


def test_missing_optional_packages_say_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    monkeypatch.setitem(sys.modules, "datasets", None)
    (tmp_path / "p.parquet").write_bytes(b"PAR1")
    with pytest.raises(ImportError, match="pip install pyarrow"):
        load_table_file(tmp_path / "p.parquet", name="p")
    with pytest.raises(ImportError, match="pip install datasets"):
        load_hf_dir(tmp_path, name="h")


def test_labels_are_int64_and_groups_align(tmp_path: Path) -> None:
    rows = "".join(f"text {i},{'abc'[i % 3]},c{i % 5}\n" for i in range(30))
    d = load_table_file(_csv(tmp_path / "g.csv", "text,label,g\n" + rows), name="g", client_column="g")
    assert d.labels.dtype == np.int64 and len(d) == 30
    assert d.groups is not None
    assert all(d.groups[i] == f"c{int(d.texts[i].split()[1]) % 5}" for i in range(30))


def test_min_classes_lets_one_clients_file_hold_a_single_class(tmp_path: Path) -> None:
    path = _csv(tmp_path / "one.csv", "text,label\nx,b\ny,b\nz,b\n")
    with pytest.raises(DataError, match=r"has one class only \('b' in 3 rows\); classification needs at least 2"):
        load_table_file(path, name="one")  # the default: a dataset a run is split from needs 2
    d = load_table_file(path, name="one", min_classes=1)
    assert d.label_names == ("b",) and d.labels.tolist() == [0, 0, 0] and d.texts == ("x", "y", "z")
    two = _csv(tmp_path / "two.csv", "text,label\nx,a\ny,b\n")
    with pytest.raises(DataError, match=r"has 2 classes only \('a', 'b' in 2 rows\); classification needs at least 3"):
        load_table_file(two, name="two", min_classes=3)
    with pytest.raises(ValueError, match="min_classes must be an integer >= 1; got 0"):
        load_table_file(two, name="two", min_classes=0)


def test_min_classes_for_a_saved_dataset(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["a", "b"], "label": ["pos", "pos"]}).save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(DataError, match="one class only"):
        load_hf_dir(tmp_path / "hf", name="h")
    assert load_hf_dir(tmp_path / "hf", name="h", min_classes=1).label_names == ("pos",)
