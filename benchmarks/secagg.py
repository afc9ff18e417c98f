"""Secure-aggregation performance, each figure against a baseline measured in the same run.

    python benchmarks/secagg.py [--quick]

Prints one JSON object:

* ``client_masking``: per (d, k), the real client masking step (decrypt
  shares, derive k pairwise keys, quantize, add 1 self + k pairwise AES-CTR
  masks) and the raw AES-128-CTR keystream for the same bytes;
  ``masking_fraction_of_prg`` = keystream time / masking time (1.0 = masking
  is as fast as generating the keystream). With ``flwr`` installed
  (the ``flower`` extra, in requirements.lock), Flower 1.42's own SecAgg+ masking code at the
  same d and k (quantize, P-384 key agreement, self + pairwise masks, mod):
  ``speedup_vs_flower`` = Flower's time / ours.
* ``server_unmasking``: N clients, 10% dropping before the masked-input stage.
* ``round``: a full simulated federated round of N = 10 clients with SecAgg
  against the same round without it (``round_overhead_vs_plain``), with real
  local training (MiniLM + LoRA, d ~ 1e5, one step of 8 examples) and
  without training (protocol only).
* ``large_round``: seconds for one SecAgg+ round of N = 1000 clients with
  k ~ 2 log2 N, synthetic updates.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import best_of, interleaved, machine

from privfed.compression import FixedPointCodec
from privfed.secagg import (
    DropoutPlan,
    KeyedRandom,
    SecAggClient,
    SecAggServer,
    recommended_degree,
    run_secagg_round,
)
from privfed.secagg.crypto import MaskAccumulator


def _client_at_delivery(d: int, k: int, seed: int = 0) -> tuple[SecAggClient, bytes, np.ndarray]:
    """Client 0 of a (k+1)-client complete graph, one step before masking."""
    n = k + 1
    rng = np.random.default_rng(seed)
    codec = FixedPointCodec(bits=32, clip=1.0, num_summands=n)
    deltas = {c: rng.normal(0, 0.01, d) for c in range(n)}
    clients = {
        c: SecAggClient(
            client_id=c, round=1, values=codec.encode(deltas[c], rng=rng), random=KeyedRandom(bytes([c]) * 32)
        )
        for c in range(n)
    }
    server = SecAggServer(
        round=1,
        cohort=range(n),
        degree=k,
        graph_seed=rng.bytes(16),
        threshold=n // 2 + 1,
        bits=32,
        dim=d,
        session=bytes(16),
    )
    outbox = server.start()
    for _ in range(2):
        for c, m in outbox.items():
            server.receive(clients[c].step(m))
        outbox = server.finish_stage()
    return clients[0], outbox[0], deltas[0]


def client_masking(d: int, k: int, repeats: int) -> dict[str, Any]:
    client, delivery, delta = _client_at_delivery(d, k)
    codec = FixedPointCodec(bits=32, clip=1.0, num_summands=k + 1)
    state = dict(vars(client))

    def ours() -> None:
        vars(client).update(state)  # rewind: each run masks from the same state
        client.values = codec.encode(delta, rng=np.random.default_rng(0))
        client.step(delivery)

    ours_s = best_of(ours, repeats=repeats)
    keys = [bytes([i]) * 16 for i in range(k + 1)]

    def keystream_only() -> None:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        out = bytearray(4 * d + 15)
        zeros = bytes(4 * d)
        for key in keys:
            Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update_into(zeros, out)

    prg_s = best_of(keystream_only, repeats=repeats)

    def masks_only() -> None:
        acc = MaskAccumulator(np.zeros(d, dtype=np.uint32), bits=32)
        for key in keys:
            acc.add(key)

    masks_s = best_of(masks_only, repeats=repeats)
    result: dict[str, Any] = {
        "d": d,
        "k": k,
        "ours_ms": ours_s * 1e3,
        "masks_only_ms": masks_s * 1e3,
        "raw_aes_ctr_keystream_ms": prg_s * 1e3,
        "masking_fraction_of_prg": prg_s / masks_s,
        "step_fraction_of_prg": prg_s / ours_s,
    }
    flower = flower_masking(delta, k, repeats)
    if flower is not None:
        result["flower_ms"] = flower * 1e3
        result["speedup_vs_flower"] = flower / ours_s
    return result


def flower_masking(delta: np.ndarray, k: int, repeats: int) -> float | None:
    """Flower 1.42's SecAgg+ client masking (secaggplus_mod._collect_masked_vectors' arithmetic)."""
    try:
        from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
        from flwr.common.secure_aggregation.ndarrays_arithmetic import (
            factor_combine,
            parameters_addition,
            parameters_mod,
            parameters_multiply,
            parameters_subtraction,
        )
        from flwr.common.secure_aggregation.quantization import quantize
        from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
        from flwr.supercore.primitives.asymmetric import (
            bytes_to_private_key,
            bytes_to_public_key,
            generate_key_pairs,
            private_key_to_bytes,
            public_key_to_bytes,
        )
    except ImportError:
        return None
    target, modulus, nid = 2**22, 2**32, 1000
    sk, _ = generate_key_pairs()
    sk_bytes = private_key_to_bytes(sk)
    peers = {nid - 1 - i if i % 2 else nid + 1 + i: public_key_to_bytes(generate_key_pairs()[1]) for i in range(k)}
    seed = os.urandom(32)
    vector = [delta.astype(np.float32)]

    def run() -> None:
        q_ratio = round(1.0 * target)
        q = quantize(parameters_multiply(vector, q_ratio / target), 8.0, target)
        q = factor_combine(q_ratio, q)
        dims = [a.shape for a in q]
        q = parameters_addition(q, pseudo_rand_gen(seed, modulus, dims))
        for peer, public in peers.items():
            shared = generate_shared_key(bytes_to_private_key(sk_bytes), bytes_to_public_key(public))
            mask = pseudo_rand_gen(shared, modulus, dims)
            q = parameters_addition(q, mask) if nid > peer else parameters_subtraction(q, mask)
        parameters_mod(q, modulus)

    return best_of(run, repeats=repeats)


def _protocol_round(
    n: int, d: int, *, degree: int, dropout: float, seed: int = 0
) -> tuple[SecAggServer, dict[int, SecAggClient], DropoutPlan]:
    rng = np.random.default_rng(seed)
    codec = FixedPointCodec(bits=32, clip=1.0, num_summands=n)
    clients = {
        c: SecAggClient(client_id=c, round=1, values=codec.encode(rng.normal(0, 0.01, d), rng=rng)) for c in range(n)
    }
    degree = min(degree, n - 1)
    server = SecAggServer(
        round=1,
        cohort=range(n),
        degree=degree,
        graph_seed=rng.bytes(16),
        threshold=(degree + 1) // 2 + 1,
        bits=32,
        dim=d,
        session=os.urandom(16),
    )
    gone = frozenset(int(c) for c in rng.choice(n, size=round(dropout * n), replace=False))
    return server, clients, DropoutPlan({"collect": gone})


def server_unmasking(n: int, d: int) -> dict[str, Any]:
    degree = recommended_degree(n)
    server, clients, plan = _protocol_round(n, d, degree=degree, dropout=0.1)
    outbox = server.start()
    for stage in ("advertise", "share", "collect"):
        for c, m in outbox.items():
            if c not in plan.dropped_by(stage):
                server.receive(clients[c].step(m))
        outbox = server.finish_stage()
    for c, m in outbox.items():
        server.receive(clients[c].step(m))
    start = time.perf_counter()
    server.finish_stage()
    elapsed = time.perf_counter() - start
    plain = best_of(lambda: np.sum(np.stack([m.masked for m in server.masked.values()]), axis=0), repeats=3)
    return {
        "n": n,
        "d": d,
        "k": degree,
        "dropped": len(plan.dropped_by("collect")),
        "unmask_seconds": elapsed,
        "plain_sum_seconds": plain,
        "overhead_vs_plain_sum": elapsed / plain,
    }


def large_round(n: int, d: int) -> dict[str, Any]:
    degree = recommended_degree(n)
    server, clients, _ = _protocol_round(n, d, degree=degree, dropout=0.0)
    start = time.perf_counter()
    outcome = run_secagg_round(server, clients)
    return {
        "n": n,
        "d": d,
        "k": degree,
        "seconds": time.perf_counter() - start,
        "bytes_up_per_client": outcome.bytes_up / n,
        "masked_vector_bytes": 4 * d,
    }


def simulated_round(*, train: bool, repeats: int) -> dict[str, Any]:
    """One FederatedServer round over the simulation transport, N = 10, with and without SecAgg."""
    from privfed.config import config_from_dict
    from privfed.experiments import build_experiment
    from privfed.server.server import FederatedServer
    from privfed.server.strategies import make_strategy
    from privfed.transport.simulation import SimulationTransport

    raw: dict[str, Any] = {
        "model": {"name": "minilm", "max_length": 32},
        "data": {"name": "bbc_news", "max_train_examples": 200, "max_eval_examples": 10},
        "adapter": {"lora": {"rank": 11}},  # LoRA r=11 on query,value + head: d = 103,301
        "partition": {"method": "iid", "num_clients": 10},
        "client": {"local_steps": 1, "batch_size": 8},
        "server": {"clients_per_round": 10, "weighting": "uniform"},
        "secagg": {"clip": 0.5},
    }
    exp = build_experiment(config_from_dict(raw))
    from privfed.client.trainer import ClientTrainer, LocalResult

    trainer = ClientTrainer(model=exp.model, layout=exp.layout, task=exp.task, config=exp.config.client)
    if not train:  # protocol only: a fixed random delta instead of local training
        rng = np.random.default_rng(0)
        fixed = rng.normal(0, 0.01, exp.layout.dim).astype(np.float32)
        trainer.train = lambda **kw: LocalResult(fixed, 20, 1.0, 1)  # type: ignore[method-assign]
    from privfed.client.node import ClientNode

    nodes = [ClientNode(client_id=i, trainer=trainer, data=data, seed=0) for i, data in enumerate(exp.client_data)]
    transport = SimulationTransport(nodes=nodes)
    rounds: dict[str, Any] = {}
    for name, enabled in (("plain", False), ("secagg", True)):
        cfg = config_from_dict({**raw, "secagg": {**raw["secagg"], "enabled": enabled}})
        server = FederatedServer(
            layout=exp.layout,
            global_vector=exp.initial_vector,
            strategy=make_strategy(cfg.server),
            num_clients=10,
            clients_per_round=10,
            seed=0,
            weighting="uniform",
            secagg=cfg.secagg,
        )
        counter = iter(range(1, 1000))
        rounds[name] = lambda server=server, counter=counter: server.run_round(next(counter), transport)
    measured = interleaved(rounds, repeats=repeats)
    times = {False: measured["plain"], True: measured["secagg"]}
    return {
        "n": 10,
        "d": exp.layout.dim,
        "local_training": train,
        "plain_seconds": times[False],
        "secagg_seconds": times[True],
        "round_overhead_vs_plain": times[True] / times[False],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller sizes (< 1 minute)")
    args = parser.parse_args()
    repeats = 3 if args.quick else 7
    n = 10
    report: dict[str, Any] = {"benchmark": "secagg", "quick": args.quick, "machine": machine()}
    report["client_masking"] = [client_masking(d, k, repeats) for d in (100_000, 1_000_000) for k in (5, n - 1)]
    report["server_unmasking"] = server_unmasking(100, 100_000 if not args.quick else 20_000)
    report["round"] = simulated_round(train=True, repeats=repeats)
    report["round_protocol_only"] = simulated_round(train=False, repeats=repeats)
    report["large_round"] = large_round(1000, 10_000 if args.quick else 100_000)
    worst = min(r["masking_fraction_of_prg"] for r in report["client_masking"])
    report["masking_fraction_of_prg"] = worst
    speedups = [r["speedup_vs_flower"] for r in report["client_masking"] if "speedup_vs_flower" in r]
    report["speedup_vs_flower"] = min(speedups) if speedups else None
    report["round_overhead_vs_plain"] = report["round"]["round_overhead_vs_plain"]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
