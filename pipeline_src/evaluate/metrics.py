"""Restoration metrics as pure functions, each with its protocol written down, plus a thin accumulator.

Protocol (the DPDNet / IFAN / Restormer evaluation scripts; reference/PAPERS.md §1.8, §6.3, §7.1):
- Images are float arrays on [0, data_range] (data_range = 1: 8-bit / 255 or 16-bit / 65535, see
  fileio.to_float; the caller records which). Integer arrays are refused, so the bit depth is never guessed.
  numpy: H x W (grey) or H x W x C (channels last), computed in float64 whatever the input float type;
  torch twins: N x C x H x W, computed in the input's dtype, one value per image (shape N).
- PSNR = 10 log10(data_range^2 / MSE), MSE over all pixels and channels of the whole image (optional border
  crop); identical images give inf.
- SSIM = skimage.metrics.structural_similarity(pred, target, data_range=1, channel_axis=-1, win_size=7,
  gaussian_weights=False, use_sample_covariance=True, K1=0.01, K2=0.03): 7x7 uniform window, covariances
  scaled by N / (N - 1) = 49 / 48, SSIM map averaged over the region the window covers fully (a 3-pixel border
  is dropped, skimage's cropping), then averaged over channels.
- MAE = mean |pred - target| over pixels and channels (= sklearn's per-channel MAE averaged, as IFAN/DPDNet).
- MS-SSIM: 5 scales with weights MS_SSIM_WEIGHTS. Default window "gaussian11" reproduces
  tf.image.ssim_multiscale (the loss in ATTSF's code): 11x11 Gaussian, sigma 1.5, population covariance, valid
  region; between scales the image is padded symmetrically to even size and 2x2 average-pooled; the
  contrast-structure term of scales 1-4 and the SSIM of scale 5 are averaged spatially, clipped at 0, raised to
  their weights and multiplied, per channel; channels are averaged last. Window "uniform7" uses the SSIM window
  above instead (with weights=(1.0,) it equals `ssim`); it does not match TensorFlow.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang, Simoncelli, Bovik 2003
K1, K2 = 0.01, 0.03
SSIM_PROTOCOL = ("skimage structural_similarity: 7x7 uniform window, sample covariance, K1=0.01, K2=0.03, "
                 "data_range=1, valid region, mean over channels")
PSNR_PROTOCOL = "10*log10(data_range^2/MSE), whole image, all channels"


@dataclass(frozen=True)
class SsimWindow:
    size: int
    sigma: float | None  # None = uniform window
    sample_covariance: bool  # scale (co)variances by N / (N - 1), as skimage's default

    @property
    def radius(self) -> int:
        return (self.size - 1) // 2

    @property
    def covariance_scale(self) -> float:
        n = self.size * self.size
        return n / (n - 1.0) if self.sample_covariance else 1.0


SSIM_WINDOWS = {
    "uniform7": SsimWindow(size=7, sigma=None, sample_covariance=True),  # skimage / the papers' SSIM
    # 11 taps = skimage/scipy truncate 3.5 at sigma 1.5; equals TF's _fspecial_gauss(11, 1.5)
    "gaussian11": SsimWindow(size=11, sigma=1.5, sample_covariance=False),
}


def _window(name: str) -> SsimWindow:
    if name not in SSIM_WINDOWS:
        raise ValueError(f"unknown SSIM window {name!r}; known: {', '.join(SSIM_WINDOWS)}")
    return SSIM_WINDOWS[name]


# ---------------------------------------------------------------------------------------------------- checks

def _check_pair(pred, target, metric: str) -> tuple[np.ndarray, np.ndarray]:
    for label, a in (("pred", pred), ("target", target)):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{metric}: {label} must be a numpy array, got {type(a).__name__}")
        if not np.issubdtype(a.dtype, np.floating):
            raise TypeError(f"{metric}: {label} has dtype {a.dtype}; pass floats on [0, data_range] "
                            "(fileio.to_float divides 8-bit by 255 and 16-bit by 65535)")
        if a.ndim not in (2, 3):
            raise ValueError(f"{metric}: {label} has shape {a.shape}; expected H x W or H x W x C")
    if pred.shape != target.shape:
        raise ValueError(f"{metric}: pred {pred.shape} and target {target.shape} differ in shape")
    if not (np.isfinite(pred).all() and np.isfinite(target).all()):
        raise ValueError(f"{metric}: pred or target contains NaN or inf")
    return pred.astype(np.float64), target.astype(np.float64)


def _crop(a, border: int):
    if border < 0:
        raise ValueError(f"crop_border={border}; must be >= 0")
    return a if border == 0 else a[border:-border, border:-border, ...]


def _check_positive(data_range: float) -> None:
    if not data_range > 0:
        raise ValueError(f"data_range={data_range}; must be > 0 (1.0 for images scaled to [0, 1])")


def _check_min_size(h: int, w: int, need: int, metric: str, hint: str = "") -> None:
    if h < need or w < need:
        raise ValueError(f"{metric}: image is {h}x{w}, needs at least {need}x{need}{hint}")


def _check_weights(weights) -> tuple[float, ...]:
    weights = tuple(float(w) for w in weights)
    if not weights or any(w < 0 for w in weights):
        raise ValueError(f"MS-SSIM weights {weights!r}; need one non-negative weight per scale")
    return weights


def _ms_ssim_min_size(window: SsimWindow, scales: int) -> int:
    """Smallest side whose coarsest scale (halved with rounding up, scales-1 times) still fits the window."""
    side = window.size
    for _ in range(scales - 1):
        side = 2 * side - 1
    return side


# ----------------------------------------------------------------------------------------- numpy (float64)

def psnr(pred: np.ndarray, target: np.ndarray, data_range: float = 1.0, crop_border: int = 0) -> float:
    _check_positive(data_range)
    pred, target = _check_pair(pred, target, "PSNR")
    pred, target = _crop(pred, crop_border), _crop(target, crop_border)
    mse = float(np.mean((pred - target) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(data_range ** 2 / mse))


def mae(pred: np.ndarray, target: np.ndarray, crop_border: int = 0) -> float:
    pred, target = _check_pair(pred, target, "MAE")
    return float(np.mean(np.abs(_crop(pred, crop_border) - _crop(target, crop_border))))


def _channels(a: np.ndarray) -> list[np.ndarray]:
    return [a] if a.ndim == 2 else [a[..., c] for c in range(a.shape[-1])]


def _ssim_terms(x: np.ndarray, y: np.ndarray, window: SsimWindow, data_range: float):
    """Luminance and contrast-structure maps of one channel over the valid region (window fully inside)."""
    from scipy import ndimage

    if window.sigma is None:
        def smooth(a):
            return ndimage.uniform_filter(a, size=window.size)
    else:
        truncate = window.radius / window.sigma

        def smooth(a):
            return ndimage.gaussian_filter(a, sigma=window.sigma, truncate=truncate)

    r = window.radius
    valid = (slice(r, x.shape[0] - r), slice(r, x.shape[1] - r))
    mx, my = smooth(x)[valid], smooth(y)[valid]
    k = window.covariance_scale
    vx = k * (smooth(x * x)[valid] - mx * mx)
    vy = k * (smooth(y * y)[valid] - my * my)
    vxy = k * (smooth(x * y)[valid] - mx * my)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    luminance = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    contrast_structure = (2 * vxy + c2) / (vx + vy + c2)
    return luminance, contrast_structure


def ssim(pred: np.ndarray, target: np.ndarray, data_range: float = 1.0, crop_border: int = 0) -> float:
    _check_positive(data_range)
    pred, target = _check_pair(pred, target, "SSIM")
    pred, target = _crop(pred, crop_border), _crop(target, crop_border)
    window = SSIM_WINDOWS["uniform7"]
    _check_min_size(*pred.shape[:2], window.size, "SSIM", " (7x7 window)")
    values = []
    for x, y in zip(_channels(pred), _channels(target)):
        luminance, cs = _ssim_terms(x, y, window, data_range)
        values.append(np.mean(luminance * cs))
    return float(np.mean(values))


def _halve(a: np.ndarray) -> np.ndarray:
    """tf.image.ssim_multiscale's downscale: symmetric pad to even size, then 2x2 average."""
    a = np.pad(a, ((0, a.shape[0] % 2), (0, a.shape[1] % 2)), mode="symmetric")
    return 0.25 * (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2])


def ms_ssim(pred: np.ndarray, target: np.ndarray, data_range: float = 1.0, weights=MS_SSIM_WEIGHTS,
            window: str = "gaussian11") -> float:
    _check_positive(data_range)
    weights = _check_weights(weights)
    win = _window(window)
    pred, target = _check_pair(pred, target, "MS-SSIM")
    need = _ms_ssim_min_size(win, len(weights))
    _check_min_size(*pred.shape[:2], need, "MS-SSIM",
                    f" for {len(weights)} scales with the {window} window (use fewer weights or a larger image)")
    per_channel = []
    for x, y in zip(_channels(pred), _channels(target)):
        value = 1.0
        for scale, weight in enumerate(weights):
            if scale > 0:
                x, y = _halve(x), _halve(y)
            luminance, cs = _ssim_terms(x, y, win, data_range)
            term = np.mean(luminance * cs) if scale == len(weights) - 1 else np.mean(cs)
            value *= max(term, 0.0) ** weight
        per_channel.append(value)
    return float(np.mean(per_channel))


# -------------------------------------------------------------------------------------------- torch twins

def _check_pair_torch(pred, target, metric: str):
    import torch

    for label, a in (("pred", pred), ("target", target)):
        if not isinstance(a, torch.Tensor):
            raise TypeError(f"{metric}: {label} must be a torch.Tensor, got {type(a).__name__}")
        if not a.is_floating_point():
            raise TypeError(f"{metric}: {label} has dtype {a.dtype}; pass floats on [0, data_range]")
        if a.dim() != 4:
            raise ValueError(f"{metric}: {label} has shape {tuple(a.shape)}; expected N x C x H x W")
    if pred.shape != target.shape:
        raise ValueError(f"{metric}: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    return pred, target.to(pred.dtype)


def _crop_torch(a, border: int):
    if border < 0:
        raise ValueError(f"crop_border={border}; must be >= 0")
    return a if border == 0 else a[..., border:-border, border:-border]


def psnr_torch(pred, target, data_range: float = 1.0, crop_border: int = 0):
    import torch

    _check_positive(data_range)
    pred, target = _check_pair_torch(pred, target, "PSNR")
    pred, target = _crop_torch(pred, crop_border), _crop_torch(target, crop_border)
    mse = (pred - target).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(data_range ** 2 / mse)  # inf where identical, as the numpy version


def mae_torch(pred, target, crop_border: int = 0):
    pred, target = _check_pair_torch(pred, target, "MAE")
    return (_crop_torch(pred, crop_border) - _crop_torch(target, crop_border)).abs().flatten(1).mean(1)


def _smoother_torch(window: SsimWindow, channels: int, like):
    """Valid-region window filter, one channel at a time (depthwise)."""
    import torch
    import torch.nn.functional as F

    if window.sigma is None:
        return lambda a: F.avg_pool2d(a, window.size, stride=1)
    offsets = torch.arange(window.size, dtype=like.dtype, device=like.device) - window.radius
    taps = torch.exp(-0.5 * (offsets / window.sigma) ** 2)
    taps = taps / taps.sum()
    vertical = taps.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    horizontal = taps.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    return lambda a: F.conv2d(F.conv2d(a, vertical, groups=channels), horizontal, groups=channels)


def _ssim_terms_torch(x, y, window: SsimWindow, data_range: float):
    import torch

    c = x.shape[1]
    smooth = _smoother_torch(window, 5 * c, x)
    stats = smooth(torch.cat([x, y, x * x, y * y, x * y], dim=1))
    mx, my, sxx, syy, sxy = stats.split(c, dim=1)
    k = window.covariance_scale
    vx, vy, vxy = k * (sxx - mx * mx), k * (syy - my * my), k * (sxy - mx * my)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    luminance = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    contrast_structure = (2 * vxy + c2) / (vx + vy + c2)
    return luminance, contrast_structure


def ssim_torch(pred, target, data_range: float = 1.0, crop_border: int = 0):
    """Per-image SSIM (shape N), differentiable; equals `ssim` on the same data."""
    _check_positive(data_range)
    pred, target = _check_pair_torch(pred, target, "SSIM")
    pred, target = _crop_torch(pred, crop_border), _crop_torch(target, crop_border)
    window = SSIM_WINDOWS["uniform7"]
    _check_min_size(pred.shape[-2], pred.shape[-1], window.size, "SSIM", " (7x7 window)")
    luminance, cs = _ssim_terms_torch(pred, target, window, data_range)
    return (luminance * cs).flatten(1).mean(1)


def _halve_torch(a):
    import torch.nn.functional as F

    h, w = a.shape[-2], a.shape[-1]
    if h % 2 or w % 2:
        a = F.pad(a, (0, w % 2, 0, h % 2), mode="replicate")  # symmetric padding by one = replicate
    return F.avg_pool2d(a, 2)


def ms_ssim_torch(pred, target, data_range: float = 1.0, weights=MS_SSIM_WEIGHTS, window: str = "gaussian11"):
    """Per-image MS-SSIM (shape N), differentiable; equals `ms_ssim` on the same data."""
    import torch

    _check_positive(data_range)
    weights = _check_weights(weights)
    win = _window(window)
    pred, target = _check_pair_torch(pred, target, "MS-SSIM")
    need = _ms_ssim_min_size(win, len(weights))
    _check_min_size(pred.shape[-2], pred.shape[-1], need, "MS-SSIM",
                    f" for {len(weights)} scales with the {window} window (use fewer weights or a larger image)")
    x, y = pred, target
    value = torch.ones(pred.shape[:2], dtype=pred.dtype, device=pred.device)  # N x C
    for scale, weight in enumerate(weights):
        if scale > 0:
            x, y = _halve_torch(x), _halve_torch(y)
        luminance, cs = _ssim_terms_torch(x, y, win, data_range)
        term = (luminance * cs if scale == len(weights) - 1 else cs).mean(dim=(-2, -1))
        value = value * term.clamp(min=0).pow(weight)
    return value.mean(1)


# ------------------------------------------------------------------------------------------- accumulator

MetricFn = Callable[[np.ndarray, np.ndarray], "float | None"]


class MetricAccumulator:
    """Runs each metric on every image, keeps one row per image, and averages the rows.

    A metric that returns None (unavailable, e.g. LPIPS without its weights) averages to None, never to 0.
    """

    def __init__(self, metrics: Mapping[str, MetricFn]):
        if not metrics:
            raise ValueError("MetricAccumulator needs at least one metric")
        self.metrics = dict(metrics)
        self.rows: list[dict] = []
        self._seen: set[str] = set()

    def update(self, image_id: str, pred: np.ndarray, target: np.ndarray) -> dict:
        if image_id in self._seen:
            raise ValueError(f"image {image_id!r} was already evaluated")
        row = {"image": image_id}
        for name, fn in self.metrics.items():
            value = fn(pred, target)
            row[name] = None if value is None else float(value)
        self.rows.append(row)
        self._seen.add(image_id)
        return row

    def means(self) -> dict[str, float | None]:
        if not self.rows:
            raise ValueError("no images were evaluated")
        out: dict[str, float | None] = {}
        for name in self.metrics:
            values = [row[name] for row in self.rows]
            out[name] = None if any(v is None for v in values) else float(np.mean(values))
        return out

    def __len__(self) -> int:
        return len(self.rows)
