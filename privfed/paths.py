"""Where privfed keeps derived files (dequantized weights, tokenized datasets)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """``$PRIVFED_CACHE_DIR`` if set, else ``~/.cache/privfed``; created on demand."""
    root = os.environ.get("PRIVFED_CACHE_DIR")
    path = Path(root) if root else Path.home() / ".cache" / "privfed"
    path.mkdir(parents=True, exist_ok=True)
    return path
