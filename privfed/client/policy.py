"""A node-local privacy policy: what a client node refuses to do, whatever the server asks.

A client node runs the round instructions the server sends: the DP-SGD settings of the
run's config and, under distributed DP, the upload stages (clip to ``C``, fixed point,
add a noise share of std ``s``). A server that does not follow the protocol could ask
for less noise or a larger clip. A :class:`NodePolicy` lives with the client, not the
server; before training a round the node checks the instructions against it and
declines the round (one-line reason) when they are weaker:

* ``max_record_epsilon`` / ``record_delta``: the node's own record-level budget. Its
  :class:`NodeLedger` accounts every DP-SGD run it actually trained (its own sampling
  rate ``batch / its number of examples``, its steps, the noise multiplier) with
  privfed's accountants, and the node refuses a round whose steps would take it past
  the budget. Training without DP-SGD under such a budget is refused too.
* ``min_sample_noise_multiplier``: the smallest DP-SGD noise multiplier it trains with.
* ``min_local_noise_multiplier``: under distributed DP, the smallest std of the node's
  own noise share, in the units of its update, divided by the L2 bound its update is
  clipped to (the round's ``clip`` stage). The share's std is ``local_stddev / scale``
  (integer units over the fixed-point scale). Honest instructions give
  ``noise_multiplier / sqrt(shares)`` or more; the check needs a clip stage, a fixed-point
  stage and a noise stage over every delta coordinate, and no metric travelling unnoised.
* ``max_clip_norm``: the largest L2 bound the node clips its update to (an upload without
  a clip stage is refused when this is set).

:meth:`NodePolicy.honest` builds the policy an honest server's instructions satisfy
exactly (the in-process simulation's default: an honest run never declines).
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from privfed.client.stages import (
    AppendMetricsStage,
    ClipStage,
    DistributedNoiseStage,
    FixedPointStage,
    UploadPipeline,
)
from privfed.errors import ConfigError, PrivacyBudgetExceeded, ProtocolError
from privfed.privacy.accountants import accountant_names
from privfed.privacy.events import SampledGaussianEvent
from privfed.privacy.ledger import PrivacyLedger

if TYPE_CHECKING:
    from privfed.client.trainer import SampleDP

__all__ = ["POLICY_KEYS", "NodeLedger", "NodePolicy", "local_noise_multiplier", "read_policy_file"]

#: Node-config keys (Flower ``--node-config``, or a node-local TOML file) -> :class:`NodePolicy` field.
POLICY_KEYS: Mapping[str, str] = {
    "max-epsilon": "max_record_epsilon",
    "delta": "record_delta",
    "min-noise-multiplier": "min_sample_noise_multiplier",
    "min-local-noise-multiplier": "min_local_noise_multiplier",
    "max-clip": "max_clip_norm",
    "accountant": "accountant",
}

# Honest instructions meet the policy built from them exactly; this absorbs float round-off only.
_TOLERANCE = 1e-9


@dataclasses.dataclass(frozen=True)
class NodePolicy:
    """What this node accepts; ``None`` fields impose nothing.

    Attributes:
        max_record_epsilon: the node's record-level budget (epsilon at ``record_delta``) over
            all the DP-SGD it trains; needs ``record_delta``.
        record_delta: the delta at which the node accounts and reports its record-level epsilon.
        min_sample_noise_multiplier: smallest DP-SGD noise multiplier (noise std / per-sample clip).
        min_local_noise_multiplier: distributed DP: smallest std of this node's noise share over its
            update's L2 clip bound (both in the update's units).
        max_clip_norm: largest L2 bound this node clips its update to (user-level DP under SecAgg).
        accountant: the accountant of the node's ledger (``privacy.accountant`` names: rdp, prv).
    """

    max_record_epsilon: float | None = None
    record_delta: float | None = None
    min_sample_noise_multiplier: float | None = None
    min_local_noise_multiplier: float | None = None
    max_clip_norm: float | None = None
    accountant: str = "rdp"

    def __post_init__(self) -> None:
        for name in (
            "max_record_epsilon",
            "min_sample_noise_multiplier",
            "min_local_noise_multiplier",
            "max_clip_norm",
        ):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"node policy {name} must be a finite number > 0; got {value!r}")
        delta = self.record_delta
        if delta is not None and (isinstance(delta, bool) or not isinstance(delta, int | float) or not 0 < delta < 1):
            raise ConfigError(f"node policy record_delta must be in (0, 1); got {delta!r}")
        if self.max_record_epsilon is not None and delta is None:
            raise ConfigError(
                f"node policy max_record_epsilon = {self.max_record_epsilon:g} needs record_delta "
                "(the delta its epsilon is at); got none"
            )
        if self.accountant not in accountant_names():
            raise ConfigError(
                f"node policy accountant must be one of {', '.join(accountant_names())}; got {self.accountant!r}"
            )

    @classmethod
    def from_mapping(
        cls, raw: Mapping[str, Any], *, source: str = "node config", defaults: NodePolicy | None = None
    ) -> NodePolicy:
        """The policy the keys of :data:`POLICY_KEYS` in ``raw`` describe (other keys are ignored);
        fields ``raw`` leaves unset come from ``defaults``.

        Numbers may be given as strings (``--node-config "max-epsilon='2.5'"``).
        """
        fields: dict[str, Any] = {}
        if defaults is not None:
            fields = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(defaults)}
        for key, name in POLICY_KEYS.items():
            if key not in raw:
                continue
            value = raw[key]
            if name == "accountant":
                if not isinstance(value, str):
                    raise ConfigError(f"{key} in the {source} must be an accountant name; got {value!r}")
                fields[name] = value
                continue
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise ConfigError(f"{key} in the {source} must be a number; got {raw[key]!r}") from None
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{key} in the {source} must be a number; got {value!r}")
            fields[name] = float(value)
        return cls(**fields)

    @classmethod
    def from_toml(cls, path: str | Path) -> NodePolicy:
        """The policy of a node-local TOML file holding :data:`POLICY_KEYS` at its top level."""
        return cls.from_mapping(read_policy_file(path), source=f"node policy file {str(path)!r}")

    @classmethod
    def honest(
        cls,
        *,
        pipeline: UploadPipeline | None,
        sample_dp: SampleDP | None,
        max_record_epsilon: float | None,
        record_delta: float | None,
        accountant: str = "rdp",
    ) -> NodePolicy:
        """The policy that the instructions ``pipeline`` / ``sample_dp`` of an honest server meet exactly.

        The distributed-noise floor and the clip ceiling are set only when ``pipeline`` adds a
        distributed noise share (its clip is then fixed: adaptive clipping is not allowed with it).
        """
        local = None
        clip = None
        if pipeline is not None and any(isinstance(s, DistributedNoiseStage) for s in pipeline.stages):
            local, reason = _local_noise(pipeline)
            if local is None:
                raise ConfigError(f"the run's own upload stages fail the node policy's checks: {reason}")
            clip = max(s.max_norm for s in pipeline.stages if isinstance(s, ClipStage))
        return cls(
            max_record_epsilon=max_record_epsilon,
            record_delta=record_delta if sample_dp is not None or max_record_epsilon is not None else None,
            min_sample_noise_multiplier=None if sample_dp is None else sample_dp.noise_multiplier,
            min_local_noise_multiplier=local,
            max_clip_norm=clip,
            accountant=accountant,
        )

    def check_sample_dp(self, dp: SampleDP | None) -> str | None:
        """Why this node refuses to train with record-level settings ``dp`` (``None``: it accepts)."""
        if dp is None:
            if self.max_record_epsilon is not None or self.min_sample_noise_multiplier is not None:
                return (
                    "node policy: the round trains without DP-SGD; this node trains only with record-level DP "
                    f"(max_record_epsilon {self.max_record_epsilon}, min_sample_noise_multiplier "
                    f"{self.min_sample_noise_multiplier})"
                )
            return None
        floor = self.min_sample_noise_multiplier
        if floor is not None and dp.noise_multiplier < floor * (1 - _TOLERANCE):
            return (
                f"node policy: DP-SGD noise multiplier {dp.noise_multiplier:.6g} is below this node's minimum "
                f"{floor:.6g}"
            )
        return None

    def check_upload(self, pipeline: UploadPipeline) -> str | None:
        """Why this node refuses the round's upload stages (``None``: it accepts)."""
        clips = [s.max_norm for s in pipeline.stages if isinstance(s, ClipStage)]
        if self.max_clip_norm is not None:
            if not clips:
                return f"node policy: the upload has no clip stage; this node clips to at most {self.max_clip_norm:g}"
            if min(clips) > self.max_clip_norm * (1 + _TOLERANCE):
                return f"node policy: clip norm {min(clips):.6g} is above this node's maximum {self.max_clip_norm:.6g}"
        floor = self.min_local_noise_multiplier
        if floor is not None:
            local, reason = _local_noise(pipeline)
            if local is None:
                return f"node policy: {reason}; this node adds a noise share of at least {floor:.6g} x its clip"
            if local < floor * (1 - _TOLERANCE):
                return (
                    f"node policy: distributed noise share std {local:.6g} x the clip norm is below this node's "
                    f"minimum {floor:.6g}"
                )
        return None


def read_policy_file(path: str | Path) -> dict[str, Any]:
    """The policy keys of a node-local TOML file (``ConfigError``: unreadable, not TOML, an unknown key)."""
    file = Path(path)
    try:
        raw = tomllib.loads(file.read_text())
    except OSError as exc:
        raise ConfigError(f"node policy file {str(file)!r} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"node policy file {str(file)!r} is not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - set(POLICY_KEYS))
    if unknown:
        raise ConfigError(
            f"node policy file {str(file)!r} has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(POLICY_KEYS)}"
        )
    return raw


def local_noise_multiplier(pipeline: UploadPipeline) -> float | None:
    """Std of the noise share the stages add, in the update's units, over its L2 clip bound
    (``None`` when the stages add no share over every delta coordinate of a clipped update)."""
    return _local_noise(pipeline)[0]


def _local_noise(pipeline: UploadPipeline) -> tuple[float | None, str]:
    stages = pipeline.stages
    noise = [i for i, s in enumerate(stages) if isinstance(s, DistributedNoiseStage)]
    fixed = [i for i, s in enumerate(stages) if isinstance(s, FixedPointStage)]
    clips = [i for i, s in enumerate(stages) if isinstance(s, ClipStage)]
    if len(noise) != 1:
        return None, f"the upload has {len(noise)} distributed noise stages (needs exactly 1)"
    if len(fixed) != 1 or fixed[0] + 1 != noise[0]:
        return None, "the distributed noise stage does not directly follow the one fixed-point stage"
    if not clips or clips[0] > fixed[0]:
        return None, "the upload is not clipped before fixed point"
    if any(isinstance(s, AppendMetricsStage) for s in stages):
        return None, "the upload appends metrics that would travel without noise"
    fp = stages[fixed[0]]
    share = stages[noise[0]]
    assert isinstance(fp, FixedPointStage) and isinstance(share, DistributedNoiseStage)
    if fp.extra != 0 or share.dim != fp.dim or share.bits != fp.bits:
        return None, (
            f"the noise stage covers {share.dim} of {fp.dim + fp.extra} fixed-point coordinates at {share.bits} "
            f"bits (fixed point: {fp.bits} bits)"
        )
    scale = float(np.max(np.broadcast_to(np.asarray(fp.codec.scale, dtype=np.float64), (fp.dim + fp.extra,))))
    clip = max(float(stages[i].max_norm) for i in clips)  # type: ignore[attr-defined]
    if clip <= 0:
        return math.inf, ""
    return share.local_stddev / scale / clip, ""


class NodeLedger:
    """One node's record-level privacy ledger: the DP-SGD it actually trained, composed.

    A thin owner of a :class:`~privfed.privacy.ledger.PrivacyLedger` (privfed's accountants,
    budget check and event records) holding only this node's ``sample`` events.

    Args:
        client_id: the node's client id (the events' subject).
        delta: the delta at which epsilon is accounted.
        budget: the node's record-level epsilon budget (``None``: unlimited, only reported).
        accountant: ``"rdp"`` or ``"prv"``.
    """

    def __init__(self, *, client_id: int, delta: float, budget: float | None = None, accountant: str = "rdp") -> None:
        self.client_id = client_id
        self._ledger = PrivacyLedger(delta=delta, accountant=accountant, sample_budget=budget)

    @classmethod
    def for_policy(cls, policy: NodePolicy, *, client_id: int) -> NodeLedger | None:
        """The ledger ``policy`` asks for (``None`` when it names no ``record_delta``)."""
        if policy.record_delta is None:
            return None
        return cls(
            client_id=client_id,
            delta=policy.record_delta,
            budget=policy.max_record_epsilon,
            accountant=policy.accountant,
        )

    @property
    def delta(self) -> float:
        return self._ledger.delta

    @property
    def budget(self) -> float | None:
        return self._ledger.sample_budget

    @property
    def events(self) -> tuple[SampledGaussianEvent, ...]:
        return tuple(e for e in self._ledger.events if isinstance(e, SampledGaussianEvent))

    def event(self, *, noise_multiplier: float, sample_rate: float, steps: int, round: int) -> SampledGaussianEvent:
        """The record-level event of ``steps`` DP-SGD steps at rate ``sample_rate`` in ``round``."""
        return SampledGaussianEvent(
            noise_multiplier=noise_multiplier,
            sample_rate=sample_rate,
            steps=steps,
            scope="sample",
            subject=self.client_id,
            round=round,
        )

    def refusal(self, event: SampledGaussianEvent) -> str | None:
        """Why recording ``event`` is refused (it would pass the budget), or ``None``."""
        try:
            self._ledger.check([event])
        except PrivacyBudgetExceeded as exc:
            return f"node policy: {exc}"
        return None

    def record(self, event: SampledGaussianEvent) -> None:
        self._ledger.record([event])

    def epsilon(self) -> float:
        """Record-level epsilon this node has spent so far, at :attr:`delta`."""
        return self._ledger.epsilon_sample(self.client_id)

    def to_json(self) -> str:
        """This node's events as JSON (what a node persists between rounds; no budget, no delta)."""
        return json.dumps(self._ledger.to_json(), sort_keys=True)

    def load_json(self, text: str) -> None:
        """Replace the events with those :meth:`to_json` saved; ``ProtocolError`` if the text is not such a list."""
        try:
            raw = json.loads(text)
            if not isinstance(raw, list):
                raise TypeError(f"expected a list of events; got {type(raw).__name__}")
            events = [SampledGaussianEvent.from_json(r) for r in raw]
        except (ValueError, KeyError, TypeError) as exc:
            raise ProtocolError(f"a saved node ledger is malformed: {type(exc).__name__}: {exc}") from None
        if any(e.scope != "sample" or e.subject != self.client_id for e in events):
            raise ProtocolError(f"a saved node ledger holds events of another client than {self.client_id}")
        self._ledger.load_json([e.to_json() for e in events])
