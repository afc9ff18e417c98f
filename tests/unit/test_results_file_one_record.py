"""``ResultsFile(..., one=True)``: a result file that is one record (``exposure_results.json``), kept by key."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from attacks.driver import ResultsFile
from privfed import ConfigError


def _key(record: Mapping[str, Any]) -> Any:
    return record.get("setting")


def test_one_record_file_is_an_object_replaced_by_each_add(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    results = ResultsFile(path, key=_key, one=True)
    assert results.finished("a") is None
    results.add({"setting": "a", "value": 1.5})
    assert path.read_text() == json.dumps({"setting": "a", "value": 1.5}, indent=1)  # the bytes json.dumps writes
    results.add({"setting": "b", "value": 2.5})
    assert json.loads(path.read_text()) == {"setting": "b", "value": 2.5}
    assert results.close() == [{"setting": "b", "value": 2.5}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]

    again = ResultsFile(path, key=_key, one=True)
    assert again.finished("b") == {"setting": "b", "value": 2.5} and again.finished("a") is None
    assert again.close() == [] and json.loads(path.read_text()) == {"setting": "b", "value": 2.5}  # left as it was


def test_one_record_mode_still_reads_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"r\.json is not a results file of this command"):
        ResultsFile(path, key=_key, one=True)
    path.write_text('{"setting": "a"}')
    with pytest.raises(ConfigError):
        ResultsFile(path, key=_key)  # a list file does not take one record
