"""The attacked text client: a privfed model variant and the upload it makes.

Builds the three things a text-inversion experiment compares on the same
frozen base model: full fine-tuning, LoRA of rank r, and FFA-LoRA of rank r
(privfed's ``lora`` / ``ffa_lora`` adapter methods), and computes what one
client uploads after one local SGD step on a batch, with the defences of
:mod:`attacks.inversion.defences` applied the way privfed applies them
(DP-SGD clipping/noise, fixed-point quantization, secure summation).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from attacks.inversion.defences import quantize_roundtrip, sum_updates
from attacks.inversion.text import Target
from attacks.threat import Observation, ThreatModel
from privfed import AdapterConfig, LoraAdapterConfig, load_base_model, wrap_model
from privfed.rng import derive_seed

__all__ = ["TextBatch", "TextVictim"]


@dataclasses.dataclass(frozen=True)
class TextBatch:
    """Tokenized client batch: ids/mask as int64 [B, L], labels int64 [B]."""

    input_ids: npt.NDArray[np.int64]
    attention_mask: npt.NDArray[np.int64]
    labels: npt.NDArray[np.int64]

    def content_tokens(self, special_ids: Sequence[int]) -> list[int]:
        """The non-padding, non-special token ids (what an attacker wants)."""
        special = set(int(s) for s in special_ids)
        ids = self.input_ids[self.attention_mask.astype(bool)]
        return [int(t) for t in ids if int(t) not in special]


class TextVictim:
    """A base model loaded once; variants are deep copies with adapters attached.

    Args:
        model_name: a privfed model (``minilm`` is the demo model).
        num_labels: classes of the classification task.
        max_length: tokenizer truncation (the pipeline's ``model.max_length``).
        seed: seeds the base model's head and the adapters.
    """

    def __init__(self, model_name: str, *, num_labels: int, max_length: int, seed: int) -> None:
        loaded = load_base_model(model_name, num_labels=num_labels, init_seed=seed)
        loaded.model.eval()
        self.model_name = model_name
        self.tokenizer = loaded.tokenizer
        self.spec = loaded.spec
        self.max_length = max_length
        self.seed = seed
        self._base = loaded.model

    @property
    def special_ids(self) -> tuple[int, ...]:
        """Token ids the tokenizer adds by itself ([CLS], [SEP], padding)."""
        return tuple(int(i) for i in self.tokenizer.all_special_ids)

    def tokenize(self, texts: Sequence[str], labels: Sequence[int]) -> TextBatch:
        """Right-padded batch, truncated at ``max_length``."""
        enc = self.tokenizer(
            list(texts), return_tensors="np", padding=True, truncation=True, max_length=self.max_length
        )
        return TextBatch(
            input_ids=np.asarray(enc["input_ids"], dtype=np.int64),
            attention_mask=np.asarray(enc["attention_mask"], dtype=np.int64),
            labels=np.asarray(labels, dtype=np.int64),
        )

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` without special tokens."""
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def model(self, target: Target, rank: int) -> Any:
        """A fresh copy of the base model set up for ``target``.

        LoRA's ``B`` starts at zero, which makes ``dL/dA`` vanish; the attacked
        round is any round after the first, so ``B`` is set to seeded
        N(0, 0.02^2) entries standing in for a partly trained adapter.
        """
        import torch

        model = copy.deepcopy(self._base)
        if target == "full":
            for p in model.parameters():
                p.requires_grad_(True)
            return model
        method = "lora" if target == "lora" else "ffa_lora"
        cfg = AdapterConfig(method=method, method_config=LoraAdapterConfig(rank=rank, alpha=2 * rank))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, "inversion", "adapter-init", rank))
            wrapped = wrap_model(model, cfg, self.spec)
            for name, p in wrapped.named_parameters():
                if ".lora_B." in name:
                    with torch.no_grad():
                        p.normal_(0.0, 0.02)
        wrapped.eval()
        return wrapped

    def _grads(self, model: Any, batch: TextBatch, rows: slice) -> dict[str, Any]:
        import torch

        model.zero_grad(set_to_none=True)
        out = model(
            input_ids=torch.from_numpy(batch.input_ids[rows]),
            attention_mask=torch.from_numpy(batch.attention_mask[rows]),
            labels=torch.from_numpy(batch.labels[rows]),
        )
        out.loss.backward()
        return {
            n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None
        }

    def upload(
        self,
        model: Any,
        batch: TextBatch,
        *,
        learning_rate: float,
        noise_multiplier: float,
        clip_norm: float,
        rng: np.random.Generator,
    ) -> dict[str, npt.NDArray[np.float32]]:
        """The client's delta after one local SGD step: ``-lr * g``.

        ``g`` is the batch-mean gradient, or with ``noise_multiplier > 0`` the
        DP-SGD gradient: per-example gradients clipped to ``clip_norm``
        jointly over all trainable parameters, summed, plus
        N(0, (noise_multiplier * clip_norm)^2), divided by the batch size
        (streamed, so full fine-tuning never holds B copies of the model).
        """
        import torch

        n = len(batch.labels)
        if noise_multiplier == 0:
            grads = self._grads(model, batch, slice(0, n))
            return {k: (-learning_rate * v).numpy().astype(np.float32) for k, v in grads.items()}
        total: dict[str, Any] = {}
        for i in range(n):
            g = self._grads(model, batch, slice(i, i + 1))
            norm = float(np.sqrt(sum(float(torch.sum(v.double() ** 2)) for v in g.values())))
            factor = min(1.0, clip_norm / max(norm, 1e-12))
            for k, v in g.items():
                total[k] = total.get(k, 0) + factor * v.double()
        std = noise_multiplier * clip_norm
        out: dict[str, npt.NDArray[np.float32]] = {}
        for k, v in total.items():
            noisy = v.numpy() + rng.normal(0.0, std, size=tuple(v.shape))
            out[k] = (-learning_rate * noisy / n).astype(np.float32)
        return out

    def observe(
        self,
        model: Any,
        batches: Sequence[TextBatch],
        *,
        learning_rate: float,
        noise_multiplier: float,
        clip_norm: float,
        quant_bits: int,
        rng: np.random.Generator,
    ) -> Observation:
        """What the server sees: ``batches[0]`` is the target client; with more
        batches, the secure-aggregation sum of all their uploads.

        ``quant_bits > 0`` sends each upload through privfed's fixed-point
        codec with a per-coordinate range of the cohort's largest |delta|
        (room for the whole cohort's sum), as a tuned deployment would.
        """
        uploads = [
            self.upload(
                model, b, learning_rate=learning_rate, noise_multiplier=noise_multiplier, clip_norm=clip_norm, rng=rng
            )
            for b in batches
        ]
        if quant_bits:
            clip = max(float(np.max(np.abs(v))) for u in uploads for v in u.values()) or 1.0
            uploads = [
                quantize_roundtrip(u, bits=quant_bits, clip=clip, rng=rng, num_summands=len(uploads)) for u in uploads
            ]
        threat = ThreatModel(view="secagg_aggregate", num_clients=len(batches)) if len(batches) > 1 else ThreatModel()
        return Observation(
            threat=threat,
            updates=sum_updates(uploads) if len(uploads) > 1 else uploads[0],
            learning_rate=learning_rate,
            batch_size=len(batches[0].labels),
        )
