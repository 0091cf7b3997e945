"""`patches`: window positions, identical windows over every view, 16 bits kept, the DPDNet discard, the
whole-image arrays beside the windows, per-layout preset settings (CUHK-sized images at the paper preset), the
window dataset's augmentation and determinism, and the patch-reading benchmark on a tiny set."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline_src.cli import main
from pipeline_src.config import ConfigError
from pipeline_src.data.patches import (
    PatchSettings,
    keep_after_discard,
    load_settings,
    sharpness_scores,
    window_grid,
    window_starts,
    write_patches,
)
from pipeline_src.data.samples import load_manifest, load_sample, manifest_sha256
from pipeline_src.data.whole_images import ImageStore
from pipeline_src.errors import DataError
from pipeline_src.fileio import read_image
from tests.data.test_manifest import CONFIG, image, make_cuhk_tree, make_detection_mask, make_dpdd_tree, put


def build(tmp_path: Path, *flags: str, tree=None, layout: str = "dpdd", index_flags=()) -> tuple[Path, Path]:
    root = tree or make_dpdd_tree(tmp_path / "dpdd", size=(24, 32), defocus=True)
    manifest = tmp_path / "m.json"
    assert main(["index", "mini", "--root", str(root), "--out", str(manifest), "--layout", layout,
                 *index_flags]) == 0
    out = tmp_path / "patches"
    assert main(["patches", "--manifest", str(manifest), "--out", str(out), "--preset", "smoke",
                 "--presets", str(CONFIG / "presets.yaml"), *flags]) == 0
    return manifest, out


# --------------------------------------------------------------------------------------------------- windows
def test_window_starts_add_a_border_aligned_last_window():
    assert window_starts(10, 4, 3) == [0, 3, 6]           # 6 + 4 == 10: already on the border
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]        # last one aligned to the border
    assert window_starts(4, 4, 2) == [0]
    with pytest.raises(ValueError, match="length 3 < patch size 4"):
        window_starts(3, 4, 2)


def test_window_grid_at_paper_scale():
    # ATTSF at paper scale: 560 px, stride 140 on a 1680x1120 DPDD image: 5 rows x 9 columns, all unique.
    grid = window_grid(1120, 1680, 560, 140)
    assert len(grid) == 45 == len(set(grid))
    assert grid[-1] == (560, 1120)
    portrait = window_grid(1680, 1120, 560, 140)
    assert len(portrait) == 45 and portrait[-1] == (1120, 560)
    # DPDNet's own setting (512, stride 204) needs border windows: 1120 = 4*204 + 304.
    assert window_starts(1120, 512, 204) == [0, 204, 408, 608]


def test_settings_from_presets_and_their_errors(tmp_path):
    paper = load_settings(CONFIG / "presets.yaml", "paper")
    assert (paper.size, paper.stride, paper.stride_for("val")) == (560, 140, 560)
    assert paper.discard_fraction == 0.3 and paper.whole_images == ("train",)
    assert load_settings(CONFIG / "presets.yaml", "paper", "dpdd") == paper        # DPDD: ATTSF's windows
    for layout in ("cuhk", "dut", "gopro", "dvd"):    # crop-from-whole-image datasets: small windows, no discard
        s = load_settings(CONFIG / "presets.yaml", "paper", layout)
        assert (s.size, s.stride, s.discard_fraction, s.whole_images) == (256, 256, 0.0, ("train",)), layout
    for preset in ("smoke", "default"):
        assert load_settings(CONFIG / "presets.yaml", preset).whole_images == ("train",)
    with pytest.raises(ConfigError, match="no preset 'huge'"):
        load_settings(CONFIG / "presets.yaml", "huge")
    with pytest.raises(ConfigError, match="stride = 40 > size 32"):
        PatchSettings(size=32, stride=40)
    with pytest.raises(ConfigError, match="discard_fraction = 1.0"):
        PatchSettings(size=32, stride=8, discard_fraction=1.0)
    with pytest.raises(ConfigError, match=r"splits = \['test'\]"):
        PatchSettings(size=32, stride=8, splits=("test",))
    with pytest.raises(ConfigError, match=r"whole_images = \['test'\]"):
        PatchSettings(size=32, stride=8, whole_images=("test",))
    # the presets file is checked by workflow/schemas/presets.schema.yaml: the message names the field
    bad = tmp_path / "presets.yaml"

    def write_with_smoke_patches(patches):
        presets = yaml.safe_load((CONFIG / "presets.yaml").read_text())
        presets["smoke"]["patches"] = patches
        bad.write_text(yaml.safe_dump(presets))

    write_with_smoke_patches({"size": 8, "strde": 4})
    with pytest.raises(ConfigError, match=r"smoke\.patches: Additional properties are not allowed \('strde'"):
        load_settings(bad, "smoke")
    write_with_smoke_patches({"size": 8, "stride": 4, "by_layout": {"cuhk": {"size": 4, "colour": 1}}})
    with pytest.raises(ConfigError, match=r"smoke\.patches\.by_layout\.cuhk: Additional properties .*'colour'"):
        load_settings(bad, "smoke", "cuhk")


# ----------------------------------------------------------------------------------------------- writing
def test_patches_are_the_same_windows_of_every_view_and_keep_16_bits(tmp_path):
    manifest_path, out = build(tmp_path, "--size", "16", "--stride", "8", "--discard-fraction", "0")
    meta = json.loads((out / "meta.json").read_text())
    manifest = load_manifest(manifest_path)
    assert meta["manifest_sha256"] == manifest_sha256(manifest_path)
    assert (meta["size"], meta["stride"], meta["val_stride"], meta["bit_depth"]) == (16, 8, 16, 16)
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train", "val"]     # no test patches
    assert sorted(p.name for p in (out / "train").iterdir()) == ["c.npy", "defocus.npy", "images", "l.npy",
                                                                 "r.npy", "target.npy"]
    assert sorted(p.name for p in (out / "val").iterdir()) == ["c.npy", "defocus.npy", "l.npy", "r.npy",
                                                               "target.npy"]   # whole images: train only
    assert meta["format"] == 2
    # train: 24x32 landscape -> ys 0,8 x xs 0,8,16; 32x24 portrait -> ys 0,8,16 x xs 0,8: 6 + 6 windows.
    windows = meta["splits"]["train"]["windows"]
    assert meta["splits"]["train"]["count"] == 12 == len(windows)
    assert [w[1:] for w in windows[:6]] == [[0, 0], [0, 8], [0, 16], [8, 0], [8, 8], [8, 16]]
    # val: non-overlapping stride 16 on 24x32 -> ys 0, 8 (border) x xs 0, 16.
    assert [w[1:] for w in meta["splits"]["val"]["windows"]] == [[0, 0], [0, 16], [8, 0], [8, 16]]
    arrays = {k: np.load(out / "train" / f"{k}.npy", mmap_mode="r") for k in ("c", "l", "r", "target", "defocus")}
    assert arrays["c"].dtype == np.uint16 and arrays["c"].shape == (12, 16, 16, 3)
    assert arrays["defocus"].dtype == np.float32 and arrays["defocus"].shape == (12, 16, 16)
    assert arrays["target"].max() > 255
    for row, (i, y, x) in enumerate(windows):
        full = load_sample(manifest, manifest["samples"][i])
        for key, arr in arrays.items():
            np.testing.assert_array_equal(arr[row], full[key][y:y + 16, x:x + 16], err_msg=f"{key} patch {row}")


def test_discard_drops_the_flattest_windows(tmp_path):
    # Target: flat on the left half, textured on the right. At 16 px / stride 8 on a 32x64 image, windows
    # starting at x < 32 - 16 lie in the flat half.
    root = make_dpdd_tree(tmp_path / "dpdd", size=(32, 64), bits=8, layout={"train": ["1P0A0890"]})
    target = np.random.default_rng(0).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    target[:, :32] = 128
    put(root / "train_c" / "target" / "1P0A0891.png", target)
    _, out = build(tmp_path, "--size", "16", "--stride", "8", "--discard-fraction", "0.4", tree=root)
    meta = json.loads((out / "meta.json").read_text())
    train = meta["splits"]["train"]
    all_windows = window_grid(32, 64, 16, 8)                      # 3 rows x 7 columns = 21
    assert train["dropped"] == int(0.4 * 21) == 8 and train["count"] == 13
    kept = [tuple(w[1:]) for w in train["windows"]]
    assert kept == [w for w in all_windows if w in kept]        # window order is kept
    # The 9 fully flat windows (x + 16 <= 32) score 0; 8 go, the earliest first (DPDNet's repeated argmin).
    assert set(all_windows) - set(kept) == {(0, 0), (0, 8), (0, 16), (8, 0), (8, 8), (8, 16), (16, 0), (16, 8)}
    assert meta["discard"]["applied"] and meta["discard"]["fraction"] == 0.4


def test_sharpness_scores_and_discard_ties_follow_dpdnet():
    target = np.zeros((16, 48, 3), np.uint16)
    target[:, 16:32] = np.random.default_rng(1).integers(0, 65535, (16, 16, 3), dtype=np.uint16)
    windows = [(0, 0), (0, 16), (0, 32)]
    scores = sharpness_scores(target, windows, 16)
    assert scores[1] == 1.0 and scores[0] == scores[2] == 0.0
    assert keep_after_discard(scores, 0.34) == [1, 2]            # tie: the earlier window is dropped first
    assert keep_after_discard(np.ones(4), 0.5) == [2, 3]


def test_detection_patches_have_in_focus_masks_and_skip_the_discard(tmp_path):
    root = make_cuhk_tree(tmp_path / "cuhk", in_focus_value=0)
    _, out = build(tmp_path, "--size", "8", "--stride", "4", tree=root, layout="cuhk",
                   index_flags=("--mask-in-focus-value", "0"))
    meta = json.loads((out / "meta.json").read_text())
    assert not meta["discard"]["applied"] and "no target" in meta["discard"]["not_applied_because"]
    mask = np.load(out / "train" / "mask.npy")
    assert mask.dtype == np.uint8 and mask.shape[1:] == (8, 8) and set(np.unique(mask)) == {0, 1}
    first = meta["splits"]["train"]["windows"][0]
    assert first[1:] == [0, 0] and (mask[0] == 1).all()          # left half of a CUHK mask is in focus
    assert np.load(out / "val" / "c.npy").shape[0] > 0          # val carved from train by the index stage


def test_image_smaller_than_the_patch_is_named_and_nothing_is_left(tmp_path, capsys):
    root = make_dpdd_tree(tmp_path / "dpdd", size=(24, 32))
    manifest = tmp_path / "m.json"
    main(["index", "mini", "--root", str(root), "--out", str(manifest), "--layout", "dpdd"])
    with pytest.raises(DataError, match=r"train_c/source/1P0A0890\.png: 32x24 \(WxH\) is smaller than the 28px"):
        write_patches(manifest, tmp_path / "patches", PatchSettings(size=28, stride=8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dpdd", "m.json"]
    # through the CLI: one line naming the file and the setting to change, exit code 2
    assert main(["patches", "--manifest", str(manifest), "--out", str(tmp_path / "patches"), "--preset", "smoke",
                 "--presets", str(CONFIG / "presets.yaml"), "--size", "28", "--stride", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "by_layout.dpdd.size" in err and err.count("\n") == 1


# ------------------------------------------------------------------------------------------- whole images
def test_whole_images_are_stored_flat_each_in_its_own_shape_and_never_discarded(tmp_path):
    manifest_path, out = build(tmp_path, "--size", "16", "--stride", "8", "--discard-fraction", "0.5")
    meta = json.loads((out / "meta.json").read_text())
    manifest = load_manifest(manifest_path)
    images = meta["images"]["splits"]["train"]
    assert list(meta["images"]["splits"]) == ["train"] and images["count"] == 2
    # one landscape 24x32 and one portrait 32x24 image, stored one after the other in their own shapes
    entries = images["images"]
    assert [(e["height"], e["width"], e["orientation"]) for e in entries] == [(24, 32, "landscape"),
                                                                             (32, 24, "portrait")]
    assert [e["offset"] for e in entries] == [0, 24 * 32] and images["pixels"] == 2 * 24 * 32
    assert meta["discard"]["applied"] and meta["splits"]["train"]["dropped"] > 0   # windows discarded ...
    assert "never discarded" in meta["images"]["discard"]                           # ... whole images not
    c = np.load(out / "train" / "images" / "c.npy", mmap_mode="r")
    assert c.shape == (2 * 24 * 32, 3) and c.dtype == np.uint16
    assert np.load(out / "train" / "images" / "defocus.npy", mmap_mode="r").shape == (2 * 24 * 32,)
    store = ImageStore(out, "train", ["c", "l", "r", "target", "defocus"], meta)
    for i, e in enumerate(entries):
        full = load_sample(manifest, manifest["samples"][e["sample"]])
        for key in store.keys:
            np.testing.assert_array_equal(store.view(key, i), full[key], err_msg=f"{key} image {i}")
        np.testing.assert_array_equal(store.region("c", i, 3, 9, 2, 14), full["c"][3:9, 2:14])


def test_whole_images_can_be_left_out_and_the_crop_sampler_says_how_to_get_them(tmp_path):
    from pipeline_src.data.image_crops import WholeImageCrops

    _, out = build(tmp_path, "--size", "16", "--stride", "8", "--whole-images")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["images"]["splits"] == {} and not (out / "train" / "images").exists()
    with pytest.raises(DataError, match=r"no whole-image arrays for the 'train' split.*--whole-images train"):
        WholeImageCrops(out, "train", keys=["c"], crop=8)


def make_cuhk_sized_tree(root: Path, count: int = 4) -> Path:
    """CUHK's layout at CUHK's image size (427 x 640), mask in-focus value 255."""
    for i in range(1, count + 1):
        put(root / "image" / f"out_of_focus{i:04d}.jpg", image(427, 640, i))
        put(root / "gt" / f"out_of_focus{i:04d}.png", make_detection_mask(427, 640, 255))
    (root / "split.txt").write_text(f"out_of_focus{count:04d}.jpg\n")   # the last image is the test split
    return root


def test_paper_preset_runs_on_cuhk_sized_detection_images(tmp_path):
    """560-px windows do not fit 427 x 640 images: the paper preset's by_layout gives CUHK 256-px windows."""
    root = make_cuhk_sized_tree(tmp_path / "cuhk")
    manifest = tmp_path / "m.json"
    assert main(["index", "cuhk", "--root", str(root), "--out", str(manifest), "--layout", "cuhk",
                 "--mask-in-focus-value", "255"]) == 0
    out = tmp_path / "patches"
    assert main(["patches", "--manifest", str(manifest), "--out", str(out), "--preset", "paper",
                 "--presets", str(CONFIG / "presets.yaml")]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["size"], meta["stride"], meta["layout"]) == (256, 256, "cuhk")
    train_images = meta["images"]["splits"]["train"]["count"]
    # 427 x 640 at 256 / 256: rows 0, 171 x columns 0, 256, 384 = 6 windows per image
    assert meta["splits"]["train"]["count"] == 6 * train_images > 0
    assert np.load(out / "train" / "images" / "mask.npy", mmap_mode="r").shape == (train_images * 427 * 640,)
    # the setting the by_layout entry replaces would have stopped the stage, naming the image
    with pytest.raises(DataError, match=r"out_of_focus\d{4}\.jpg: 640x427 \(WxH\) is smaller than the 560px"):
        write_patches(manifest, tmp_path / "p560", load_settings(CONFIG / "presets.yaml", "paper", "dpdd"))


# ----------------------------------------------------------------------------------------------- dataset
def dataset_over_identical_views(tmp_path: Path):
    """A patch set whose views are shifted copies of the target (l = c + 1, r = c + 2), so any difference
    in the geometric transform between keys shows up as a value mismatch."""
    from pipeline_src.data.patch_dataset import PatchDataset

    root = make_dpdd_tree(tmp_path / "dpdd", size=(24, 32), defocus=True, layout={"train": ["1P0A0890", "1P0A0900"]})
    for stem, tstem in (("1P0A0890", "1P0A0891"), ("1P0A0900", "1P0A0901")):
        c = read_image(root / "train_c" / "source" / f"{stem}.png") // 2
        put(root / "train_c" / "source" / f"{stem}.png", c)
        put(root / "train_l" / "source" / f"{stem}_L.png", c + 1)
        put(root / "train_r" / "source" / f"{stem}_R.png", c + 2)
        put(root / "train_c" / "target" / f"{tstem}.png", c)
        np.save(root / "train_c" / "defocus" / f"{stem}.npy", c[..., 0].astype(np.float32))
    _, out = build(tmp_path, "--size", "16", "--stride", "8", "--discard-fraction", "0", tree=root)
    return PatchDataset, out


def test_dataset_augments_every_view_identically(tmp_path):
    PatchDataset, out = dataset_over_identical_views(tmp_path)
    ds = PatchDataset(out, "train", crop=12, hflip=True, vflip=True, rot90=True, seed=3)
    assert len(ds) == 12
    seen = set()
    for i in range(len(ds)):
        item = ds[i]
        aug = ds.augmentation(i)
        seen.add((aug["hflip"], aug["vflip"], aug["rot90"]))
        assert item["c"].dtype == torch.float32 and item["c"].shape == (3, 12, 12)
        assert item["defocus"].shape == (1, 12, 12)
        assert 0.0 <= float(item["c"].min()) and float(item["r"].max()) <= 1.0
        step = 1 / 65535
        torch.testing.assert_close(item["l"], item["c"] + step, rtol=0, atol=1e-7)
        torch.testing.assert_close(item["r"], item["c"] + 2 * step, rtol=0, atol=1e-7)
        torch.testing.assert_close(item["target"], item["c"], rtol=0, atol=0)
        torch.testing.assert_close(item["defocus"][0], item["c"][0] * 65535, rtol=0, atol=1e-2)
    assert len(seen) > 3                                                    # the draws do vary


def test_dataset_is_deterministic_for_a_seed_across_workers(tmp_path):
    PatchDataset, out = dataset_over_identical_views(tmp_path)

    def batches(num_workers: int, seed: int, epoch: int):
        ds = PatchDataset(out, "train", keys=["c", "target"], crop=8, hflip=True, rot90=True, seed=seed)
        ds.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=num_workers)
        return torch.cat([b["c"] for b in loader])

    reference = batches(0, seed=7, epoch=1)
    assert torch.equal(reference, batches(2, seed=7, epoch=1))
    assert not torch.equal(reference, batches(0, seed=7, epoch=2))
    assert not torch.equal(reference, batches(0, seed=8, epoch=1))


def test_dataset_rejects_bad_arguments(tmp_path):
    PatchDataset, out = dataset_over_identical_views(tmp_path)
    with pytest.raises(ConfigError, match="crop 17; expected 0 < crop <= window size 16"):
        PatchDataset(out, "train", crop=17)
    with pytest.raises(DataError, match=r"no array\(s\) \['mask'\]"):
        PatchDataset(out, "train", keys=["mask"])
    with pytest.raises(DataError, match="no 'test' windows"):
        PatchDataset(out, "test")
    with pytest.raises(DataError, match="no patch metadata"):
        PatchDataset(tmp_path, "train")
    with pytest.raises(IndexError):
        PatchDataset(out, "train")[12]


def test_windows_read_at_8_bits_are_round_x_over_257(tmp_path):
    PatchDataset, out = dataset_over_identical_views(tmp_path)
    raw = np.load(out / "train" / "c.npy")
    item = PatchDataset(out, "train", keys=["c", "defocus"], seed=0, bit_depth=8)[3]
    want = np.round(raw[3].astype(np.float64) / 257) / 255
    np.testing.assert_allclose(item["c"].numpy().transpose(1, 2, 0), want, atol=1e-6)
    # the defocus map is not an image: left as it is
    np.testing.assert_array_equal(item["defocus"][0].numpy(), np.load(out / "train" / "defocus.npy")[3])


# --------------------------------------------------------------------------------------------- benchmark
def test_benchmark_runs_on_a_tiny_set(tmp_path, capsys):
    _, out = build(tmp_path, "--size", "16", "--stride", "8")
    result_path = tmp_path / "bench.json"
    assert main(["bench-patches", "--patches", str(out), "--reads", "6", "--repeats", "1", "--full-images",
                 "--out", str(result_path)]) == 0
    result = json.loads(result_path.read_text())
    assert result["keys"] == ["c", "l", "r", "target"] and result["reads"] == 6
    assert set(result["results"]) == {"npy", "png-patches", "full-images", "npy-image-crops"}
    for r in result["results"].values():
        assert r["warm_ms_per_read"] > 0 and r["cold_ms_per_read"] > 0
    # four uncompressed 16-bit 16x16x3 patches per read, plus a share of the .npy headers
    assert result["results"]["npy"]["bytes_on_disk_per_read"] == pytest.approx(4 * 16 * 16 * 3 * 2, rel=0.1)
    # the whole images on disk: two 24x32 images, four 16-bit RGB arrays (plus the .npy headers)
    crops = result["results"]["npy-image-crops"]
    assert crops["bytes_on_disk_total"] == pytest.approx(4 * 2 * 24 * 32 * 3 * 2, rel=0.05)
    assert crops["bytes_on_disk_per_read"] is None
    assert crops["warm_times_slower_than_npy"] == pytest.approx(
        crops["warm_ms_per_read"] / result["results"]["npy"]["warm_ms_per_read"])
    printed = capsys.readouterr().out
    assert "png-patches" in printed and "npy-image-crops" in printed
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bench-png-")]   # scratch removed
