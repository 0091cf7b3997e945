"""Whole training images as memory-mappable arrays, so that a random crop of any image is one strided read.

The `patches` stage writes them beside its windows, for recipes that crop from whole images (KPAC: "each
image in a batch is randomly cropped to 512 x 512"; ADNet's code: random 256 crops of whole GoPro frames):

    <patches>/<split>/images/<key>.npy   views and target (P, 3) uint8/uint16 (bit depth kept),
                                         mask (P,) uint8 0/1 (1 = in focus), defocus (P,) float32
    P = the sum of h_i * w_i over the split's images. Image i is rows offset_i .. offset_i + h_i * w_i of every
    array, row-major: `arr[offset_i:offset_i + h_i * w_i].reshape(h_i, w_i, ...)` is a zero-copy view.

meta.json["images"] records, per split, every image's manifest sample index, id, offset, height, width and
orientation (landscape / portrait, as the manifest has it).

Why one flat array per key: DPDD mixes landscape 1680 x 1120 and portrait 1120 x 1680 images, CUHK's images
differ in size. Stored flat, every image keeps its own shape (no padding, no rotation to a common one), and
a crop of image i is c rows of c contiguous pixels inside one file, read through the page cache with no
decoding: the same cost as reading a stored window (`bench-patches` measures both).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from pipeline_src.errors import DataError

IMAGES_DIR = "images"
STORE_LAYOUT = ("flat: <split>/images/<key>.npy holds every image's pixels row-major one after another; "
                "image i = rows offset_i .. offset_i + height_i * width_i")


def pixel_spec(key: str, bit_depth: int) -> dict:
    """dtype and per-pixel shape of one key's array."""
    return {
        "mask": {"dtype": "uint8", "pixel_shape": [], "values": "0/1, 1 = in focus"},
        "defocus": {"dtype": "float32", "pixel_shape": [], "values": "signed CoC radius, pixels"},
    }.get(key, {"dtype": "uint16" if bit_depth == 16 else "uint8", "pixel_shape": [3],
                "values": f"RGB, {bit_depth}-bit"})


@dataclasses.dataclass(frozen=True)
class ImageEntry:
    sample: int        # index in the manifest's samples
    id: str
    offset: int        # first pixel row in the flat arrays
    height: int
    width: int
    orientation: str   # landscape | portrait

    def record(self) -> dict:
        return dataclasses.asdict(self)


def plan_entries(samples: list[tuple[int, dict]]) -> list[ImageEntry]:
    """Offsets of the given (manifest index, sample) pairs, in order."""
    entries, offset = [], 0
    for index, s in samples:
        h, w = int(s["height"]), int(s["width"])
        orientation = s.get("orientation") or ("portrait" if h > w else "landscape")
        entries.append(ImageEntry(index, s["id"], offset, h, w, orientation))
        offset += h * w
    return entries


class ImageStoreWriter:
    """Fills one split's flat arrays, image by image (entries from `plan_entries`)."""

    def __init__(self, folder: Path, keys: list[str], bit_depth: int, entries: list[ImageEntry]):
        self.entries = entries
        self.pixels = sum(e.height * e.width for e in entries)
        folder.mkdir(parents=True)
        self.arrays = {}
        for key in keys:
            spec = pixel_spec(key, bit_depth)
            shape = (self.pixels, *spec["pixel_shape"])
            if self.pixels == 0:   # a zero-length memmap cannot be created; an empty .npy reads the same
                np.save(folder / f"{key}.npy", np.zeros(shape, spec["dtype"]))
            else:
                self.arrays[key] = np.lib.format.open_memmap(folder / f"{key}.npy", mode="w+",
                                                             dtype=spec["dtype"], shape=shape)

    def put(self, i: int, data: dict[str, np.ndarray]) -> None:
        e = self.entries[i]
        for key, arr in self.arrays.items():
            arr[e.offset:e.offset + e.height * e.width] = data[key].reshape(e.height * e.width, *arr.shape[1:])

    def close(self) -> dict:
        for arr in self.arrays.values():
            arr.flush()
        self.arrays = {}
        return {"count": len(self.entries), "pixels": self.pixels, "images": [e.record() for e in self.entries]}


class ImageStore:
    """Read side: one split's whole images, opened with np.load(mmap_mode="r") on first use.

    Only paths and the entry table are pickled (a memory map would be copied whole into a worker process).
    """

    def __init__(self, patch_dir: str | Path, split: str, keys: list[str], meta: dict):
        self.folder = Path(patch_dir) / split / IMAGES_DIR
        images = (meta.get("images") or {}).get("splits", {})
        if split not in images:
            raise DataError(f"{patch_dir}: no whole-image arrays for the {split!r} split (meta.json 'images'); "
                            f"rerun `python -m pipeline_src patches` with --whole-images {split} "
                            f"(patch folders written before format 2 have none)")
        available = list(meta["images"]["arrays"])
        missing = [k for k in keys if k not in available]
        if missing:
            raise DataError(f"{self.folder}: no whole-image array(s) {missing}; present: {available}")
        self.keys = list(keys)
        self.entries = [ImageEntry(**e) for e in images[split]["images"]]
        self._arrays: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_arrays"] = None   # reopened in the worker
        return state

    def _open(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            # plain ndarray views of the maps: slicing them skips np.memmap's per-slice bookkeeping
            self._arrays = {k: np.asarray(np.load(self.folder / f"{k}.npy", mmap_mode="r")) for k in self.keys}
        return self._arrays

    def view(self, key: str, i: int) -> np.ndarray:
        """Image i of `key` as a (h, w[, 3]) view of the memory map: nothing is read until it is sliced."""
        e = self.entries[i]
        flat = self._open()[key][e.offset:e.offset + e.height * e.width]
        return flat.reshape(e.height, e.width, *flat.shape[1:])

    def region(self, key: str, i: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Rows y0:y1 and columns x0:x1 of image i, copied out (the one strided read of a crop)."""
        return np.array(self.view(key, i)[y0:y1, x0:x1])
