"""Shamir secret sharing over the prime field GF(2**521 - 1).

Small and deliberately plain: secrets are at most 64 bytes (X25519 private
keys and self-mask seeds are 32), coefficients are drawn by rejection
sampling from an injected cryptographic random source, and reconstruction is
Lagrange interpolation at zero. ``tests/reference`` checks it against an
independent slow solver (Gaussian elimination over the field).

Shamir, "How to share a secret", CACM 1979.
"""

from __future__ import annotations

from collections.abc import Sequence

from privfed.errors import ProtocolError
from privfed.secagg.crypto import RandomSource

__all__ = ["PRIME", "SHARE_BYTES", "combine", "split"]

PRIME = 2**521 - 1  # a Mersenne prime
SHARE_BYTES = 66  # ceil(521 / 8)
_MAX_SECRET_BYTES = 64


def _random_field_element(random: RandomSource) -> int:
    while True:  # rejection sampling: uniform on [0, PRIME)
        value = int.from_bytes(random(SHARE_BYTES), "big") & ((1 << 521) - 1)
        if value < PRIME:
            return value


def split(secret: bytes, *, threshold: int, xs: Sequence[int], random: RandomSource) -> dict[int, bytes]:
    """Share ``secret`` so that any ``threshold`` of the points ``xs`` recover it.

    Args:
        secret: at most 64 bytes (its length is not hidden; callers share fixed-length keys).
        threshold: shares needed to reconstruct, ``1 <= threshold <= len(xs)``.
        xs: distinct non-zero evaluation points (client ids + 1, say).
        random: cryptographic random source for the polynomial's coefficients.

    Returns:
        ``{x: share}``, each share ``SHARE_BYTES`` long.
    """
    if len(secret) > _MAX_SECRET_BYTES:
        raise ValueError(f"secret is {len(secret)} bytes; at most {_MAX_SECRET_BYTES}")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError("evaluation points must be distinct and non-zero")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold must be between 1 and {len(xs)}; got {threshold}")
    coefficients = [int.from_bytes(secret, "big")] + [_random_field_element(random) for _ in range(threshold - 1)]
    shares = {}
    for x in xs:
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        shares[x] = y.to_bytes(SHARE_BYTES, "big")
    return shares


def combine(shares: dict[int, bytes], *, threshold: int, secret_bytes: int) -> bytes:
    """Recover the secret from at least ``threshold`` shares (Lagrange interpolation at 0).

    Raises:
        ProtocolError: too few shares, or a share that is not a field element.
    """
    if len(shares) < threshold:
        raise ProtocolError(f"{len(shares)} shares cannot reconstruct a secret with threshold {threshold}")
    points = []
    for x, raw in sorted(shares.items())[:threshold]:
        y = int.from_bytes(raw, "big")
        if len(raw) != SHARE_BYTES or y >= PRIME or not 0 < x < PRIME:
            raise ProtocolError("malformed Shamir share")
        points.append((x, y))
    secret = 0
    for i, (xi, yi) in enumerate(points):
        numerator, denominator = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                numerator = numerator * xj % PRIME
                denominator = denominator * (xj - xi) % PRIME
        secret = (secret + yi * numerator * pow(denominator, -1, PRIME)) % PRIME
    if secret >= 1 << (8 * secret_bytes):
        raise ProtocolError("Shamir shares are inconsistent (reconstructed value out of range)")
    return secret.to_bytes(secret_bytes, "big")
