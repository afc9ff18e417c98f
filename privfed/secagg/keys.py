"""Key derivation shared by client and server, so both ends derive identical keys."""

from __future__ import annotations

import hashlib
import struct

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from privfed.secagg.crypto import agree, hkdf

__all__ = [
    "pairwise_mask_key",
    "seed_commitment",
    "self_mask_key",
    "setup_digest",
    "share_aad",
    "share_encryption_key",
]


def _context(session: bytes, label: bytes, *ids: int) -> bytes:
    return b"privfed-secagg/v1/" + label + b"/" + session + struct.pack(f"<{len(ids)}I", *ids)


def share_encryption_key(
    private: bytes | X25519PrivateKey, peer_public: bytes, *, session: bytes, a: int, b: int
) -> bytes:
    """AES-128-GCM key for shares between clients ``a`` and ``b`` (symmetric in a, b)."""
    lo, hi = sorted((a, b))
    return hkdf(agree(private, peer_public), info=_context(session, b"share-key", lo, hi), length=16)


def share_aad(*, session: bytes, source: int, destination: int) -> bytes:
    """Associated data binding a sealed share to its session, sender and recipient."""
    return _context(session, b"share-aad", source, destination)


def pairwise_mask_key(
    private: bytes | X25519PrivateKey, peer_public: bytes, *, session: bytes, a: int, b: int
) -> bytes:
    """128-bit AES-CTR key of the pairwise mask between ``a`` and ``b`` (symmetric)."""
    lo, hi = sorted((a, b))
    return hkdf(agree(private, peer_public), info=_context(session, b"pairwise-mask", lo, hi), length=16)


def self_mask_key(seed: bytes, *, session: bytes, client_id: int) -> bytes:
    """128-bit AES-CTR key of client ``client_id``'s self mask, from its 32-byte seed."""
    return hkdf(seed, info=_context(session, b"self-mask", client_id), length=16)


def seed_commitment(seed: bytes, *, session: bytes, client_id: int) -> bytes:
    """SHA-256 commitment to a self-mask seed (hiding: the seed is 32 uniform bytes; binding:
    collision resistance). The server checks a reconstructed seed against it."""
    return hashlib.sha256(_context(session, b"seed-commitment", client_id) + seed).digest()


def setup_digest(global_setup: bytes) -> bytes:
    """SHA-256 of a round's global setup (``SetupRequest.global_setup()``), which every client
    signs in its key advertisement and compares with its neighbours'."""
    return hashlib.sha256(b"privfed-secagg/v2/global-setup/" + global_setup).digest()
