"""A torch Dataset over the window arrays written by the `patches` stage (`sampling: windows`).

Item i is a dict of float32 CHW tensors, one per array key:
  views and target: (3, S, S) in [0, 1] (divided by 255 or 65535, the stored bit depth's maximum, or read at
  the phase's `bit_depth` first); mask: (1, S, S) 0/1 with 1 = in focus; defocus: (1, S, S) signed
  circle-of-confusion radius in pixels; plus "index": the patch index (int64 scalar tensor).
S is `crop` when given (a random crop of the window), else the window size.

Augmentation is drawn once per item and applied IDENTICALLY to every key, so the views, target and mask
stay aligned: a random crop, then a horizontal flip, a vertical flip and a rotation by k x 90 degrees,
each enabled by its flag. Note that a flip or rotation moves dual-pixel disparity off its natural axis
(horizontal for a landscape sensor); ATTSF augments this way anyway (flip + rot90), DPDNet not at all.

Determinism across worker processes: the random draws for item i come from
`numpy.random.default_rng([seed, epoch, i])`, never from a global or per-worker generator, so the same
(seed, epoch, i) gives the same tensors whichever worker loads it and in whatever order. Call
`set_epoch(e)` before iterating epoch e (with `persistent_workers=True` the workers keep the dataset
they were started with, so build the loader per epoch or leave persistent workers off).

The arrays are opened with np.load(mmap_mode="r") lazily, in the process that reads them: a memory map
does not survive pickling to a worker (it would be copied whole), so only paths travel.

This module imports torch at import time (it is a torch Dataset); stage modules that use it import it
inside their `run`, so `python -m pipeline_src --help` stays fast.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline_src.config import ConfigError
from pipeline_src.data.augment import Augment, check_bit_depth, flip_and_turn, read_at_bit_depth, to_chw_float
from pipeline_src.data.sampling import SAMPLINGS
from pipeline_src.errors import DataError


def read_patch_meta(root: Path) -> dict:
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: no patch metadata; run `python -m pipeline_src patches` first")
    return json.loads(meta_path.read_text())


class PatchDataset(Dataset):
    """Random-access windows of one split of a patch folder (see the module docstring)."""

    def __init__(self, root: str | Path, split: str = "train", keys: list[str] | None = None,
                 crop: int | None = None, hflip: bool = False, vflip: bool = False, rot90: bool = False,
                 seed: int = 0, bit_depth: int | None = None):
        self.root = Path(root)
        self.meta = read_patch_meta(self.root)
        if split not in self.meta["splits"]:
            raise DataError(f"{self.root}: no {split!r} windows; present: {sorted(self.meta['splits'])} "
                            f"(the preset's patches.splits decides which are cut)")
        available = list(self.meta["arrays"])
        self.keys = list(keys) if keys is not None else available
        unknown = [k for k in self.keys if k not in available]
        if unknown:
            raise DataError(f"{self.root}: no array(s) {unknown}; present: {available}")
        size = self.meta["size"]
        if crop is not None and not 0 < crop <= size:
            raise ConfigError(f"crop {crop}; expected 0 < crop <= window size {size} ({self.root / 'meta.json'}): "
                              f"lower the phase's crop or cut larger windows")
        check_bit_depth(self.meta["bit_depth"], bit_depth, str(self.root))
        self.split, self.crop, self.size = split, crop, size
        self.hflip, self.vflip, self.rot90 = hflip, vflip, rot90
        self.bit_depth = bit_depth
        self.seed, self.epoch = seed, 0
        self._len = int(self.meta["splits"][split]["count"])
        self._arrays: dict[str, np.ndarray] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self._len

    def _open(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            # plain ndarray views of the maps: slicing them skips np.memmap's per-slice bookkeeping
            self._arrays = {k: np.asarray(np.load(self.root / self.split / f"{k}.npy", mmap_mode="r"))
                            for k in self.keys}
        return self._arrays

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_arrays"] = None   # reopen in the worker
        return state

    def augmentation(self, index: int) -> dict:
        """The draws for one item; all are made every time, so flags do not shift the other draws."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        crop = self.crop or self.size
        y, x = rng.integers(0, self.size - crop + 1, size=2)
        hflip, vflip = rng.random(2) < 0.5
        k = int(rng.integers(0, 4))
        return {"y": int(y), "x": int(x), "crop": crop, "hflip": bool(hflip and self.hflip),
                "vflip": bool(vflip and self.vflip), "rot90": k if self.rot90 else 0}

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self._len:
            raise IndexError(f"patch {index} out of range 0..{self._len - 1} ({self.root}/{self.split})")
        aug = self.augmentation(index)
        y, x, c = aug["y"], aug["x"], aug["crop"]
        out = {}
        for key, arr in self._open().items():
            a = read_at_bit_depth(np.asarray(arr[index, y:y + c, x:x + c]), key, self.bit_depth)
            a = flip_and_turn(a if a.ndim == 3 else a[:, :, None], aug["hflip"], aug["vflip"], aug["rot90"])
            out[key] = to_chw_float(a, key)
        out["index"] = torch.tensor(index, dtype=torch.int64)
        return out


@SAMPLINGS.register("windows")
def window_crops(patch_dir: Path, keys: list[str], crop: int, augment: Augment, seed: int,
                 bit_depth: int | None) -> PatchDataset:
    """`sampling: windows`: crops from the stored windows (DPDNet's and ATTSF's pre-cut patches)."""
    if augment.resamples:
        raise ConfigError(f"augment scale / rotate_degrees resample around the crop and need `sampling: "
                          f"whole_images`; windows ({patch_dir}) have no room around them")
    return PatchDataset(patch_dir, "train", keys=keys, crop=crop, hflip=augment.hflip, vflip=augment.vflip,
                        rot90=augment.rot90, seed=seed, bit_depth=bit_depth)
