"""Gradient inversion: reconstruct a client's images or text from what it uploads."""

from attacks.inversion.defences import dp_sgd_mean, global_norm, quantize_roundtrip, sum_updates

__all__ = ["dp_sgd_mean", "global_norm", "quantize_roundtrip", "sum_updates"]
