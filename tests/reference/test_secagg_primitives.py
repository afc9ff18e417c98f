"""SecAgg primitives against slow, independent references."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from privfed.compression import FixedPointCodec
from privfed.errors import ProtocolError
from privfed.secagg import KeyedRandom, MaskAccumulator, neighbour_graph, prg_words, recommended_degree, shamir
from privfed.secagg.crypto import aead_decrypt, aead_encrypt, agree, public_key


def slow_solve_secret(points: list[tuple[int, int]]) -> int:
    """Gaussian elimination on the Vandermonde system over GF(p); returns the constant term."""
    p = shamir.PRIME
    t = len(points)
    rows = [[pow(x, j, p) for j in range(t)] + [y] for x, y in points]
    for col in range(t):
        pivot = next(r for r in range(col, t) if rows[r][col] % p)
        rows[col], rows[pivot] = rows[pivot], rows[col]
        inv = pow(rows[col][col], -1, p)
        rows[col] = [v * inv % p for v in rows[col]]
        for r in range(t):
            if r != col and rows[r][col]:
                factor = rows[r][col]
                rows[r] = [(a - factor * b) % p for a, b in zip(rows[r], rows[col], strict=True)]
    return rows[0][t]


@settings(max_examples=40)
@given(
    secret=st.binary(min_size=32, max_size=32),
    n=st.integers(2, 12),
    data=st.data(),
)
def test_shamir_matches_gaussian_elimination_and_any_t_subset_works(secret: bytes, n: int, data: st.DataObject) -> None:
    threshold = data.draw(st.integers(1, n))
    xs = data.draw(st.lists(st.integers(1, 2**20), min_size=n, max_size=n, unique=True))
    shares = shamir.split(secret, threshold=threshold, xs=xs, random=KeyedRandom(bytes(32)))
    assert all(len(s) == shamir.SHARE_BYTES for s in shares.values())
    subset = data.draw(st.permutations(xs)).copy()[:threshold]
    chosen = {x: shares[x] for x in subset}
    assert shamir.combine(chosen, threshold=threshold, secret_bytes=32) == secret
    points = [(x, int.from_bytes(s, "big")) for x, s in chosen.items()]
    assert slow_solve_secret(points).to_bytes(32, "big") == secret
    if threshold > 1:
        fewer = dict(list(chosen.items())[: threshold - 1])
        with pytest.raises(ProtocolError):
            shamir.combine(fewer, threshold=threshold, secret_bytes=32)


def test_shamir_t_minus_one_shares_are_uniform_whatever_the_secret() -> None:
    """Two different secrets give identically distributed t-1 shares (checked on the first byte)."""
    t = 3
    firsts = {}
    for secret in (bytes(32), b"\xff" * 32):
        rng = KeyedRandom(b"s" * 32)
        values = [shamir.split(secret, threshold=t, xs=[1, 2, 3], random=rng)[1][1] for _ in range(2000)]
        firsts[secret] = np.bincount(values, minlength=256)
    _, p = stats.chisquare(firsts[bytes(32)] + 1, firsts[b"\xff" * 32] + 1)
    assert p > 1e-4


def test_prg_is_aes_ctr_by_reference() -> None:
    """Keystream = AES-ECB(key, counter blocks), computed block by block."""
    key = bytes(range(16))
    words = prg_words(key, 40, bits=32)
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    blocks = b"".join(ecb.update(i.to_bytes(16, "big")) for i in range(10))
    assert words.tobytes() == np.frombuffer(blocks, dtype="<u4").astype(np.uint32).tobytes()
    assert prg_words(key, 5, bits=64).tobytes() == blocks[:40]


@pytest.mark.parametrize("bits", [16, 32, 40, 64])
def test_mask_accumulator_matches_modular_reference(bits: int) -> None:
    rng = np.random.default_rng(0)
    dtype = np.uint32 if bits <= 32 else np.uint64
    n = 200_003  # spans several internal chunks, odd tail
    values = rng.integers(0, 2**bits, size=n, dtype=np.uint64).astype(dtype)
    keys = [bytes([i]) * 16 for i in range(4)]
    acc = MaskAccumulator(values.copy(), bits=bits)
    acc.add(keys[0])
    acc.add(keys[1])
    acc.subtract(keys[2])
    acc.subtract(keys[3])
    m = 2**bits
    expect = values.astype(object)
    for i, sign in enumerate([1, 1, -1, -1]):
        expect = expect + sign * (prg_words(keys[i], n, bits=bits).astype(object) % m)
    expect = expect % m
    assert np.array_equal(acc.reduced().astype(object), expect)


def test_masked_vector_looks_uniform_chi_square() -> None:
    """A zero vector plus one mask: byte values and each bit position are uniform."""
    n = 50_000
    acc = MaskAccumulator(np.zeros(n, dtype=np.uint32), bits=32)
    acc.add(b"k" * 16)
    acc.subtract(b"j" * 16)
    masked = acc.reduced()
    counts = np.bincount(np.frombuffer(masked.tobytes(), dtype=np.uint8), minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-3
    bits = (masked[:, None] >> np.arange(32, dtype=np.uint32)) & 1
    ones = bits.sum(axis=0)
    # per bit: binomial(n, 1/2); chi-square over the 32 positions
    chi = float((((ones - n / 2) ** 2) / (n / 4)).sum())
    assert stats.chi2.sf(chi, df=32) > 1e-3


def test_aead_binds_associated_data_and_detects_tampering() -> None:
    rnd = KeyedRandom(b"a" * 32)
    sealed = aead_encrypt(b"k" * 16, b"share", associated=b"1->2", random=rnd)
    assert aead_decrypt(b"k" * 16, sealed, associated=b"1->2") == b"share"
    with pytest.raises(ProtocolError):
        aead_decrypt(b"k" * 16, sealed, associated=b"3->2")
    with pytest.raises(ProtocolError):
        aead_decrypt(b"k" * 16, sealed[:-1] + bytes([sealed[-1] ^ 1]), associated=b"1->2")


def test_x25519_agreement_is_symmetric_and_rejects_bad_keys() -> None:
    a, b = b"\x01" * 32, b"\x02" * 32
    assert agree(a, public_key(b)) == agree(b, public_key(a))
    with pytest.raises(ProtocolError):
        agree(a, bytes(32))  # the all-zero point gives an all-zero secret: refused


@given(n=st.integers(3, 60), seed=st.integers(0, 1000), data=st.data())
def test_neighbour_graph_is_symmetric_regular_and_connected(n: int, seed: int, data: st.DataObject) -> None:
    ids = list(range(100, 100 + n))
    degree = data.draw(st.sampled_from([k for k in range(2, n - 1, 2)] + [n - 1]))
    graph = neighbour_graph(ids, degree=degree, rng=np.random.default_rng(seed))
    assert set(graph) == set(ids)
    for c, peers in graph.items():
        assert c not in peers and len(peers) == degree
        assert all(c in graph[p] for p in peers)
    seen, frontier = {ids[0]}, [ids[0]]
    while frontier:
        for p in graph[frontier.pop()]:
            if p not in seen:
                seen.add(p)
                frontier.append(p)
    assert seen == set(ids)


def test_recommended_degree() -> None:
    assert recommended_degree(1000) == 20
    assert recommended_degree(5) == 4
    assert recommended_degree(2) == 1


@settings(max_examples=50)
@given(
    x=st.lists(st.floats(-2, 2), min_size=1, max_size=20),
    bits=st.sampled_from([12, 16, 24, 32, 48]),
    summands=st.integers(1, 50),
    seed=st.integers(0, 2**32),
)
def test_codec_sum_is_exact_up_to_rounding(x: list[float], bits: int, summands: int, seed: int) -> None:
    codec = FixedPointCodec(bits=bits, clip=1.0, num_summands=summands)
    rng = np.random.default_rng(seed)
    vectors = [np.asarray(x) * rng.uniform(-1, 1) for _ in range(summands)]
    total = np.zeros(len(x), dtype=np.uint64)
    for v in vectors:
        total = (total + codec.encode(v, rng=rng).astype(np.uint64)) % 2**bits
    decoded = codec.decode_sum(total)
    clipped_sum = sum(np.clip(v, -1, 1) for v in vectors)
    assert np.all(np.abs(decoded - clipped_sum) <= summands / codec.scale + 1e-12)


def test_codec_is_unbiased() -> None:
    codec = FixedPointCodec(bits=8, clip=1.0, num_summands=1)  # coarse: 127 steps per unit
    x = np.full(200_000, 0.3337)
    decoded = codec.decode_sum(codec.encode(x, rng=np.random.default_rng(0)))
    step = 1 / float(codec.scale)
    # The mean of 200k stochastic roundings is within 5 standard errors of x.
    assert abs(decoded.mean() - 0.3337) < 5 * step / np.sqrt(len(x))
    levels = set(np.round(np.unique(decoded) * float(codec.scale)).astype(int).tolist())
    assert levels == {int(np.floor(0.3337 * codec.scale)), int(np.ceil(0.3337 * codec.scale))}


def test_keyed_random_is_deterministic_and_key_dependent() -> None:
    assert KeyedRandom(b"x" * 32)(64) == KeyedRandom(b"x" * 32)(64)
    assert KeyedRandom(b"x" * 32)(64) != KeyedRandom(b"y" * 32)(64)
    r = KeyedRandom(b"x" * 32)
    assert r(10) + r(10) == KeyedRandom(b"x" * 32)(20)


def test_shamir_rejects_bad_arguments() -> None:
    rnd = KeyedRandom(bytes(32))
    with pytest.raises(ValueError):
        shamir.split(b"x" * 65, threshold=1, xs=[1], random=rnd)
    with pytest.raises(ValueError):
        shamir.split(b"x", threshold=3, xs=[1, 2], random=rnd)
    with pytest.raises(ValueError):
        shamir.split(b"x", threshold=1, xs=[0, 2], random=rnd)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(3, 10), data=st.data())
def test_shamir_surplus_shares_catch_any_single_altered_share(n: int, data: st.DataObject) -> None:
    """Before: combine used only the first t shares, so an altered surplus share went unseen."""
    threshold = data.draw(st.integers(1, n - 1))
    secret = data.draw(st.binary(min_size=32, max_size=32))
    shares = shamir.split(secret, threshold=threshold, xs=list(range(1, n + 1)), random=KeyedRandom(bytes(32)))
    victim = data.draw(st.sampled_from(sorted(shares)))
    delta = data.draw(st.integers(1, shamir.PRIME - 1))
    bad = dict(shares)
    bad[victim] = ((int.from_bytes(shares[victim], "big") + delta) % shamir.PRIME).to_bytes(shamir.SHARE_BYTES, "big")
    with pytest.raises(ProtocolError, match="inconsistent"):
        shamir.combine(bad, threshold=threshold, secret_bytes=32)
    recovered, excluded = shamir.combine_verified(
        bad, threshold=threshold, secret_bytes=32, accept=lambda s: s == secret
    )
    assert recovered == secret and excluded == (victim,)


def test_shamir_combine_verified_refuses_what_it_cannot_confirm() -> None:
    secret = bytes(range(32))
    shares = shamir.split(secret, threshold=3, xs=[1, 2, 3, 4], random=KeyedRandom(bytes(32)))
    bumped = {
        x: ((int.from_bytes(s, "big") + 1) % shamir.PRIME).to_bytes(shamir.SHARE_BYTES, "big")
        for x, s in shares.items()
    }
    # Consistent shares of secret + 1: only the accept check (a commitment) catches them.
    assert shamir.combine(bumped, threshold=3, secret_bytes=32) != secret
    with pytest.raises(ProtocolError, match="verifiable"):
        shamir.combine_verified(bumped, threshold=3, secret_bytes=32, accept=lambda s: s == secret)
    two_bad = dict(shares)
    for x, delta in ((1, 1), (2, 5)):  # two altered shares, one surplus: no leave-one-out subset is right
        two_bad[x] = ((int.from_bytes(shares[x], "big") + delta) % shamir.PRIME).to_bytes(shamir.SHARE_BYTES, "big")
    with pytest.raises(ProtocolError, match="verifiable"):
        shamir.combine_verified(two_bad, threshold=3, secret_bytes=32, accept=lambda s: s == secret)


def test_ed25519_signatures_bind_the_message() -> None:
    from privfed.secagg.crypto import sign, signing_key, verification_key, verify

    key = signing_key(bytes(32))
    signature = sign(key, b"transcript")
    verify(verification_key(key), signature, b"transcript", what="test")
    with pytest.raises(ProtocolError, match="signature on test"):
        verify(verification_key(key), signature, b"transcripT", what="test")
    with pytest.raises(ProtocolError):
        verify(b"\x00" * 31, signature, b"transcript", what="test")
