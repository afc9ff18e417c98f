"""SecAgg / SecAgg+ client as a sans-IO state machine.

``SecAggClient.step(message_bytes) -> reply_bytes`` walks through the four
rounds of Bonawitz et al. 2017 ("Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS), restricted to the client's
neighbours in the SecAgg+ graph (Bell et al. 2020, "Secure Single-Server
Aggregation with (Poly)Logarithmic Overhead", CCS):

1. ``SetupRequest``  -> ``AdvertiseKeys``  (two fresh X25519 key pairs under an
   Ed25519 verification key, signed together with a digest of the setup)
2. ``KeyDirectory``  -> ``ShareKeys``      (Shamir shares of the self-mask seed
   and of the mask private key, sealed with AES-GCM for each neighbour, and a
   commitment to the seed; the neighbours' advertisements are verified first)
3. ``ShareDelivery`` -> ``MaskedInput``    (input + self mask +- pairwise masks, mod 2**bits,
   sent bit-packed at exactly ``bits`` bits per coordinate)
4. ``UnmaskRequest`` -> ``UnmaskResponse`` (seed shares of survivors, key shares
   of dropped clients; never both for the same client, across any number of requests)

Every reply is signed (Bonawitz et al.'s malicious-server variant, Sec. 6).
The setup is round-global (cohort, graph seed and degree, one threshold, bits,
dim): every client rebuilds the whole SecAgg+ graph, signs the setup's digest
in its advertisement and refuses a neighbour whose signed digest differs, so
all holders of one client's shares agree on its neighbourhood and on ``t``.
The client refuses ``t < 2``, fewer than :data:`MIN_NEIGHBOURS` neighbours, and
``2 t <= holders`` for the largest neighbourhood of the graph: a server could
then ask two disjoint groups of ``t`` holders for the two secrets of one
client and unmask its input (Bonawitz et al. 2017, Sec. 6 / App. A: active
security needs ``2t > n``; Bell et al. 2020 apply the bound per SecAgg+
neighbourhood; with per-client views a server could satisfy each client's
local check and still unmask one).

A message that is malformed, for another client or round, or out of order
raises :class:`~privfed.errors.ProtocolError` and leaves the client unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
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
    sign,
    signing_key,
    system_random,
    verification_key,
    verify,
)
from privfed.secagg.graph import harary_graph
from privfed.secagg.keys import (
    pairwise_mask_key,
    seed_commitment,
    self_mask_key,
    setup_digest,
    share_aad,
    share_encryption_key,
)
from privfed.secagg.messages import (
    AdvertiseKeys,
    KeyDirectory,
    MaskedInput,
    SecAggMessage,
    SetupRequest,
    ShareDelivery,
    ShareKeys,
    SignedMessage,
    UnmaskRequest,
    UnmaskResponse,
    decode,
)

__all__ = ["MIN_NEIGHBOURS", "SecAggClient", "check_threshold"]

_SHARE_PLAINTEXT = 8 + 2 * shamir.SHARE_BYTES
_S = TypeVar("_S", bound=SignedMessage)


MIN_NEIGHBOURS = 2
"""Fewest neighbours a client accepts: with ``k`` neighbours its secrets have ``k + 1``
holders, and a threshold ``t`` with ``2 t > k + 1`` and ``t >= 2`` needs ``k >= 2``. With
no neighbours (``t = 1``) a Shamir share *is* the secret and revealing it unmasks the input."""


def check_threshold(threshold: int, *, holders: int, smallest: int | None = None) -> None:
    """``ProtocolError`` unless ``t >= 2``, ``holders / 2 < t <= smallest`` and ``smallest >= 3``.

    Args:
        threshold: the round's Shamir threshold ``t``.
        holders: the LARGEST neighbourhood of the round (a client and its neighbours).
        smallest: the smallest neighbourhood (default ``holders``).

    With ``2 t <= holders`` two disjoint groups of ``t`` holders exist; a server
    that tells one group a client survived and the other that it dropped gets
    both its self-mask seed and its mask key (Bonawitz et al. 2017, App. A;
    Bell et al. 2020 per neighbourhood). With ``t = 1`` a share is the secret.
    """
    smallest = holders if smallest is None else smallest
    if smallest < MIN_NEIGHBOURS + 1:
        raise ProtocolError(
            f"a neighbourhood of {smallest} (client included) is too small for secure aggregation "
            f"(allowed: at least {MIN_NEIGHBOURS + 1})"
        )
    if threshold < 2 or threshold > smallest or 2 * threshold <= holders:
        raise ProtocolError(
            f"threshold {threshold} must be at least 2, exceed half of the largest neighbourhood ({holders} "
            f"share holders) and be at most the smallest ({smallest}) (allowed: "
            f"{max(2, holders // 2 + 1)}..{smallest})"
        )


class SecAggClient:
    """One client's side of a secure-aggregation round.

    Args:
        client_id: this client's id (Shamir evaluation point ``client_id + 1``).
        round: the protocol round this client takes part in.
        values: the client's input, residues modulo ``2**bits`` in the
            matching word type (``mask_dtype(bits)``), already encoded.
        random: cryptographic randomness (keys, seeds, Shamir coefficients, nonces).
        signing_key: 32-byte Ed25519 private key this client signs with; ``None``
            draws a fresh one for the round. A deployment that pins keys passes
            the client's long-term key here and its public key to the server and
            to the peers' ``trusted_keys``.
        trusted_keys: optional ``{client id: Ed25519 public key}``: a neighbour
            whose advertisement is not signed by its pinned key is refused.
            Without it a signature proves only that a message was not altered
            after its sender signed it, not who the sender is (the server could
            substitute a whole key set: the PKI assumption of Bonawitz et al.).
    """

    def __init__(
        self,
        *,
        client_id: int,
        round: int,
        values: npt.NDArray[np.unsignedinteger],
        random: RandomSource = system_random,
        signing_key: bytes | None = None,
        trusted_keys: Mapping[int, bytes] | None = None,
    ) -> None:
        if signing_key is not None and len(signing_key) != KEY_BYTES:
            raise ValueError(f"signing_key must be {KEY_BYTES} bytes; got {len(signing_key)}")
        self.client_id = client_id
        self.round = round
        self.values = values
        self.random = random
        self.trusted_keys = None if trusted_keys is None else dict(trusted_keys)
        self._long_term_signing_key = signing_key
        self._signing_key: Ed25519PrivateKey | None = None
        self.stage = "setup"
        self.setup: SetupRequest | None = None
        self.neighbours: tuple[int, ...] = ()
        self._setup_digest = b""
        self._enc_private = b""
        self._mask_private = b""
        self._enc_key: X25519PrivateKey | None = None
        self._mask_key: X25519PrivateKey | None = None
        self._seed = b""
        self._directory: dict[int, AdvertiseKeys] = {}
        self._share_keys: dict[int, bytes] = {}
        self._held_seed_shares: dict[int, bytes] = {}
        self._held_key_shares: dict[int, bytes] = {}
        self._masked_with: tuple[int, ...] = ()
        # Whose secret this client has revealed, and which one ("seed" or "key"):
        # the two are never revealed for the same owner, whatever the requests.
        self.revealed: dict[int, str] = {}

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
        if self.client_id not in message.cohort:
            raise ProtocolError(f"client {self.client_id} is not in the setup's cohort")
        try:
            graph = harary_graph(message.cohort, degree=message.degree, graph_seed=message.graph_seed)
        except ValueError as exc:
            raise ProtocolError(f"setup graph is invalid: {exc}") from None
        sizes = [len(peers) + 1 for peers in graph.values()]
        check_threshold(message.threshold, holders=max(sizes), smallest=min(sizes))
        dtype = mask_dtype(message.bits)
        if self.values.dtype != dtype or self.values.shape != (message.dim,):
            have = f"{self.values.shape} {self.values.dtype}"
            raise ProtocolError(f"round needs {message.dim} values of {np.dtype(dtype)}; client has {have}")
        word_bits = self.values.dtype.itemsize * 8
        if message.bits < word_bits and self.values.size and int(self.values.max()) >> message.bits:
            raise ProtocolError(f"client input has values outside [0, 2**{message.bits})")
        enc_private, mask_private = self.random(KEY_BYTES), self.random(KEY_BYTES)
        signer = signing_key(self._long_term_signing_key or self.random(KEY_BYTES))
        self.setup, self._enc_private, self._mask_private = message, enc_private, mask_private
        self.neighbours = graph[self.client_id]
        self._setup_digest = setup_digest(message.global_setup())
        self._enc_key, self._mask_key = private_key(enc_private), private_key(mask_private)
        self._signing_key = signer
        self.stage = "keys"
        return self._sign(
            AdvertiseKeys(
                self.round,
                self.client_id,
                public_key(enc_private),
                public_key(mask_private),
                verification_key(signer),
                self._setup_digest,
                b"",
            )
        )

    def _sign(self, message: _S) -> _S:
        setup = self._require_setup()
        if self._signing_key is None:  # pragma: no cover - guarded by the stage machine
            raise ProtocolError("client keys are not set up")
        return dataclasses.replace(message, signature=sign(self._signing_key, message.transcript(setup.session)))  # type: ignore[call-arg]

    def _check_advertisement(self, entry: AdvertiseKeys, session: bytes) -> None:
        if self.trusted_keys is not None and self.trusted_keys.get(entry.client_id) != entry.verify_key:
            raise ProtocolError(f"client {entry.client_id}'s verification key is not the pinned one")
        verify(entry.verify_key, entry.signature, entry.transcript(session), what=f"client {entry.client_id}'s keys")
        if entry.setup_digest != self._setup_digest:
            raise ProtocolError(f"client {entry.client_id} signed another round setup than this client's")

    def _on_directory(self, message: KeyDirectory) -> ShareKeys:
        setup = self._require_setup()
        directory = {entry.client_id: entry for entry in message.entries}
        if not set(directory) <= set(self.neighbours):
            raise ProtocolError("key directory lists clients that are not this client's neighbours")
        if len(directory) + 1 < setup.threshold:
            raise ProtocolError(
                f"only {len(directory)} neighbours advertised keys; threshold {setup.threshold} cannot be met"
            )
        for entry in message.entries:
            self._check_advertisement(entry, setup.session)
        seed = self.random(KEY_BYTES)
        holders = sorted([self.client_id, *directory])
        xs = [cid + 1 for cid in holders]
        seed_shares = shamir.split(seed, threshold=setup.threshold, xs=xs, random=self.random)
        key_shares = shamir.split(self._mask_private, threshold=setup.threshold, xs=xs, random=self.random)
        sealed = []
        share_keys = {
            cid: share_encryption_key(
                self._require_key(self._enc_key),
                directory[cid].encryption_key,
                session=setup.session,
                a=self.client_id,
                b=cid,
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
        commitment = seed_commitment(seed, session=setup.session, client_id=self.client_id)
        return self._sign(ShareKeys(self.round, self.client_id, tuple(sealed), commitment, b""))

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
                self._directory[peer].mask_key,
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
        return self._sign(MaskedInput(self.round, self.client_id, setup.bits, accumulator.reduced(), b""))

    def _on_unmask(self, message: UnmaskRequest) -> UnmaskResponse:
        setup = self._require_setup()
        survivors, dropped = set(message.survivors), set(message.dropped)
        # The core safety check of Bonawitz et al.: never reveal both the self-mask
        # seed and the mask key of one client, or its input would be unmasked. The
        # record in ``revealed`` keeps this true across repeated or split requests.
        if survivors & dropped:
            raise ProtocolError("unmask request names a client as both survivor and dropped")
        if not survivors <= set(self._held_seed_shares) or not dropped <= set(self._held_key_shares):
            raise ProtocolError("unmask request asks for shares this client does not hold")
        if self.client_id in dropped:
            raise ProtocolError("a responding client cannot be dropped")
        if len(survivors) < setup.threshold:
            raise ProtocolError(f"only {len(survivors)} survivors; threshold is {setup.threshold}")
        flipped = sorted(
            [c for c in survivors if self.revealed.get(c) == "key"]
            + [c for c in dropped if self.revealed.get(c) == "seed"]
        )
        if flipped:
            raise ProtocolError(f"unmask request asks for the other secret of clients {flipped} already revealed")
        self.revealed.update(dict.fromkeys(survivors, "seed"))
        self.revealed.update(dict.fromkeys(dropped, "key"))
        return self._sign(
            UnmaskResponse(
                self.round,
                self.client_id,
                tuple((cid, self._held_seed_shares[cid]) for cid in sorted(survivors)),
                tuple((cid, self._held_key_shares[cid]) for cid in sorted(dropped)),
                b"",
            )
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
