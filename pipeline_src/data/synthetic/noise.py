"""Sensor noise in linear light: Poisson shot noise (Gaussian approximation) plus Gaussian read noise.

variance(x) = shot_gain * x + read_variance, with x the linear signal in [0, 1]. A dual-pixel view is read
from photodiodes that each collect half the light and is then scaled by 2 to full brightness, so its
relative noise is higher than the combined image's, as on a real DP sensor.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from pipeline_src.data.synthetic.params import NoiseParams


@dataclasses.dataclass(frozen=True)
class NoiseLevel:
    shot_gain: float
    read_variance: float


def sample_noise_level(rng: np.random.Generator, params: NoiseParams) -> NoiseLevel:
    """Log-uniform in each range (the levels span an order of magnitude, like ISO settings)."""
    return NoiseLevel(_log_uniform(rng, params.shot_gain), _log_uniform(rng, params.read_variance))


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    low, high = bounds
    if low <= 0.0:
        return float(rng.uniform(low, high))
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def add_noise(linear: np.ndarray, level: NoiseLevel, rng: np.random.Generator) -> np.ndarray:
    """Noisy copy of a linear image, clipped to [0, 1] as the sensor saturates."""
    variance = level.shot_gain * np.clip(linear, 0.0, 1.0) + level.read_variance
    noise = rng.standard_normal(linear.shape, dtype=np.float32) * np.sqrt(variance, dtype=np.float32)
    return np.clip(linear + noise, 0.0, 1.0).astype(np.float32)


def add_half_aperture_noise(view: np.ndarray, level: NoiseLevel, rng: np.random.Generator) -> np.ndarray:
    """Noise for a dual-pixel view normalised to full brightness: the photodiode saw half the signal."""
    return np.clip(2.0 * add_noise(0.5 * view, level, rng), 0.0, 1.0).astype(np.float32)
