"""Small vision models for gradient inversion on sklearn's 1x8x8 digits (10 classes).

Every model is built from a seed inside :func:`torch.random.fork_rng`, so
building one never disturbs the caller's global torch RNG and the same seed
gives bit-identical weights. Parameter names (``fc1.weight``, ``conv1.bias``
...) are the keys an :class:`~attacks.threat.Observation` of these models uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

__all__ = ["DigitsCNN", "DigitsMLP", "build_vision_model", "digits_cnn", "digits_mlp", "vision_model_names"]

IMAGE_SHAPE = (1, 8, 8)
NUM_CLASSES = 10


class DigitsMLP(nn.Module):
    """Flatten -> Linear(64, hidden) with bias -> activation -> Linear(hidden, 10)."""

    def __init__(self, hidden: int, activation: Literal["sigmoid", "relu"]) -> None:
        super().__init__()
        self.fc1 = nn.Linear(IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2], hidden, bias=True)
        self.act: nn.Module = nn.Sigmoid() if activation == "sigmoid" else nn.ReLU()
        self.fc2 = nn.Linear(hidden, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, 10] of images [B, 1, 8, 8]."""
        out: torch.Tensor = self.fc2(self.act(self.fc1(x.flatten(1))))
        return out


class DigitsCNN(nn.Module):
    """LeNet-style CNN with Sigmoid activations as in DLG (Zhu et al. 2019), sized for 8x8 inputs.

    Three 5x5 convolutions (12 channels; the first with stride 2: 8x8 -> 4x4)
    and a linear classifier on the 12x4x4 features. Sigmoid (not ReLU) keeps
    the gradient twice differentiable with non-zero curvature, which the
    gradient-matching attacks need.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 12, kernel_size=5, padding=2, stride=2)
        self.conv2 = nn.Conv2d(12, 12, kernel_size=5, padding=2, stride=1)
        self.conv3 = nn.Conv2d(12, 12, kernel_size=5, padding=2, stride=1)
        self.fc = nn.Linear(12 * 4 * 4, NUM_CLASSES)
        self.act = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, 10] of images [B, 1, 8, 8]."""
        h = self.act(self.conv1(x))
        h = self.act(self.conv2(h))
        h = self.act(self.conv3(h))
        out: torch.Tensor = self.fc(h.flatten(1))
        return out


def _seeded(build: Callable[[], nn.Module], seed: int, *, dlg_init: bool) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
        if dlg_init:
            # DLG's reference code initialises every weight and bias U(-0.5, 0.5):
            # larger than PyTorch's default, which keeps the sigmoids away from the
            # linear regime and the gradients informative about the input.
            with torch.no_grad():
                for p in model.parameters():
                    p.uniform_(-0.5, 0.5)
    return model.float().eval()


def digits_mlp(hidden: int = 32, seed: int = 0, *, activation: Literal["sigmoid", "relu"] = "sigmoid") -> DigitsMLP:
    """A seeded MLP for digits; the first layer is Linear with bias (the analytic attack's target)."""
    if hidden < 1:
        raise ValueError("hidden must be >= 1")
    if activation not in ("sigmoid", "relu"):
        raise ValueError(f"activation must be 'sigmoid' or 'relu', got {activation!r}")
    model = _seeded(lambda: DigitsMLP(hidden, activation), seed, dlg_init=False)
    assert isinstance(model, DigitsMLP)
    return model


def digits_cnn(seed: int = 0) -> DigitsCNN:
    """A seeded DLG-style LeNet (Sigmoid, U(-0.5, 0.5) init) for digits."""
    model = _seeded(DigitsCNN, seed, dlg_init=True)
    assert isinstance(model, DigitsCNN)
    return model


_BUILDERS: dict[str, Callable[[int], nn.Module]] = {
    "digits_mlp": lambda seed: digits_mlp(seed=seed),
    "digits_cnn": lambda seed: digits_cnn(seed=seed),
}


def vision_model_names() -> tuple[str, ...]:
    """Names :func:`build_vision_model` accepts."""
    return tuple(sorted(_BUILDERS))


def build_vision_model(name: str, seed: int) -> nn.Module:
    """Build a registered small vision model by name (``digits_mlp``, ``digits_cnn``)."""
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown vision model {name!r}; known: {', '.join(vision_model_names())}") from None
    return builder(seed)
