"""Gradient inversion: reconstruct a client's images or text from what it uploads.

- :mod:`attacks.inversion.image`: DLG, iDLG label recovery, Inverting
  Gradients and the analytic first-layer attack on sklearn digits.
- :mod:`attacks.inversion.text`: DAGER-style span checks that recover tokens
  (and positions) from full, LoRA and FFA-LoRA updates.
- :mod:`attacks.inversion.defences`: DP-SGD, quantization and SecAgg views.
- :mod:`attacks.inversion.sweep`: the ``privfed attack inversion`` experiment.
"""

from attacks.inversion.defences import dp_sgd_mean, global_norm, quantize_roundtrip, sum_updates
from attacks.inversion.image import (
    ImageReconstruction,
    analytic_first_layer,
    client_gradient,
    dlg,
    image_observation,
    inverting_gradients,
    match_reconstructions,
    matched_scores,
    plot_reconstructions,
    recover_labels,
)
from attacks.inversion.text import (
    TextReconstruction,
    first_layer_parameters,
    span_basis,
    text_span_attack,
    tokens_from_embedding_gradient,
)
from attacks.inversion.vision import build_vision_model, digits_cnn, digits_mlp, vision_model_names

__all__ = [
    "ImageReconstruction",
    "TextReconstruction",
    "analytic_first_layer",
    "build_vision_model",
    "client_gradient",
    "digits_cnn",
    "digits_mlp",
    "dlg",
    "dp_sgd_mean",
    "first_layer_parameters",
    "global_norm",
    "image_observation",
    "inverting_gradients",
    "match_reconstructions",
    "matched_scores",
    "plot_reconstructions",
    "quantize_roundtrip",
    "recover_labels",
    "span_basis",
    "sum_updates",
    "text_span_attack",
    "tokens_from_embedding_gradient",
    "vision_model_names",
]
