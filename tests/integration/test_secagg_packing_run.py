"""SecAgg+ uploads shrink with secagg.bits: bytes_up counts the bit-packed masked vectors."""

from __future__ import annotations

from pathlib import Path

import pytest

from privfed.compression import packed_size
from privfed.experiments import run_experiment
from tests.conftest import tiny_config

BASE = {
    "secagg.enabled": True,
    "server.weighting": "uniform",
    "server.clients_per_round": 5,
    "secagg.clip": 0.5,
    "server.rounds": 2,
}


@pytest.mark.slow  # two tiny-bert SecAgg runs: about 60 s on 2 shared cores
def test_secagg_at_16_bits_uploads_about_half_of_32_bits(tmp_path: Path) -> None:
    wide = run_experiment(tiny_config(**BASE), tmp_path / "w", quiet=True)
    narrow = run_experiment(tiny_config(**BASE, **{"secagg.bits": 16}), tmp_path / "n", quiet=True)
    for summary in (wide, narrow):
        assert summary["secagg_aborted_rounds"] == 0 and summary["rejected_updates_total"] == 0
    # The masked vector is the delta plus the appended train_loss: d + 1 coordinates, at exactly
    # `bits` bits each; every other message (keys, sealed shares, unmask answers) is the same size.
    coords = narrow["trainable_params"] + 1
    client_rounds = narrow["rounds"] * 5
    saved = packed_size(coords, bits=32) - packed_size(coords, bits=16)
    assert saved == 2 * coords
    assert wide["bytes_up_total"] - narrow["bytes_up_total"] == client_rounds * saved
    # ... so the whole upload, protocol overhead included, is close to half.
    ratio = narrow["bytes_up_total"] / wide["bytes_up_total"]
    assert 0.5 < ratio < 0.6, ratio
    assert narrow["uplink_bytes_per_client_round"] == narrow["bytes_up_total"] / client_rounds
    # Same training outcome up to 16-bit rounding (steps of 5 * 0.5 / 32767 ~ 8e-5).
    assert abs(narrow["final_eval_loss"] - wide["final_eval_loss"]) < 5e-3
