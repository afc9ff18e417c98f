"""Checkpoints: an integrity digest and a strict schema; damage or tampering is a one-line ``CheckpointError``.

A damaged checkpoint used to resume silently with a reset privacy ledger
(issue 14 §5). Each test starts from a real checkpoint, written after round 1
of a 2-round tiny-bert run with user-level DP (a non-empty ledger) and FedAdam
(server optimizer moments), and damages it: raw byte flips and truncation
(caught by the SHA-256 digest or the safetensors reader), or a re-signed field
(a consistent digest over inconsistent content: caught by the schema).
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from privfed.errors import CheckpointError, ModelError, PrivfedError
from privfed.experiments import RunDirectory, build_experiment, resume_experiment, run_experiment
from privfed.experiments.run_dir import checkpoint_digest
from privfed.experiments.runner import Experiment, _prepare_privacy, _restore
from tests.conftest import tiny_config

Arrays = dict[str, np.ndarray]


def _config() -> Any:
    return tiny_config(
        **{
            "server.rounds": 2,
            "server.strategy": "fedadam",
            "server.learning_rate": 0.01,
            "privacy.mode": "user",
            "privacy.delta": 1e-3,
            "privacy.user.noise_multiplier": 1.0,
            "privacy.user.clip_norm": 0.1,
        }
    )


@pytest.fixture(scope="module")
def partial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory stopped (checkpointed) after round 1 of 2."""
    path = tmp_path_factory.mktemp("ckpt") / "run"
    run_experiment(_config(), path, quiet=True, stop_after_round=1)
    return path


@pytest.fixture(scope="module")
def exp() -> Experiment:
    return build_experiment(_config())


@pytest.fixture
def run(partial: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(partial, copy)
    return copy


def read_raw(run: Path) -> tuple[dict[str, str], Arrays]:
    from safetensors import safe_open

    with safe_open(str(run / RunDirectory.CHECKPOINT), framework="numpy") as handle:
        metadata = dict(handle.metadata())
        arrays = {k: np.array(handle.get_tensor(k)) for k in handle.keys()}  # noqa: SIM118
    return metadata, arrays


def resign(
    run: Path,
    *,
    metadata: Callable[[dict[str, str]], None] | None = None,
    state: Callable[[dict[str, Any]], Any] | None = None,
    arrays: Callable[[Arrays], None] | None = None,
    digest: bool = True,
) -> None:
    """Rewrite the checkpoint with edited fields and a digest recomputed over them (a consistent lie)."""
    from safetensors.numpy import save

    meta, tensors = read_raw(run)
    if state is not None:
        decoded = json.loads(meta["state"])
        replaced = state(decoded)
        meta["state"] = json.dumps(decoded if replaced is None else replaced)
    if arrays is not None:
        arrays(tensors)
    if metadata is not None:
        metadata(meta)
    if digest and "sha256" in meta:
        meta["sha256"] = checkpoint_digest(
            round_text=meta["round"], state_text=meta["state"], metrics_sha256=meta["metrics_sha256"], arrays=tensors
        )
    (run / RunDirectory.CHECKPOINT).write_bytes(save(tensors, metadata=meta))


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text, text
    return text


def restore(exp: Experiment, run: Path) -> None:
    """What ``resume_experiment`` checks, on a shared built experiment (no model load per case)."""
    directory = RunDirectory(run)
    checkpoint = directory.load_checkpoint()
    assert checkpoint is not None
    dp = _prepare_privacy(exp)
    _restore(exp, dp, directory, checkpoint, dp.server)


def test_checkpoint_carries_a_digest_and_round_trips(run: Path, exp: Experiment) -> None:
    meta, tensors = read_raw(run)
    assert meta["round"] == "1" and len(meta["sha256"]) == 64
    assert sorted(tensors) == ["global", "strategy.m", "strategy.v"]
    state = json.loads(meta["state"])
    assert len(state["ledger"]) == 1 and state["ledger"][0]["scope"] == "user"
    restore(exp, run)  # the untouched checkpoint passes every check


def test_flipped_bytes_are_caught_or_change_nothing(run: Path) -> None:
    """Fuzzer: 40 single-byte flips (random and aimed at the ledger) never resume a different state."""
    path = run / RunDirectory.CHECKPOINT
    original = path.read_bytes()
    reference = RunDirectory(run).load_checkpoint()
    assert reference is not None
    rng = random.Random(14)
    at_ledger = original.index(b"ledger")
    positions = [rng.randrange(len(original)) for _ in range(34)] + [at_ledger + i for i in range(6)]
    caught = 0
    for position in positions:
        damaged = bytearray(original)
        damaged[position] ^= rng.randrange(1, 256)
        path.write_bytes(bytes(damaged))
        try:
            loaded = RunDirectory(run).load_checkpoint()
        except CheckpointError as exc:
            one_line(exc)
            caught += 1
            continue
        # Only a flip that changes nothing read (e.g. header padding turned into other JSON
        # whitespace) may pass, and then it must load exactly what was saved.
        assert loaded is not None and loaded.round == reference.round and loaded.state == reference.state
        assert loaded.arrays.keys() == reference.arrays.keys()
        assert all(np.array_equal(loaded.arrays[k], reference.arrays[k]) for k in loaded.arrays)
    assert caught >= len(positions) - 4


@pytest.mark.parametrize("keep", [0, 7, 8, 100, -1])
def test_truncated_checkpoint_is_a_checkpoint_error(run: Path, keep: int) -> None:
    path = run / RunDirectory.CHECKPOINT
    data = path.read_bytes()
    path.write_bytes(data[: keep if keep >= 0 else len(data) + keep])
    with pytest.raises(CheckpointError, match=r"unreadable|digest") as info:
        RunDirectory(run).load_checkpoint()
    one_line(info.value)


def _set_round(value: str) -> Callable[[dict[str, str]], None]:
    return lambda meta: meta.__setitem__("round", value)


def _event(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda state: state["ledger"][0].__setitem__(field, value)


# Caught by RunDirectory.load_checkpoint (digest, schema, config, metrics.jsonl): no model needed.
LOAD_TAMPERING: dict[str, tuple[dict[str, Any], str]] = {
    "round 100 of a 2-round run": ({"metadata": _set_round("100")}, r"round must be an integer in \[0, 2\]"),
    "round 2 without its metrics line": ({"metadata": _set_round("2")}, "rounds 1..2"),
    "negative round": ({"metadata": _set_round("-1")}, "round"),
    "round as a float": ({"metadata": _set_round("1.0")}, "round"),
    "round with a leading zero": ({"metadata": _set_round("01")}, "round"),
    "no digest (older format)": ({"metadata": lambda m: m.pop("sha256")}, "no integrity digest"),
    "digest of other contents": ({"metadata": lambda m: m.__setitem__("sha256", "0" * 64), "digest": False}, "digest"),
    "extra metadata key": ({"metadata": lambda m: m.__setitem__("extra", "1")}, "metadata must hold"),
    "ledger missing": ({"state": lambda s: s.pop("ledger")}, "exactly the fields"),
    "ledger not a list": ({"state": lambda s: s.__setitem__("ledger", {"events": []})}, "ledger must be a list"),
    "event steps as a string": ({"state": _event("steps", "1")}, "steps must be an integer"),
    "event negative sigma": ({"state": _event("noise_multiplier", -1.0)}, "noise_multiplier"),
    "event sample rate above 1": ({"state": _event("sample_rate", 2.0)}, "sample_rate"),
    "event unknown scope": ({"state": _event("scope", "users")}, "scope"),
    "event from a later round": ({"state": _event("round", 2)}, r"round must be an integer in \[1, 1\]"),
    "event with an extra field": ({"state": _event("epsilon", 0.0)}, "fields"),
    "state not an object": ({"state": lambda s: [s]}, "exactly the fields"),
    "unknown state field": ({"state": lambda s: s.__setitem__("round", 100)}, "exactly the fields"),
    "clip norm negative": ({"state": lambda s: s.__setitem__("user_clip_norm", -1.0)}, "user_clip_norm"),
    "clip norm a string": ({"state": lambda s: s.__setitem__("user_clip_norm", "0.1")}, "user_clip_norm"),
    "initial eval a list": ({"state": lambda s: s.__setitem__("initial_eval", [1.0])}, "initial_eval"),
    "config digest changed": ({"state": lambda s: s.__setitem__("config_sha256", "a" * 64)}, "changed"),
    "global NaN": ({"arrays": lambda a: a["global"].__setitem__(0, np.nan)}, "non-finite"),
    "moment inf": ({"arrays": lambda a: a["strategy.v"].__setitem__(3, np.inf)}, "non-finite"),
    "global float64": ({"arrays": lambda a: a.__setitem__("global", a["global"].astype(np.float64))}, "float32"),
    "global 2-D": ({"arrays": lambda a: a.__setitem__("global", a["global"][None, :])}, "1-D"),
    "global missing": ({"arrays": lambda a: a.pop("global")}, "no 'global'"),
    "unknown array": ({"arrays": lambda a: a.__setitem__("ledger", np.zeros(2, np.float32))}, "unknown"),
}


@pytest.mark.parametrize("case", sorted(LOAD_TAMPERING))
def test_tampered_checkpoint_fields_are_refused_on_load(run: Path, case: str) -> None:
    edits, message = LOAD_TAMPERING[case]
    resign(run, **edits)
    with pytest.raises(CheckpointError, match=message) as info:
        RunDirectory(run).load_checkpoint()
    one_line(info.value)


def test_edited_metrics_history_is_refused(run: Path) -> None:
    path = run / RunDirectory.METRICS
    record = json.loads(path.read_text().splitlines()[0])
    record["epsilon_user"] = 0.01
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(CheckpointError, match="differ"):
        RunDirectory(run).load_checkpoint()
    path.write_text("")
    with pytest.raises(CheckpointError, match=r"rounds 1..1"):
        RunDirectory(run).load_checkpoint()


def _scale_event(state: dict[str, Any]) -> None:
    state["ledger"][0]["noise_multiplier"] *= 2


def _moment(shape: tuple[int, ...]) -> Callable[[Arrays], None]:
    return lambda a: a.__setitem__("strategy.m", np.zeros(shape, np.float32))


# Caught against the built experiment (layout, the ledger's exact events, optimizer state).
RESTORE_TAMPERING: dict[str, tuple[dict[str, Any], str]] = {
    "ledger emptied": ({"state": lambda s: s.__setitem__("ledger", [])}, "ledger does not match"),
    "ledger event doubled": ({"state": lambda s: s["ledger"].append(s["ledger"][0])}, "ledger does not match"),
    "ledger sigma changed": ({"state": _scale_event}, "ledger does not match"),
    "clip norm not the configured one": ({"state": lambda s: s.__setitem__("user_clip_norm", 0.2)}, "clip_norm"),
    "clip norm null under user DP": ({"state": lambda s: s.__setitem__("user_clip_norm", None)}, "user_clip_norm"),
    "other layout": ({"state": lambda s: s.__setitem__("layout_fingerprint", "0" * 16)}, "layout"),
    "global one value short": ({"arrays": lambda a: a.__setitem__("global", a["global"][:-1])}, "global"),
    "moment one value long": ({"arrays": lambda a: _moment((a["global"].size + 1,))(a)}, "per coordinate"),
    "moment of one value": ({"arrays": _moment((1,))}, "per coordinate"),
    "moment 2-D": ({"arrays": lambda a: _moment((1, a["global"].size))(a)}, "per coordinate"),
    "second moment missing": ({"arrays": lambda a: a.pop("strategy.v")}, "optimizer state"),
    "second moment negative": ({"arrays": lambda a: a["strategy.v"].__setitem__(0, -1.0)}, "negative"),
}


@pytest.mark.parametrize("case", sorted(RESTORE_TAMPERING))
def test_tampered_checkpoint_fields_are_refused_before_resuming(run: Path, exp: Experiment, case: str) -> None:
    edits, message = RESTORE_TAMPERING[case]
    resign(run, **edits)
    with pytest.raises(CheckpointError, match=message) as info:
        restore(exp, run)
    one_line(info.value)


def test_emptied_ledger_is_refused_by_resume_end_to_end(run: Path) -> None:
    # Before: resumed with exit 0 and a reset ledger (epsilon reported for round 2 alone).
    resign(run, state=lambda s: s.__setitem__("ledger", []))
    with pytest.raises(CheckpointError, match="ledger does not match") as info:
        resume_experiment(run, quiet=True)
    one_line(info.value)
    assert len((run / RunDirectory.METRICS).read_text().splitlines()) == 1  # nothing was run or rewritten


def test_checkpoint_error_is_a_value_error_and_a_privfed_error() -> None:
    assert issubclass(CheckpointError, ValueError) and issubclass(CheckpointError, PrivfedError)


def test_check_vector_refuses_non_finite_values(exp: Experiment) -> None:
    vector = exp.initial_vector.copy()
    vector[1] = np.nan
    with pytest.raises(ModelError, match="non-finite"):
        exp.layout.check_vector(vector)
    with pytest.raises(ModelError, match="non-finite"):
        exp.layout.load_into(exp.model, vector)
    vector[1] = np.inf
    assert exp.layout.unflatten(vector)  # the pure wire format still carries any float


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Metrics (without timings) of the same run, uninterrupted."""
    path = tmp_path_factory.mktemp("straight") / "run"
    run_experiment(_config(), path, quiet=True)
    return _metrics(path)


def _metrics(run: Path) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in (run / RunDirectory.METRICS).read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in records]


_VALUES: list[Any] = [None, True, -1, 0, 1, 2, 100, -0.5, 0.5, 1e308, float("nan"), "1", "", [], {}, [1.0]]


def _mutate(run: Path, rng: random.Random) -> str:
    """Apply one random mutation to the checkpoint (or its metrics); returns what it did."""
    kind = rng.choice(["flip", "round", "state", "drop", "event", "initial_eval", "array", "metrics"])
    if kind == "flip":
        path = run / RunDirectory.CHECKPOINT
        data = bytearray(path.read_bytes())
        position = rng.randrange(len(data))
        data[position] ^= rng.randrange(1, 256)
        path.write_bytes(bytes(data))
        return f"flip byte {position}"
    if kind == "round":
        value = rng.choice(["-1", "0", "1", "2", "3", "100", "1.0", " 1", "x", ""])
        resign(run, metadata=_set_round(value))
        return f"round = {value!r}"
    if kind in ("state", "drop"):
        key = rng.choice(["config_sha256", "initial_eval", "layout_fingerprint", "ledger", "user_clip_norm"])
        value = rng.choice(_VALUES)
        resign(run, state=lambda s: s.pop(key) if kind == "drop" else s.__setitem__(key, value))
        return f"state {key} dropped" if kind == "drop" else f"state {key} = {value!r}"
    if kind == "event":
        field = rng.choice(["noise_multiplier", "sample_rate", "steps", "scope", "subject", "round"])
        value = rng.choice(_VALUES)
        resign(run, state=_event(field, value))
        return f"ledger[0].{field} = {value!r}"
    if kind == "initial_eval":  # harmless for the rounds: only the summary's initial_* numbers change
        factor = rng.uniform(0.5, 2.0)
        resign(run, state=lambda s: s["initial_eval"].update({k: v * factor for k, v in s["initial_eval"].items()}))
        return f"initial_eval * {factor:.3f}"
    if kind == "array":
        name = rng.choice(["global", "strategy.m", "strategy.v"])
        how = rng.choice(["nan", "inf", "short", "long", "scalar", "2-D", "float64", "drop"])

        def edit(a: Arrays) -> None:
            x = a[name]
            if how in ("nan", "inf"):
                x[rng.randrange(x.size)] = np.nan if how == "nan" else -np.inf
            elif how == "drop":
                a.pop(name)
            else:
                a[name] = {
                    "short": x[:-1],
                    "long": np.append(x, np.float32(0)),
                    "scalar": x[:1],
                    "2-D": x[None, :],
                    "float64": x.astype(np.float64),
                }[how]

        resign(run, arrays=edit)
        return f"array {name}: {how}"
    path = run / RunDirectory.METRICS
    record = json.loads(path.read_text().splitlines()[0])
    record["train_loss"] = rng.choice(_VALUES[1:9])
    path.write_text(json.dumps(record) + "\n")
    return f"metrics line 1 train_loss = {record['train_loss']!r}"


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(24))
def test_checkpoint_tampering_fuzzer(partial: Path, straight: list[dict[str, Any]], tmp_path: Path, seed: int) -> None:
    """Every mutated checkpoint either fails to resume with a one-line ``CheckpointError``, or resumes
    exactly as the uninterrupted run (the mutation changed nothing the rounds depend on)."""
    run = tmp_path / "run"
    shutil.copytree(partial, run)
    what = _mutate(run, random.Random(seed))
    try:
        resume_experiment(run, quiet=True)
    except CheckpointError as exc:
        one_line(exc)
        return
    assert _metrics(run) == straight, f"resumed after {what} with different metrics"
