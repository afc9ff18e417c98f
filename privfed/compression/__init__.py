"""Update compression stages (pure numpy)."""

from privfed.compression.quantize import FixedPointCodec

__all__ = ["FixedPointCodec"]
