"""DP mechanisms: clipping bounds, noise scale, budget checks, Opacus per-sample gradients."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privfed.errors import PrivacyBudgetExceeded
from privfed.privacy import (
    AdaptiveClipping,
    DPFedAvgServer,
    PrivacyLedger,
    SampledGaussianEvent,
    SecureNoise,
    SeededNoise,
    clip_to_norm,
    delta_noise_multiplier,
)
from privfed.testing import check_clipped_norm, check_noise_std
from privfed.testing import strategies as pst


@given(delta=pst.update_vectors(st.integers(1, 50), max_abs=1e4), max_norm=st.floats(1e-3, 1e3))
def test_clipped_updates_never_exceed_the_bound(delta: np.ndarray, max_norm: float) -> None:
    """No excess over C at all (float64 norm of the float32 result); unchanged within C; same direction beyond."""
    check_clipped_norm(lambda d: clip_to_norm(d, max_norm=max_norm)[0], delta, max_norm=max_norm)
    _, norm = clip_to_norm(delta, max_norm=max_norm)
    assert norm == pytest.approx(float(np.linalg.norm(delta.astype(np.float64))))


@pytest.mark.parametrize("source", [SeededNoise(7, "test"), SecureNoise()], ids=["seeded", "secure"])
def test_noise_std_matches_z_times_c(source: object) -> None:
    """The DP-FedAvg sum noise has std z*C: a chi-square interval on the sample variance, a normal bound on
    the mean and a Kolmogorov-Smirnov test, each at false-alarm rate 1e-4."""
    z, c = 1.3, 0.25
    server = DPFedAvgServer(noise_multiplier=z, clip_norm=c, expected_clients=1.0, adaptive=None)

    def sample(n: int) -> np.ndarray:
        result = server.from_sums(clipped_sum=np.zeros(n), centred_count=0, noise=source)  # type: ignore[arg-type]
        return result.mean_delta.astype(np.float64)

    check_noise_std(sample, z * c, samples=40_000, false_alarm=3e-4)


def test_mean_is_divided_by_the_expected_cohort_and_clip_applies() -> None:
    server = DPFedAvgServer(noise_multiplier=1e-9, clip_norm=1.0, expected_clients=4.0, adaptive=None)
    deltas = np.array([[3.0, 4.0], [0.3, 0.4]], dtype=np.float32)  # norms 5 (clipped to 1) and 0.5
    result = server.aggregate(deltas, noise=SeededNoise(0))
    np.testing.assert_allclose(result.mean_delta, (np.array([0.6, 0.8]) + np.array([0.3, 0.4])) / 4, atol=1e-6)


def test_adaptive_clipping_moves_towards_the_target_quantile() -> None:
    rng = np.random.default_rng(0)
    norms = rng.lognormal(mean=0.0, sigma=0.5, size=2000)  # median 1.0
    server = DPFedAvgServer(
        noise_multiplier=0.5,
        clip_norm=0.05,
        expected_clients=100,
        adaptive=AdaptiveClipping(target_quantile=0.5, learning_rate=0.2, count_stddev=5.0),
    )
    noise = SeededNoise(1)
    for _ in range(200):
        picked = rng.choice(norms, size=100)
        deltas = (picked[:, None] * np.array([[1.0, 0.0]])).astype(np.float32)
        server.aggregate(deltas, noise=noise)
    assert 0.8 < server.clip_norm < 1.25  # converged near the median norm from 20x below


def test_delta_noise_multiplier_split() -> None:
    z = 1.0
    z_delta = delta_noise_multiplier(noise_multiplier=z, count_stddev=5.0)
    # Composition of the two Gaussian queries gives back z (Andrew et al. 2021, Thm 1).
    assert (z_delta**-2 + (2 * 5.0) ** -2) ** -0.5 == pytest.approx(z)
    with pytest.raises(ValueError, match="too small"):
        delta_noise_multiplier(noise_multiplier=z, count_stddev=0.4)


def test_ledger_refuses_a_round_that_would_exceed_the_budget() -> None:
    ledger = PrivacyLedger(delta=1e-5, accountant="rdp", user_budget=2.0)
    event = SampledGaussianEvent(noise_multiplier=1.0, sample_rate=0.1, steps=1, scope="user")
    spent = 0
    with pytest.raises(PrivacyBudgetExceeded, match="budget 2"):
        for _ in range(10_000):
            ledger.check([event])
            ledger.record([event])
            spent += 1
    assert ledger.epsilon_user() <= 2.0
    assert PrivacyLedger(delta=1e-5, accountant="rdp").epsilon([event] * (spent + 1)) > 2.0


def test_ledger_round_trips_through_json() -> None:
    ledger = PrivacyLedger(delta=1e-5, accountant="rdp")
    ledger.record(
        [
            SampledGaussianEvent(noise_multiplier=1.0, sample_rate=0.1, steps=3, scope="user", round=1),
            SampledGaussianEvent(noise_multiplier=2.0, sample_rate=0.5, steps=4, scope="sample", subject=2, round=1),
        ]
    )
    clone = PrivacyLedger(delta=1e-5, accountant="rdp")
    clone.load_json(ledger.to_json())
    assert clone.events == ledger.events
    assert clone.epsilon_sample(2) == ledger.epsilon_sample(2) > 0


@settings(max_examples=20)
@given(st.integers(1, 8))
def test_secure_noise_is_not_reproducible_and_seeded_is(n: int) -> None:
    assert not np.array_equal(SecureNoise().normal(std=1, shape=(n, 4)), SecureNoise().normal(std=1, shape=(n, 4)))
    a = SeededNoise(3, "x").normal(std=1, shape=(n, 4))
    assert np.array_equal(a, SeededNoise(3, "x").normal(std=1, shape=(n, 4)))


def test_opacus_per_sample_gradients_reach_every_trainable_adapter_parameter() -> None:
    """Opacus issue #820: DP-LoRA with peft >= 0.14 silently missing hooks on LoRA layers."""
    import torch

    from privfed.adapters import AdapterLayout, wrap_model
    from privfed.adapters.methods import LoraAdapterConfig
    from privfed.config import AdapterConfig
    from privfed.models import load_base_model
    from privfed.privacy.dpsgd import make_grad_sample_module

    for name, num_labels in (("tiny-bert", 3), ("tiny-llama", None)):
        loaded = load_base_model(name, num_labels=num_labels)
        model = wrap_model(
            loaded.model, AdapterConfig(method="lora", method_config=LoraAdapterConfig(rank=2)), loaded.spec
        )
        gsm = make_grad_sample_module(model)
        ids = torch.randint(5, 500, (4, 9))
        out = gsm(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        out.float().pow(2).mean().backward()
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        assert len(trainable) == len(AdapterLayout.from_model(model).slots)
        for pname, p in trainable:
            assert getattr(p, "grad_sample", None) is not None, f"{name}: no per-sample grad for {pname}"
            assert p.grad_sample.shape == (4, *p.shape)
            # Per-sample gradients sum to the batch gradient (mean loss: times batch size).
            torch.testing.assert_close(p.grad_sample.sum(0) / 4, p.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("model_name", ["tiny-bert", "tiny-llama"])
def test_ghost_clipping_matches_per_sample_hooks(model_name: str) -> None:
    """Same seed, same Poisson batches, same noise: ghost clipping and explicit per-sample
    gradients must give the same clipped, noised update (clipping active: small C)."""
    from privfed.adapters import AdapterLayout, wrap_model
    from privfed.adapters.methods import LoraAdapterConfig
    from privfed.client.data import ExampleSet
    from privfed.client.trainer import ClientTrainer, SampleDP
    from privfed.config import AdapterConfig, ClientConfig
    from privfed.data.tokenize import TokenizedTexts
    from privfed.models import load_base_model
    from privfed.rng import derive_seed, torch_rng
    from privfed.tasks import get_task

    deltas = {}
    for mode in ("hooks", "ghost"):
        loaded = load_base_model(model_name, num_labels=3 if model_name == "tiny-bert" else None, init_seed=1)
        with torch_rng(2):  # identical LoRA initialisation in both runs
            model = wrap_model(
                loaded.model, AdapterConfig(method="lora", method_config=LoraAdapterConfig(rank=2)), loaded.spec
            )
        rng = np.random.default_rng(0)
        ids = rng.integers(5, 500, size=(24, 10)).astype(np.int32)
        data = ExampleSet(
            TokenizedTexts(ids, np.ones_like(ids, dtype=np.int8)), rng.integers(0, 3, 24).astype(np.int64)
        )
        trainer = ClientTrainer(
            model=model,
            layout=AdapterLayout.from_model(model),
            task=get_task(loaded.spec.task),
            config=ClientConfig(local_steps=3, batch_size=6, optimizer="sgd", learning_rate=0.1),
            dp=SampleDP(noise_multiplier=0.5, max_grad_norm=0.01, secure_noise=False, seed=0, grad_sample_mode=mode),
        )
        trainer.check_private_training(data)
        start = AdapterLayout.from_model(model).flatten(model)
        deltas[mode] = trainer.train(global_vector=start, data=data, seed=derive_seed(0, "t")).delta
    assert np.linalg.norm(deltas["hooks"]) > 0
    np.testing.assert_allclose(deltas["ghost"], deltas["hooks"], rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("model_name", ["tiny-bert", "tiny-llama"])
def test_per_sample_gradients_match_a_microbatch_loop(model_name: str) -> None:
    """Slow reference: one backward pass per example gives the same per-sample gradients."""
    import torch

    from privfed.adapters import wrap_model
    from privfed.adapters.methods import LoraAdapterConfig
    from privfed.client.data import ExampleSet
    from privfed.config import AdapterConfig
    from privfed.data.tokenize import TokenizedTexts
    from privfed.models import load_base_model
    from privfed.privacy.dpsgd import make_grad_sample_module
    from privfed.rng import torch_rng
    from privfed.tasks import get_task

    loaded = load_base_model(model_name, num_labels=3 if model_name == "tiny-bert" else None, init_seed=1)
    with torch_rng(2):
        model = wrap_model(
            loaded.model, AdapterConfig(method="lora", method_config=LoraAdapterConfig(rank=2)), loaded.spec
        )
    with torch.no_grad(), torch_rng(3):
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # peft starts B at zero; make every gradient non-trivial
    for module in model.modules():  # Opacus hooks need train mode; no dropout, same function both ways
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.train()
    task = get_task(loaded.spec.task)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 500, size=(4, 9)).astype(np.int32)
    data = ExampleSet(TokenizedTexts(ids, np.ones_like(ids, dtype=np.int8)), rng.integers(0, 3, 4).astype(np.int64))
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    reference = []
    for i in range(4):
        model.zero_grad()
        task.loss(model, data.batch(np.array([i]))).backward()  # type: ignore[no-untyped-call]
        reference.append({n: p.grad.detach().clone() for n, p in trainable})
    model.zero_grad()
    gsm = make_grad_sample_module(model)
    task.loss(gsm, data.batch(np.arange(4))).backward()  # type: ignore[no-untyped-call]
    for name, p in trainable:
        for i in range(4):
            torch.testing.assert_close(p.grad_sample[i], reference[i][name], rtol=1e-4, atol=1e-7)


def test_dp_path_without_noise_or_clipping_equals_plain_training() -> None:
    """Full-batch DP-SGD (Poisson rate 1) with sigma*C ~ 1e-9 and a bound that never binds must
    give the non-private SGD update: nothing in the DP path may drop or rescale gradients."""
    import torch

    from privfed.adapters import AdapterLayout, wrap_model
    from privfed.adapters.methods import LoraAdapterConfig
    from privfed.client.data import ExampleSet
    from privfed.client.trainer import ClientTrainer, SampleDP
    from privfed.config import AdapterConfig, ClientConfig
    from privfed.data.tokenize import TokenizedTexts
    from privfed.models import load_base_model
    from privfed.rng import torch_rng
    from privfed.tasks import get_task

    deltas = []
    for dp in (None, SampleDP(noise_multiplier=1e-12, max_grad_norm=1e3, secure_noise=False, seed=0)):
        loaded = load_base_model("tiny-bert", num_labels=3, init_seed=1)
        with torch_rng(2):
            model = wrap_model(
                loaded.model, AdapterConfig(method="lora", method_config=LoraAdapterConfig(rank=4)), loaded.spec
            )
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        rng = np.random.default_rng(0)
        ids = rng.integers(100, 5000, size=(12, 16)).astype(np.int32)
        data = ExampleSet(
            TokenizedTexts(ids, np.ones_like(ids, dtype=np.int8)), rng.integers(0, 3, 12).astype(np.int64)
        )
        layout = AdapterLayout.from_model(model)
        trainer = ClientTrainer(
            model=model,
            layout=layout,
            task=get_task("classification"),
            config=ClientConfig(local_steps=3, batch_size=12, optimizer="sgd", learning_rate=0.5),
            dp=dp,
        )
        deltas.append(trainer.train(global_vector=layout.flatten(model), data=data, seed=3).delta)
    assert np.linalg.norm(deltas[0]) > 0
    np.testing.assert_allclose(deltas[1], deltas[0], rtol=1e-4, atol=1e-7)  # float32 rounding of local - global


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["sample", "user"]),
            st.integers(0, 4),  # subject
            st.sampled_from([0.8, 1.0, 2.5]),  # sigma
            st.sampled_from([0.05, 0.1, 1.0]),  # q
            st.integers(0, 50),  # steps
        ),
        max_size=25,
    )
)
def test_ledger_per_client_epsilon_equals_a_fresh_composition(raw: list[tuple[str, int, float, float, int]]) -> None:
    """The ledger indexes events by client and reuses the epsilon of identical histories; every
    answer must equal composing that client's events from scratch (the slow reference)."""
    from privfed.privacy import compute_epsilon

    events = [
        SampledGaussianEvent(
            noise_multiplier=sigma,
            sample_rate=q,
            steps=steps,
            scope=scope,  # type: ignore[arg-type]
            subject=subject if scope == "sample" else None,
            round=i,
        )
        for i, (scope, subject, sigma, q, steps) in enumerate(raw)
    ]
    ledger = PrivacyLedger(delta=1e-5, accountant="rdp")
    for event in events:  # one at a time, asking in between, as rounds do
        ledger.record([event])
        ledger.epsilon_sample_max()
    clone = PrivacyLedger(delta=1e-5, accountant="rdp")
    clone.load_json(ledger.to_json())
    expected = {}
    for client in {e.subject for e in events if e.scope == "sample" and e.subject is not None}:
        assert client is not None
        mine = [e for e in events if e.scope == "sample" and e.subject == client]
        expected[client] = compute_epsilon(mine, delta=1e-5, accountant="rdp")
        assert ledger.epsilon_sample(client) == pytest.approx(expected[client], rel=1e-12)
        assert clone.epsilon_sample(client) == pytest.approx(expected[client], rel=1e-12)
    assert ledger.epsilon_sample_max() == pytest.approx(max(expected.values(), default=0.0), rel=1e-12)
    users = [e for e in events if e.scope == "user"]
    assert ledger.epsilon_user() == pytest.approx(compute_epsilon(users, delta=1e-5, accountant="rdp"), rel=1e-12)


@pytest.mark.parametrize("failure", [MemoryError, RuntimeError])
def test_prv_reports_infinity_where_it_cannot_bound_epsilon(
    failure: type[Exception], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opacus' PRV accountant raises MemoryError (sigma <= ~0.05 over 1000 steps asks for 25 GiB and more)
    or RuntimeError ("Discrete mean differs", sigma ~0.01 at q = 1); an epsilon it cannot bound is inf."""
    from opacus.accountants import PRVAccountant

    from privfed.privacy import compute_epsilon

    def broken(self: object, **kwargs: object) -> float:
        raise failure("discretisation failed")

    monkeypatch.setattr(PRVAccountant, "get_epsilon", broken)
    events = [SampledGaussianEvent(noise_multiplier=0.01, sample_rate=1.0, steps=10, scope="user")]
    with pytest.warns(RuntimeWarning, match="cannot bound epsilon for noise multiplier 0.01"):
        assert compute_epsilon(events, delta=1e-5, accountant="prv") == float("inf")
