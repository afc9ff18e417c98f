"""AdapterLayout: flatten/unflatten round trip is exact on random layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from privfed.adapters import AdapterLayout
from privfed.errors import ModelError

shapes = st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple)
layouts = st.lists(st.tuples(st.text(min_size=1, max_size=12), shapes), max_size=8, unique_by=lambda x: x[0])


@given(layout_spec=layouts, data=st.data())
def test_round_trip_is_bit_exact(layout_spec: list[tuple[str, tuple[int, ...]]], data: st.DataObject) -> None:
    layout = AdapterLayout.from_shapes(layout_spec)
    arrays = {
        name: data.draw(hnp.arrays(np.float32, shape, elements=st.floats(width=32, allow_nan=False)))
        for name, shape in layout_spec
    }
    flat = layout.flatten_arrays(arrays)
    assert flat.dtype == np.float32 and flat.shape == (layout.dim,)
    assert layout.dim == sum(int(np.prod(s)) for _, s in layout_spec)
    back = layout.unflatten(flat)
    assert list(back) == [name for name, _ in layout_spec]
    for name, value in arrays.items():
        assert back[name].shape == value.shape
        assert back[name].tobytes() == value.tobytes()
    assert layout.flatten_arrays(back).tobytes() == flat.tobytes()
    assert AdapterLayout.from_json(layout.to_json()) == layout
    assert AdapterLayout.from_json(layout.to_json()).fingerprint() == layout.fingerprint()


@given(layout_spec=layouts.filter(lambda spec: sum(int(np.prod(s)) for _, s in spec) > 0))
def test_wrong_inputs_are_rejected(layout_spec: list[tuple[str, tuple[int, ...]]]) -> None:
    layout = AdapterLayout.from_shapes(layout_spec)
    with pytest.raises(ModelError):
        layout.unflatten(np.zeros(layout.dim + 1, dtype=np.float32))
    with pytest.raises(ModelError):
        layout.unflatten(np.zeros(layout.dim, dtype=np.int32))
    arrays = {name: np.zeros(shape, dtype=np.float32) for name, shape in layout_spec}
    name, shape = layout_spec[0]
    arrays[name] = np.zeros((*shape, 2), dtype=np.float32)
    with pytest.raises(ModelError):
        layout.flatten_arrays(arrays)
    with pytest.raises(ModelError):
        layout.flatten_arrays({**arrays, "not-a-slot-name-at-all": np.zeros(1)})


def test_slots_must_tile_without_gaps() -> None:
    from privfed.adapters import ParameterSlot

    with pytest.raises(ModelError, match="starts at 5"):
        AdapterLayout((ParameterSlot("a", (2,), 0), ParameterSlot("b", (2,), 5)))


def test_model_round_trip_covers_exactly_the_trainable_parameters() -> None:
    from privfed.adapters import LoraAdapterConfig, wrap_model
    from privfed.config import AdapterConfig
    from privfed.models import load_base_model

    loaded = load_base_model("tiny-bert", num_labels=3)
    model = wrap_model(loaded.model, AdapterConfig(method="lora", method_config=LoraAdapterConfig(rank=2)), loaded.spec)
    layout = AdapterLayout.from_model(model)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(layout.names) == set(trainable)
    assert layout.dim == sum(p.numel() for p in trainable.values())
    assert any("lora_A" in n for n in layout.names) and any("classifier" in n for n in layout.names)
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}

    vector = np.random.default_rng(0).standard_normal(layout.dim).astype(np.float32)
    layout.load_into(model, vector)
    assert layout.flatten(model).tobytes() == vector.tobytes()
    for name, value in layout.unflatten(vector).items():
        assert torch.equal(trainable[name].detach(), torch.from_numpy(value.copy()))
    for name, before in frozen_before.items():
        assert torch.equal(dict(model.named_parameters())[name], before), f"{name} must stay frozen"
