"""Learning-rate schedules as pure functions of the step: lr(step) = base_lr * factor(step).

A function of the step (not a stateful scheduler object) makes resume exact: the checkpoint stores the step
and nothing else is needed. Epoch-based settings are converted to steps with the phase's steps per epoch.
"""
from __future__ import annotations

import math
from typing import Callable

from pipeline_src.errors import ConfigError
from pipeline_src.registry import Registry

SCHEDULES = Registry("lr schedule")


@SCHEDULES.register("constant")
def constant(total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    return lambda step: 1.0


@SCHEDULES.register("step")
def step_decay(total_steps: int, steps_per_epoch: int, every_epochs: float | None = None,
               every_steps: int | None = None, gamma: float = 0.5) -> Callable[[int], float]:
    """Multiply by `gamma` every N epochs (ATTSF: halve every 20) or every N steps."""
    if (every_epochs is None) == (every_steps is None):
        raise ConfigError("schedule 'step' needs exactly one of every_epochs / every_steps")
    period = every_steps if every_steps is not None else max(1, round(every_epochs * steps_per_epoch))
    return lambda step: gamma ** (step // period)


@SCHEDULES.register("poly")
def poly(total_steps: int, steps_per_epoch: int, power: float = 1.0, end_factor: float = 0.0) -> Callable[[int], float]:
    """Polynomial decay to `end_factor` over the phase (ADNet: power 0.3, as tf.train.polynomial_decay)."""
    def factor(step: int) -> float:
        frac = min(step, total_steps) / max(1, total_steps)
        return (1.0 - end_factor) * math.pow(1.0 - frac, power) + end_factor
    return factor


def build_schedule(spec: dict, total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    args = {k: v for k, v in spec.items() if k != "name"}
    try:
        return SCHEDULES.build(spec["name"], total_steps, steps_per_epoch, **args)
    except TypeError as e:
        raise ConfigError(f"schedule {spec['name']!r}: bad arguments {args}: {e}") from e
