"""Provenance and saved configs in attack/audit directories, and `privfed reproduce` on them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from attacks.audit.federated import AuditSettings
from attacks.inversion.sweep import load_inversion_config
from attacks.provenance import read_attack_provenance, settings_digest, settings_table
from attacks.reproduce import compare_attacks, format_attack_report
from privfed import dump_config
from privfed.cli import main
from tests.conftest import tiny_config

_INVERSION = """[inversion]
modalities = ["text"]
[inversion.text]
targets = ["lora"]
ranks = [64]
batch_sizes = [1]
noise_multipliers = [1.0]
secagg_clients = [1]
quant_bits = [0]
max_length = 16
"""


@pytest.fixture(scope="module")
def inversion_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("inversion")
    (folder / "sweep.toml").write_text(_INVERSION)
    out = folder / "out"
    assert main(["attack", "inversion", str(folder / "sweep.toml"), "--out", str(out), "--quiet"]) == 0
    return out


def test_inversion_directory_has_its_config_and_provenance(inversion_dir: Path) -> None:
    records = json.loads((inversion_dir / "inversion_results.json").read_text())
    assert isinstance(records, list) and len(records) == 1  # the readers' format is unchanged
    # The saved config loads back to the same sweep, and its digest is the provenance's settings fingerprint.
    saved = load_inversion_config(inversion_dir / "inversion.toml")
    assert saved.text.noise_multipliers == (1.0,) and saved.text.max_length == 16
    provenance = json.loads((inversion_dir / "provenance.json").read_text())
    assert provenance == read_attack_provenance(inversion_dir)
    assert provenance["fingerprints"]["attack_settings"] == settings_digest(settings_table(saved))
    assert provenance["packages"]["torch"] and provenance["hardware"]["device"] == "cpu"


def test_reproduce_an_inversion_directory_gives_identical_results(
    inversion_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rerun = tmp_path / "rerun"
    assert main(["reproduce", str(inversion_dir), "--out", str(rerun), "--quiet"]) == 0
    report = compare_attacks(inversion_dir, rerun)
    assert report.kind == "inversion" and report.identical and report.same_provenance
    assert report.fields_compared >= 10  # every field of the record but its timing
    assert "IDENTICAL" in capsys.readouterr().out


def test_a_changed_result_and_package_version_are_reported(inversion_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(inversion_dir, copy)
    records = json.loads((copy / "inversion_results.json").read_text())
    records[0]["token_f1"] += 0.125
    records[0]["seconds"] += 100.0  # a timing: never a difference
    (copy / "inversion_results.json").write_text(json.dumps(records))
    provenance = json.loads((copy / "provenance.json").read_text())
    provenance["packages"]["transformers"] = "4.0.0"
    (copy / "provenance.json").write_text(json.dumps(provenance))
    report = compare_attacks(inversion_dir, copy)
    assert not report.identical and not report.same_provenance
    [(field, original, changed)] = report.provenance_diffs
    assert field == "packages.transformers" and changed == "4.0.0" and original != "4.0.0"
    [drift] = report.drifts
    assert drift.field.endswith("noise_multiplier=1.0,secagg_clients=1,quant_bits=0,trial=0.token_f1")
    assert drift.abs_diff == pytest.approx(0.125)
    text = format_attack_report(report)
    assert "DIFFERENT" in text and "packages.transformers" in text and "token_f1" in text


def test_reproduce_refuses_directories_it_cannot_rerun(
    inversion_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["reproduce", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "not a finished run directory" in capsys.readouterr().err
    old = tmp_path / "old"
    shutil.copytree(inversion_dir, old)
    (old / "inversion.toml").unlink()  # as written before the drivers saved their config
    assert main(["reproduce", str(old), "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "no inversion.toml" in err and err.count("\n") == 1
    assert not (tmp_path / "y").exists()


def test_audit_directory_records_provenance_and_reproduces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tiny_config(
        **{
            "partition.num_clients": 60,
            "server.clients_per_round": 10,
            "server.rounds": 2,
            "server.weighting": "uniform",
            "client.local_steps": 1,
            "partition.method": "iid",
            "data.max_train_examples": 300,
            "privacy.mode": "user",
            "privacy.user.noise_multiplier": 2.0,
            "privacy.user.clip_norm": 0.05,
        }
    )
    path = tmp_path / "c.toml"
    table = "\n[audit]\nepsilons = [inf]\nnum_canaries = 20\nnum_unobserved = 100\nmax_record_examples = 50\n"
    path.write_text(dump_config(config) + table)
    out = tmp_path / "audit"
    assert main(["audit", str(path), "--out", str(out), "--quiet"]) == 0
    assert isinstance(json.loads((out / "audit_results.json").read_text()), list)
    saved = (out / "audit.toml").read_text()
    assert "[audit]" in saved and "num_canaries = 20" in saved
    provenance = read_attack_provenance(out)
    fingerprints = provenance["fingerprints"]
    settings = AuditSettings(epsilons=(float("inf"),), num_canaries=20, num_unobserved=100, max_record_examples=50)
    assert fingerprints["attack_settings"] == settings_digest(settings_table(settings))
    run = json.loads((out / "eps-inf" / "summary.json").read_text())["provenance"]["fingerprints"]
    assert fingerprints["eps-inf/dataset_rows"] == run["dataset_rows"] and len(run["dataset_rows"]) == 64
    assert fingerprints["eps-inf/base_model"] == run["base_model"]
    capsys.readouterr()
    rerun = tmp_path / "rerun"
    assert main(["reproduce", str(out), "--out", str(rerun), "--quiet"]) == 0
    report = compare_attacks(out, rerun)
    assert report.kind == "audit" and report.identical and report.same_provenance
    assert report.fields_compared > 30
    assert "IDENTICAL" in capsys.readouterr().out


def test_saved_membership_and_exposure_configs_read_back_to_the_same_settings(tmp_path: Path) -> None:
    from attacks.membership import MembershipSettings, SecretSharerSettings
    from attacks.membership.shadow import Variant
    from attacks.provenance import save_attack_config
    from privfed.cli import split_config as _split_config

    config = tiny_config(**{"server.rounds": 3})
    member = MembershipSettings(
        num_models=4, population=20, variants=(Variant("a"), Variant("b", {"adapter.method": "ffa_lora"}))
    )
    path = save_attack_config(tmp_path, kind="membership", table=settings_table(member), config=config)
    table, loaded = _split_config(str(path), "membership")
    assert MembershipSettings.from_mapping(table) == member and loaded == config
    exposure = SecretSharerSettings(repeats=(1, 16), candidates=50)
    path = save_attack_config(tmp_path, kind="exposure", table=settings_table(exposure), config=config)
    table, loaded = _split_config(str(path), "exposure")
    assert SecretSharerSettings(**{**table, "repeats": tuple(table["repeats"])}) == exposure and loaded == config
    # The digest tells settings apart.
    assert settings_digest(settings_table(exposure)) != settings_digest(settings_table(SecretSharerSettings()))
