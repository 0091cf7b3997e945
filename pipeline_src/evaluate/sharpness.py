"""A classical blur-detection baseline: multi-scale local Laplacian energy, thresholded where the val split says.

Blur removes high frequencies, so in-focus regions carry more local Laplacian energy than defocused ones (the
cue of the hand-crafted detectors DeFusionNet and BTBNet compare against, e.g. Shi et al., CVPR 2014; Pang et al.,
"Classifying discriminative features for blur detection", 2016). Here, on the grey image:
  score(x) = mean over sigma in `sigmas` of log(G_w * (sigma^2 LoG_sigma(I))^2 + eps),
the scale-normalised Laplacian of Gaussian squared, averaged locally by a Gaussian of sigma `window`, in log
units so that the scales weigh alike. Nothing is learned but two numbers, both chosen on the dataset's val
split (never the test split): the threshold t that maximises F_beta (beta^2 = 0.3, as the protocol's F-measures)
of `score > t` over all val pixels, and the scale s of the logistic that turns scores into probabilities,
`sigmoid((score - t) / s)`, chosen from a few multiples of the scores' spread to minimise the val MAE. The
baseline returns the logits (score - t) / s; the protocol applies the sigmoid as it does to a model's output.
"""
from __future__ import annotations

import dataclasses

import numpy as np

EPS = 1e-8
SCALE_MULTIPLES = (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)


@dataclasses.dataclass(frozen=True)
class SharpnessFit:
    threshold: float
    scale: float
    val_images: int
    val_f_beta: float
    val_mae: float


def sharpness_score(image: np.ndarray, sigmas=(1.0, 2.0, 4.0), window: float = 4.0) -> np.ndarray:
    """H x W float64 score of an RGB (or grey) float image on [0, 1]: higher = sharper."""
    from scipy import ndimage
    from skimage import color

    grey = color.rgb2gray(image) if image.ndim == 3 else image.astype(np.float64)
    logs = [np.log(ndimage.gaussian_filter((s * s * ndimage.gaussian_laplace(grey, s)) ** 2, window) + EPS)
            for s in sigmas]
    return np.mean(logs, axis=0)


def fit(scores: list[np.ndarray], masks: list[np.ndarray], beta2: float = 0.3, candidates: int = 256) -> SharpnessFit:
    """Threshold maximising the val split's pixel-level F_beta, then the logistic scale minimising its MAE."""
    from scipy.special import expit

    if not scores:
        raise ValueError("the sharpness baseline needs at least one val image to choose its threshold")
    s = np.concatenate([a.ravel() for a in scores])
    m = np.concatenate([b.ravel().astype(bool) for b in masks])
    thresholds = np.unique(np.quantile(s, np.linspace(0.0, 1.0, candidates)))
    order = np.argsort(s)
    s_sorted, m_sorted = s[order], m[order]
    positives = m.sum()
    # pixels above t: count and true positives, for every candidate at once (a cumulative sum from the top)
    above = len(s) - np.searchsorted(s_sorted, thresholds, side="right")
    tp_from_top = np.concatenate([np.cumsum(m_sorted[::-1])[::-1], [0]])
    tp = tp_from_top[len(s) - above]
    precision = np.where(above > 0, tp / np.maximum(above, 1), 0.0)
    recall = tp / max(positives, 1)
    f = np.where(precision + recall > 0, (1 + beta2) * precision * recall / (beta2 * precision + recall + 1e-12), 0)
    best = int(np.argmax(f))
    threshold = float(thresholds[best])
    spread = float(np.std(s)) or 1.0
    maes = {k * spread: float(np.mean(np.abs(expit((s - threshold) / (k * spread)) - m))) for k in SCALE_MULTIPLES}
    scale = min(maes, key=maes.get)
    return SharpnessFit(threshold, scale, len(scores), float(f[best]), maes[scale])


def logits(image: np.ndarray, fitted: SharpnessFit, sigmas=(1.0, 2.0, 4.0), window: float = 4.0) -> np.ndarray:
    return ((sharpness_score(image, sigmas, window) - fitted.threshold) / fitted.scale).astype(np.float32)
