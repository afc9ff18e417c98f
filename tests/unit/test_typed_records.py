"""Typed records beyond the run's own (test_records.py): privacy events' JSON, the across-seed interval,
membership metrics and a read-back summary hold exactly their TypedDict's keys, in order, and write the
bytes the untyped versions wrote."""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from attacks.metrics import MembershipMetricsRecord, membership_metrics
from privfed.experiments import RunDirectory, RunSummary
from privfed.experiments.sweep import SeedInterval, seed_interval
from privfed.privacy import (
    DistributedNoiseEvent,
    DistributedNoiseEventJSON,
    SampledGaussianEvent,
    SampledGaussianEventJSON,
)
from privfed.privacy.events import event_from_json


def _keys(record_type: Any) -> list[str]:
    return list(typing.get_type_hints(record_type))


EVENTS = [
    SampledGaussianEvent(noise_multiplier=1.1, sample_rate=0.01, steps=40, scope="sample", subject=3, round=2),
    SampledGaussianEvent(noise_multiplier=0.7, sample_rate=1.0, steps=1, scope="user"),
    DistributedNoiseEvent(
        mechanism="skellam", noise_multiplier=0.9, sample_rate=0.1, steps=5, shares=8, l2_sensitivity=3.5, dim=64
    ),
    DistributedNoiseEvent(
        mechanism="distributed_gaussian",
        noise_multiplier=1.3,
        sample_rate=0.5,
        steps=2,
        shares=1,
        l2_sensitivity=10.0,
        dim=7,
        round=9,
    ),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_event_json_is_the_declared_keys_and_the_bytes_asdict_wrote(event: Any) -> None:
    raw = event.to_json()
    declared = SampledGaussianEventJSON if isinstance(event, SampledGaussianEvent) else DistributedNoiseEventJSON
    assert list(raw) == _keys(declared) == [f.name for f in dataclasses.fields(event)]
    assert json.dumps(raw) == json.dumps(dataclasses.asdict(event))  # a checkpoint's ledger, byte for byte
    assert event_from_json(json.loads(json.dumps(raw))) == event


def test_seed_interval_keys_and_numbers() -> None:
    for values in ([], [2.0], [1.0, 2.0, 3.0]):
        assert list(seed_interval(values)) == _keys(SeedInterval)
    empty = seed_interval([None, float("nan")])
    assert empty["n"] == 0 and empty["mean"] is None and empty["ci95_half_width"] is None
    one = seed_interval([2.0, None])
    assert one["mean"] == 2.0 and one["std"] is None and one["ci95_low"] is None
    three = seed_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t_{0.975, 2} * s / sqrt(n), s = 1
    assert three["values"] == [1.0, 2.0, 3.0] and three["std"] == pytest.approx(1.0)
    assert three["ci95_half_width"] == pytest.approx(half)
    assert (three["ci95_low"], three["ci95_high"]) == pytest.approx((2.0 - half, 2.0 + half))


def test_membership_metrics_record_keys_in_order_and_unresolvable_tprs_are_none() -> None:
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(1.0, 1.0, 50), rng.normal(0.0, 1.0, 200)])
    members = np.arange(250) < 50
    record = membership_metrics(scores, members).to_dict()
    assert list(record) == _keys(MembershipMetricsRecord)
    # 200 non-members resolve FPR 1% (2 of them) but not 0.1%: that TPR and its interval are None.
    assert record["tpr_at_0.1pct_fpr"] is None and record["tpr_at_0.1pct_fpr_ci95"] is None
    assert record["tpr_at_1pct_fpr"] is not None and record["tpr_at_1pct_fpr_ci95"] is not None
    low, high = record["tpr_at_1pct_fpr_ci95"]
    assert 0.0 <= low <= record["tpr_at_1pct_fpr"] <= high <= 1.0
    assert record["min_resolvable_fpr"] == 1 / 200 and (record["num_members"], record["num_nonmembers"]) == (50, 200)
    assert 0.5 < record["auc"] < 1.0


def test_read_summary_returns_the_file_as_written(tmp_path: Path) -> None:
    # RunSummary's keys in order (what test_records.py checks a run writes), read back unchanged.
    summary = {key: None for key in _keys(RunSummary)} | {"completed": True, "name": "x"}
    (tmp_path / RunDirectory.SUMMARY).write_text(json.dumps(summary, indent=1))
    read = RunDirectory(tmp_path).read_summary()
    assert read == summary and list(read) == _keys(RunSummary)
    assert RunDirectory(tmp_path).is_completed()
