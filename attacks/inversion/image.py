"""Image gradient inversion on small vision models (sklearn 8x8 digits).

An honest-but-curious server sees a client's one-step upload ``-lr * grad``
(:class:`~attacks.threat.Observation`) and knows the model's architecture and
base weights. From that it tries to reconstruct the client's images:

* :func:`analytic_first_layer` -- closed form for a first Linear layer with
  bias at batch 1 (Phong et al. 2017; Geiping et al. 2020, Prop. 1).
* :func:`recover_labels` -- labels from the last layer's gradient (iDLG,
  Zhao et al. 2020; a count heuristic in the spirit of LLG, Wainakh et al. 2022).
* :func:`dlg` -- Deep Leakage from Gradients (Zhu et al. 2019): L-BFGS on
  dummy inputs (and optionally soft labels) to match the gradient in L2.
* :func:`inverting_gradients` -- Inverting Gradients (Geiping et al. 2020):
  cosine gradient distance + total variation, signed Adam with step decay,
  box constraint, restarts.

:func:`image_observation` builds what the server sees under the defences of
:mod:`attacks.inversion.defences` (DP-SGD, quantization, secure aggregation).
Reconstructions of a batch come back in an arbitrary order; score them after
:func:`match_reconstructions` (Hungarian matching on per-image MSE).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal, overload

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from attacks.inversion.defences import dp_sgd_mean, quantize_roundtrip, sum_updates
from attacks.threat import Observation, ThreatModel
from privfed.rng import derive_seed

__all__ = [
    "ImageReconstruction",
    "analytic_first_layer",
    "client_gradient",
    "dlg",
    "image_observation",
    "inverting_gradients",
    "match_reconstructions",
    "matched_scores",
    "plot_reconstructions",
    "recover_labels",
]

_F32 = npt.NDArray[np.float32]
_I64 = npt.NDArray[np.int64]
ImageShape = tuple[int, int, int]
DIGITS_SHAPE: ImageShape = (1, 8, 8)


@dataclasses.dataclass(frozen=True, eq=False)
class ImageReconstruction:
    """An attack's output.

    Attributes:
        images: float32 [B, C, H, W] in [0, 1], in the attack's (arbitrary) order.
        labels: int64 [B], the labels the attack used or recovered, same order.
        loss: the attack's final objective (lower = better gradient match).
    """

    images: _F32
    labels: _I64
    loss: float


# --------------------------------------------------------------------------- client side


def _as_batch(images: npt.ArrayLike, labels: npt.ArrayLike, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(np.asarray(images), dtype=dtype)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)
    if x.ndim != 4 or x.shape[0] != y.shape[0] or x.shape[0] < 1:
        raise ValueError(f"need images [B,C,H,W] and labels [B] with B >= 1; got {tuple(x.shape)} and {tuple(y.shape)}")
    return x, y


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _model_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


@overload
def client_gradient(
    model: nn.Module, images: npt.ArrayLike, labels: npt.ArrayLike, *, per_example: Literal[False] = False
) -> dict[str, _F32]: ...


@overload
def client_gradient(
    model: nn.Module, images: npt.ArrayLike, labels: npt.ArrayLike, *, per_example: Literal[True]
) -> list[dict[str, _F32]]: ...


def client_gradient(
    model: nn.Module, images: npt.ArrayLike, labels: npt.ArrayLike, *, per_example: bool = False
) -> dict[str, _F32] | list[dict[str, _F32]]:
    """Gradient of the batch-mean cross-entropy w.r.t. ``model``'s trainable parameters.

    Returns ``name -> float32 array``; with ``per_example=True`` a list with one
    such dict per example (each the gradient of that example's loss alone), as
    :func:`~attacks.inversion.defences.dp_sgd_mean` takes.
    """
    x, y = _as_batch(images, labels, _model_dtype(model))
    named = _trainable(model)
    params = [p for _, p in named]

    def grads_of(xb: torch.Tensor, yb: torch.Tensor) -> dict[str, _F32]:
        loss = F.cross_entropy(model(xb), yb)
        gs = torch.autograd.grad(loss, params)
        return {n: g.detach().cpu().numpy().astype(np.float32) for (n, _), g in zip(named, gs, strict=True)}

    if per_example:
        return [grads_of(x[i : i + 1], y[i : i + 1]) for i in range(x.shape[0])]
    return grads_of(x, y)


def _upload(
    model: nn.Module,
    images: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    lr: float,
    noise_multiplier: float,
    clip_norm: float | None,
    rng: np.random.Generator,
) -> dict[str, _F32]:
    if clip_norm is not None:
        per_ex = client_gradient(model, images, labels, per_example=True)
        grad = dp_sgd_mean(per_ex, clip_norm=clip_norm, noise_multiplier=noise_multiplier, rng=rng)
    else:
        grad = client_gradient(model, images, labels)
    return {n: (-lr * np.asarray(g, dtype=np.float64)).astype(np.float32) for n, g in grad.items()}


def image_observation(
    model: nn.Module,
    images: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    lr: float,
    threat: ThreatModel,
    rng: np.random.Generator,
    noise_multiplier: float = 0.0,
    clip_norm: float | None = None,
    quant_bits: int | None = None,
    quant_clip: float = 1.0,
    other_clients: Sequence[tuple[npt.ArrayLike, npt.ArrayLike]] | None = None,
) -> Observation:
    """What the server sees after one local SGD step on ``(images, labels)``.

    Each client uploads ``-lr * g``, where ``g`` is the batch-mean gradient or,
    when ``clip_norm`` is given, the DP-SGD mean (per-example clipping to
    ``clip_norm`` plus Gaussian noise of std ``noise_multiplier * clip_norm``;
    ``noise_multiplier > 0`` requires ``clip_norm``). With ``quant_bits`` the
    upload goes through the fixed-point codec's round trip (clip ``quant_clip``,
    room for ``threat.num_clients`` summands). Under ``threat.view ==
    "secagg_aggregate"`` the server sees the sum of the target's upload and the
    uploads of ``other_clients`` (``threat.num_clients - 1`` batches), each
    processed the same way. Labels are attached when ``threat.knows_labels``.
    """
    if lr <= 0:
        raise ValueError("lr must be > 0")
    if noise_multiplier < 0:
        raise ValueError("noise_multiplier must be >= 0")
    if noise_multiplier > 0 and clip_norm is None:
        raise ValueError("DP-SGD noise needs clip_norm (the per-example clipping bound)")
    others = list(other_clients or [])
    if threat.view == "secagg_aggregate":
        if len(others) != threat.num_clients - 1:
            raise ValueError(f"secagg over {threat.num_clients} clients needs {threat.num_clients - 1} other batches")
    elif others:
        raise ValueError("other_clients only make sense for the secagg_aggregate view")

    uploads = []
    for xb, yb in [(images, labels), *others]:
        up = _upload(model, xb, yb, lr=lr, noise_multiplier=noise_multiplier, clip_norm=clip_norm, rng=rng)
        if quant_bits is not None:
            up = quantize_roundtrip(up, bits=quant_bits, clip=quant_clip, rng=rng, num_summands=threat.num_clients)
        uploads.append(up)
    seen = sum_updates(uploads) if len(uploads) > 1 else uploads[0]
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    return Observation(
        threat=threat,
        updates=seen,
        learning_rate=lr,
        local_steps=1,
        batch_size=int(y.size),
        labels=y.copy() if threat.knows_labels else None,
    )


# --------------------------------------------------------------------------- attacker helpers


def _mean_gradient(observation: Observation, name: str) -> npt.NDArray[np.float64]:
    """The observed gradient of ``name`` per client: under secure aggregation the sum of
    ``num_clients`` equal-size uploads is ``num_clients`` times the mean-loss gradient of
    their union batch, so it is divided by ``num_clients`` (1 otherwise)."""
    return observation.gradient(name) / observation.threat.num_clients


def _observed(model: nn.Module, observation: Observation) -> list[tuple[str, nn.Parameter]]:
    """The model's parameters that the observation has updates for, in model order."""
    params = dict(model.named_parameters())
    unknown = sorted(set(observation.updates) - set(params))
    if unknown:
        raise ValueError(f"observation has updates for parameters the model lacks: {unknown}")
    out = [(n, p) for n, p in model.named_parameters() if n in observation.updates]
    for n, p in out:
        if tuple(np.shape(observation.updates[n])) != tuple(p.shape):
            raise ValueError(f"update {n!r} has shape {np.shape(observation.updates[n])}, parameter {tuple(p.shape)}")
    if not out:
        raise ValueError("observation has no updates")
    return out


def _attack_copy(
    model: nn.Module, observation: Observation
) -> tuple[nn.Module, list[nn.Parameter], list[torch.Tensor]]:
    """A float64 eval-mode copy of the model (only observed parameters need grad) and the target gradients."""
    twin = copy.deepcopy(model).double().eval()
    names = {n for n, _ in _observed(twin, observation)}
    for n, p in twin.named_parameters():
        p.requires_grad_(n in names)
    observed = _observed(twin, observation)
    params = [p for _, p in observed]
    targets = [torch.as_tensor(_mean_gradient(observation, n), dtype=torch.float64) for n, _ in observed]
    return twin, params, targets


def _last_linear(model: nn.Module, observation: Observation) -> tuple[nn.Linear, str, str | None]:
    last: tuple[nn.Linear, str, str | None] | None = None
    for mname, module in model.named_modules():
        if isinstance(module, nn.Linear):
            prefix = f"{mname}." if mname else ""
            bias = f"{prefix}bias" if module.bias is not None else None
            last = (module, f"{prefix}weight", bias)
    if last is None or (last[1] not in observation.updates and (last[2] is None or last[2] not in observation.updates)):
        raise ValueError("label recovery needs the update of the model's last Linear layer")
    return last


def recover_labels(
    observation: Observation,
    model: nn.Module,
    batch_size: int | None = None,
    *,
    image_shape: ImageShape = DIGITS_SHAPE,
    num_probes: int = 64,
    rng_seed: int = 0,
) -> _I64:
    """Labels of the attacked batch from the last Linear layer's gradient (sorted ascending).

    With softmax cross-entropy and batch-mean loss the last layer's bias
    gradient is ``g_c = mean_i (p_ic - [y_i = c])``, and the weight gradient's
    row ``c`` is ``mean_i (p_ic - [y_i = c]) h_i`` with ``h_i`` the penultimate
    features. The bias gradient is used when observed; otherwise the row sums
    of the weight gradient (same sign as ``g_c`` when ``h_i >= 0``, e.g. after
    Sigmoid/ReLU).

    Guarantees (exact, noiseless gradient of one client's single step):

    * batch 1 (iDLG, Zhao et al. 2020): ``g_c < 0`` exactly for the true class
      since ``p_c < 1``; the argmin is the label. With only the weight it
      additionally needs ``h >= 0`` and ``h != 0``.
    * batch > 1: every class with ``g_c < 0`` occurs in the batch (a negative
      mean needs some ``y_i = c``), so those are always right. Repeats and
      classes hidden by large ``p_c`` are a heuristic in the spirit of LLG+
      (Wainakh et al. 2022): ``p̄`` is estimated by the model's mean softmax on
      ``num_probes`` uniform-noise probe images (``rng_seed``), the counts as
      ``B (p̄_c - g_c)`` (divided by the probes' mean feature sum when only the
      weight is seen), and the slots beyond the negative classes go greedily
      to the largest remaining estimated counts.

    A secure-aggregation sum of ``num_clients`` equal-size uploads is read as
    the gradient of their union batch (pass ``batch_size = num_clients * B``);
    noisy (DP), clipped or quantized observations void the guarantees.
    """
    b = observation.batch_size if batch_size is None else batch_size
    if b < 1:
        raise ValueError("batch_size must be >= 1")
    layer, wname, bname = _last_linear(model, observation)
    use_bias = bname is not None and bname in observation.updates
    if use_bias:
        assert bname is not None
        g = _mean_gradient(observation, bname).reshape(-1)
    else:
        g = _mean_gradient(observation, wname).sum(axis=1)
    if b == 1:
        return np.array([int(np.argmin(g))], dtype=np.int64)

    negative = np.flatnonzero(g < 0)
    if negative.size >= b:
        return np.sort(negative[np.argsort(g[negative])[:b]]).astype(np.int64)

    # Estimate the mean softmax (and mean feature sum) the model gives to uninformative inputs.
    twin = copy.deepcopy(model).double().eval()
    twin_layer = dict(twin.named_modules())[_module_name(model, layer)]
    captured: list[torch.Tensor] = []
    hook = twin_layer.register_forward_hook(lambda _m, inp, _out: captured.append(inp[0].detach()))
    try:
        gen = torch.Generator().manual_seed(rng_seed)
        probes = torch.rand((num_probes, *image_shape), generator=gen, dtype=torch.float64)
        with torch.no_grad():
            p_bar = torch.softmax(twin(probes), dim=-1).mean(0).numpy()
    finally:
        hook.remove()
    g_est = g if use_bias else g / max(float(captured[-1].sum(dim=1).mean()), 1e-12)
    expected = b * (p_bar - g_est)
    counts = np.zeros(g.size, dtype=np.int64)
    counts[negative] = 1
    for _ in range(b - int(negative.size)):
        c = int(np.argmax(expected - counts))
        counts[c] += 1
    return np.repeat(np.arange(g.size), counts).astype(np.int64)


def _module_name(model: nn.Module, target: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is target:
            return str(name)
    raise ValueError("module not found in model")


def _resolve_labels(
    observation: Observation, model: nn.Module, batch_size: int, labels: npt.ArrayLike | None
) -> _I64 | None:
    if labels is not None:
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
    elif observation.labels is not None:
        y = np.asarray(observation.labels, dtype=np.int64).reshape(-1)
    else:
        return None
    if y.size != batch_size:
        raise ValueError(f"got {y.size} labels for batch_size {batch_size}")
    return y


def _param_grads(
    model: nn.Module, params: list[nn.Parameter], x: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Differentiable gradient of the batch-mean CE; ``labels`` int [B] or soft label logits [B, K]."""
    logits = model(x)
    if labels.dtype == torch.int64:
        loss = F.cross_entropy(logits, labels)
    else:
        loss = torch.mean(torch.sum(-torch.softmax(labels, dim=-1) * F.log_softmax(logits, dim=-1), dim=-1))
    return torch.autograd.grad(loss, params, create_graph=True)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch single-threaded: on 8x8 images intra-op threads only add overhead (and
    results then do not depend on the machine's thread count). Restores the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _to_result(x: torch.Tensor, labels: npt.ArrayLike, loss: float) -> ImageReconstruction:
    images = np.clip(x.detach().cpu().numpy(), 0.0, 1.0).astype(np.float32)
    return ImageReconstruction(images=images, labels=np.asarray(labels, dtype=np.int64).reshape(-1), loss=float(loss))


# --------------------------------------------------------------------------- attacks


def analytic_first_layer(
    observation: Observation, model: nn.Module, *, image_shape: ImageShape = DIGITS_SHAPE
) -> ImageReconstruction:
    """Closed-form input of a first Linear layer with bias (Phong et al. 2017; Geiping et al. 2020, Prop. 1).

    For one example, ``dL/dW = delta x^T`` and ``dL/db = delta``, so every row
    ``i`` with ``delta_i != 0`` gives ``x = dL/dW[i] / dL/db[i]``. The rows are
    combined by least squares, ``x = sum_i delta_i dL/dW[i] / sum_i delta_i^2``,
    which is exact (up to float error) at batch 1 and a ``delta``-weighted mix of
    the inputs otherwise. ``loss`` is the relative residual of the rank-1 fit
    (0 for a single example). Labels come from :func:`recover_labels`.
    """
    first: tuple[str, nn.Module] | None = None
    for mname, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            first = (mname, module)
            break
    if first is None or not isinstance(first[1], nn.Linear) or first[1].bias is None:
        raise ValueError("the analytic attack needs a model whose first layer is Linear with bias")
    prefix = f"{first[0]}." if first[0] else ""
    wname, bname = f"{prefix}weight", f"{prefix}bias"
    if wname not in observation.updates or bname not in observation.updates:
        raise ValueError(f"the observation lacks {wname!r} or {bname!r}")
    gw = _mean_gradient(observation, wname)
    gb = _mean_gradient(observation, bname).reshape(-1)
    denom = float(gb @ gb)
    if denom == 0.0:
        raise ValueError("the first layer's bias gradient is zero: nothing to divide by")
    x = (gb @ gw) / denom
    if x.size != int(np.prod(image_shape)):
        raise ValueError(f"first layer takes {x.size} inputs, image_shape {image_shape} has {np.prod(image_shape)}")
    residual = float(np.linalg.norm(gw - np.outer(gb, x))) / max(float(np.linalg.norm(gw)), 1e-300)
    labels = recover_labels(observation, model, 1, image_shape=image_shape)
    return _to_result(torch.as_tensor(x.reshape(1, *image_shape)), labels, residual)


def dlg(
    observation: Observation,
    model: nn.Module,
    *,
    batch_size: int | None = None,
    labels: npt.ArrayLike | None = None,
    steps: int = 200,
    rng_seed: int = 0,
    optimize_labels: bool = False,
    image_shape: ImageShape = DIGITS_SHAPE,
) -> ImageReconstruction:
    """Deep Leakage from Gradients (Zhu et al. 2019).

    L-BFGS (strong-Wolfe line search, at most ``steps`` iterations) on dummy
    images initialised U(0, 1) from ``rng_seed`` to minimise the squared L2
    distance between their gradient and the observed one, divided by the
    observed gradient's squared norm (a constant: DLG's objective, made
    scale-free). Labels: ``labels``, else the observation's, else -- with
    ``optimize_labels`` -- DLG's joint optimisation of soft labels, else iDLG
    (:func:`recover_labels`). The images are unconstrained during the search
    and clipped to [0, 1] at the end; the best point L-BFGS evaluated is returned.
    """
    b = observation.batch_size if batch_size is None else batch_size
    if b < 1 or steps < 1:
        raise ValueError("batch_size and steps must be >= 1")
    twin, params, targets = _attack_copy(model, observation)
    y = _resolve_labels(observation, model, b, labels)
    if y is None and not optimize_labels:
        y = recover_labels(observation, model, b, image_shape=image_shape, rng_seed=rng_seed)
    gen = torch.Generator().manual_seed(rng_seed)
    x = torch.rand((b, *image_shape), generator=gen, dtype=torch.float64).requires_grad_(True)
    variables = [x]
    if y is None:
        num_classes = int(twin(x.detach()[:1]).shape[-1])
        label_var = torch.randn((b, num_classes), generator=gen, dtype=torch.float64).requires_grad_(True)
        variables.append(label_var)
    else:
        label_var = torch.as_tensor(y, dtype=torch.int64)
    scale = float(sum(float((t * t).sum()) for t in targets))
    scale = scale if scale > 0 else 1.0

    best_loss = float("inf")
    best_x, best_y = x.detach().clone(), label_var.detach().clone()

    optimizer = torch.optim.LBFGS(
        variables,
        lr=1.0,
        max_iter=steps,
        max_eval=steps * 5 // 4 + 1,
        history_size=100,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )

    def closure() -> float:
        nonlocal best_loss, best_x, best_y
        grads = _param_grads(twin, params, x, label_var)
        value = _sum_tensors([((g - t) ** 2).sum() for g, t in zip(grads, targets, strict=True)]) / scale
        v = float(value.detach())
        if np.isfinite(v) and v < best_loss:
            best_loss, best_x, best_y = v, x.detach().clone(), label_var.detach().clone()
        for var, d in zip(variables, torch.autograd.grad(value, variables), strict=True):
            var.grad = d
        return v

    with _one_thread():
        optimizer.step(closure)  # type: ignore[no-untyped-call]
    final_labels = best_y.numpy() if y is not None else torch.argmax(best_y, dim=-1).numpy()
    return _to_result(best_x, final_labels, best_loss)


def _sum_tensors(values: Sequence[torch.Tensor]) -> torch.Tensor:
    out = values[0]
    for v in values[1:]:
        out = out + v
    return out


def _total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV: mean |horizontal difference| + mean |vertical difference| (as in breaching)."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return dx + dy


def _cosine_distance(grads: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """1 - cos(grads, targets), all parameters taken as one vector (Geiping et al. 2020, eq. 4)."""
    dot = _sum_tensors([(g * t).sum() for g, t in zip(grads, targets, strict=True)])
    gn = _sum_tensors([(g * g).sum() for g in grads])
    tn = _sum_tensors([(t * t).sum() for t in targets])
    return 1.0 - dot / (torch.sqrt(gn) * torch.sqrt(tn) + 1e-30)


def inverting_gradients(
    observation: Observation,
    model: nn.Module,
    *,
    batch_size: int | None = None,
    labels: npt.ArrayLike | None = None,
    steps: int = 200,
    restarts: int = 2,
    tv_weight: float = 1e-4,
    lr: float = 0.1,
    rng_seed: int = 0,
    signed: bool = True,
    image_shape: ImageShape = DIGITS_SHAPE,
) -> ImageReconstruction:
    """Inverting Gradients (Geiping et al. 2020).

    Minimises ``1 - cos(grad(x), observed) + tv_weight * TV(x)`` over the
    images with Adam (step size ``lr``; with ``signed`` the input gradient is
    replaced by its sign, as in the paper's code), the step size divided by 10
    at 3/8, 5/8 and 7/8 of ``steps``, and ``x`` projected onto the box [0, 1]
    after every step. Each of ``restarts`` trials starts from U(0, 1) images
    (seeded by ``rng_seed`` and the trial index) and keeps its lowest-objective
    iterate; the trial with the lowest objective wins. Labels: ``labels``, else
    the observation's, else iDLG (:func:`recover_labels`).
    """
    b = observation.batch_size if batch_size is None else batch_size
    if b < 1 or steps < 1 or restarts < 1:
        raise ValueError("batch_size, steps and restarts must be >= 1")
    if lr <= 0 or tv_weight < 0:
        raise ValueError("lr must be > 0 and tv_weight >= 0")
    twin, params, targets = _attack_copy(model, observation)
    y = _resolve_labels(observation, model, b, labels)
    if y is None:
        y = recover_labels(observation, model, b, image_shape=image_shape, rng_seed=rng_seed)
    y_t = torch.as_tensor(y, dtype=torch.int64)
    milestones = sorted({max(1, int(steps * f)) for f in (3 / 8, 5 / 8, 7 / 8)})

    best_loss, best_x = float("inf"), torch.zeros((b, *image_shape), dtype=torch.float64)
    with _one_thread():
        for trial in range(restarts):
            gen = torch.Generator().manual_seed(derive_seed(rng_seed, "inverting-gradients", "restart", trial))
            x = torch.rand((b, *image_shape), generator=gen, dtype=torch.float64).requires_grad_(True)
            optimizer = torch.optim.Adam([x], lr=lr)
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
            for it in range(steps + 1):
                optimizer.zero_grad()
                value = _cosine_distance(_param_grads(twin, params, x, y_t), targets) + tv_weight * _total_variation(x)
                v = float(value.detach())
                if np.isfinite(v) and v < best_loss:
                    best_loss, best_x = v, x.detach().clone()
                if it == steps:
                    break  # the last pass only scores the final iterate
                (grad_x,) = torch.autograd.grad(value, [x])
                x.grad = grad_x.sign() if signed else grad_x
                optimizer.step()
                scheduler.step()
                with torch.no_grad():
                    x.clamp_(0.0, 1.0)
    return _to_result(best_x, y, best_loss)


# --------------------------------------------------------------------------- scoring and plots


def match_reconstructions(originals: npt.ArrayLike, reconstructions: npt.ArrayLike) -> npt.NDArray[np.intp]:
    """Permutation ``perm`` with ``reconstructions[perm[i]]`` matched to ``originals[i]``.

    A batch's reconstructions come back in an unidentifiable order; this is
    the assignment minimising the total per-image MSE (Hungarian algorithm,
    :func:`scipy.optimize.linear_sum_assignment`). There may be more
    reconstructions than originals (an attack on a SecAgg sum reconstructs
    the whole cohort); each original then gets its own best candidate.
    """
    from scipy.optimize import linear_sum_assignment

    a = np.asarray(originals, dtype=np.float64)
    r = np.asarray(reconstructions, dtype=np.float64)
    if a.shape[1:] != r.shape[1:] or a.ndim < 2 or r.shape[0] < a.shape[0]:
        raise ValueError(
            f"need at least as many reconstructions as originals, same image shape; got {a.shape}, {r.shape}"
        )
    a2, r2 = a.reshape(a.shape[0], -1), r.reshape(r.shape[0], -1)
    cost = ((a2[:, None, :] - r2[None, :, :]) ** 2).mean(axis=-1)
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(a.shape[0], dtype=np.intp)
    perm[rows] = cols
    return perm


def matched_scores(originals: npt.ArrayLike, reconstructions: npt.ArrayLike) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM after :func:`match_reconstructions` (images in [0, 1], [B, C, H, W])."""
    from attacks.metrics import psnr, ssim

    a = np.asarray(originals, dtype=np.float64)
    r = np.asarray(reconstructions, dtype=np.float64)
    matched = r[match_reconstructions(a, r)]
    return {"psnr": psnr(a, matched), "ssim": ssim(a, matched)}


def plot_reconstructions(
    originals: npt.ArrayLike,
    reconstructions: npt.ArrayLike,
    path: str | Path,
    *,
    titles: Sequence[str] | None = None,
) -> Path:
    """Image grid (PNG, PDF, SVG via :mod:`privfed.plotting`): originals on top, reconstructions
    (as given: match them first) below; ``titles`` per column. Returns the PNG path."""
    from privfed.plotting import figure, save

    a = np.asarray(originals, dtype=np.float64)
    r = np.clip(np.asarray(reconstructions, dtype=np.float64), 0.0, 1.0)
    if a.shape != r.shape or a.ndim != 4:
        raise ValueError(f"need two [B,C,H,W] batches of the same shape; got {a.shape} and {r.shape}")
    n = a.shape[0]
    if titles is not None and len(titles) != n:
        raise ValueError(f"need {n} titles, got {len(titles)}")
    fig, grid = figure(ncols=n, nrows=2, width=1.4 * n + 0.6, height=3.0)
    axes = np.asarray(grid, dtype=object).reshape(2, n)
    for j in range(n):
        for row, batch in enumerate((a, r)):
            ax = axes[row][j]
            img = batch[j]
            if img.shape[0] == 1:
                ax.imshow(img[0], cmap="gray", vmin=0.0, vmax=1.0)
            else:
                ax.imshow(np.moveaxis(img, 0, -1))
            ax.set_xticks([])
            ax.set_yticks([])
        if titles is not None:
            axes[0][j].set_title(titles[j])
    axes[0][0].set_ylabel("original")
    axes[1][0].set_ylabel("reconstruction")
    out = Path(path)
    save(fig, out, grid=False)  # also .pdf and .svg beside it
    return out
