"""Training augmentation: what a recipe's `augment` may ask for, and the transforms shared by both samplers.

A phase's `augment` (config/models/*.yaml, schema workflow/schemas/recipe.schema.yaml):
    hflip, vflip      flip left-right / up-down with probability 1/2
    rot90             rotate by k x 90 degrees, k uniform in {0, 1, 2, 3}
    scale: [lo, hi]   resize by s uniform in [lo, hi] before cropping (MultiANet: "resizing")
    rotate_degrees: a rotate by an angle uniform in [-a, a] degrees (MultiANet: "rotating")
`scale` and `rotate_degrees` resample the image, so they need room around the crop: only the whole-image
sampler (`sampling: whole_images`) offers them. Every draw is made for every item whatever the flags, from
`numpy.random.default_rng([seed, epoch, index])`, so data order and content stay a pure function of
(seed, epoch, index) and a resumed run sees the same crops.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from pipeline_src.config import ConfigError

AUGMENT_KEYS = ("hflip", "vflip", "rot90", "scale", "rotate_degrees")


@dataclasses.dataclass(frozen=True)
class Augment:
    hflip: bool = False
    vflip: bool = False
    rot90: bool = False
    scale: tuple[float, float] | None = None
    rotate_degrees: float = 0.0

    @classmethod
    def from_recipe(cls, spec: dict | None, where: str = "augment") -> "Augment":
        spec = dict(spec or {})
        unknown = sorted(set(spec) - set(AUGMENT_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {', '.join(AUGMENT_KEYS)}")
        for flag in ("hflip", "vflip", "rot90"):
            if not isinstance(spec.get(flag, False), bool):
                raise ConfigError(f"{where}.{flag} = {spec[flag]!r}; expected true or false")
        scale = spec.get("scale")
        if scale is not None:
            ok = (isinstance(scale, (list, tuple)) and len(scale) == 2
                  and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scale)
                  and 0 < scale[0] <= scale[1])
            if not ok:
                raise ConfigError(f"{where}.scale = {scale!r}; expected [lo, hi] with 0 < lo <= hi")
            scale = (float(scale[0]), float(scale[1]))
        degrees = spec.get("rotate_degrees", 0.0)
        if isinstance(degrees, bool) or not isinstance(degrees, (int, float)) or not 0 <= degrees <= 45:
            raise ConfigError(f"{where}.rotate_degrees = {degrees!r}; expected a number of degrees in [0, 45]")
        return cls(hflip=spec.get("hflip", False), vflip=spec.get("vflip", False), rot90=spec.get("rot90", False),
                   scale=scale, rotate_degrees=float(degrees))

    @property
    def resamples(self) -> bool:
        """Whether the augmentation resizes or rotates by an arbitrary angle (needs whole images)."""
        return self.scale is not None or self.rotate_degrees > 0


def flip_and_turn(a: np.ndarray, hflip: bool, vflip: bool, k: int) -> np.ndarray:
    """H x W x C array: left-right flip, up-down flip, then k quarter turns (counter-clockwise)."""
    if hflip:
        a = a[:, ::-1]
    if vflip:
        a = a[::-1]
    if k:
        a = np.rot90(a, k, axes=(0, 1))
    return a


def to_chw_float(a: np.ndarray, key: str):
    """H x W (x C) array -> float32 C x H x W tensor: images divided by their dtype's maximum (255 or 65535),
    the 0/1 mask and the float defocus map as they are."""
    import torch

    if a.ndim == 2:
        a = a[:, :, None]
    out = a.astype(np.float32)
    if a.dtype in (np.uint8, np.uint16) and key != "mask":
        out /= float(np.iinfo(a.dtype).max)
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))


def read_at_bit_depth(a: np.ndarray, key: str, bit_depth: int | None) -> np.ndarray:
    """An image array at the phase's bit depth: 16-bit read as 8-bit is round(x / 257), the conversion of the
    8-bit evaluation protocols (KPAC trained and tested on DPDD converted to 8 bits). None = as stored."""
    if bit_depth is None or key in ("mask", "defocus"):
        return a
    from pipeline_src.evaluate.protocols import convert_bit_depth

    return convert_bit_depth(a, bit_depth, what=f"training array {key!r}")


def check_bit_depth(stored: int, wanted: int | None, where: str) -> None:
    if wanted is not None and wanted > stored:
        raise ConfigError(f"{where}: the phase reads {wanted}-bit data, the patches are {stored}-bit; "
                          f"bits cannot be invented (set bit_depth: {stored} or remove it)")


def footprint_half_extent(crop: int, scale: float, angle_rad: float) -> float:
    """Half the side of the axis-aligned box, in source pixels between pixel centres, that a crop x crop
    output covers after scaling by `scale` and rotating by `angle_rad`."""
    return 0.5 * (crop - 1) * (abs(math.cos(angle_rad)) + abs(math.sin(angle_rad))) / scale


def inverse_affine(crop: int, scale: float, angle_rad: float, cx: float, cy: float) -> np.ndarray:
    """2 x 3 matrix mapping output pixel (u, v) of the crop to source (x, y): the crop's centre lands on
    (cx, cy), the source is magnified by `scale` and turned by `angle_rad` (for cv2 WARP_INVERSE_MAP)."""
    c, s = math.cos(angle_rad) / scale, math.sin(angle_rad) / scale
    mid = 0.5 * (crop - 1)
    return np.array([[c, -s, cx - c * mid + s * mid],
                     [s, c, cy - s * mid - c * mid]], dtype=np.float64)
