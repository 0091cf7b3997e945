"""Read a manifest and the arrays of one of its samples.

`load_sample` returns a flat dict keyed like the patch arrays and the patch dataset's output:
  one key per input view ("c", "l", "r"): uint8/uint16 RGB (H, W, 3), at the manifest's bit depth;
  "target": the same, when the dataset has one;
  "mask":   uint8 (H, W), 1 = in focus, 0 = blurred, whatever polarity the source files use;
  "defocus": float32 (H, W), the signed circle-of-confusion radius in pixels (synthetic sets only).
Keys a dataset lacks are absent. Images are returned as stored: a portrait DPDD image stays portrait
(the sample's "orientation" says so; evaluation code decides whether to rotate).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from pipeline_src.errors import ConfigError, DataError

SUPPORTED_FORMATS = (2,)
_REQUIRED = ("format", "dataset", "layout", "root", "bit_depth", "views", "has_target", "has_mask",
             "has_defocus", "mask_source_in_focus_value", "splits", "samples")
_REQUIRED_SAMPLE = ("split", "id", "inputs", "target", "mask", "defocus", "height", "width", "sha256")


class ManifestFormatError(DataError):
    """A manifest file that is not one this code can read; the message names the file and the field."""


def load_manifest(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ManifestFormatError(f"{path}: no such manifest; build it with `python -m pipeline_src index`")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestFormatError(f"{path}: not JSON ({exc}); rebuild it with `python -m pipeline_src index`") from exc
    if not isinstance(manifest, dict):
        raise ManifestFormatError(f"{path}: a JSON {type(manifest).__name__}, not a manifest; rebuild it with "
                                  "`python -m pipeline_src index`")
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise ManifestFormatError(f"{path}: missing field(s) {missing}; not a manifest written by `index`")
    if manifest["format"] not in SUPPORTED_FORMATS:
        raise ManifestFormatError(f"{path}: manifest format {manifest['format']!r}, this code reads "
                                  f"{SUPPORTED_FORMATS}; rebuild it with `python -m pipeline_src index`")
    for i, sample in enumerate(manifest["samples"]):
        gone = [k for k in _REQUIRED_SAMPLE if k not in sample]
        if gone:
            raise ManifestFormatError(f"{path}: samples[{i}] lacks field(s) {gone}")
    return manifest


def manifest_sha256(path: str | os.PathLike) -> str:
    from pipeline_src.fileio import sha256_file

    return sha256_file(path)


def samples_of(manifest: dict, split: str) -> list[tuple[int, dict]]:
    """(index in manifest["samples"], sample) for one split, in manifest order."""
    return [(i, s) for i, s in enumerate(manifest["samples"]) if s["split"] == split]


def sample_paths(manifest: dict, sample: dict, root: str | os.PathLike | None = None) -> dict[str, Path]:
    """Key -> file of every array `load_sample` reads for `sample`: input views, target, mask, defocus map."""
    base = Path(manifest["root"] if root is None else root)
    rels = {**sample["inputs"], "target": sample["target"], "mask": sample["mask"], "defocus": sample["defocus"]}
    return {key: base / rel for key, rel in rels.items() if rel is not None}


def array_keys(manifest: dict) -> list[str]:
    """The keys `load_sample` returns for this manifest, in a fixed order."""
    keys = list(manifest["views"])
    keys += [k for k, flag in (("target", "has_target"), ("mask", "has_mask"), ("defocus", "has_defocus"))
             if manifest[flag]]
    return keys


def mask_to_in_focus(mask: np.ndarray, source_in_focus_value: int) -> np.ndarray:
    """An 8-bit mask in the source's polarity -> uint8 0/1 with 1 = in focus (thresholded at mid-grey, so
    the anti-aliased edges of some datasets' masks go to the nearer class)."""
    if source_in_focus_value == 255:
        return (mask >= 128).astype(np.uint8)
    if source_in_focus_value == 0:
        return (mask < 128).astype(np.uint8)
    raise ConfigError(f"mask in-focus value {source_in_focus_value!r}; expected 255 or 0")


def load_sample(manifest: dict, sample: dict, root: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Arrays of one sample (see the module docstring). `root` overrides the manifest's root (moved data)."""
    from pipeline_src.fileio import read_image

    expect_dtype = np.uint16 if manifest["bit_depth"] == 16 else np.uint8
    paths = sample_paths(manifest, sample, root)
    out: dict[str, np.ndarray] = {}
    for key, path in paths.items():
        if key == "mask":
            out[key] = mask_to_in_focus(read_image(path, color=False), manifest["mask_source_in_focus_value"])
        elif key == "defocus":
            out[key] = np.load(path).astype(np.float32, copy=False)
        else:
            img = read_image(path)
            if img.dtype != expect_dtype:
                raise DataError(f"{path}: {img.dtype}, but the manifest says {manifest['bit_depth']}-bit; "
                                "the tree changed since indexing, re-run `index`")
            out[key] = img
    for key, arr in out.items():
        if arr.shape[:2] != (sample["height"], sample["width"]):
            raise DataError(f"{paths[key]}: {arr.shape[1]}x{arr.shape[0]} (WxH), but the manifest says "
                            f"{sample['width']}x{sample['height']}; the tree changed since indexing, re-run `index`")
    return out
