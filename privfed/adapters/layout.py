"""``AdapterLayout``: the map between a PEFT model's trainable parameters and one flat vector.

Everything that crosses the network is one flat ``float32`` vector; the
layout (ordered names, shapes, offsets) turns it back into tensors. The pure
numpy half (:meth:`AdapterLayout.flatten_arrays`, :meth:`AdapterLayout.unflatten`)
has no torch, so the wire format can be property-tested on its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from privfed.errors import ModelError

__all__ = ["AdapterLayout", "ParameterSlot"]

FloatVector = npt.NDArray[np.float32]


@dataclasses.dataclass(frozen=True)
class ParameterSlot:
    """One tensor's place in the flat vector: ``vector[offset : offset + size]``."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclasses.dataclass(frozen=True)
class AdapterLayout:
    """Ordered slots covering a flat vector of length :attr:`dim` without gaps."""

    slots: tuple[ParameterSlot, ...]

    def __post_init__(self) -> None:
        offset = 0
        names = set()
        for slot in self.slots:
            if slot.offset != offset:
                raise ModelError(f"layout slot {slot.name!r} starts at {slot.offset}, expected {offset}")
            if any(d < 0 for d in slot.shape):
                raise ModelError(f"layout slot {slot.name!r} has a negative dimension: {slot.shape}")
            if slot.name in names:
                raise ModelError(f"layout has two slots named {slot.name!r}")
            names.add(slot.name)
            offset += slot.size

    @classmethod
    def from_shapes(cls, named_shapes: Sequence[tuple[str, Sequence[int]]]) -> AdapterLayout:
        """A layout packing the given (name, shape) pairs in order."""
        slots = []
        offset = 0
        for name, shape in named_shapes:
            slot = ParameterSlot(name=name, shape=tuple(int(d) for d in shape), offset=offset)
            slots.append(slot)
            offset += slot.size
        return cls(tuple(slots))

    @classmethod
    def from_model(cls, model: Any) -> AdapterLayout:
        """The layout of ``model``'s trainable parameters, in registration order."""
        return cls.from_shapes([(n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad])

    @property
    def dim(self) -> int:
        """Length of the flat vector."""
        return sum(s.size for s in self.slots)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.slots)

    def fingerprint(self) -> str:
        """A short hash of names and shapes; equal layouts have equal fingerprints."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps([[s.name, list(s.shape)] for s in self.slots], separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> AdapterLayout:
        try:
            raw = json.loads(text)
            return cls.from_shapes([(str(name), [int(d) for d in shape]) for name, shape in raw])
        except (ValueError, TypeError) as exc:
            raise ModelError(f"invalid adapter layout JSON: {exc}") from None

    # --- pure numpy -----------------------------------------------------------------
    def flatten_arrays(self, arrays: Mapping[str, npt.ArrayLike]) -> FloatVector:
        """Concatenate named arrays into ``float32[dim]`` in layout order.

        Raises:
            ModelError: if a name is missing or extra, or a shape differs.
        """
        extra = set(arrays) - set(self.names)
        if extra:
            raise ModelError(f"arrays not in the layout: {sorted(extra)[:3]}")
        out = np.empty(self.dim, dtype=np.float32)
        for slot in self.slots:
            if slot.name not in arrays:
                raise ModelError(f"array {slot.name!r} is missing")
            value = np.asarray(arrays[slot.name])
            if tuple(value.shape) != slot.shape:
                raise ModelError(f"array {slot.name!r} has shape {tuple(value.shape)}, layout says {slot.shape}")
            out[slot.offset : slot.offset + slot.size] = value.reshape(-1)
        return out

    def check_vector(self, vector: npt.ArrayLike, *, finite: bool = True) -> FloatVector:
        """``vector`` as ``float32[dim]``.

        Raises:
            ModelError: on a wrong length or dtype kind, or (``finite``, the default: a
                model's weights, a checkpoint, a broadcast) any NaN or infinite value.
        """
        arr = np.asarray(vector)
        if arr.ndim != 1 or arr.shape[0] != self.dim:
            raise ModelError(f"flat vector has shape {arr.shape}, layout needs ({self.dim},)")
        if not np.issubdtype(arr.dtype, np.floating):
            raise ModelError(f"flat vector has dtype {arr.dtype}, expected floating point")
        out = arr.astype(np.float32, copy=False)
        if finite and not np.isfinite(out).all():
            bad = int(out.size - np.count_nonzero(np.isfinite(out)))
            raise ModelError(f"flat vector holds {bad} non-finite (NaN/inf) value(s) of {self.dim}")
        return out

    def unflatten(self, vector: npt.ArrayLike) -> dict[str, FloatVector]:
        """Split ``float32[dim]`` into named arrays (views into the vector); any float values (pure wire format)."""
        flat = self.check_vector(vector, finite=False)
        return {s.name: flat[s.offset : s.offset + s.size].reshape(s.shape) for s in self.slots}

    # --- torch ----------------------------------------------------------------------
    def flatten(self, model: Any) -> FloatVector:
        """Read ``model``'s trainable parameters into a new ``float32[dim]`` vector."""
        params = dict(model.named_parameters())
        return self.flatten_arrays({n: params[n].detach().cpu().float().numpy() for n in self.names if n in params})

    def load_into(self, model: Any, vector: npt.ArrayLike) -> None:
        """Copy ``float32[dim]`` into ``model``'s trainable parameters, in place."""
        import torch

        params = dict(model.named_parameters())
        self.check_vector(vector)  # a model never gets NaN/inf weights
        with torch.no_grad():
            for name, value in self.unflatten(vector).items():
                if name not in params:
                    raise ModelError(f"model has no parameter {name!r}")
                target = params[name]
                if tuple(target.shape) != value.shape:
                    raise ModelError(f"parameter {name!r} has shape {tuple(target.shape)}, layout says {value.shape}")
                target.copy_(torch.from_numpy(np.ascontiguousarray(value)).to(device=target.device, dtype=target.dtype))
