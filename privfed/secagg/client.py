"""SecAgg / SecAgg+ client as a sans-IO state machine.

``SecAggClient.step(message_bytes) -> reply_bytes`` walks through the four
rounds of Bonawitz et al. 2017 ("Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS), restricted to the client's
neighbours in the SecAgg+ graph (Bell et al. 2020, "Secure Single-Server
Aggregation with (Poly)Logarithmic Overhead", CCS):

1. ``SetupRequest``  -> ``AdvertiseKeys``  (two fresh X25519 key pairs)
2. ``KeyDirectory``  -> ``ShareKeys``      (Shamir shares of the self-mask seed
   and of the mask private key, sealed with AES-GCM for each neighbour)
3. ``ShareDelivery`` -> ``MaskedInput``    (input + self mask +- pairwise masks, mod 2**bits)
4. ``UnmaskRequest`` -> ``UnmaskResponse`` (seed shares of survivors, key shares
   of dropped clients; never both for the same client)

A message that is malformed, for another client or round, or out of order
raises :class:`~privfed.errors.ProtocolError` and leaves the client unchanged.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from privfed.errors import ProtocolError
from privfed.secagg import shamir
from privfed.secagg.crypto import (
    KEY_BYTES,
    MaskAccumulator,
    RandomSource,
    aead_decrypt,
    aead_encrypt,
    mask_dtype,
    private_key,
    public_key,
    system_random,
)
from privfed.secagg.keys import pairwise_mask_key, self_mask_key, share_aad, share_encryption_key
from privfed.secagg.messages import (
    AdvertiseKeys,
    KeyDirectory,
    MaskedInput,
    SecAggMessage,
    SetupRequest,
    ShareDelivery,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    decode,
)

__all__ = ["SecAggClient"]

_SHARE_PLAINTEXT = 8 + 2 * shamir.SHARE_BYTES


class SecAggClient:
    """One client's side of a secure-aggregation round.

    Args:
        client_id: this client's id (Shamir evaluation point ``client_id + 1``).
        round: the protocol round this client takes part in.
        values: the client's input, residues modulo ``2**bits`` in the
            matching word type (``mask_dtype(bits)``), already encoded.
        random: cryptographic randomness (keys, seeds, Shamir coefficients, nonces).
    """

    def __init__(
        self,
        *,
        client_id: int,
        round: int,
        values: npt.NDArray[np.unsignedinteger],
        random: RandomSource = system_random,
    ) -> None:
        self.client_id = client_id
        self.round = round
        self.values = values
        self.random = random
        self.stage = "setup"
        self.setup: SetupRequest | None = None
        self._enc_private = b""
        self._mask_private = b""
        self._enc_key: X25519PrivateKey | None = None
        self._mask_key: X25519PrivateKey | None = None
        self._seed = b""
        self._directory: dict[int, tuple[bytes, bytes]] = {}
        self._share_keys: dict[int, bytes] = {}
        self._held_seed_shares: dict[int, bytes] = {}
        self._held_key_shares: dict[int, bytes] = {}
        self._masked_with: tuple[int, ...] = ()

    # -----------------------------------------------------------------------------------
    def step(self, data: bytes) -> bytes:
        """Consume one server message and return the reply.

        Raises:
            ProtocolError: malformed, misaddressed, replayed or out-of-order input
                (the client's state is then unchanged).
        """
        message = decode(data)
        if message.round != self.round or message.client_id != self.client_id:
            raise ProtocolError(
                f"message for client {message.client_id} round {message.round} reached client "
                f"{self.client_id} in round {self.round}"
            )
        handlers = {
            "setup": (SetupRequest, self._on_setup),
            "keys": (KeyDirectory, self._on_directory),
            "shares": (ShareDelivery, self._on_delivery),
            "unmask": (UnmaskRequest, self._on_unmask),
        }
        if self.stage not in handlers:
            raise ProtocolError(f"client {self.client_id} expects no message in stage {self.stage!r}")
        expected, handler = handlers[self.stage]
        if not isinstance(message, expected):
            got = type(message).__name__
            raise ProtocolError(f"client expected {expected.__name__} in stage {self.stage!r}, got {got}")
        reply: SecAggMessage = handler(message)  # type: ignore[operator]
        return reply.to_bytes()

    # -----------------------------------------------------------------------------------
    def _on_setup(self, message: SetupRequest) -> AdvertiseKeys:
        holders = len(message.neighbours) + 1
        if self.client_id in message.neighbours:
            raise ProtocolError("a client cannot be its own neighbour")
        if not 1 <= message.threshold <= holders:
            raise ProtocolError(f"threshold {message.threshold} impossible with {holders} share holders")
        dtype = mask_dtype(message.bits)
        if self.values.dtype != dtype or self.values.shape != (message.dim,):
            have = f"{self.values.shape} {self.values.dtype}"
            raise ProtocolError(f"round needs {message.dim} values of {np.dtype(dtype)}; client has {have}")
        word_bits = self.values.dtype.itemsize * 8
        if message.bits < word_bits and self.values.size and int(self.values.max()) >> message.bits:
            raise ProtocolError(f"client input has values outside [0, 2**{message.bits})")
        enc_private, mask_private = self.random(KEY_BYTES), self.random(KEY_BYTES)
        self.setup, self._enc_private, self._mask_private = message, enc_private, mask_private
        self._enc_key, self._mask_key = private_key(enc_private), private_key(mask_private)
        self.stage = "keys"
        return AdvertiseKeys(self.round, self.client_id, public_key(enc_private), public_key(mask_private))

    def _on_directory(self, message: KeyDirectory) -> ShareKeys:
        setup = self._require_setup()
        directory = {cid: (enc, mask) for cid, enc, mask in message.entries}
        if not set(directory) <= set(setup.neighbours):
            raise ProtocolError("key directory lists clients that are not this client's neighbours")
        if len(directory) + 1 < setup.threshold:
            raise ProtocolError(
                f"only {len(directory)} neighbours advertised keys; threshold {setup.threshold} cannot be met"
            )
        seed = self.random(KEY_BYTES)
        holders = sorted([self.client_id, *directory])
        xs = [cid + 1 for cid in holders]
        seed_shares = shamir.split(seed, threshold=setup.threshold, xs=xs, random=self.random)
        key_shares = shamir.split(self._mask_private, threshold=setup.threshold, xs=xs, random=self.random)
        sealed = []
        share_keys = {
            cid: share_encryption_key(
                self._require_key(self._enc_key), directory[cid][0], session=setup.session, a=self.client_id, b=cid
            )
            for cid in directory
        }
        for cid in holders:
            if cid == self.client_id:
                continue
            key = share_keys[cid]
            plaintext = (
                self.client_id.to_bytes(4, "little")
                + cid.to_bytes(4, "little")
                + seed_shares[cid + 1]
                + key_shares[cid + 1]
            )
            aad = share_aad(session=setup.session, source=self.client_id, destination=cid)
            sealed.append((cid, aead_encrypt(key, plaintext, associated=aad, random=self.random)))
        self._directory = directory
        self._share_keys = share_keys
        self._seed = seed
        self._held_seed_shares = {self.client_id: seed_shares[self.client_id + 1]}
        self._held_key_shares = {self.client_id: key_shares[self.client_id + 1]}
        self.stage = "shares"
        return ShareKeys(self.round, self.client_id, tuple(sealed))

    def _on_delivery(self, message: ShareDelivery) -> MaskedInput:
        setup = self._require_setup()
        seed_shares: dict[int, bytes] = {}
        key_shares: dict[int, bytes] = {}
        for source, sealed in message.ciphertexts:
            if source not in self._directory:
                raise ProtocolError(f"share from client {source}, which is not a neighbour with keys")
            aad = share_aad(session=setup.session, source=source, destination=self.client_id)
            plaintext = aead_decrypt(self._share_keys[source], sealed, associated=aad)
            if len(plaintext) != _SHARE_PLAINTEXT:
                raise ProtocolError("decrypted share has the wrong length")
            src = int.from_bytes(plaintext[:4], "little")
            dst = int.from_bytes(plaintext[4:8], "little")
            if (src, dst) != (source, self.client_id):
                raise ProtocolError("decrypted share names another sender or recipient")
            seed_shares[source] = plaintext[8 : 8 + shamir.SHARE_BYTES]
            key_shares[source] = plaintext[8 + shamir.SHARE_BYTES :]
        # Pairwise masks with every neighbour whose shares reached us: exactly the
        # neighbours the server will treat as having shared (its set U2).
        partners = tuple(sorted(seed_shares))
        accumulator = MaskAccumulator(self.values.copy(), bits=setup.bits)
        accumulator.add(self_mask_key(self._seed, session=setup.session, client_id=self.client_id))
        for peer in partners:
            key = pairwise_mask_key(
                self._require_key(self._mask_key),
                self._directory[peer][1],
                session=setup.session,
                a=self.client_id,
                b=peer,
            )
            if self.client_id < peer:
                accumulator.add(key)
            else:
                accumulator.subtract(key)
        self._held_seed_shares.update(seed_shares)
        self._held_key_shares.update(key_shares)
        self._masked_with = partners
        self.stage = "unmask"
        return MaskedInput(self.round, self.client_id, accumulator.reduced())

    def _on_unmask(self, message: UnmaskRequest) -> UnmaskResponse:
        setup = self._require_setup()
        survivors, dropped = set(message.survivors), set(message.dropped)
        # The core safety check of Bonawitz et al.: never reveal both the self-mask
        # seed and the mask key of one client, or its input would be unmasked.
        if survivors & dropped:
            raise ProtocolError("unmask request names a client as both survivor and dropped")
        if not survivors <= set(self._held_seed_shares) or not dropped <= set(self._held_key_shares):
            raise ProtocolError("unmask request asks for shares this client does not hold")
        if self.client_id in dropped:
            raise ProtocolError("a responding client cannot be dropped")
        if len(survivors) < setup.threshold:
            raise ProtocolError(f"only {len(survivors)} survivors; threshold is {setup.threshold}")
        self.stage = "done"
        return UnmaskResponse(
            self.round,
            self.client_id,
            tuple((cid, self._held_seed_shares[cid]) for cid in sorted(survivors)),
            tuple((cid, self._held_key_shares[cid]) for cid in sorted(dropped)),
        )

    @staticmethod
    def _require_key(key: X25519PrivateKey | None) -> X25519PrivateKey:
        if key is None:  # pragma: no cover - guarded by the stage machine
            raise ProtocolError("client keys are not set up")
        return key

    def _require_setup(self) -> SetupRequest:
        if self.setup is None:  # pragma: no cover - guarded by the stage machine
            raise ProtocolError("client has not been set up")
        return self.setup
