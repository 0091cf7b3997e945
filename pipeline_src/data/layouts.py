"""Dataset folder layouts: one parser per layout, each turning a tree into raw sample records.

A parser looks at names and folders only; no pixel is read here (manifest.py decodes and validates every
image). The synthetic sets are written in the real layouts, so the same parser reads both. Every rule a
parser applies that is not visible in the tree (how sources pair with targets, how a missing split is
carved) is returned in `LayoutScan.rules` and recorded in the manifest.

Layouts (DATASETS.md §1-§6):
  dpdd     {split}_c/{source,target}/, {split}_l/source/<stem>_L.png, {split}_r/source/<stem>_R.png,
           optional {split}_c/defocus/<stem>.npy (synthetic ground truth). Source and target pair by sorted order.
  gopro    {train,test}/<sequence>/{blur,blur_gamma,sharp}/<frame>.png; val carved from train by whole sequences.
  cuhk     image/<stem>.jpg + gt/<stem>.png; split.txt (test names) or the registry's split sizes.
  dut      DUT600S_Training/ + DUT600GT_Training/, DUT500S-Testing/ + DUT500GT-Testing/ (mixed separators).
  dvd      quantitative_datasets/<video>/{input,GT}/ (official) or {train,test}_DVD/<video>/{input,GT}/ (PVDNet).
  kohler   Blurry{i}_{k}.png + Image{i}/Kernel{k}/GroundTruth{i}_{k}_{f}.png; target = the middle frame.
  realdof  source/ + target/ with identical names; test only.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from pipeline_src.errors import DataError
from pipeline_src.registry import Registry

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "val", "test")
GOPRO_BLUR_CHOICES = ("blur", "blur_gamma")

# DVD's 10 test videos, from the author in shuochsu/DeepVideoDeblurring issue #2 (DATASETS.md §5a).
DVD_TEST_VIDEOS = frozenset(
    {"IMG_0030", "IMG_0049", "IMG_0021", "720p_240fps_2", "IMG_0032",
     "IMG_0033", "IMG_0031", "IMG_0003", "IMG_0039", "IMG_0037"}
)

LAYOUTS = Registry("layout")


class LayoutError(DataError):
    """The tree does not have the structure its layout promises; the message names the path."""


@dataclasses.dataclass(frozen=True)
class LayoutOptions:
    gopro_blur: str = "blur"
    # GoPro has no val split: this fraction of the train sequences (at least one) becomes val.
    gopro_val_fraction: float = 0.1
    # {"train": n, "val": n, "test": n} from the registry: splits a tree without split.txt (CUHK) by count.
    split_sizes: dict[str, int] | None = None
    # CUHK and DUT publish train and test only; training needs a val split for its periodic validation, so
    # this fraction of the train images (at least one) becomes val when the tree itself gives none.
    detection_val_fraction: float = 0.1


@dataclasses.dataclass
class RawSample:
    split: str
    id: str
    inputs: dict[str, str]          # view -> path relative to the root (POSIX separators)
    target: str | None = None
    mask: str | None = None
    defocus: str | None = None
    extra: dict = dataclasses.field(default_factory=dict)   # e.g. {"sequence": ...}, copied into the manifest


@dataclasses.dataclass
class LayoutScan:
    views: list[str]
    samples: list[RawSample]
    rules: dict                     # how pairs and splits were decided


def parse_layout(layout: str, root: str | Path, options: LayoutOptions | None = None) -> LayoutScan:
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: dataset root is not a folder")
    return LAYOUTS.get(layout)(root, options or LayoutOptions())


# ------------------------------------------------------------------------------------------------ helpers
def _images_in(folder: Path) -> list[Path]:
    """Image files of a folder in sorted name order; hidden files (.fetched.json, macOS ._x.png) are skipped."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise LayoutError(f"{path}: missing folder ({what})")
    return path


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise LayoutError(f"{path}: missing file ({what})")
    return path


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _by_stem(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in _images_in(folder)}


def even_picks(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n) (the centre of each of k equal bins): a deterministic,
    content-independent choice that does not favour the start or the end of a sorted list."""
    if not 0 <= k <= n:
        raise DataError(f"cannot pick {k} of {n} items")
    return [int((i + 0.5) * n / k) for i in range(k)]


def _paired_by_name(inputs: Path, targets: Path, root: Path) -> list[tuple[Path, Path]]:
    """Pairs input/<name> with target/<name>; a missing target is an error naming the file expected."""
    pairs = []
    for src in _images_in(inputs):
        pairs.append((src, _require_file(targets / src.name, f"target for {_rel(src, root)}")))
    if not pairs:
        raise LayoutError(f"{inputs}: no images")
    return pairs


# ------------------------------------------------------------------------------------------------ parsers
@LAYOUTS.register("dpdd")
def parse_dpdd(root: Path, options: LayoutOptions) -> LayoutScan:
    samples: list[RawSample] = []
    for split in SPLITS:
        src_dir = root / f"{split}_c" / "source"
        if not src_dir.is_dir():
            continue
        trg_dir = _require_dir(root / f"{split}_c" / "target", f"all-in-focus targets of the {split} split")
        sources, targets = _images_in(src_dir), _images_in(trg_dir)
        if not sources:
            raise LayoutError(f"{src_dir}: no images")
        # Source and target are different captures with different names (1P0A0890 -> 1P0A0891): DPDNet's
        # official lists pair them by sorted order, so equal counts are the only consistency check there is.
        if len(sources) != len(targets):
            raise LayoutError(f"{split}: {len(sources)} images in {src_dir} but {len(targets)} in {trg_dir}; "
                              "DPDD pairs source and target by sorted order, so the counts must match")
        defocus_dir = root / f"{split}_c" / "defocus"
        for src, trg in zip(sources, targets):
            left = _require_file(root / f"{split}_l" / "source" / f"{src.stem}_L{src.suffix}",
                                 f"left dual-pixel view of {_rel(src, root)}")
            right = _require_file(root / f"{split}_r" / "source" / f"{src.stem}_R{src.suffix}",
                                  f"right dual-pixel view of {_rel(src, root)}")
            defocus = None
            if defocus_dir.is_dir():
                defocus = _rel(_require_file(defocus_dir / f"{src.stem}.npy", f"defocus map of {_rel(src, root)}"),
                               root)
            samples.append(RawSample(split, src.stem, {"c": _rel(src, root), "l": _rel(left, root),
                                                       "r": _rel(right, root)},
                                     target=_rel(trg, root), defocus=defocus))
    if not samples:
        raise LayoutError(f"{root}: no {{train,val,test}}_c/source folder; not a DPDD-layout tree")
    return LayoutScan(["c", "l", "r"], samples,
                      {"pairing": "source and target paired by sorted file name within each split "
                                  "(DPDNet's official file lists)"})


@LAYOUTS.register("gopro")
def parse_gopro(root: Path, options: LayoutOptions) -> LayoutScan:
    blur = options.gopro_blur
    if blur not in GOPRO_BLUR_CHOICES:
        raise LayoutError(f"gopro blur variant {blur!r}; expected one of {GOPRO_BLUR_CHOICES}")
    samples: list[RawSample] = []
    for split in ("train", "test"):
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        for seq in _subdirs(split_dir):
            blur_dir = _require_dir(seq / blur, f"blurry frames ({blur}) of sequence {seq.name}")
            sharp_dir = _require_dir(seq / "sharp", f"sharp frames of sequence {seq.name}")
            for src, trg in _paired_by_name(blur_dir, sharp_dir, root):
                samples.append(RawSample(split, f"{seq.name}/{src.stem}", {"c": _rel(src, root)},
                                         target=_rel(trg, root), extra={"sequence": seq.name}))
    if not samples:
        raise LayoutError(f"{root}: no train/<sequence>/ or test/<sequence>/ folders; not a GoPro-layout tree")
    val_sequences = _carve_gopro_val(samples, options.gopro_val_fraction, root)
    rules = {
        "gopro_blur": blur,
        "pairing": f"<sequence>/{blur}/<frame> with <sequence>/sharp/<frame> (same file name)",
        "val_rule": (f"GoPro has no val split: round({options.gopro_val_fraction} x train sequences) "
                     "(at least 1 when the fraction is > 0) whole sequences, spread evenly over the sorted "
                     "train sequence names, become val"),
        "val_sequences": val_sequences,
    }
    return LayoutScan(["c"], samples, rules)


def _carve_gopro_val(samples: list[RawSample], fraction: float, root: Path) -> list[str]:
    if not 0.0 <= fraction < 1.0:
        raise LayoutError(f"gopro val fraction {fraction}; expected 0 <= fraction < 1")
    train_seqs = sorted({s.extra["sequence"] for s in samples if s.split == "train"})
    if fraction == 0.0 or not train_seqs:
        return []
    if len(train_seqs) < 2:
        raise LayoutError(f"{root / 'train'}: only one sequence ({train_seqs[0]}); carving a val split by whole "
                          "sequences needs at least two (or set the val fraction to 0)")
    k = min(max(1, round(fraction * len(train_seqs))), len(train_seqs) - 1)
    val = [train_seqs[i] for i in even_picks(len(train_seqs), k)]
    for s in samples:
        if s.split == "train" and s.extra["sequence"] in val:
            s.split = "val"
    return val


@LAYOUTS.register("cuhk")
def parse_cuhk(root: Path, options: LayoutOptions) -> LayoutScan:
    image_dir = _require_dir(root / "image", "blurred images")
    masks = _by_stem(_require_dir(root / "gt", "ground-truth blur masks"))
    images = _images_in(image_dir)
    # CUHK mixes 704 defocus and 296 motion-blurred images; defocus blur detection uses the defocus ones.
    motion = [p for p in images if p.stem.startswith("motion")]
    images = [p for p in images if not p.stem.startswith("motion")]
    if not images:
        raise LayoutError(f"{image_dir}: no defocus images")
    samples = []
    for img in images:
        if img.stem not in masks:
            raise LayoutError(f"{root / 'gt' / (img.stem + '.png')}: missing file (mask of {_rel(img, root)})")
        samples.append(RawSample("train", img.stem, {"c": _rel(img, root)}, mask=_rel(masks[img.stem], root)))
    rules = {"excluded": f"{len(motion)} motion-blurred images (name prefix 'motion'): not defocus blur"}
    rules.update(_assign_detection_splits(samples, root, options.split_sizes))
    rules.update(_carve_detection_val(samples, options.detection_val_fraction, root))
    return LayoutScan(["c"], samples, rules)


def _carve_detection_val(samples: list[RawSample], fraction: float, root: Path) -> dict:
    """Move an evenly spread fraction of the train images to val when the tree gives no val split."""
    if not 0.0 <= fraction < 1.0:
        raise LayoutError(f"detection val fraction {fraction}; expected 0 <= fraction < 1")
    train = [s for s in samples if s.split == "train"]
    if fraction == 0.0 or any(s.split == "val" for s in samples) or not train:
        return {}
    if len(train) < 2:
        raise LayoutError(f"{root}: one train image; carving a val split needs at least two (or a val fraction of 0)")
    k = min(max(1, round(fraction * len(train))), len(train) - 1)
    for i in even_picks(len(train), k):
        train[i].split = "val"
    return {"val_rule": f"no val split in the tree: {k} of the {len(train)} train images (round({fraction} x n), "
                        "at least 1), spread evenly over the sorted names, become val"}


def _assign_detection_splits(samples: list[RawSample], root: Path, sizes: dict[str, int] | None) -> dict:
    split_file = root / "split.txt"
    if split_file.is_file():
        by_name = {}
        for s in samples:
            name = Path(s.inputs["c"]).name
            by_name[name] = by_name[Path(name).stem] = s
        for lineno, line in enumerate(split_file.read_text().splitlines(), 1):
            name = line.strip()
            if not name or name.startswith("#"):
                continue
            if name not in by_name:
                raise LayoutError(f"{split_file}:{lineno}: {name!r} names no image in {root / 'image'}")
            by_name[name].split = "test"
        return {"split_rule": "images listed in split.txt are test, the others train"}
    if not sizes:
        raise LayoutError(f"{split_file}: missing, and no split sizes were given (registry `splits`); "
                          "write split.txt listing the test images, one name a line")
    n_test, n_val = int(sizes.get("test", 0)), int(sizes.get("val", 0))
    if n_test + n_val > len(samples) or (sizes.get("train") is not None
                                         and n_test + n_val + int(sizes["train"]) != len(samples)):
        raise LayoutError(f"{root}: {len(samples)} images, but the split sizes {sizes} need a different number")
    test_idx = set(even_picks(len(samples), n_test))
    for i in test_idx:
        samples[i].split = "test"
    rest = [s for i, s in enumerate(samples) if i not in test_idx]
    for i in even_picks(len(rest), n_val):
        rest[i].split = "val"
    return {"split_rule": f"no split.txt: of the images sorted by name, {n_test} spread evenly are test, then "
                          f"{n_val} spread evenly over the rest are val, the others train (sizes {dict(sizes)})"}


_DUT_FOLDERS = {
    "train": (re.compile(r"^DUT\d*S[-_]Training$"), re.compile(r"^DUT\d*GT[-_]Training$")),
    "test": (re.compile(r"^DUT\d*S[-_]Testing$"), re.compile(r"^DUT\d*GT[-_]Testing$")),
}


@LAYOUTS.register("dut")
def parse_dut(root: Path, options: LayoutOptions) -> LayoutScan:
    folders = _subdirs(root)
    samples = []
    used = {}
    for split, (img_re, gt_re) in _DUT_FOLDERS.items():
        img_dirs = [d for d in folders if img_re.match(d.name)]
        if not img_dirs:
            continue
        if len(img_dirs) > 1:
            raise LayoutError(f"{root}: several {split} image folders {[d.name for d in img_dirs]}; expected one")
        gt_dirs = [d for d in folders if gt_re.match(d.name)]
        if len(gt_dirs) != 1:
            raise LayoutError(f"{root}: expected one {split} mask folder matching {gt_re.pattern} beside "
                              f"{img_dirs[0].name}, found {[d.name for d in gt_dirs]}")
        masks = _by_stem(gt_dirs[0])
        used[split] = [img_dirs[0].name, gt_dirs[0].name]
        for img in _images_in(img_dirs[0]):
            if img.stem not in masks:
                raise LayoutError(f"{gt_dirs[0] / (img.stem + '.png')}: missing file (mask of {_rel(img, root)})")
            samples.append(RawSample(split, img.stem, {"c": _rel(img, root)}, mask=_rel(masks[img.stem], root)))
    if not samples:
        raise LayoutError(f"{root}: no DUT image folder (DUT600S_Training, DUT500S-Testing); not a DUT-layout tree")
    rules = {"split_rule": "by folder", "folders": used}
    rules.update(_carve_detection_val(samples, options.detection_val_fraction, root))
    return LayoutScan(["c"], samples, rules)


@LAYOUTS.register("dvd")
def parse_dvd(root: Path, options: LayoutOptions) -> LayoutScan:
    official = root / "quantitative_datasets"
    if official.is_dir():
        videos = [(("test" if v.name in DVD_TEST_VIDEOS else "train"), v) for v in _subdirs(official)]
        rule = "official layout: the 10 test videos named by the authors (issue #2) are test, the others train"
    elif (root / "train_DVD").is_dir() or (root / "test_DVD").is_dir():
        videos = [(split, v) for split in ("train", "test") if (root / f"{split}_DVD").is_dir()
                  for v in _subdirs(root / f"{split}_DVD")]
        rule = "PVDNet layout: by folder (train_DVD, test_DVD)"
    else:
        raise LayoutError(f"{root}: neither quantitative_datasets/ nor train_DVD/, test_DVD/; not a DVD-layout tree")
    samples = []
    for split, video in videos:
        pairs = _paired_by_name(_require_dir(video / "input", f"blurry frames of {video.name}"),
                                _require_dir(video / "GT", f"sharp frames of {video.name}"), root)
        for src, trg in pairs:
            samples.append(RawSample(split, f"{video.name}/{src.stem}", {"c": _rel(src, root)},
                                     target=_rel(trg, root), extra={"sequence": video.name}))
    if not samples:
        raise LayoutError(f"{root}: no video folders")
    return LayoutScan(["c"], samples, {"split_rule": rule, "pairing": "input/<frame> with GT/<frame>"})


_KOHLER_BLURRY = re.compile(r"^Blurry(\d+)_(\d+)$")
_KOHLER_FRAME = re.compile(r"^GroundTruth(\d+)_(\d+)_(\d+)$")


@LAYOUTS.register("kohler")
def parse_kohler(root: Path, options: LayoutOptions) -> LayoutScan:
    samples = []
    for blurry in _images_in(root):
        m = _KOHLER_BLURRY.match(blurry.stem)
        if not m:
            continue
        i, k = m.groups()
        frame_dir = _require_dir(root / f"Image{i}" / f"Kernel{k}", f"sharp frames of {blurry.name}")
        frames = {}
        for p in _images_in(frame_dir):
            fm = _KOHLER_FRAME.match(p.stem)
            if fm and fm.group(1) == i and fm.group(2) == k:
                frames[int(fm.group(3))] = p
        if not frames:
            raise LayoutError(f"{frame_dir}: no GroundTruth{i}_{k}_<frame>.png files")
        # About 199 sharp frames are recorded along each shake; like deepinv's default, the middle one
        # (frame (n + 1) // 2 of frames numbered 1..n) is the single target.
        middle = (len(frames) + 1) // 2
        target = _require_file(frame_dir / f"GroundTruth{i}_{k}_{middle}.png", f"middle sharp frame of {blurry.name}")
        samples.append(RawSample("test", blurry.stem, {"c": _rel(blurry, root)}, target=_rel(target, root),
                                 extra={"sharp_frames": len(frames), "target_frame": middle}))
    if not samples:
        raise LayoutError(f"{root}: no Blurry<i>_<k>.png files; not a Köhler-layout tree")
    return LayoutScan(["c"], samples, {"split_rule": "test only (a benchmark)",
                                       "target_rule": "middle recorded sharp frame, number (n + 1) // 2"})


@LAYOUTS.register("realdof")
def parse_realdof(root: Path, options: LayoutOptions) -> LayoutScan:
    pairs = _paired_by_name(_require_dir(root / "source", "defocused images"),
                            _require_dir(root / "target", "all-in-focus images"), root)
    samples = [RawSample("test", src.stem, {"c": _rel(src, root)}, target=_rel(trg, root)) for src, trg in pairs]
    return LayoutScan(["c"], samples, {"split_rule": "test only (a benchmark)",
                                       "pairing": "source/<name> with target/<name>"})
