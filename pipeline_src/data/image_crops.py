"""Random crops from whole training images (`sampling: whole_images`), read from the memory-mapped image
arrays of the `patches` stage (data/whole_images.py).

Item i is one crop of training image i, a dict of float32 CHW tensors like the window dataset's
(patch_dataset.py): views and target in [0, 1], mask 0/1, defocus in pixels, plus "index".

Draws: `numpy.random.default_rng([seed, epoch, i]).random(7)` = (position y, position x, left-right flip,
up-down flip, quarter turns, scale, angle), all drawn for every item whatever the recipe enables, so the
crop is a pure function of (seed, epoch, i): the same in any worker, and the same after a resume.

Without `scale` / `rotate_degrees` a crop is an integer window, y uniform in 0..h - c and x in 0..w - c, read
as one strided slice: no resampling, bit for bit the stored pixels (KPAC, ADNet).
With them (MultiANet: "randomly flipping, cropping, resizing and rotating") the crop is resampled through
one affine map, applied identically to every key: the image is scaled by s (uniform in [lo, hi], raised
to c / min(h, w) where the image would otherwise not hold the crop) and turned by an angle uniform in
[-a, a] about the crop's centre; the centre is uniform over the positions where the turned crop stays
inside the image (the image centre when none does; then the missing corners are mirrored,
BORDER_REFLECT_101). Images and target: bilinear (cv2.INTER_LINEAR); the mask: nearest neighbour, so it
stays 0/1; the defocus map: bilinear, multiplied by s (a blur radius in pixels scales with the image).
Only the source rectangle the crop covers is read from the memory map. The flips and quarter turns follow.
These porting choices are ours (no MultiANet code is released); the ranges are the recipe's.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline_src.config import ConfigError
from pipeline_src.data.augment import (
    Augment,
    check_bit_depth,
    flip_and_turn,
    footprint_half_extent,
    inverse_affine,
    read_at_bit_depth,
    to_chw_float,
)
from pipeline_src.data.patch_dataset import read_patch_meta
from pipeline_src.data.sampling import SAMPLINGS
from pipeline_src.data.whole_images import ImageStore

DRAWS = ("y", "x", "hflip", "vflip", "rot90", "scale", "angle")


class WholeImageCrops(Dataset):
    """One random crop per training image and epoch (see the module docstring)."""

    def __init__(self, root: str | Path, split: str = "train", keys: list[str] | None = None, crop: int = 256,
                 augment: Augment = Augment(), seed: int = 0, bit_depth: int | None = None):
        self.root = Path(root)
        meta = read_patch_meta(self.root)
        keys = list(keys) if keys is not None else list((meta.get("images") or {}).get("arrays", {}))
        self.store = ImageStore(self.root, split, keys, meta)
        if len(self.store) == 0:
            raise ConfigError(f"{self.root}: the {split!r} split has no whole images to crop from")
        small = [e for e in self.store.entries if min(e.height, e.width) < crop]
        if small:
            e = small[0]
            raise ConfigError(f"{self.root}: image {e.id!r} is {e.width}x{e.height} (WxH), smaller than the "
                              f"{crop}px crop ({len(small)} such image(s)); lower the phase's crop")
        check_bit_depth(meta["bit_depth"], bit_depth, str(self.root))
        self.keys, self.crop, self.augment, self.bit_depth = keys, int(crop), augment, bit_depth
        self.split, self.seed, self.epoch = split, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.store)

    def draws(self, index: int) -> dict:
        """Where and how item `index` is cropped this epoch (every draw made whatever the flags)."""
        u = dict(zip(DRAWS, np.random.default_rng([self.seed, self.epoch, index]).random(len(DRAWS))))
        e, c, a = self.store.entries[index], self.crop, self.augment
        out = {"hflip": bool(a.hflip and u["hflip"] < 0.5), "vflip": bool(a.vflip and u["vflip"] < 0.5),
               "rot90": min(int(u["rot90"] * 4), 3) if a.rot90 else 0}
        if not a.resamples:
            out.update(y=min(int(u["y"] * (e.height - c + 1)), e.height - c),
                       x=min(int(u["x"] * (e.width - c + 1)), e.width - c))
            return out
        lo, hi = a.scale or (1.0, 1.0)
        scale = max(lo + u["scale"] * (hi - lo), c / min(e.height, e.width))
        angle = math.radians((2.0 * u["angle"] - 1.0) * a.rotate_degrees)
        half = footprint_half_extent(c, scale, angle)

        def centre(draw: float, length: int) -> float:
            room = (length - 1) - 2 * half
            return half + draw * room if room >= 0 else 0.5 * (length - 1)

        out.update(scale=scale, angle=angle, cy=centre(u["y"], e.height), cx=centre(u["x"], e.width))
        return out

    def _plain(self, key: str, index: int, d: dict) -> np.ndarray:
        c = self.crop
        return self.store.region(key, index, d["y"], d["y"] + c, d["x"], d["x"] + c)

    def _resampled(self, key: str, index: int, d: dict) -> np.ndarray:
        import cv2

        e, c = self.store.entries[index], self.crop
        half = footprint_half_extent(c, d["scale"], d["angle"])
        # the source rectangle under the crop, plus a pixel for the bilinear taps, clipped to the image
        y0, y1 = max(0, math.floor(d["cy"] - half) - 1), min(e.height, math.ceil(d["cy"] + half) + 2)
        x0, x1 = max(0, math.floor(d["cx"] - half) - 1), min(e.width, math.ceil(d["cx"] + half) + 2)
        src = read_at_bit_depth(self.store.region(key, index, y0, y1, x0, x1), key, self.bit_depth)
        matrix = inverse_affine(c, d["scale"], d["angle"], d["cx"] - x0, d["cy"] - y0)
        interpolation = cv2.INTER_NEAREST if key == "mask" else cv2.INTER_LINEAR
        out = cv2.warpAffine(np.ascontiguousarray(src), matrix, (c, c),
                             flags=interpolation | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT_101)
        return out * np.float32(d["scale"]) if key == "defocus" else out

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"image {index} out of range 0..{len(self) - 1} ({self.root}/{self.split})")
        d = self.draws(index)
        out = {}
        for key in self.keys:
            if self.augment.resamples:
                a = self._resampled(key, index, d)
            else:
                a = read_at_bit_depth(self._plain(key, index, d), key, self.bit_depth)
            a = flip_and_turn(a if a.ndim == 3 else a[:, :, None], d["hflip"], d["vflip"], d["rot90"])
            out[key] = to_chw_float(a, key)
        out["index"] = torch.tensor(index, dtype=torch.int64)
        return out


@SAMPLINGS.register("whole_images")
def whole_image_crops(patch_dir: Path, keys: list[str], crop: int, augment: Augment, seed: int,
                      bit_depth: int | None) -> WholeImageCrops:
    """`sampling: whole_images`: a random crop of every training image per epoch, no sharpness discard."""
    return WholeImageCrops(patch_dir, "train", keys=keys, crop=crop, augment=augment, seed=seed,
                           bit_depth=bit_depth)
