"""Update compression stages (pure numpy): rotation, fixed point, sparsification, bit packing."""

from privfed.compression.packing import pack_bits, packed_size, unpack_bits
from privfed.compression.quantize import (
    COORDINATE_RANGE_STDDEVS,
    ConditionalRoundingError,
    FixedPointCodec,
    coordinate_range,
    max_norm_before_rounding,
    rounded_l2_norm_bound,
)
from privfed.compression.rotation import fwht, inverse_rotate, padded_dim, random_signs, rotate
from privfed.compression.sparsify import kept_count, shared_subset, top_k_indices

__all__ = [
    "COORDINATE_RANGE_STDDEVS",
    "ConditionalRoundingError",
    "FixedPointCodec",
    "coordinate_range",
    "fwht",
    "inverse_rotate",
    "kept_count",
    "max_norm_before_rounding",
    "pack_bits",
    "packed_size",
    "padded_dim",
    "random_signs",
    "rotate",
    "rounded_l2_norm_bound",
    "shared_subset",
    "top_k_indices",
    "unpack_bits",
]
