"""Token recovery from transformer updates by span checks (DAGER-style).

The gradient of a linear layer ``y = W x`` over a batch is
``dL/dW = sum_t delta_t x_t^T``: its rows lie in the span of the layer's
inputs ``x_t``. In the first transformer block those inputs are a known
function of (token, position) only: ``LayerNorm(E[v] + P[p] + S)`` for BERT,
``RMSNorm(E[v])`` for Llama. An attacker holding the base weights therefore
tests every vocabulary token (at every position, where positions enter the
input) for membership in the observed row space and reads off the batch's
tokens, and for BERT-style models their positions too (Petrov, Dimitrov,
Balunović, Vechev, "DAGER: Exact Gradient Inversion for Large Language
Models", NeurIPS 2024, Sec. 4; the rank argument is their Lemma 5.1).

What the attacker sees decides what the span can reveal:

- full fine-tuning (``target="full"``): ``dL/dW_q`` of layer 0 has rank
  ``n`` (tokens in the batch) while ``n < d_model``: exact recovery. The
  word-embedding gradient is even simpler: its non-zero rows are the batch's
  vocabulary (:func:`tokens_from_embedding_gradient`).
- LoRA (``target="lora"``): ``dL/dA = s B^T dL/dW`` has the same row space
  restricted to rank ``r`` per adapted module (and is zero while ``B = 0``,
  i.e. in the first round). With ``2r >= n`` (q and v adapted) recovery is
  still exact; below that the span is a random ``2r``-dimensional slice of
  the token span and the attacker can only rank tokens by their distance to it.
- FFA-LoRA (``target="ffa_lora"``): only ``B`` trains; ``dL/dB = s dL/dW A^T``
  has rows in the span of the *projected* inputs ``A x_t`` in ``R^r``, so the
  test runs on ``A x_v`` and saturates as soon as ``n >= r``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from attacks.threat import Observation

__all__ = [
    "Target",
    "TextReconstruction",
    "first_layer_parameters",
    "span_basis",
    "text_span_attack",
    "tokens_from_embedding_gradient",
]

Target = Literal["full", "lora", "ffa_lora"]
_FIRST_LAYER = re.compile(r"\.layers?\.0\.(attention\.self\.(query|key|value)|self_attn\.(q_proj|k_proj|v_proj))\.")


def first_layer_parameters(names: Sequence[str], target: Target) -> list[str]:
    """The observed parameters whose gradient rows span the first block's inputs.

    ``full``: the q/k/v weight matrices of block 0; ``lora``: their LoRA ``A``
    matrices; ``ffa_lora``: their LoRA ``B`` matrices (tested in A's projection).
    """
    suffix = {"full": re.compile(r"\.weight$"), "lora": re.compile(r"\.lora_A\.[^.]+\.weight$")}.get(
        target, re.compile(r"\.lora_B\.[^.]+\.weight$")
    )
    chosen = [n for n in names if _FIRST_LAYER.search(n) and suffix.search(n)]
    if target == "full":
        chosen = [n for n in chosen if ".lora_" not in n]
    if not chosen:
        raise ValueError(f"no first-block {target} parameters among the observed updates")
    return chosen


@dataclasses.dataclass(frozen=True)
class _Inputs:
    """How a model builds block-0 inputs from (token, position)."""

    hf: Any  # the transformers backbone (BertModel, LlamaModel, ...)
    positional: bool

    def candidates(self, position: int) -> Any:
        """float64 [vocab, d]: block-0 input of every token at ``position``."""
        import torch

        if self.positional:
            emb = self.hf.embeddings
            x = emb.word_embeddings.weight.double() + emb.position_embeddings.weight[position].double()
            if getattr(emb, "token_type_embeddings", None) is not None:
                x = x + emb.token_type_embeddings.weight[0].double()
            ln = emb.LayerNorm
            return torch.nn.functional.layer_norm(x, x.shape[-1:], ln.weight.double(), ln.bias.double(), ln.eps)
        norm = self.hf.layers[0].input_layernorm
        x = self.hf.embed_tokens.weight.double()
        var = x.pow(2).mean(-1, keepdim=True)
        return x * torch.rsqrt(var + norm.variance_epsilon) * norm.weight.double()


def _backbone(model: Any) -> _Inputs:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    hf = inner.base_model
    if hasattr(hf, "embeddings") and hasattr(hf.embeddings, "position_embeddings"):
        return _Inputs(hf=hf, positional=True)
    if hasattr(hf, "embed_tokens") and hasattr(hf, "layers"):
        return _Inputs(hf=hf, positional=False)
    raise ValueError(f"span checks support BERT- and Llama-style backbones, not {type(hf).__name__}")


def span_basis(rows: npt.ArrayLike, *, rank_tol: float = 1e-5) -> tuple[npt.NDArray[np.float64], bool]:
    """Orthonormal basis (as rows) of the row space of ``rows`` and whether it is saturated.

    Singular values below ``rank_tol`` times the largest are treated as zero
    (float error, quantization, tiny noise). "Saturated" means the numerical
    rank equals the most the observation could show (``min(rows.shape)``), so
    the span may be a strict slice of the tokens' span.
    """
    g = np.asarray(rows, dtype=np.float64)
    if g.ndim != 2 or not g.size:
        raise ValueError("rows must be a non-empty matrix")
    _, s, vh = np.linalg.svd(g, full_matrices=False)
    if s[0] == 0:
        return np.zeros((0, g.shape[1])), False
    rank = int(np.sum(s > rank_tol * s[0]))
    return vh[:rank], rank >= min(g.shape)


@dataclasses.dataclass(frozen=True)
class TextReconstruction:
    """What a span attack recovered.

    Attributes:
        tokens: recovered token ids (a multiset over the batch).
        positions: the position of each recovered token (-1 when positions
            are not identifiable, e.g. Llama's rotary embeddings).
        residuals: relative distance of each recovered (token, position) input
            to the observed span (0 = exactly inside).
        sequences: token ids per reconstructed sequence, ordered by position.
        span_rank: dimension of the observed span.
        saturated: the span was full rank, so tokens were ranked, not certified.
    """

    tokens: tuple[int, ...]
    positions: tuple[int, ...]
    residuals: tuple[float, ...]
    sequences: tuple[tuple[int, ...], ...]
    span_rank: int
    saturated: bool


def text_span_attack(
    observation: Observation,
    model: Any,
    *,
    target: Target,
    max_positions: int,
    batch_size: int | None = None,
    residual_tol: float = 0.05,
    rank_tol: float = 1e-5,
    guesses: int | None = None,
    exclude_tokens: Sequence[int] = (),
) -> TextReconstruction:
    """Recover the batch's tokens from the first block's gradient rows.

    Args:
        observation: the update; its names must match ``model``'s parameters.
        model: the attacked model with the *base* (pre-update) weights; for
            ``ffa_lora`` also the frozen ``A`` matrices, which the attacker knows.
        target: what was trained (see the module docstring).
        max_positions: positions to test (BERT-style models; the tokenizer's
            max_length in the attacked pipeline).
        batch_size: sequences behind the update (default: ``observation.batch_size``
            times the clients in a SecAgg sum); at most this many tokens are
            accepted per position.
        residual_tol: a (token, position) whose input lies within this relative
            distance of the span counts as present (unsaturated spans).
        rank_tol: relative singular-value cut-off for the span.
        guesses: when the span is saturated, how many best-ranked pairs to
            return (default: the span's rank, the most a rank-k span can certify).
        exclude_tokens: token ids never reported (e.g. padding).
    """
    import torch

    names = first_layer_parameters(list(observation.updates), target)
    inputs = _backbone(model)
    params = dict(model.named_parameters())
    rows = []
    projections: list[Any] = []
    for name in names:
        grad = observation.gradient(name)
        if target == "ffa_lora":
            a_name = name.replace(".lora_B.", ".lora_A.")
            projections.append(params[a_name].detach().double())
            rows.append(grad)  # dL/dB = sum_t delta_t (A x_t)^T: rows in span{A x_t}
        else:
            rows.append(grad)
    bsz = batch_size or observation.batch_size * observation.threat.num_clients
    positions = range(max_positions) if inputs.positional else range(1)
    excluded = torch.tensor(sorted(set(int(t) for t in exclude_tokens)), dtype=torch.long)

    best_pairs: list[tuple[float, int, int]] = []
    with torch.no_grad():
        if target == "ffa_lora":
            # One span per adapted module (each has its own A); a token must sit in all of them.
            bases = [span_basis(r, rank_tol=rank_tol) for r in rows]
            saturated = any(sat for _, sat in bases)
            rank = min(b.shape[0] for b, _ in bases)
        else:
            basis, saturated = span_basis(np.concatenate(rows, axis=0), rank_tol=rank_tol)
            bases = [(basis, saturated)]
            rank = basis.shape[0]
        for pos in positions:
            x = inputs.candidates(pos)
            res = torch.zeros(x.shape[0], dtype=torch.float64)
            for i, (basis, _) in enumerate(bases):
                v = x @ projections[i].T if target == "ffa_lora" else x
                q = torch.from_numpy(basis)
                inside = (v @ q.T) @ q
                res = torch.maximum(res, (v - inside).norm(dim=1) / v.norm(dim=1).clamp_min(1e-30))
            if excluded.numel():
                res[excluded] = float("inf")
            # Without positions every token of every sequence competes in one pool.
            per_pool = bsz if inputs.positional else bsz * max_positions
            top = torch.topk(res, k=min(per_pool, res.shape[0]), largest=False)
            best_pairs.extend((float(r), int(t), pos) for r, t in zip(top.values, top.indices, strict=True))
    best_pairs.sort()
    if saturated:
        chosen = best_pairs[: guesses if guesses is not None else rank]
    else:
        chosen = [p for p in best_pairs if p[0] <= residual_tol]
    if not inputs.positional:
        chosen = [(r, t, -1) for r, t, _ in chosen]
    return _assemble(chosen, bsz, rank, saturated)


def _assemble(chosen: list[tuple[float, int, int]], batch_size: int, rank: int, saturated: bool) -> TextReconstruction:
    # Sequence b takes the b-th best token at each position: exact for batch 1,
    # a guess for larger batches (the span says which tokens sit at a position,
    # not which sequence each belongs to).
    by_pos: dict[int, list[tuple[float, int]]] = {}
    for r, t, p in chosen:
        by_pos.setdefault(p, []).append((r, t))
    sequences: list[list[int]] = [[] for _ in range(batch_size)]
    for p in sorted(by_pos):
        for b, (_, t) in enumerate(sorted(by_pos[p])[:batch_size]):
            sequences[b].append(t)
    ordered = sorted(chosen, key=lambda c: (c[2], c[0]))
    return TextReconstruction(
        tokens=tuple(t for _, t, _ in ordered),
        positions=tuple(p for _, _, p in ordered),
        residuals=tuple(r for r, _, _ in ordered),
        sequences=tuple(tuple(s) for s in sequences if s),
        span_rank=rank,
        saturated=saturated,
    )


def tokens_from_embedding_gradient(
    observation: Observation, name: str, *, rel_tol: float = 1e-6, guesses: int | None = None
) -> tuple[int, ...]:
    """Vocabulary rows of the word-embedding update that are non-zero: the batch's tokens.

    Exact for full fine-tuning without noise (only looked-up rows receive a
    gradient) when input and output embeddings are separate matrices; with
    tied embeddings (SmolLM2) the output layer touches every row. Under noise
    every row is non-zero; ``guesses`` then returns the rows with the largest norms.
    """
    grad = observation.gradient(name)
    if grad.ndim != 2:
        raise ValueError(f"{name!r} is not an embedding matrix")
    norms = np.linalg.norm(grad, axis=1)
    if guesses is not None:
        return tuple(int(i) for i in np.argsort(-norms, kind="stable")[:guesses])
    top = norms.max()
    return tuple(int(i) for i in np.flatnonzero(norms > rel_tol * top)) if top > 0 else ()
