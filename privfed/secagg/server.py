"""SecAgg / SecAgg+ server as a sans-IO state machine.

The driver calls :meth:`SecAggServer.start`, then for each of the four
stages feeds every reply that arrived to :meth:`receive` and closes the stage
with :meth:`finish_stage`, which returns the next messages (by client id).
Clients whose replies did not arrive by then are dropouts. After the unmask
stage :attr:`result` holds the sum of the surviving clients' inputs modulo
``2**bits`` and :attr:`contributors` says whose inputs it contains.

Invariants (tested): the result equals the plain modular sum of the
contributors' inputs for any dropout pattern the shares can tolerate;
otherwise the round aborts with :class:`SecAggAborted` before anything more is
revealed; a rejected message leaves the server state unchanged.

Every client message is signed (Ed25519, key advertised in round 1 and
optionally pinned with ``trusted_keys``) and verified on receipt. Every
reconstructed secret is verified before it is used: a mask key against the
advertised public key, a self-mask seed against the commitment in the signed
``ShareKeys``; all surplus shares must lie on one polynomial. A secret that
cannot be verified (even leaving one share out) aborts the round: a wrong sum
is never released.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from privfed.errors import ProtocolError
from privfed.secagg import shamir
from privfed.secagg.client import MIN_NEIGHBOURS
from privfed.secagg.crypto import KEY_BYTES, MaskAccumulator, agree, mask_dtype, private_key, public_key, verify
from privfed.secagg.graph import harary_graph
from privfed.secagg.keys import pairwise_mask_key, seed_commitment, self_mask_key, setup_digest
from privfed.secagg.messages import (
    MAX_BITS,
    MIN_BITS,
    AdvertiseKeys,
    KeyDirectory,
    MaskedInput,
    SetupRequest,
    ShareDelivery,
    ShareKeys,
    SignedMessage,
    UnmaskRequest,
    UnmaskResponse,
    decode,
)

__all__ = ["SecAggAborted", "SecAggServer"]

# nonce (12) + src/dst ids (8) + two Shamir shares + GCM tag (16)
_SEALED_SHARE_BYTES = 12 + 8 + 2 * shamir.SHARE_BYTES + 16
# Any fixed scalar: exchanging with it raises on the low-order points (all-zero shared secret).
_KEY_CHECK = private_key(bytes(range(1, 33)))


class SecAggAborted(ProtocolError):
    """Too few clients (or shares) remain to finish the round; nothing more is revealed."""


class SecAggServer:
    """The server's side of one secure-aggregation round.

    Args:
        round: protocol round number (carried in every message).
        cohort: the round's client ids.
        degree: SecAgg+ neighbours per client: ``len(cohort) - 1`` gives classic
            SecAgg (complete graph), else an even ``2 <= k < n - 1``.
        graph_seed: 16 public bytes the graph is derived from
            (:func:`~privfed.secagg.graph.harary_graph`); every client rebuilds it.
        threshold: Shamir threshold t: shares needed to rebuild a secret; also
            the minimum number of clients that must remain at every stage. It
            must be at least 2 and exceed half of every neighbourhood (clients
            refuse otherwise).
        bits: inputs and the result are residues modulo ``2**bits``, 2..52; masked inputs
            travel bit-packed at exactly ``bits`` bits per coordinate.
        dim: vector length.
        session: 16 public random bytes binding every key to this execution of
            the round; draw them from the OS CSPRNG for each execution.
        trusted_keys: optional ``{client id: Ed25519 public key}`` pinned by the
            deployment; an advertisement under another key is rejected.
    """

    def __init__(
        self,
        *,
        round: int,
        cohort: Sequence[int],
        degree: int,
        graph_seed: bytes = bytes(16),
        threshold: int,
        bits: int,
        dim: int,
        session: bytes,
        trusted_keys: Mapping[int, bytes] | None = None,
    ) -> None:
        members = tuple(sorted(int(c) for c in cohort))
        if any(not 0 <= c < 2**32 for c in members):
            raise ValueError("client ids must be in [0, 2**32)")
        neighbours = harary_graph(members, degree=degree, graph_seed=graph_seed)
        smallest = min((len(p) + 1 for p in neighbours.values()), default=0)
        largest = max((len(p) + 1 for p in neighbours.values()), default=0)
        low = max(2, largest // 2 + 1)
        if smallest < MIN_NEIGHBOURS + 1 or not low <= threshold <= smallest:
            raise ValueError(
                f"threshold must be between {low} (at least 2 and more than half of the largest "
                f"neighbourhood, {largest}) and the smallest neighbourhood ({smallest}, itself at least "
                f"{MIN_NEIGHBOURS + 1}); got {threshold}"
            )
        if len(session) != 16:
            raise ValueError("session must be 16 bytes")
        if not MIN_BITS <= bits <= MAX_BITS:
            raise ValueError(f"bits must be in [{MIN_BITS}, {MAX_BITS}]; got {bits}")
        self.round = round
        self.cohort = members
        self.degree = degree
        self.graph_seed = bytes(graph_seed)
        self.neighbours = neighbours
        self.threshold = threshold
        self.bits = bits
        self.dim = dim
        self.session = session
        self.trusted_keys = None if trusted_keys is None else dict(trusted_keys)
        self.stage = "new"
        self._setup_digest = b""
        self.keys: dict[int, AdvertiseKeys] = {}
        self.shares: dict[int, ShareKeys] = {}
        self.masked: dict[int, MaskedInput] = {}
        self.responses: dict[int, UnmaskResponse] = {}
        self._requests: dict[int, UnmaskRequest] = {}
        self.result: npt.NDArray[np.unsignedinteger] | None = None
        self.contributors: tuple[int, ...] = ()
        # (holder, owner, "seed" | "key") of every share left out of a reconstruction because
        # it did not fit the others. Not proof the holder lied: a malicious *dealer* can seal
        # a bad share to an honest holder, whose share is then the one left out.
        self.shares_left_out: tuple[tuple[int, int, str], ...] = ()

    @property
    def suspects(self) -> tuple[int, ...]:
        """Holders with a share left out (:attr:`shares_left_out`); kept for compatibility.

        Either the holder or the dealer of that share misbehaved; this does not say which.
        """
        return tuple(sorted({holder for holder, _, _ in self.shares_left_out}))

    # -----------------------------------------------------------------------------------
    def start(self) -> dict[int, bytes]:
        """The setup message for every client: the same global setup, addressed to each."""
        if self.stage != "new":
            raise ProtocolError("round already started")
        self.stage = "advertise"
        out = {
            cid: SetupRequest(
                self.round,
                cid,
                self.session,
                self.cohort,
                self.degree,
                self.graph_seed,
                self.threshold,
                self.bits,
                self.dim,
            )
            for cid in self.cohort
        }
        self._setup_digest = setup_digest(next(iter(out.values())).global_setup())
        return {cid: message.to_bytes() for cid, message in out.items()}

    def receive(self, data: bytes) -> None:
        """Validate and store one client reply for the current stage.

        Raises:
            ProtocolError: malformed, wrong round, unexpected sender, duplicate,
                wrong-stage or badly signed message; the server state is left unchanged.
        """
        message = decode(data)
        if message.round != self.round:
            raise ProtocolError(f"message for round {message.round} in round {self.round}")
        sender = message.client_id
        if self.stage == "advertise" and isinstance(message, AdvertiseKeys):
            self._expect_new(sender, self.neighbours, self.keys)
            if self.trusted_keys is not None and self.trusted_keys.get(sender) != message.verify_key:
                raise ProtocolError(f"client {sender}'s verification key is not the pinned one")
            verify(
                message.verify_key, message.signature, message.transcript(self.session), what=f"client {sender}'s keys"
            )
            if message.setup_digest != self._setup_digest:
                raise ProtocolError(f"client {sender} answered other round parameters than it was sent")
            # A low-order or otherwise invalid X25519 key would make every honest
            # neighbour refuse (agree() raises): reject the sender here instead.
            for what, key in (("encryption", message.encryption_key), ("mask", message.mask_key)):
                try:
                    agree(_KEY_CHECK, key)
                except ProtocolError:
                    raise ProtocolError(f"client {sender}'s {what} key is not a valid X25519 public key") from None
            self.keys[sender] = message
        elif self.stage == "share" and isinstance(message, ShareKeys):
            self._expect_new(sender, self.keys, self.shares)
            expected = {p for p in self.neighbours[sender] if p in self.keys}
            destinations = [d for d, _ in message.ciphertexts]
            if set(destinations) != expected:
                raise ProtocolError(f"client {sender} must send one share to each neighbour with keys")
            if any(len(sealed) != _SEALED_SHARE_BYTES for _, sealed in message.ciphertexts):
                raise ProtocolError(f"client {sender} sent a sealed share of the wrong size")
            self._verify(message)
            self.shares[sender] = message
        elif self.stage == "collect" and isinstance(message, MaskedInput):
            self._expect_new(sender, self.shares, self.masked)
            if message.bits != self.bits:
                raise ProtocolError(f"masked input is packed at {message.bits} bits; the round uses {self.bits}")
            if message.masked.dtype != mask_dtype(self.bits) or message.masked.shape != (self.dim,):
                raise ProtocolError(f"masked input must be {self.dim} words of {np.dtype(mask_dtype(self.bits))}")
            word_bits = message.masked.dtype.itemsize * 8
            if self.bits < word_bits and self.dim and int(message.masked.max()) >> self.bits:
                raise ProtocolError(f"masked input has values outside [0, 2**{self.bits})")
            self._verify(message)
            self.masked[sender] = message
        elif self.stage == "unmask" and isinstance(message, UnmaskResponse):
            self._expect_new(sender, self._requests, self.responses)
            request = self._requests[sender]
            if {c for c, _ in message.seed_shares} != set(request.survivors) or {
                c for c, _ in message.key_shares
            } != set(request.dropped):
                raise ProtocolError(f"client {sender} did not answer exactly the shares requested")
            if any(len(s) != shamir.SHARE_BYTES for _, s in (*message.seed_shares, *message.key_shares)):
                raise ProtocolError(f"client {sender} sent a share of the wrong size")
            self._verify(message)
            self.responses[sender] = message
        else:
            raise ProtocolError(f"{type(message).__name__} is not expected in stage {self.stage!r}")

    def _verify(self, message: SignedMessage) -> None:
        sender = message.client_id
        verify(
            self.keys[sender].verify_key,
            message.signature_bytes,
            message.transcript(self.session),
            what=f"{type(message).__name__} from client {sender}",
        )

    def _expect_new(self, sender: int, allowed: Container[int], received: Container[int]) -> None:
        if sender not in allowed:
            raise ProtocolError(f"client {sender} is not part of this stage")
        if sender in received:
            raise ProtocolError(f"duplicate message from client {sender}")

    def _require(self, count: int, what: str) -> None:
        if count < self.threshold:
            self.stage = "aborted"
            raise SecAggAborted(f"only {count} clients {what}; the threshold is {self.threshold}")

    # -----------------------------------------------------------------------------------
    def finish_stage(self) -> dict[int, bytes]:
        """Close the current stage; return the next stage's messages by client id.

        Any failure while closing a stage leaves the server in stage ``"aborted"``
        (never half-way); a ``ProtocolError`` is raised as :class:`SecAggAborted`.

        Raises:
            SecAggAborted: fewer than ``threshold`` clients remain (or a secret
                cannot be rebuilt); the round is over and reveals nothing more.
            ProtocolError: no stage to finish (round not started, done or aborted).
        """
        if self.stage not in ("advertise", "share", "collect", "unmask"):
            raise ProtocolError(f"no stage to finish in stage {self.stage!r}")
        try:
            return self._finish_stage()
        except SecAggAborted:
            self.stage = "aborted"
            raise
        except ProtocolError as exc:
            self.stage = "aborted"
            raise SecAggAborted(f"round aborted in a failed stage: {exc}") from exc
        except BaseException:
            self.stage = "aborted"
            raise

    def _finish_stage(self) -> dict[int, bytes]:
        if self.stage == "advertise":
            self._require(len(self.keys), "advertised keys")
            self.stage = "share"
            return {
                cid: KeyDirectory(
                    self.round, cid, tuple(self.keys[p] for p in sorted(self.neighbours[cid]) if p in self.keys)
                ).to_bytes()
                for cid in sorted(self.keys)
            }
        if self.stage == "share":
            self._require(len(self.shares), "shared keys")
            self.stage = "collect"
            inbox: dict[int, list[tuple[int, bytes]]] = {cid: [] for cid in self.shares}
            for source, message in sorted(self.shares.items()):
                for destination, sealed in message.ciphertexts:
                    if destination in inbox:
                        inbox[destination].append((source, sealed))
            return {cid: ShareDelivery(self.round, cid, tuple(items)).to_bytes() for cid, items in inbox.items()}
        if self.stage == "collect":
            self._require(len(self.masked), "sent masked inputs")
            self.stage = "unmask"
            survivors, shared = set(self.masked), set(self.shares)
            for cid in sorted(survivors):
                holders_of = [p for p in self.neighbours[cid] if p in shared]
                self._requests[cid] = UnmaskRequest(
                    self.round,
                    cid,
                    tuple(sorted(c for c in [cid, *holders_of] if c in survivors)),
                    tuple(sorted(c for c in holders_of if c not in survivors)),
                )
            return {cid: request.to_bytes() for cid, request in self._requests.items()}
        if self.stage == "unmask":
            self._require(len(self.responses), "answered the unmask request")
            self._unmask()
            self.stage = "done"
            return {}
        raise ProtocolError(f"no stage to finish in stage {self.stage!r}")

    def _rebuild(self, owner: int, kind: str) -> bytes:
        shares = {}
        for responder, response in self.responses.items():
            for cid, share in response.seed_shares if kind == "seed" else response.key_shares:
                if cid == owner:
                    shares[responder + 1] = share
        if len(shares) < self.threshold:
            self.stage = "aborted"
            raise SecAggAborted(
                f"only {len(shares)} shares of client {owner}'s {kind} arrived; the threshold is {self.threshold}"
            )
        if kind == "seed":
            commitment = self.shares[owner].seed_commitment

            def accept(secret: bytes) -> bool:
                return seed_commitment(secret, session=self.session, client_id=owner) == commitment
        else:
            advertised = self.keys[owner].mask_key

            def accept(secret: bytes) -> bool:
                return public_key(secret) == advertised

        try:
            secret, excluded = shamir.combine_verified(
                shares, threshold=self.threshold, secret_bytes=KEY_BYTES, accept=accept
            )
        except ProtocolError as exc:
            self.stage = "aborted"
            raise SecAggAborted(f"client {owner}'s {kind} cannot be rebuilt and verified: {exc}") from None
        self.shares_left_out = (*self.shares_left_out, *((x - 1, owner, kind) for x in excluded))
        return secret

    def _unmask(self) -> None:
        survivors = sorted(self.masked)
        dropped = sorted(set(self.shares) - set(self.masked))
        # Every secret is rebuilt and verified before any mask is removed.
        seeds = {cid: self._rebuild(cid, "seed") for cid in survivors}
        mask_keys = {cid: self._rebuild(cid, "key") for cid in dropped}
        total = np.zeros(self.dim, dtype=mask_dtype(self.bits))
        for cid in survivors:
            np.add(total, self.masked[cid].masked, out=total)
        accumulator = MaskAccumulator(total, bits=self.bits)
        for cid in survivors:
            accumulator.subtract(self_mask_key(seeds[cid], session=self.session, client_id=cid))
        for gone in dropped:
            for peer in self.neighbours[gone]:
                if peer not in self.masked:
                    continue
                key = pairwise_mask_key(mask_keys[gone], self.keys[peer].mask_key, session=self.session, a=gone, b=peer)
                # The survivor added the mask if its id is smaller, subtracted it otherwise.
                if peer < gone:
                    accumulator.subtract(key)
                else:
                    accumulator.add(key)
        self.result = accumulator.reduced()
        self.contributors = tuple(survivors)
