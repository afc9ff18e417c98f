"""End-to-end runs with upload compression (issue 16)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from privfed.compression import packed_size, padded_dim
from privfed.experiments import run_experiment
from tests.conftest import tiny_config

BASE = {"server.weighting": "uniform", "server.clients_per_round": 5, "secagg.clip": 0.5}


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_secagg_with_rotation_at_16_bits_matches_32_bits_without(tmp_path: Path) -> None:
    wide = run_experiment(tiny_config(**BASE, **{"secagg.enabled": True}), tmp_path / "w", quiet=True)
    narrow = run_experiment(
        tiny_config(
            **{**BASE, "secagg.enabled": True, "secagg.bits": 16, "compression.rotation": True, "secagg.clip": 0.05}
        ),
        tmp_path / "n",
        quiet=True,
    )
    # 16-bit steps of 5 * 0.05 / 32767 ~ 8e-6 per coordinate: within one of 60 eval examples and 5e-3 in loss.
    assert abs(narrow["final_eval_accuracy"] - wide["final_eval_accuracy"]) <= 1 / 60 + 1e-9
    assert narrow["final_eval_loss"] == pytest.approx(wide["final_eval_loss"], abs=5e-3)
    assert narrow["secagg_aborted_rounds"] == 0 and narrow["rejected_updates_total"] == 0
    # What travels: SecAgg+ masked vectors are bit-packed at secagg.bits, so 16 bits over the padded
    # (power-of-two) rotation plus the appended train_loss cost 2 (P + 1) bytes against 4 (d + 1) at 32 bits.
    d = narrow["trainable_params"]
    rounds, cohort = narrow["rounds"], 5
    per_upload = packed_size(d + 1, bits=32) - packed_size(padded_dim(d) + 1, bits=16)
    assert wide["bytes_up_total"] - narrow["bytes_up_total"] == rounds * cohort * per_upload
    for key in ("uplink_bytes_per_client_round", "uplink_ratio_vs_fp32_model"):
        assert (narrow[key] < wide[key]) == (per_upload > 0) and narrow[key] > 0


def test_plain_uploads_shrink_to_the_packed_codes(tmp_path: Path) -> None:
    plain = run_experiment(tiny_config(**BASE), tmp_path / "p", quiet=True)
    packed = run_experiment(
        tiny_config(
            **BASE,
            **{
                "compression.rotation": True,
                "compression.sparsity": 0.5,
                "compression.bits": 8,
                "compression.clip": 0.05,
            },
        ),
        tmp_path / "c",
        quiet=True,
    )
    d = plain["trainable_params"]
    kept = round(padded_dim(d) * 0.5)
    # ClientUpdate: 6-byte prefix + 32-byte header + float32[d]; EncodedUpdate: 6 + 41 + packed codes.
    assert plain["uplink_bytes_per_client_round"] == 6 + 32 + 4 * d
    assert packed["uplink_bytes_per_client_round"] == 6 + 41 + packed_size(kept, bits=8)
    assert packed["uplink_ratio_vs_fp32_model"] == pytest.approx(
        packed["uplink_bytes_per_client_round"] / (4 * packed["base_params"])
    )
    assert packed["rejected_updates_total"] == 0
    # Rotation + half the coordinates at 8 bits still trains: eval loss within 0.05 of float32 uploads.
    assert math.isfinite(packed["final_eval_loss"])
    assert packed["final_eval_loss"] == pytest.approx(plain["final_eval_loss"], abs=0.05)
    for a, b in zip(records(tmp_path / "p"), records(tmp_path / "c"), strict=True):
        assert b["num_clients"] == a["num_clients"] == 5 and b["update_applied"]


def test_plain_topk_uploads_carry_their_coordinates(tmp_path: Path) -> None:
    summary = run_experiment(
        tiny_config(
            **BASE,
            **{
                "compression.sparsity": 0.9,
                "compression.sparsify": "topk",
                "compression.bits": 4,
                "compression.clip": 0.05,
            },
        ),
        tmp_path / "k",
        quiet=True,
    )
    d = summary["trainable_params"]
    kept = round(d * 0.1)
    assert summary["uplink_bytes_per_client_round"] == 6 + 41 + 4 * kept + packed_size(kept, bits=4)
    assert summary["rejected_updates_total"] == 0 and all(float(r["update_norm"]) > 0 for r in records(tmp_path / "k"))
