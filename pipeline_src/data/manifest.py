"""Index a dataset tree: parse its layout, decode and check every image, and write the manifest (JSON).

    python -m pipeline_src index dpdd --root data/raw/dpdd --out data/manifests/dpdd.json
    python -m pipeline_src index synth-defocus --layout dpdd --root data/raw/synth-defocus --out ...

Without --layout the dataset name is looked up in the registry (config/datasets.yaml) for its layout, bit
depth, mask polarity and split sizes; with --layout nothing is read from the registry (synthetic sets are
not in it) and those facts come from the flags. Every image is fully decoded: a truncated or unreadable
file, a sample whose views, target and mask differ in size, mixed bit depths or a missing view stop the
run with an error naming the file. Masks are recorded with the value their source uses for in-focus
pixels; `load_sample` returns them as in-focus = 1. The manifest holds no timestamp, so the same tree
gives byte-identical JSON (and the same hash downstream).
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline_src.data.layouts import GOPRO_BLUR_CHOICES, LAYOUTS, SPLITS, LayoutOptions, RawSample, parse_layout
from pipeline_src.errors import DataError

MANIFEST_FORMAT = 2  # 2: per-file sha256 of the content
MASK_POLARITY = "in_focus=1"
CHANNEL_RULE = ("views and targets: 3-channel RGB only (grey and RGBA files are refused); masks: single channel, "
                "or RGB(A) with equal colour channels read as grey")


class ManifestError(DataError):
    """A dataset tree that fails validation; the message names the file and what was expected."""


@dataclasses.dataclass(frozen=True)
class DatasetFacts:
    """What the indexer needs to know beyond the tree itself."""
    layout: str
    bit_depth: int | None = None               # expected; None = whatever the images have (but one depth)
    mask_in_focus_value: int | None = None     # the source's value for in-focus mask pixels (255 or 0)
    split_sizes: dict[str, int] | None = None  # registry counts: checked, and used to split CUHK by count
    source: str = "command line"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="dataset name (looked up in the registry unless --layout is given)")
    parser.add_argument("--root", required=True, help="dataset tree, e.g. data/raw/dpdd")
    parser.add_argument("--out", required=True, help="manifest to write, e.g. data/manifests/dpdd.json")
    parser.add_argument("--layout", choices=LAYOUTS.names(),
                        help="layout parser; given, the registry is not read (synthetic sets)")
    parser.add_argument("--registry", default="config/datasets.yaml", help="dataset registry (without --layout)")
    parser.add_argument("--bit-depth", type=int, choices=(8, 16), help="expected bit depth (overrides the registry)")
    parser.add_argument("--mask-in-focus-value", type=int, choices=(0, 255),
                        help="mask value that marks in-focus pixels in this dataset (overrides the registry)")
    parser.add_argument("--gopro-blur", choices=GOPRO_BLUR_CHOICES, default="blur",
                        help="GoPro blurry frames: plain averaging (blur) or gamma-corrected (blur_gamma)")
    parser.add_argument("--gopro-val-fraction", type=float, default=0.1,
                        help="fraction of GoPro train sequences carved out as val (whole sequences)")
    parser.add_argument("--detection-val-fraction", type=float, default=0.1,
                        help="CUHK/DUT: fraction of train images carved out as val when the tree has none")
    parser.add_argument("--workers", type=int, default=2, help="threads decoding images")


def run(args: argparse.Namespace) -> int:
    from pipeline_src.fileio import atomic_write_json

    facts = resolve_facts(args)
    options = LayoutOptions(gopro_blur=args.gopro_blur, gopro_val_fraction=args.gopro_val_fraction,
                            split_sizes=facts.split_sizes, detection_val_fraction=args.detection_val_fraction)
    manifest = build_manifest(args.name, args.root, facts, options, workers=args.workers)
    atomic_write_json(args.out, manifest)
    counts = ", ".join(f"{k} {v}" for k, v in manifest["splits"].items())
    print(f"{args.out}: {args.name} ({facts.layout}, {manifest['bit_depth']}-bit) {counts}")
    return 0


def resolve_facts(args: argparse.Namespace) -> DatasetFacts:
    if args.layout:
        facts = DatasetFacts(layout=args.layout)
        generated = Path(args.root) / "meta.json"  # a synthetic set says its own conventions
        if generated.is_file():
            conventions = json.loads(generated.read_text()).get("conventions", {})
            if conventions.get("mask_in_focus_value") in (0, 255):
                facts = dataclasses.replace(facts, mask_in_focus_value=conventions["mask_in_focus_value"],
                                            source=str(generated))
    else:
        from pipeline_src.data.registry import load_registry

        entry = load_registry(args.registry).dataset(args.name)
        facts = DatasetFacts(layout=entry.layout, bit_depth=entry.bit_depth,
                             mask_in_focus_value=entry.mask_in_focus_value,
                             split_sizes=dict(entry.splits) if entry.splits else None,
                             source=f"{args.registry}: datasets.{args.name}")
    overrides = {k: v for k, v in (("bit_depth", args.bit_depth),
                                   ("mask_in_focus_value", args.mask_in_focus_value)) if v is not None}
    return dataclasses.replace(facts, **overrides)


def build_manifest(name: str, root: str | Path, facts: DatasetFacts, options: LayoutOptions | None = None,
                   workers: int = 2) -> dict:
    scan = parse_layout(facts.layout, root, options)
    root = Path(root)
    has_mask = _all_or_none(scan.samples, "mask", root)
    has_defocus = _all_or_none(scan.samples, "defocus", root)
    has_target = _all_or_none(scan.samples, "target", root)
    if has_mask and facts.mask_in_focus_value not in (0, 255):
        raise ManifestError(f"{name}: the masks' in-focus value is unknown ({facts.source}); pass "
                            "--mask-in-focus-value 255 (in-focus is white) or 0 (in-focus is black)")
    with ThreadPoolExecutor(max(1, workers)) as pool:
        infos = list(pool.map(lambda s: inspect_sample(root, s), scan.samples))
    bit_depth = _one_bit_depth(scan.samples, infos, root, facts)
    splits = {split: sum(s.split == split for s in scan.samples) for split in SPLITS}
    _check_counts(splits, facts, root)
    return {
        "format": MANIFEST_FORMAT,
        "dataset": name,
        "layout": facts.layout,
        "root": str(root),
        "bit_depth": bit_depth,
        "views": scan.views,
        "has_target": has_target,
        "has_mask": has_mask,
        "has_defocus": has_defocus,
        "mask_polarity": MASK_POLARITY if has_mask else None,
        "mask_source_in_focus_value": facts.mask_in_focus_value if has_mask else None,
        "splits": splits,
        "rules": {**scan.rules, "channels": CHANNEL_RULE},
        "facts_from": facts.source,
        "samples": [_sample_record(s, info) for s, info in zip(scan.samples, infos)],
    }


@dataclasses.dataclass(frozen=True)
class SampleInfo:
    height: int
    width: int
    bit_depth: int
    first_file: str   # the file whose depth stands for the sample (named in mixed-depth errors)
    sha256: dict[str, str]  # key (view, target, mask, defocus) -> sha256 of the file's bytes


def inspect_sample(root: Path, sample: RawSample) -> SampleInfo:
    """Hash and decode every file of a sample; all must be readable and of one size, images of one bit depth."""
    import hashlib

    import numpy as np

    from pipeline_src.fileio import bit_depth_of, decode_image

    size_ref: tuple[str, tuple[int, int]] | None = None
    hashes: dict[str, str] = {}

    def read(key: str, rel: str) -> bytes:
        path = inside_tree(root, rel)
        data = path.read_bytes()
        hashes[key] = hashlib.sha256(data).hexdigest()
        return data

    def same_size(rel: str, shape: tuple[int, int]) -> None:
        nonlocal size_ref
        if size_ref is None:
            size_ref = (rel, shape)
        elif shape != size_ref[1]:
            raise ManifestError(f"{root / rel}: {shape[1]}x{shape[0]} (WxH) but {root / size_ref[0]} is "
                                f"{size_ref[1][1]}x{size_ref[1][0]}; every view, target, mask and defocus map "
                                f"of sample {sample.id!r} must have one size")

    depth_ref: tuple[str, int] | None = None
    images = list(sample.inputs.items()) + ([("target", sample.target)] if sample.target else [])
    for key, rel in images:
        img = decode_image(read(key, rel), root / rel)
        same_size(rel, img.shape[:2])
        depth = bit_depth_of(img)
        if depth_ref is None:
            depth_ref = (rel, depth)
        elif depth != depth_ref[1]:
            raise ManifestError(f"mixed bit depths: {root / rel} is {depth}-bit but {root / depth_ref[0]} is "
                                f"{depth_ref[1]}-bit; a dataset must have one bit depth")
    if sample.mask:
        mask = decode_image(read("mask", sample.mask), root / sample.mask, color=False)
        if mask.dtype != np.uint8:
            raise ManifestError(f"{root / sample.mask}: {mask.dtype} mask; expected an 8-bit mask")
        same_size(sample.mask, mask.shape)
    if sample.defocus:
        path = root / sample.defocus
        data = read("defocus", sample.defocus)
        try:
            dmap = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise ManifestError(f"{path}: unreadable defocus map ({exc}); regenerate it") from exc
        if dmap.ndim != 2 or dmap.dtype != np.float32:
            raise ManifestError(f"{path}: defocus map {dmap.dtype} {dmap.shape}; expected float32 (H, W)")
        same_size(sample.defocus, dmap.shape)
    height, width = size_ref[1]
    return SampleInfo(height, width, depth_ref[1], depth_ref[0], hashes)


def inside_tree(root: Path, rel: str) -> Path:
    """root/rel, refused when it (or a link on the way) resolves outside the dataset tree."""
    path = root / rel
    resolved, top = path.resolve(), root.resolve()
    if not resolved.is_relative_to(top):
        raise ManifestError(f"{path}: links to {resolved}, outside the dataset tree {top}; copy the file into "
                            "the tree (a manifest describes only what lies inside its root)")
    return path


def _all_or_none(samples: list[RawSample], field: str, root: Path) -> bool:
    missing = [s for s in samples if getattr(s, field) is None]
    if missing and len(missing) < len(samples):
        s = missing[0]
        raise ManifestError(f"{root / s.inputs['c']}: sample {s.id!r} ({s.split}) has no {field}, but other "
                            f"samples of the dataset have one; a {field} is needed for every sample or none")
    return not missing


def _one_bit_depth(samples: list[RawSample], infos: list[SampleInfo], root: Path, facts: DatasetFacts) -> int:
    first = infos[0]
    for info in infos:
        if info.bit_depth != first.bit_depth:
            raise ManifestError(f"mixed bit depths: {root / info.first_file} is {info.bit_depth}-bit but "
                                f"{root / first.first_file} is {first.bit_depth}-bit; a dataset must have one")
    if facts.bit_depth is not None and first.bit_depth != facts.bit_depth:
        raise ManifestError(f"{root / first.first_file}: {first.bit_depth}-bit, but {facts.source} says "
                            f"{facts.bit_depth}-bit")
    return first.bit_depth


def _check_counts(found: dict[str, int], facts: DatasetFacts, root: Path) -> None:
    # The registry's sizes catch a partial extraction. Val may be carved out of train (GoPro), so train+val
    # is compared as one number, test on its own.
    sizes = facts.split_sizes
    if not sizes:
        return
    want = (int(sizes.get("train", 0)) + int(sizes.get("val", 0)), int(sizes.get("test", 0)))
    got = (found["train"] + found["val"], found["test"])
    if want != got:
        raise ManifestError(f"{root}: found train+val {got[0]}, test {got[1]} samples, but {facts.source} "
                            f"registers {want[0]} and {want[1]} ({sizes}); is the extraction complete?")


def _sample_record(s: RawSample, info: SampleInfo) -> dict:
    record = {
        "split": s.split,
        "id": s.id,
        "inputs": dict(s.inputs),
        "target": s.target,
        "mask": s.mask,
        "defocus": s.defocus,
        "height": info.height,
        "width": info.width,
        "orientation": "portrait" if info.height > info.width else "landscape",
        "sha256": dict(info.sha256),
    }
    record.update(s.extra)
    return record
