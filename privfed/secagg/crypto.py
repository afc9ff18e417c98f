"""Cryptographic building blocks for secure aggregation, all from ``cryptography``.

* X25519 key agreement, HKDF-SHA256 key derivation, AES-GCM authenticated
  encryption of Shamir shares (Bonawitz et al. 2017, Sec. 4).
* AES-128-CTR keystream as the mask PRG: a 128-bit key from HKDF carries its
  full entropy into the keystream (Flower's SecAgg+ folds seeds to 32 bits; a
  32-bit seed can be brute-forced from one masked vector).
* Ed25519 signatures authenticate every client message (the malicious-server
  variant of Bonawitz et al. 2017, Sec. 6): a signing key per client and round
  (or a long-term key pinned by the deployment).
* Randomness is injected as a ``RandomSource`` (``n -> n bytes``): the OS
  CSPRNG by default, or :class:`KeyedRandom` (AES-CTR DRBG keyed by the
  caller) when a run must be replayable bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from privfed.errors import ProtocolError

__all__ = [
    "KEY_BYTES",
    "SIGNATURE_BYTES",
    "VERIFY_KEY_BYTES",
    "KeyedRandom",
    "MaskAccumulator",
    "RandomSource",
    "aead_decrypt",
    "aead_encrypt",
    "agree",
    "hkdf",
    "mask_dtype",
    "prg_words",
    "private_key",
    "public_key",
    "sign",
    "signing_key",
    "system_random",
    "verification_key",
    "verify",
]

RandomSource = Callable[[int], bytes]
KEY_BYTES = 32
_NONCE_BYTES = 12
SIGNATURE_BYTES = 64
VERIFY_KEY_BYTES = 32


def system_random(n: int) -> bytes:
    """``n`` bytes from the operating system's CSPRNG."""
    return os.urandom(n)


class KeyedRandom:
    """Deterministic cryptographic random bytes: the AES-256-CTR keystream of ``key``.

    For simulations and tests that must replay exactly; never share the key.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("KeyedRandom needs a 32-byte key")
        self._encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()

    def __call__(self, n: int) -> bytes:
        return self._encryptor.update(bytes(n))


def public_key(private: bytes) -> bytes:
    """The X25519 public key (32 bytes) of a 32-byte private key."""
    key = X25519PrivateKey.from_private_bytes(private)
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_key(private: bytes) -> X25519PrivateKey:
    """Parse a 32-byte X25519 private key once, for repeated :func:`agree` calls."""
    return X25519PrivateKey.from_private_bytes(private)


def agree(private: bytes | X25519PrivateKey, peer_public: bytes) -> bytes:
    """X25519 shared secret (32 bytes). Raises ``ProtocolError`` on an invalid peer key."""
    key = private if isinstance(private, X25519PrivateKey) else X25519PrivateKey.from_private_bytes(private)
    try:
        return key.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # wrong length or a low-order point
        raise ProtocolError(f"invalid X25519 public key: {exc}") from None


def signing_key(private: bytes) -> Ed25519PrivateKey:
    """Ed25519 signing key from 32 secret bytes (draw them from a :data:`RandomSource`)."""
    return Ed25519PrivateKey.from_private_bytes(private)


def verification_key(key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte Ed25519 public key of ``key``."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def sign(key: Ed25519PrivateKey, message: bytes) -> bytes:
    """Ed25519 signature (64 bytes) of ``message``."""
    return key.sign(message)


def verify(public: bytes, signature: bytes, message: bytes, *, what: str) -> None:
    """Check an Ed25519 signature; ``ProtocolError`` naming ``what`` if it does not verify."""
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise ProtocolError(f"signature on {what} does not verify") from None


def hkdf(secret: bytes, *, info: bytes, length: int = 16, salt: bytes | None = None) -> bytes:
    """HKDF-SHA256 (RFC 5869) of ``secret`` bound to ``info``."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)


def aead_encrypt(key: bytes, plaintext: bytes, *, associated: bytes, random: RandomSource) -> bytes:
    """AES-GCM: ``nonce (12) || ciphertext || tag (16)``, authenticating ``associated``."""
    nonce = random(_NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def aead_decrypt(key: bytes, sealed: bytes, *, associated: bytes) -> bytes:
    """Open :func:`aead_encrypt` output; ``ProtocolError`` if forged, altered or misaddressed."""
    if len(sealed) < _NONCE_BYTES + 16:
        raise ProtocolError("encrypted share truncated")
    try:
        return AESGCM(key).decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], associated)
    except InvalidTag:
        raise ProtocolError("encrypted share failed authentication") from None


def mask_dtype(bits: int) -> type[np.unsignedinteger]:
    """Smallest machine word holding ``bits``-bit residues: uint32 up to 32 bits, else uint64.

    Arithmetic wraps modulo 2**32 (or 2**64); since 2**bits divides that, reducing
    at the end gives the right residue modulo 2**bits.
    """
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be in [1, 64]; got {bits}")
    return np.uint32 if bits <= 32 else np.uint64


def _keystream_cipher(key: bytes) -> Cipher[modes.CTR]:
    if len(key) != 16:
        raise ValueError("the mask PRG takes a 16-byte AES-128 key")
    return Cipher(algorithms.AES(key), modes.CTR(bytes(16)))


def prg_words(key: bytes, count: int, *, bits: int) -> npt.NDArray[np.unsignedinteger]:
    """``count`` mask words from the AES-128-CTR keystream of ``key`` (zero IV; keys are single-use)."""
    dtype = np.dtype(mask_dtype(bits))
    stream = _keystream_cipher(key).encryptor().update(bytes(count * dtype.itemsize))
    return np.frombuffer(stream, dtype=dtype.newbyteorder("<")).astype(dtype)


class MaskAccumulator:
    """Adds and subtracts PRG masks into a vector in place, without per-mask allocations.

    The keystream is written straight into a reused buffer with
    ``update_into`` and added with numpy's in-place ufuncs, so masking costs
    little more than generating the keystream itself.
    """

    # 512 KiB of uint32 keystream per AES call (with its slice of the vector, a 1 MiB L2). At d = 1e6 it
    # was as fast as 128 KiB chunks or up to 20% faster in 3 of 4 runs on 2 shared cores, slower in one
    # (benchmarks/compression.py, masking_approaches); fewer Python-level calls per mask.
    _CHUNK_WORDS = 1 << 17

    def __init__(self, values: npt.NDArray[np.unsignedinteger], *, bits: int) -> None:
        dtype = np.dtype(mask_dtype(bits))
        if values.dtype != dtype or values.ndim != 1:
            raise ValueError(f"values must be a 1-D {dtype} array")
        self.values = values
        self.bits = bits
        chunk = min(self._CHUNK_WORDS, max(1, values.size))
        self._out = bytearray(chunk * dtype.itemsize + 15)  # update_into needs block_size - 1 spare bytes
        self._zeros = bytes(chunk * dtype.itemsize)
        self._words = np.frombuffer(self._out, dtype=dtype, count=chunk)

    def _apply(self, key: bytes, *, subtract: bool) -> None:
        encryptor = _keystream_cipher(key).encryptor()
        size = self.values.size
        chunk = self._words.size
        itemsize = self._words.itemsize
        op = np.subtract if subtract else np.add
        for start in range(0, size, chunk):
            n = min(chunk, size - start)
            encryptor.update_into(self._zeros[: n * itemsize], self._out)
            view = self.values[start : start + n]
            op(view, self._words[:n], out=view)

    def add(self, key: bytes) -> None:
        """``values += PRG(key)`` (mod the word size)."""
        self._apply(key, subtract=False)

    def subtract(self, key: bytes) -> None:
        """``values -= PRG(key)`` (mod the word size)."""
        self._apply(key, subtract=True)

    def reduced(self) -> npt.NDArray[np.unsignedinteger]:
        """The values modulo ``2**bits``."""
        word_bits = self.values.dtype.itemsize * 8
        if self.bits == word_bits:
            return self.values.copy()
        return self.values & self.values.dtype.type((1 << self.bits) - 1)
