"""The weighted sum of a phase's loss terms, returning each term for logging."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from pipeline_src.errors import ConfigError


class _FunctionLoss(nn.Module):
    """Lets a builder return a plain function; ModuleDict holds modules only."""

    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn

    @property
    def pretrained(self) -> dict[str, bool]:
        """{term: whether its network has pretrained weights} for terms that carry one (the run's tags)."""
        return {name: bool(term.pretrained) for name, term in self.terms.items() if hasattr(term, "pretrained")}

    def forward(self, pred, target):
        return self.fn(pred, target)


class CombinedLoss(nn.Module):
    """total = sum(weight_i * loss_i(pred, target)); also returns each unweighted loss_i, detached.

    The terms live in a ModuleDict so that `.to(device)` moves networks inside losses (the perceptual VGG).
    Logged values stay tensors (no GPU sync per step); call float() on them when logging.
    """

    def __init__(self, terms: dict[str, Callable], weights: dict[str, float]):
        super().__init__()
        if set(terms) != set(weights):
            raise ConfigError(f"loss terms {sorted(terms)} and weights {sorted(weights)} name different losses")
        self.terms = nn.ModuleDict({k: v if isinstance(v, nn.Module) else _FunctionLoss(v) for k, v in terms.items()})
        self.weights = dict(weights)

    @property
    def pretrained(self) -> dict[str, bool]:
        """{term: whether its network has pretrained weights} for terms that carry one (the run's tags)."""
        return {name: bool(term.pretrained) for name, term in self.terms.items() if hasattr(term, "pretrained")}

    def forward(self, pred, target) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = None
        values = {}
        for name, loss in self.terms.items():
            value = loss(pred, target)
            if value.dim() != 0:
                raise ValueError(f"loss {name!r} returned shape {tuple(value.shape)}; losses must return a scalar")
            values[name] = value.detach()
            total = self.weights[name] * value if total is None else total + self.weights[name] * value
        return total, values
