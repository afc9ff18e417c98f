"""Shamir secret sharing over the prime field GF(2**521 - 1).

Small and deliberately plain: secrets are at most 64 bytes (X25519 private
keys and self-mask seeds are 32), coefficients are drawn by rejection
sampling from an injected cryptographic random source, and reconstruction is
Lagrange interpolation at zero. ``tests/reference`` checks it against an
independent slow solver (Gaussian elimination over the field).

Shamir, "How to share a secret", CACM 1979.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from privfed.errors import ProtocolError
from privfed.secagg.crypto import RandomSource

__all__ = ["PRIME", "SHARE_BYTES", "combine", "combine_verified", "split"]

PRIME = 2**521 - 1  # a Mersenne prime
SHARE_BYTES = 66  # ceil(521 / 8)
_MAX_SECRET_BYTES = 64


#: Rejection-sampling draws before the random source is declared broken: one draw is refused with
#: probability 2**-521 (only the all-ones value), so 64 refusals in a row mean a constant source.
_MAX_FIELD_DRAWS = 64


def _random_field_element(random: RandomSource) -> int:
    for _ in range(_MAX_FIELD_DRAWS):  # rejection sampling: uniform on [0, PRIME)
        value = int.from_bytes(random(SHARE_BYTES), "big") & ((1 << 521) - 1)
        if value < PRIME:
            return value
    raise ProtocolError(
        f"the random source returned {_MAX_FIELD_DRAWS} field elements out of range in a row "
        "(all-ones bytes): it is not random"
    )


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


def _points(shares: dict[int, bytes]) -> list[tuple[int, int]]:
    points = []
    for x, raw in sorted(shares.items()):
        y = int.from_bytes(raw, "big")
        if len(raw) != SHARE_BYTES or y >= PRIME or not 0 < x < PRIME:
            raise ProtocolError("malformed Shamir share")
        points.append((x, y))
    return points


def _interpolate(points: list[tuple[int, int]], at: list[int]) -> list[int]:
    """Values at ``at`` of the polynomial of degree < len(points) through ``points``."""
    xs = [x for x, _ in points]
    # Lagrange weights y_i / prod_{j != i}(x_i - x_j), one inverse per point.
    weights = []
    for i, (xi, yi) in enumerate(points):
        denominator = 1
        for j, xj in enumerate(xs):
            if i != j:
                denominator = denominator * (xi - xj) % PRIME
        weights.append(yi * pow(denominator, -1, PRIME) % PRIME)
    values = []
    for z in at:
        # prod_{j != i}(z - x_j) for every i from prefix and suffix products: O(t) per point.
        factors = [(z - x) % PRIME for x in xs]
        prefix = [1]
        for f in factors:
            prefix.append(prefix[-1] * f % PRIME)
        suffix = 1
        total = 0
        for i in range(len(xs) - 1, -1, -1):
            total = (total + weights[i] * prefix[i] % PRIME * suffix) % PRIME
            suffix = suffix * factors[i] % PRIME
        values.append(total)
    return values


def combine(shares: dict[int, bytes], *, threshold: int, secret_bytes: int) -> bytes:
    """Recover the secret from at least ``threshold`` shares (Lagrange interpolation at 0).

    Every share beyond the first ``threshold`` is checked against the polynomial
    the first ones define, so one altered share among surplus ones is detected
    rather than silently ignored.

    Raises:
        ProtocolError: too few shares, a share that is not a field element, or
            shares that do not all lie on one polynomial of degree < ``threshold``.
    """
    if len(shares) < threshold:
        raise ProtocolError(f"{len(shares)} shares cannot reconstruct a secret with threshold {threshold}")
    points = _points(shares)
    basis, surplus = points[:threshold], points[threshold:]
    secret, *predicted = _interpolate(basis, [0, *(x for x, _ in surplus)])
    if any(p != y for p, (_, y) in zip(predicted, surplus, strict=True)):
        raise ProtocolError(f"Shamir shares are inconsistent ({len(shares)} shares, threshold {threshold})")
    if secret >= 1 << (8 * secret_bytes):
        raise ProtocolError("Shamir shares are inconsistent (reconstructed value out of range)")
    return secret.to_bytes(secret_bytes, "big")


def combine_verified(
    shares: dict[int, bytes], *, threshold: int, secret_bytes: int, accept: Callable[[bytes], bool]
) -> tuple[bytes, tuple[int, ...]]:
    """Recover a secret that ``accept`` confirms (a public key or a commitment), excluding at most
    one bad share.

    First all shares must be consistent and the secret accepted; failing that,
    each share is left out in turn and the rest (still at least ``threshold``,
    consistent among themselves) must give an accepted secret. ``accept`` must
    be binding (a hash or public key of the secret): it, not the surplus, is
    what makes a leave-one-out result trustworthy.

    Returns:
        ``(secret, excluded points)``.

    Raises:
        ProtocolError: no such reconstruction exists.
    """
    try:
        secret = combine(shares, threshold=threshold, secret_bytes=secret_bytes)
        if accept(secret):
            return secret, ()
    except ProtocolError:
        if len(shares) < threshold:
            raise
    if len(shares) > threshold:
        for left_out in sorted(shares):
            rest = {x: s for x, s in shares.items() if x != left_out}
            try:
                secret = combine(rest, threshold=threshold, secret_bytes=secret_bytes)
            except ProtocolError:
                continue
            if accept(secret):
                return secret, (left_out,)
    raise ProtocolError(f"no {threshold} of {len(shares)} Shamir shares rebuild a verifiable secret")
