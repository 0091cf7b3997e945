"""Cut sliding-window training patches, and store the whole training images, as memory-mappable arrays.

    python -m pipeline_src patches --manifest data/manifests/X.json --out data/patches/X --preset default
                                   [--size S --stride T --val-stride V --discard-fraction F]
                                   [--splits train val] [--whole-images train]

Output (written under a temporary name and renamed into place when complete):
    <out>/meta.json                     settings, manifest path and sha256, per-window (sample index, y, x),
                                        per-image (sample index, offset, height, width, orientation)
    <out>/<split>/<key>.npy             windows: patch i of every array = the same window of one sample:
                                        views and target (N, S, S, 3) uint8/uint16 (bit depth kept),
                                        mask (N, S, S) uint8 0/1 (1 = in focus), defocus (N, S, S) float32
    <out>/<split>/images/<key>.npy      whole images, flat (see pipeline_src/data/whole_images.py), for
                                        recipes that crop anywhere in an image (`sampling: whole_images`)
Only train and val get windows (`splits`) or whole images (`whole_images`, default train); test is
evaluated on full images by the evaluate stage.

Settings come from the preset's `patches` section (config/presets.yaml); its `by_layout` entries replace
some of them for datasets of one layout (the manifest's), e.g. 256-px windows for CUHK's 427 x 640 detection
images where the DPDD setting is ATTSF's 560 px. The command-line options replace both.

Windows: a stride grid from the top-left corner plus a last row and column aligned to the bottom and right
borders, so every pixel is covered and no window leaves the image; each window appears once. An image
smaller than the patch is an error naming it (padding would teach a network the padding).

Sharpness discard (DPDNet, `image_to_patch_filter.py`): per image, the Sobel gradient magnitude of the
grayscale target summed over each window at ksize 3, 7, 11 and 15; each of the four scores min-max
normalised over the image's windows, multiplied; the int(fraction x n) lowest dropped. Train windows only,
as DPDNet (val keeps every window); whole images are never discarded. Datasets without a target (detection)
skip it and meta.json says so.

Why .npy arrays: a training step reads random patches; from an uncompressed array opened with
np.load(mmap_mode="r") a patch is one contiguous read and no decode, where a PNG patch costs a zlib
inflate (see the bench-patches stage and the README for the measured difference). A crop of a stored whole
image is one strided read of the same kind.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator

from pipeline_src.config import ConfigError
from pipeline_src.errors import DataError

PATCH_FORMAT = 2          # 2: whole-image arrays and meta.json["images"] beside the windows
PATCH_SPLITS = ("train", "val")
SOBEL_KSIZES = (3, 7, 11, 15)
_SETTING_KEYS = {"size", "stride", "val_stride", "discard_fraction", "splits", "whole_images"}
_PRESET_KEYS = _SETTING_KEYS | {"by_layout"}


@dataclasses.dataclass(frozen=True)
class PatchSettings:
    size: int
    stride: int
    val_stride: int | None = None        # None: the patch size (non-overlapping val windows, like DPDNet)
    discard_fraction: float = 0.0        # of each train image's windows, the flattest dropped
    splits: tuple[str, ...] = PATCH_SPLITS
    whole_images: tuple[str, ...] = ("train",)   # splits whose whole images are stored too

    def __post_init__(self):
        for name in ("size", "stride", "val_stride"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ConfigError(f"patches.{name} = {value!r}; expected a positive integer")
        for name, stride in (("stride", self.stride), ("val_stride", self.val_stride)):
            if stride is not None and stride > self.size:
                raise ConfigError(f"patches.{name} = {stride} > size {self.size}: windows would skip pixels")
        if not 0.0 <= self.discard_fraction < 1.0:
            raise ConfigError(f"patches.discard_fraction = {self.discard_fraction!r}; expected 0 <= f < 1")
        bad = [s for s in self.splits if s not in PATCH_SPLITS]
        if bad or not self.splits:
            raise ConfigError(f"patches.splits = {list(self.splits)}; expected a non-empty subset of {PATCH_SPLITS}")
        bad = [s for s in self.whole_images if s not in PATCH_SPLITS]
        if bad:
            raise ConfigError(f"patches.whole_images = {list(self.whole_images)}; expected a subset of "
                              f"{PATCH_SPLITS} (empty: no whole images)")

    def stride_for(self, split: str) -> int:
        return self.stride if split == "train" else (self.val_stride or self.size)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, help="manifest written by `index`")
    parser.add_argument("--out", required=True, help="patch folder to write, e.g. data/patches/dpdd-560-140")
    parser.add_argument("--preset", default="default", help="section of --presets to read (smoke|default|paper)")
    parser.add_argument("--presets", default="config/presets.yaml", help="scale presets file")
    parser.add_argument("--size", type=int, help="patch size (overrides the preset)")
    parser.add_argument("--stride", type=int, help="train stride (overrides the preset)")
    parser.add_argument("--val-stride", type=int, help="val stride (overrides the preset; default = size)")
    parser.add_argument("--discard-fraction", type=float, help="DPDNet sharpness discard on train (0 = off)")
    parser.add_argument("--splits", nargs="+", choices=PATCH_SPLITS, help="splits to cut windows from "
                        "(default: preset)")
    parser.add_argument("--whole-images", nargs="*", choices=PATCH_SPLITS, metavar="SPLIT",
                        help="splits whose whole images are stored (default: preset; no value: none)")
    parser.add_argument("--workers", type=int, default=2, help="threads reading images ahead")


def run(args: argparse.Namespace) -> int:
    from pipeline_src.data.samples import load_manifest

    layout = load_manifest(args.manifest)["layout"]
    settings = load_settings(args.presets, args.preset, layout)
    overrides = {"size": args.size, "stride": args.stride, "val_stride": args.val_stride,
                 "discard_fraction": args.discard_fraction,
                 "splits": tuple(args.splits) if args.splits else None,
                 "whole_images": tuple(args.whole_images) if args.whole_images is not None else None}
    settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    meta = write_patches(args.manifest, args.out, settings, workers=args.workers)
    counts = ", ".join(f"{split} {info['count']}" for split, info in meta["splits"].items())
    images = ", ".join(f"{split} {info['count']}" for split, info in meta["images"]["splits"].items()) or "none"
    print(f"{args.out}: {settings.size}px windows, stride {settings.stride}: {counts}; whole images: {images}")
    return 0


def load_settings(presets_path: str | Path, preset: str, layout: str | None = None) -> PatchSettings:
    """The preset's patch settings, with its `by_layout[layout]` entry (if any) replacing what it names."""
    from pipeline_src.config import load_presets_file

    presets = load_presets_file(presets_path)  # schema-checked: types and bounds name their field
    if preset not in presets:
        raise ConfigError(f"{presets_path}: no preset {preset!r}; known: {', '.join(presets)}")
    section = dict((presets[preset] or {}).get("patches") or {})
    unknown = set(section) - _PRESET_KEYS
    if unknown or "size" not in section or "stride" not in section:
        raise ConfigError(f"{presets_path}: {preset}.patches = {section}; needs size and stride, may have "
                          f"{sorted(_PRESET_KEYS - {'size', 'stride'})}, unknown keys {sorted(unknown)}")
    by_layout = section.pop("by_layout", None) or {}
    if not isinstance(by_layout, dict):
        raise ConfigError(f"{presets_path}: {preset}.patches.by_layout must map a layout name to settings")
    for name, entry in by_layout.items():
        bad = set(entry or {}) - _SETTING_KEYS
        if bad:
            raise ConfigError(f"{presets_path}: {preset}.patches.by_layout.{name}: unknown keys {sorted(bad)}; "
                              f"may have {sorted(_SETTING_KEYS)}")
    section.update(by_layout.get(layout) or {})
    for key in ("splits", "whole_images"):
        if key in section:
            section[key] = tuple(section[key] or ())
    try:
        return PatchSettings(**section)
    except ConfigError as exc:  # the settings name their field; add where it was read
        raise ConfigError(f"{presets_path}: {preset}.{exc}") from exc


# ------------------------------------------------------------------------------------------------ windows
def window_starts(length: int, size: int, stride: int) -> list[int]:
    """Start offsets along one axis: 0, stride, 2*stride, ... and the border-aligned length - size."""
    if length < size:
        raise ConfigError(f"length {length} < patch size {size}")
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def window_grid(height: int, width: int, size: int, stride: int) -> list[tuple[int, int]]:
    """(y, x) of every window, row by row."""
    return [(y, x) for y in window_starts(height, size, stride) for x in window_starts(width, size, stride)]


# ---------------------------------------------------------------------------------------------- sharpness
def sharpness_scores(target, windows: list[tuple[int, int]], size: int):
    """DPDNet's per-window sharpness of an RGB target (see the module docstring); higher = sharper."""
    import cv2
    import numpy as np

    gray = cv2.cvtColor(target, cv2.COLOR_RGB2GRAY)   # DPDNet: BGR2GRAY on BGR data, the same luma
    energy = np.empty((len(SOBEL_KSIZES), len(windows)))
    for j, (y, x) in enumerate(windows):
        # Sobel per patch, not on the whole image, so the patch borders are handled as DPDNet does.
        patch = np.ascontiguousarray(gray[y:y + size, x:x + size])
        for i, k in enumerate(SOBEL_KSIZES):
            gx = cv2.Sobel(patch, cv2.CV_64F, 1, 0, ksize=k)
            gy = cv2.Sobel(patch, cv2.CV_64F, 0, 1, ksize=k)
            energy[i, j] = np.sqrt(gx * gx + gy * gy).sum()
    low = energy.min(axis=1, keepdims=True)
    span = energy.max(axis=1, keepdims=True) - low
    # All windows equally sharp at one ksize: that factor carries no ranking, so it is 1 for all.
    normalised = np.where(span > 0, (energy - low) / np.where(span > 0, span, 1.0), 1.0)
    return normalised.prod(axis=0)


def keep_after_discard(scores, fraction: float) -> list[int]:
    """Indices kept after dropping the int(fraction * n) lowest scores (ties: the earlier window goes
    first, as DPDNet's repeated argmin), in window order."""
    import numpy as np

    drop = set(np.argsort(scores, kind="stable")[: int(fraction * len(scores))].tolist())
    return [i for i in range(len(scores)) if i not in drop]


# ---------------------------------------------------------------------------------------------- writing
@dataclasses.dataclass
class _SamplePlan:
    index: int                  # in manifest["samples"]
    sample: dict
    windows: list[tuple[int, int]]
    n_keep: int


def write_patches(manifest_path: str | Path, out: str | Path, settings: PatchSettings, workers: int = 2) -> dict:
    from pipeline_src.data.samples import array_keys, load_manifest, manifest_sha256
    from pipeline_src.data.whole_images import STORE_LAYOUT, pixel_spec
    from pipeline_src.fileio import atomic_dir, atomic_write_json

    manifest = load_manifest(manifest_path)
    keys = array_keys(manifest)
    discard_on = settings.discard_fraction > 0 and manifest["has_target"]
    meta = {
        "format": PATCH_FORMAT,
        "dataset": manifest["dataset"],
        "layout": manifest["layout"],
        "manifest": str(manifest_path),
        "manifest_sha256": manifest_sha256(manifest_path),
        "bit_depth": manifest["bit_depth"],
        "size": settings.size,
        "stride": settings.stride,
        "val_stride": settings.stride_for("val"),
        "views": list(manifest["views"]),
        "arrays": {k: _array_spec(k, manifest["bit_depth"], settings.size) for k in keys},
        "window_rule": "stride grid from (0, 0) plus a last row/column aligned to the bottom/right border",
        "discard": {
            "fraction": settings.discard_fraction,
            "splits": ["train"],
            "applied": discard_on,
            "method": "DPDNet: Sobel magnitude of the grey target at ksize 3,7,11,15, summed per window, "
                      "min-max normalised over the image's windows, multiplied; int(fraction*n) lowest dropped",
            **({} if discard_on or settings.discard_fraction == 0 else
               {"not_applied_because": "the dataset has no target to measure sharpness on"}),
        },
        "splits": {},
        "images": {"layout": STORE_LAYOUT, "discard": "none (whole images are never discarded)",
                   "arrays": {k: pixel_spec(k, manifest["bit_depth"]) for k in keys}, "splits": {}},
    }
    if settings.discard_fraction > 0 and not discard_on:
        print(f"{manifest_path}: no targets, so the sharpness discard is not applied (recorded in meta.json)")
    with atomic_dir(out) as tmp:
        for split in [s for s in PATCH_SPLITS if s in settings.splits or s in settings.whole_images]:
            written = _write_split(tmp / split, manifest, split, settings, keys, discard_on, workers)
            if split in settings.splits:
                meta["splits"][split] = written["windows"]
            if split in settings.whole_images:
                meta["images"]["splits"][split] = written["images"]
        atomic_write_json(tmp / "meta.json", meta)
    return meta


def _array_spec(key: str, bit_depth: int, size: int) -> dict:
    image_dtype = "uint16" if bit_depth == 16 else "uint8"
    return {
        "mask": {"dtype": "uint8", "patch_shape": [size, size], "values": "0/1, 1 = in focus"},
        "defocus": {"dtype": "float32", "patch_shape": [size, size], "values": "signed CoC radius, pixels"},
    }.get(key, {"dtype": image_dtype, "patch_shape": [size, size, 3], "values": f"RGB, {bit_depth}-bit"})


def _plan(index: int, sample: dict, manifest: dict, size: int, stride: int, fraction: float) -> _SamplePlan:
    h, w = sample["height"], sample["width"]
    if h < size or w < size:
        raise DataError(f"{Path(manifest['root']) / sample['inputs'][manifest['views'][0]]}: {w}x{h} (WxH) is "
                        f"smaller than the {size}px patch; use a smaller --size (or the preset's "
                        f"patches.by_layout.{manifest['layout']}.size)")
    windows = window_grid(h, w, size, stride)
    return _SamplePlan(index, sample, windows, len(windows) - int(fraction * len(windows)))


def _write_split(folder: Path, manifest: dict, split: str, settings: PatchSettings, keys: list[str],
                 discard_on: bool, workers: int) -> dict:
    """One pass over the split's images: its windows (if split in settings.splits) and its whole images (if
    in settings.whole_images), each image decoded once."""
    from pipeline_src.data.samples import load_sample, samples_of
    from pipeline_src.data.whole_images import IMAGES_DIR, ImageStoreWriter, plan_entries

    samples = samples_of(manifest, split)
    folder.mkdir(parents=True)
    windows = None
    if split in settings.splits:
        fraction = settings.discard_fraction if (discard_on and split == "train") else 0.0
        stride = settings.stride_for(split)
        plans = [_plan(i, s, manifest, settings.size, stride, fraction) for i, s in samples]
        windows = _WindowWriter(folder, manifest, plans, keys, settings.size, fraction)
    images = None
    if split in settings.whole_images:
        images = ImageStoreWriter(folder / IMAGES_DIR, keys, manifest["bit_depth"], plan_entries(samples))
    loaded = _bounded_map(lambda item: load_sample(manifest, item[1]), samples, workers)
    for j, data in enumerate(loaded):
        if windows is not None:
            windows.put(j, data)
        if images is not None:
            images.put(j, data)
    return {"windows": windows.close() | {"stride": stride} if windows is not None else None,
            "images": images.close() if images is not None else None}


class _WindowWriter:
    """Fills one split's window arrays, sample by sample (plans in sample order)."""

    def __init__(self, folder: Path, manifest: dict, plans: list[_SamplePlan], keys: list[str], size: int,
                 fraction: float):
        import numpy as np

        self.plans, self.size, self.fraction = plans, size, fraction
        total = sum(p.n_keep for p in plans)
        self.arrays = {}
        for k in keys:
            spec = _array_spec(k, manifest["bit_depth"], size)
            shape = (total, *spec["patch_shape"])
            if total == 0:   # a zero-length memmap cannot be created; an empty .npy reads the same
                np.save(folder / f"{k}.npy", np.zeros(shape, spec["dtype"]))
            else:
                self.arrays[k] = np.lib.format.open_memmap(folder / f"{k}.npy", mode="w+", dtype=spec["dtype"],
                                                           shape=shape)
        self.total, self.row, self.windows_out = total, 0, []

    def put(self, j: int, data: dict) -> None:
        plan, size = self.plans[j], self.size
        keep = list(range(len(plan.windows)))
        if self.fraction > 0:
            keep = keep_after_discard(sharpness_scores(data["target"], plan.windows, size), self.fraction)
        for w in keep:
            y, x = plan.windows[w]
            for k, arr in self.arrays.items():
                arr[self.row] = data[k][y:y + size, x:x + size]
            self.windows_out.append([plan.index, y, x])
            self.row += 1

    def close(self) -> dict:
        for arr in self.arrays.values():
            arr.flush()
        return {"count": self.total, "dropped": sum(len(p.windows) - p.n_keep for p in self.plans),
                "samples": len(self.plans), "windows": self.windows_out}


def _bounded_map(fn: Callable, items: Iterable, workers: int) -> Iterator:
    """fn over items in order, at most workers+1 results held at once (full images are large)."""
    items = iter(items)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
