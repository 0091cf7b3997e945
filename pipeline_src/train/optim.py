"""Optimisers by name, with the arguments the recipe gives (betas, momentum, weight decay...)."""
from __future__ import annotations

from pipeline_src.errors import ConfigError
from pipeline_src.registry import Registry

OPTIMIZERS = Registry("optimizer")


@OPTIMIZERS.register("adam")
def adam(params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
    import torch
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw")
def adamw(params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2):
    import torch
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


@OPTIMIZERS.register("sgd")
def sgd(params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, nesterov: bool = False):
    import torch
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


def build_optimizer(spec: dict, params):
    # A null argument means "the builder's default": how a recipe option removes a key its base phase sets.
    args = {k: v for k, v in spec.items() if k != "name" and v is not None}
    try:
        return OPTIMIZERS.build(spec["name"], params, **args)
    except TypeError as e:
        raise ConfigError(f"optimizer {spec['name']!r}: bad arguments {args}: {e}") from e
