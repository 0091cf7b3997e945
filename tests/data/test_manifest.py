"""`index`: miniature trees in every real layout, the manifest contract, and the validation errors.

The tree builders here are also used by test_patches.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline_src.data.layouts import LayoutError, LayoutOptions, even_picks
from pipeline_src.data.manifest import DatasetFacts, ManifestError, build_manifest
from pipeline_src.data.samples import ManifestFormatError, array_keys, load_manifest, load_sample, manifest_sha256
from pipeline_src.fileio import ImageReadError, read_image, sha256_file, write_image
from tests.stage import run_stage

CONFIG = Path(__file__).resolve().parents[2] / "config"


# ------------------------------------------------------------------------------------------- tree builders
def image(h: int, w: int, seed: int, bits: int = 8) -> np.ndarray:
    """A smooth gradient plus texture, full range of the bit depth (16-bit values above 255)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = (yy / max(h - 1, 1) + xx / max(w - 1, 1)) / 2
    img = np.clip(base[..., None] * 0.7 + 0.3 * rng.random((h, w, 3)), 0, 1)
    top = 65535 if bits == 16 else 255
    return np.round(img * top).astype(np.uint16 if bits == 16 else np.uint8)


def put(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, img)
    return path


def make_dpdd_tree(root: Path, size=(24, 32), bits: int = 16, defocus: bool = False,
                   layout: dict | None = None) -> Path:
    """DPDD layout; source and target names differ (target = source number + 1), one train image portrait."""
    layout = layout or {"train": ["1P0A0890", "1P0A0900"], "val": ["1P0A0910"], "test": ["1P0A0920"]}
    h, w = size
    seed = 0
    for split, stems in layout.items():
        for stem in stems:
            shape = (w, h) if stem == "1P0A0900" else (h, w)   # 1P0A0900 is portrait
            seed += 1
            src = image(*shape, seed, bits)
            put(root / f"{split}_c" / "source" / f"{stem}.png", src)
            put(root / f"{split}_l" / "source" / f"{stem}_L.png", image(*shape, seed + 100, bits))
            put(root / f"{split}_r" / "source" / f"{stem}_R.png", image(*shape, seed + 200, bits))
            target = f"1P0A{int(stem[4:]) + 1:04d}"
            put(root / f"{split}_c" / "target" / f"{target}.png", image(*shape, seed + 300, bits))
            if defocus:
                (root / f"{split}_c" / "defocus").mkdir(parents=True, exist_ok=True)
                np.save(root / f"{split}_c" / "defocus" / f"{stem}.npy",
                        np.linspace(-3, 3, shape[0] * shape[1], dtype=np.float32).reshape(shape))
    return root


def make_gopro_tree(root: Path) -> Path:
    seqs = {"train": ["GOPR0372_07_00", "GOPR0374_11_00", "GOPR0378_13_00"], "test": ["GOPR0384_11_00"]}
    seed = 0
    for split, names in seqs.items():
        for seq in names:
            for frame in ("000047", "000048"):
                seed += 1
                for folder in ("blur", "blur_gamma", "sharp"):
                    put(root / split / seq / folder / f"{frame}.png", image(12, 20, seed))
    return root


def make_detection_mask(h: int, w: int, in_focus_value: int) -> np.ndarray:
    """Left half in focus."""
    mask = np.full((h, w), 255 - in_focus_value, np.uint8)
    mask[:, : w // 2] = in_focus_value
    return mask


def make_cuhk_tree(root: Path, in_focus_value: int = 0, split_txt: bool = True) -> Path:
    for i in range(1, 5):
        put(root / "image" / f"out_of_focus{i:04d}.jpg", image(16, 20, i))
        put(root / "gt" / f"out_of_focus{i:04d}.png", make_detection_mask(16, 20, in_focus_value))
    put(root / "image" / "motion0001.jpg", image(16, 20, 9))
    put(root / "gt" / "motion0001.png", make_detection_mask(16, 20, in_focus_value))
    if split_txt:
        (root / "split.txt").write_text("out_of_focus0002.jpg\nout_of_focus0004\n")
    return root


# ------------------------------------------------------------------------------------------------- helpers
def index(tmp_path: Path, name: str, root: Path, *flags: str) -> dict:
    """The `index` stage with its arguments parsed as the CLI does; its errors propagate (the CLI would print them
    as one line: tests/test_bad_inputs.py checks that)."""
    out = tmp_path / "manifests" / f"{name}.json"
    assert run_stage(["index", name, "--root", root, "--out", out, *flags]) == 0
    return load_manifest(out)


def by_id(manifest: dict) -> dict:
    return {s["id"]: s for s in manifest["samples"]}


# ---------------------------------------------------------------------------------------------------- DPDD
def test_dpdd_pairs_by_sorted_order_keeps_16_bits_and_marks_portrait(tmp_path):
    root = make_dpdd_tree(tmp_path / "dpdd")
    m = index(tmp_path, "mini-dpdd", root, "--layout", "dpdd")
    assert m["format"] == 2 and m["layout"] == "dpdd" and m["root"] == str(root)
    assert m["views"] == ["c", "l", "r"] and m["bit_depth"] == 16
    assert m["splits"] == {"train": 2, "val": 1, "test": 1}
    assert (m["has_target"], m["has_mask"], m["has_defocus"]) == (True, False, False)
    assert m["mask_polarity"] is None and m["mask_source_in_focus_value"] is None
    s = by_id(m)
    assert s["1P0A0890"]["inputs"] == {"c": "train_c/source/1P0A0890.png", "l": "train_l/source/1P0A0890_L.png",
                                       "r": "train_r/source/1P0A0890_R.png"}
    assert s["1P0A0890"]["target"] == "train_c/target/1P0A0891.png"
    assert s["1P0A0900"]["target"] == "train_c/target/1P0A0901.png"
    assert (s["1P0A0890"]["height"], s["1P0A0890"]["width"], s["1P0A0890"]["orientation"]) == (24, 32, "landscape")
    assert (s["1P0A0900"]["height"], s["1P0A0900"]["width"], s["1P0A0900"]["orientation"]) == (32, 24, "portrait")
    assert s["1P0A0920"]["split"] == "test"
    data = load_sample(m, s["1P0A0900"])
    assert sorted(data) == ["c", "l", "r", "target"] and data["c"].dtype == np.uint16 and data["c"].shape == (32, 24, 3)
    assert data["target"].max() > 255


def test_manifest_is_byte_identical_for_the_same_tree(tmp_path):
    root = make_dpdd_tree(tmp_path / "dpdd", bits=8)
    index(tmp_path, "a", root, "--layout", "dpdd")
    first = manifest_sha256(tmp_path / "manifests" / "a.json")
    index(tmp_path, "a", root, "--layout", "dpdd")
    assert manifest_sha256(tmp_path / "manifests" / "a.json") == first


def test_dpdd_defocus_maps_are_indexed_and_loaded(tmp_path):
    root = make_dpdd_tree(tmp_path / "dpdd", defocus=True)
    m = index(tmp_path, "synth", root, "--layout", "dpdd")
    assert m["has_defocus"] and by_id(m)["1P0A0890"]["defocus"] == "train_c/defocus/1P0A0890.npy"
    assert array_keys(m) == ["c", "l", "r", "target", "defocus"]
    d = load_sample(m, by_id(m)["1P0A0890"])["defocus"]
    assert d.dtype == np.float32 and d.shape == (24, 32) and d.min() == -3


def test_truncated_png_is_named(tmp_path):
    root = make_dpdd_tree(tmp_path / "dpdd")
    bad = root / "val_c" / "target" / "1P0A0911.png"
    bad.write_bytes(bad.read_bytes()[:-40])
    with pytest.raises(ImageReadError, match=r"1P0A0911\.png.*truncated"):
        index(tmp_path, "x", root, "--layout", "dpdd")
    assert not (tmp_path / "manifests" / "x.json").exists()


def test_undecodable_jpeg_is_named(tmp_path):
    root = make_cuhk_tree(tmp_path / "cuhk")
    (root / "image" / "out_of_focus0003.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(ImageReadError, match=r"out_of_focus0003\.jpg: not an image file \(17 bytes"):
        index(tmp_path, "x", root, "--layout", "cuhk", "--mask-in-focus-value", "0")


def test_pair_of_different_sizes_is_named(tmp_path):
    root = make_dpdd_tree(tmp_path / "dpdd")
    put(root / "train_c" / "target" / "1P0A0891.png", image(24, 30, 5, 16))
    with pytest.raises(ManifestError, match=r"1P0A0891\.png: 30x24 \(WxH\) but .*1P0A0890\.png is 32x24"):
        index(tmp_path, "x", root, "--layout", "dpdd")


def test_mixed_bit_depths_are_named(tmp_path):
    root = make_dpdd_tree(tmp_path / "dpdd")
    put(root / "test_r" / "source" / "1P0A0920_R.png", image(24, 32, 5, 8))        # within a sample
    with pytest.raises(ManifestError, match=r"mixed bit depths: .*1P0A0920_R\.png is 8-bit"):
        index(tmp_path, "x", root, "--layout", "dpdd")
    root2 = make_dpdd_tree(tmp_path / "dpdd2", layout={"train": ["1P0A0890"]})
    make_dpdd_tree(root2, bits=8, layout={"val": ["1P0A0910"]})                      # across samples
    with pytest.raises(ManifestError, match=r"mixed bit depths: .*1P0A0910\.png is 8-bit"):
        index(tmp_path, "y", root2, "--layout", "dpdd")


def test_expected_bit_depth_is_enforced(tmp_path):
    root = make_dpdd_tree(tmp_path / "dpdd", bits=8)
    with pytest.raises(ManifestError, match=r"8-bit, but command line says 16-bit"):
        index(tmp_path, "x", root, "--layout", "dpdd", "--bit-depth", "16")


def test_missing_left_view_is_named(tmp_path):
    root = make_dpdd_tree(tmp_path / "dpdd")
    (root / "train_l" / "source" / "1P0A0900_L.png").unlink()
    with pytest.raises(LayoutError, match=r"train_l/source/1P0A0900_L\.png: missing file \(left dual-pixel view"):
        index(tmp_path, "x", root, "--layout", "dpdd")


def test_dpdd_unequal_source_and_target_counts(tmp_path):
    root = make_dpdd_tree(tmp_path / "dpdd")
    (root / "val_c" / "target" / "1P0A0911.png").unlink()
    with pytest.raises(LayoutError, match=r"val: 1 images in .*val_c/source but 0 in .*val_c/target"):
        index(tmp_path, "x", root, "--layout", "dpdd")


def test_defocus_map_for_some_samples_only(tmp_path):
    root = make_dpdd_tree(tmp_path / "dpdd", defocus=True)
    (root / "val_c" / "defocus" / "1P0A0910.npy").unlink()
    with pytest.raises(LayoutError, match=r"val_c/defocus/1P0A0910\.npy: missing file"):
        index(tmp_path, "x", root, "--layout", "dpdd")
    np.save(root / "val_c" / "defocus" / "1P0A0910.npy", np.zeros((5, 5), np.float32))
    with pytest.raises(ManifestError, match=r"1P0A0910\.npy: 5x5 .* must have one size"):
        index(tmp_path, "x", root, "--layout", "dpdd")


def test_not_a_dpdd_tree(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError, match="not a DPDD-layout tree"):
        index(tmp_path, "x", tmp_path / "empty", "--layout", "dpdd")
    with pytest.raises(LayoutError, match="dataset root is not a folder"):
        index(tmp_path, "x", tmp_path / "nowhere", "--layout", "dpdd")


# --------------------------------------------------------------------------------------------------- GoPro
def test_gopro_carves_val_by_whole_sequences_and_records_the_rule(tmp_path):
    root = make_gopro_tree(tmp_path / "gopro")
    m = index(tmp_path, "gopro", root, "--layout", "gopro")
    assert m["bit_depth"] == 8 and m["views"] == ["c"] and m["splits"] == {"train": 4, "val": 2, "test": 2}
    assert m["rules"]["gopro_blur"] == "blur" and m["rules"]["val_sequences"] == ["GOPR0374_11_00"]
    s = by_id(m)["GOPR0374_11_00/000047"]
    assert s["split"] == "val" and s["sequence"] == "GOPR0374_11_00"
    assert s["inputs"] == {"c": "train/GOPR0374_11_00/blur/000047.png"}
    assert s["target"] == "train/GOPR0374_11_00/sharp/000047.png"
    gamma = index(tmp_path, "gopro-g", root, "--layout", "gopro", "--gopro-blur", "blur_gamma")
    assert by_id(gamma)["GOPR0384_11_00/000048"]["inputs"]["c"] == "test/GOPR0384_11_00/blur_gamma/000048.png"
    assert gamma["rules"]["gopro_blur"] == "blur_gamma"
    none = index(tmp_path, "gopro-0", root, "--layout", "gopro", "--gopro-val-fraction", "0")
    assert none["splits"] == {"train": 6, "val": 0, "test": 2}


def test_gopro_missing_sharp_frame_is_named(tmp_path):
    root = make_gopro_tree(tmp_path / "gopro")
    (root / "test" / "GOPR0384_11_00" / "sharp" / "000048.png").unlink()
    with pytest.raises(LayoutError, match=r"GOPR0384_11_00/sharp/000048\.png: missing file"):
        index(tmp_path, "x", root, "--layout", "gopro")


def test_even_picks_spread_over_the_list():
    assert even_picks(22, 2) == [5, 16]
    assert even_picks(3, 1) == [1]
    assert even_picks(5, 0) == []
    with pytest.raises(ValueError):
        even_picks(2, 3)


# ---------------------------------------------------------------------------------------------------- CUHK
def test_cuhk_inverted_masks_come_out_in_focus_is_one(tmp_path):
    root = make_cuhk_tree(tmp_path / "cuhk", in_focus_value=0)
    m = index(tmp_path, "cuhk", root, "--layout", "cuhk", "--mask-in-focus-value", "0")
    assert m["has_mask"] and not m["has_target"]
    assert m["mask_polarity"] == "in_focus=1" and m["mask_source_in_focus_value"] == 0
    assert m["splits"] == {"train": 1, "val": 1, "test": 2}          # motion0001 left out; split.txt; val carved
    assert by_id(m)["out_of_focus0003"]["split"] == "val" and "become val" in m["rules"]["val_rule"]
    assert "motion0001" not in by_id(m) and "1 motion-blurred" in m["rules"]["excluded"]
    assert by_id(m)["out_of_focus0004"]["split"] == "test" and by_id(m)["out_of_focus0001"]["split"] == "train"
    sample = load_sample(m, by_id(m)["out_of_focus0001"])
    assert sorted(sample) == ["c", "mask"]
    mask = sample["mask"]
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert (mask[:, :10] == 1).all() and (mask[:, 10:] == 0).all()   # left half in focus, source value 0


def test_detection_val_carving_can_be_switched_off_and_a_bad_fraction_is_named(tmp_path):
    root = make_cuhk_tree(tmp_path / "cuhk", in_focus_value=0)
    m = index(tmp_path, "cuhk", root, "--layout", "cuhk", "--mask-in-focus-value", "0",
              "--detection-val-fraction", "0")
    assert m["splits"] == {"train": 2, "val": 0, "test": 2} and "val_rule" not in m["rules"]
    with pytest.raises(LayoutError, match="val fraction 1.5"):
        index(tmp_path, "cuhk2", root, "--layout", "cuhk", "--mask-in-focus-value", "0",
              "--detection-val-fraction", "1.5")


def test_synthetic_detection_set_states_its_own_mask_polarity(tmp_path):
    root = make_cuhk_tree(tmp_path / "synth", in_focus_value=255)
    (root / "meta.json").write_text(json.dumps({"conventions": {"mask_in_focus_value": 255}}))
    m = index(tmp_path, "synth", root, "--layout", "cuhk")   # no --mask-in-focus-value needed
    assert m["mask_source_in_focus_value"] == 255
    mask = load_sample(m, by_id(m)["out_of_focus0001"])["mask"]
    assert (mask[:, :10] == 1).all() and (mask[:, 10:] == 0).all()


def test_cuhk_needs_the_mask_polarity(tmp_path):
    root = make_cuhk_tree(tmp_path / "cuhk")
    with pytest.raises(ManifestError, match="in-focus value is unknown.*--mask-in-focus-value"):
        index(tmp_path, "x", root, "--layout", "cuhk")


def test_cuhk_split_without_split_txt(tmp_path):
    root = make_cuhk_tree(tmp_path / "cuhk", split_txt=False)
    with pytest.raises(LayoutError, match=r"split\.txt: missing, and no split sizes"):
        index(tmp_path, "x", root, "--layout", "cuhk", "--mask-in-focus-value", "0")
    facts = DatasetFacts(layout="cuhk", mask_in_focus_value=0, split_sizes={"train": 3, "test": 1})
    m = build_manifest("cuhk", root, facts, LayoutOptions(split_sizes=facts.split_sizes))
    assert [s["id"] for s in m["samples"] if s["split"] == "test"] == ["out_of_focus0003"]
    assert "no split.txt" in m["rules"]["split_rule"]


def test_cuhk_split_txt_naming_an_unknown_image(tmp_path):
    root = make_cuhk_tree(tmp_path / "cuhk")
    (root / "split.txt").write_text("out_of_focus0002.jpg\nout_of_focus0099.jpg\n")
    with pytest.raises(LayoutError, match=r"split\.txt:2: 'out_of_focus0099\.jpg' names no image"):
        index(tmp_path, "x", root, "--layout", "cuhk", "--mask-in-focus-value", "0")


def test_cuhk_missing_mask_is_named(tmp_path):
    root = make_cuhk_tree(tmp_path / "cuhk")
    (root / "gt" / "out_of_focus0003.png").unlink()
    with pytest.raises(LayoutError, match=r"gt/out_of_focus0003\.png: missing file"):
        index(tmp_path, "x", root, "--layout", "cuhk", "--mask-in-focus-value", "0")


# ----------------------------------------------------------------------------------------------------- DUT
def test_dut_folders_with_mixed_separators(tmp_path):
    root = tmp_path / "dut"
    for folder, gt_folder, names in (("DUT600S_Training", "DUT600GT_Training", ["0001", "0002"]),
                                     ("DUT500S-Testing", "DUT500GT-Testing", ["1"])):
        for n in names:
            put(root / folder / f"{n}.jpg", image(14, 18, len(n)))
            put(root / gt_folder / f"{n}.png", make_detection_mask(14, 18, 255))
    m = index(tmp_path, "dut", root, "--layout", "dut", "--mask-in-focus-value", "255")
    assert m["splits"] == {"train": 1, "val": 1, "test": 1}   # val carved from the 600-image train folder
    assert by_id(m)["1"] == {**by_id(m)["1"], "inputs": {"c": "DUT500S-Testing/1.jpg"},
                             "mask": "DUT500GT-Testing/1.png", "split": "test"}
    mask = load_sample(m, by_id(m)["0001"])["mask"]
    assert (mask[:, :9] == 1).all() and (mask[:, 9:] == 0).all()
    put(root / "DUT600GT_Training" / "0002.png", make_detection_mask(14, 17, 255))
    with pytest.raises(ManifestError, match=r"DUT600GT_Training/0002\.png: 17x14"):
        index(tmp_path, "x", root, "--layout", "dut", "--mask-in-focus-value", "255")


# ----------------------------------------------------------------------------------------------------- DVD
def test_dvd_splits_by_the_authors_test_videos(tmp_path):
    root = tmp_path / "dvd"
    for video in ("IMG_0030", "720p_240fps_1"):
        for frame in ("00000", "00001"):
            put(root / "quantitative_datasets" / video / "input" / f"{frame}.jpg", image(10, 16, 1))
            put(root / "quantitative_datasets" / video / "GT" / f"{frame}.jpg", image(10, 16, 2))
    m = index(tmp_path, "dvd", root, "--layout", "dvd")
    assert m["splits"] == {"train": 2, "val": 0, "test": 2}
    s = by_id(m)["IMG_0030/00001"]
    assert s["split"] == "test" and s["target"] == "quantitative_datasets/IMG_0030/GT/00001.jpg"
    assert by_id(m)["720p_240fps_1/00000"]["split"] == "train"


# -------------------------------------------------------------------------------------------------- Köhler
def test_kohler_takes_the_middle_sharp_frame(tmp_path):
    root = tmp_path / "kohler"
    for i, k in ((1, 1), (2, 12)):
        put(root / f"Blurry{i}_{k}.png", image(16, 16, i))
        for f in range(1, 6):
            put(root / f"Image{i}" / f"Kernel{k}" / f"GroundTruth{i}_{k}_{f}.png", image(16, 16, 10 + f))
    m = index(tmp_path, "kohler", root, "--layout", "kohler")
    assert m["splits"] == {"train": 0, "val": 0, "test": 2}
    s = by_id(m)["Blurry2_12"]
    assert s["target"] == "Image2/Kernel12/GroundTruth2_12_3.png" and s["sharp_frames"] == 5


# ------------------------------------------------------------------------------------------------- RealDOF
def make_realdof_tree(root: Path, n: int = 2) -> Path:
    for i in range(n):
        put(root / "source" / f"{i:03d}.png", image(12, 16, i))
        put(root / "target" / f"{i:03d}.png", image(12, 16, 50 + i))
    return root


def test_realdof_pairs_by_name(tmp_path):
    m = index(tmp_path, "realdof", make_realdof_tree(tmp_path / "realdof"), "--layout", "realdof")
    assert m["splits"] == {"train": 0, "val": 0, "test": 2}
    assert by_id(m)["001"]["target"] == "target/001.png"


# ------------------------------------------------------------------------------------------------ registry
def test_name_is_looked_up_in_the_registry_and_its_counts_checked(tmp_path):
    root = make_realdof_tree(tmp_path / "realdof")
    # The project's registry says RealDOF has 50 test images: two found is an incomplete extraction.
    with pytest.raises(ManifestError, match=r"found train\+val 0, test 2 .*registers 0 and 50"):
        index(tmp_path, "realdof", root, "--registry", str(CONFIG / "datasets.yaml"))
    registry = tmp_path / "datasets.yaml"
    registry.write_text(json.dumps({"datasets": {"realdof": {
        "title": "two images", "task": "defocus_single", "layout": "realdof", "bit_depth": 8,
        "splits": {"test": 2}, "test_only": True, "licence": "test", "mask_in_focus_value": None,
        "root_in_archive": "RealDOF", "files": [{"name": "RealDOF.zip", "urls": ["https://example.org/RealDOF.zip"],
                                                 "archive": "zip"}]}}, "weights": {}}))
    m = index(tmp_path, "realdof", root, "--registry", str(registry))
    assert m["layout"] == "realdof" and m["facts_from"].endswith("datasets.realdof")
    with pytest.raises(KeyError, match="unknown dataset 'nope'"):
        index(tmp_path, "nope", root, "--registry", str(registry))


# ------------------------------------------------------------------------------------------- load_manifest
def test_load_manifest_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ManifestFormatError, match=r"bad\.json: not JSON"):
        load_manifest(bad)
    bad.write_text(json.dumps({"format": 1}))
    with pytest.raises(ManifestFormatError, match=r"bad\.json: missing field\(s\) \['dataset'"):
        load_manifest(bad)
    m = index(tmp_path, "realdof", make_realdof_tree(tmp_path / "realdof"), "--layout", "realdof")
    bad.write_text(json.dumps({**m, "format": 1}))
    with pytest.raises(ManifestFormatError, match=r"manifest format 1, this code reads \(2,\); rebuild it"):
        load_manifest(bad)


def test_load_sample_notices_a_changed_tree(tmp_path):
    root = make_realdof_tree(tmp_path / "realdof")
    m = index(tmp_path, "realdof", root, "--layout", "realdof")
    put(root / "target" / "000.png", image(12, 15, 3))
    with pytest.raises(ValueError, match=r"target/000\.png: 15x12 .* manifest says 16x12"):
        load_sample(m, by_id(m)["000"])


# ------------------------------------------------------------------------------ data identity and what a set is
def test_one_changed_pixel_changes_the_manifest_and_its_hash_names_and_sizes_unchanged(tmp_path):
    root = make_dpdd_tree(tmp_path / "dpdd")
    m1 = index(tmp_path, "a", root, "--layout", "dpdd")
    sha1 = manifest_sha256(tmp_path / "manifests" / "a.json")
    target = root / "train_c" / "target" / "1P0A0891.png"
    img = read_image(target)
    img[3, 4, 0] ^= 1
    write_image(target, img)
    m2 = index(tmp_path, "a", root, "--layout", "dpdd")
    assert manifest_sha256(tmp_path / "manifests" / "a.json") != sha1
    changed = [s["id"] for s, t in zip(m1["samples"], m2["samples"]) if s["sha256"] != t["sha256"]]
    assert changed == ["1P0A0890"] and by_id(m2)["1P0A0890"]["sha256"]["target"] == sha256_file(target)
    assert set(by_id(m2)["1P0A0890"]["sha256"]) == {"c", "l", "r", "target"}
    assert "3-channel RGB only" in m2["rules"]["channels"]


@pytest.mark.parametrize("kind, make, message", [
    ("rgba", lambda img: np.dstack([img, np.full(img.shape[:2], 65535, img.dtype)]), "an RGBA image where RGB"),
    ("grey", lambda img: img[:, :, 0], "a grey image where RGB is expected"),
])
def test_rgba_and_grey_images_in_an_rgb_set_are_refused(tmp_path, kind, make, message):
    root = make_dpdd_tree(tmp_path / "dpdd")
    bad = root / "test_r" / "source" / "1P0A0920_R.png"
    write_image(bad, make(read_image(bad)))
    with pytest.raises(ImageReadError, match=rf"1P0A0920_R\.png: {message}"):
        index(tmp_path, "x", root, "--layout", "dpdd")
    assert not (tmp_path / "manifests" / "x.json").exists()


def test_the_format_behind_the_extension_must_be_what_it_names(tmp_path):
    import cv2

    root = make_dpdd_tree(tmp_path / "dpdd", bits=8)
    bad = root / "val_l" / "source" / "1P0A0910_L.png"
    ok, jpeg = cv2.imencode(".jpg", read_image(bad))
    bad.write_bytes(jpeg.tobytes())
    with pytest.raises(ImageReadError, match=r"1P0A0910_L\.png: named \.png but its bytes are a JPEG image"):
        index(tmp_path, "x", root, "--layout", "dpdd")
    cut = root / "val_l" / "source" / "cut.jpg"
    cut.write_bytes(jpeg.tobytes()[:-100])
    with pytest.raises(ImageReadError, match=r"cut\.jpg: truncated JPEG"):
        read_image(cut)


def test_a_link_that_leaves_the_dataset_tree_is_refused_an_inward_one_kept(tmp_path):
    root = make_dpdd_tree(tmp_path / "dpdd")
    inside = root / "test_c" / "target" / "1P0A0921.png"
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(inside.read_bytes())
    inside.unlink()
    inside.symlink_to(outside)
    with pytest.raises(ManifestError, match=r"1P0A0921\.png: links to .*elsewhere\.png, outside the dataset tree"):
        index(tmp_path, "x", root, "--layout", "dpdd")
    inside.unlink()
    (root / "spare.png").write_bytes(outside.read_bytes())
    inside.symlink_to(Path("../../spare.png"))
    assert index(tmp_path, "x", root, "--layout", "dpdd")["splits"]["test"] == 1


def test_masks_stored_as_rgb_are_read_as_grey_only_when_their_channels_agree(tmp_path):
    root = make_cuhk_tree(tmp_path / "cuhk")
    mask_path = root / "gt" / "out_of_focus0001.png"
    mask = read_image(mask_path, color=False)
    write_image(mask_path, np.dstack([mask] * 3))
    m = index(tmp_path, "c", root, "--layout", "cuhk", "--mask-in-focus-value", "0")
    assert np.array_equal(load_sample(m, by_id(m)["out_of_focus0001"])["mask"], (mask < 128).astype(np.uint8))
    rgb = np.dstack([mask] * 3)
    rgb[0, 0, 2] ^= 255
    write_image(mask_path, rgb)
    with pytest.raises(ImageReadError, match=r"out_of_focus0001\.png: a 3-channel image with differing channels"):
        index(tmp_path, "c", root, "--layout", "cuhk", "--mask-in-focus-value", "0")
