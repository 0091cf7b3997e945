"""Crops from whole images (`sampling: whole_images`): the pixels are the stored ones, every key gets the same
geometry, the draws are a pure function of (seed, epoch, index), the resize/rotate path maps pixels where its
matrix says and keeps masks binary, and bad recipes or data are refused by name."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline_src.cli import main
from pipeline_src.config import ConfigError
from pipeline_src.data.augment import Augment, footprint_half_extent, inverse_affine
from pipeline_src.data.image_crops import WholeImageCrops
from pipeline_src.data.sampling import SAMPLINGS, build_training_set
from pipeline_src.data.whole_images import ImageStore
from tests.data.test_manifest import CONFIG, make_dpdd_tree, put


def cut(tmp_path: Path, root: Path, *flags: str) -> Path:
    manifest, out = tmp_path / "m.json", tmp_path / "patches"
    assert main(["index", "mini", "--root", str(root), "--out", str(manifest), "--layout", "dpdd"]) == 0
    assert main(["patches", "--manifest", str(manifest), "--out", str(out), "--preset", "smoke",
                 "--presets", str(CONFIG / "presets.yaml"), "--size", "16", "--stride", "8", *flags]) == 0
    return out


@pytest.fixture
def shifted_views(tmp_path) -> Path:
    """DPDD tree (one landscape 40x56 and one portrait 56x40 train image) whose l = c + 1, r = c + 2 and
    target = c, so any difference in geometry between keys shows up as a value mismatch."""
    from pipeline_src.fileio import read_image

    root = make_dpdd_tree(tmp_path / "dpdd", size=(40, 56), defocus=True,
                          layout={"train": ["1P0A0890", "1P0A0900"], "val": ["1P0A0910"]})
    for split, stem, tstem in (("train", "1P0A0890", "1P0A0891"), ("train", "1P0A0900", "1P0A0901"),
                               ("val", "1P0A0910", "1P0A0911")):
        c = read_image(root / f"{split}_c" / "source" / f"{stem}.png") // 2
        put(root / f"{split}_c" / "source" / f"{stem}.png", c)
        put(root / f"{split}_l" / "source" / f"{stem}_L.png", c + 1)
        put(root / f"{split}_r" / "source" / f"{stem}_R.png", c + 2)
        put(root / f"{split}_c" / "target" / f"{tstem}.png", c)
    return cut(tmp_path, root)


@pytest.fixture
def coordinate_images(tmp_path) -> Path:
    """Views whose red channel is 100 x column and green channel 100 x row (linear ramps: bilinear resampling of
    them is exact), so a resampled crop shows which source position each output pixel came from."""
    root = make_dpdd_tree(tmp_path / "dpdd", size=(48, 64), layout={"train": ["1P0A0890", "1P0A0900"],
                                                                     "val": ["1P0A0910"]})
    for split, stem, tstem in (("train", "1P0A0890", "1P0A0891"), ("train", "1P0A0900", "1P0A0901"),
                               ("val", "1P0A0910", "1P0A0911")):
        h, w = (64, 48) if stem == "1P0A0900" else (48, 64)
        yy, xx = np.mgrid[0:h, 0:w]
        ramp = np.stack([100 * xx, 100 * yy, np.full_like(xx, 777)], axis=-1).astype(np.uint16)
        for view, name in (("c", f"{stem}.png"), ("l", f"{stem}_L.png"), ("r", f"{stem}_R.png")):
            put(root / f"{split}_{view}" / "source" / name, ramp)
        put(root / f"{split}_c" / "target" / f"{tstem}.png", ramp)
    return cut(tmp_path, root)


def test_plain_crops_are_the_stored_pixels_at_the_drawn_position(shifted_views):
    meta = json.loads((shifted_views / "meta.json").read_text())
    keys = ["c", "l", "r", "target", "defocus"]
    store = ImageStore(shifted_views, "train", keys, meta)
    ds = WholeImageCrops(shifted_views, "train", keys=keys, crop=24, seed=5)
    assert len(ds) == 2                                   # one item per training image
    positions = set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            d, item = ds.draws(i), ds[i]
            e = store.entries[i]
            assert 0 <= d["y"] <= e.height - 24 and 0 <= d["x"] <= e.width - 24
            positions.add((i, d["y"], d["x"]))
            for key in keys:
                stored = store.view(key, i)[d["y"]:d["y"] + 24, d["x"]:d["x"] + 24]
                scale = 65535.0 if key != "defocus" else 1.0
                want = stored.astype(np.float32).reshape(24, 24, -1).transpose(2, 0, 1) / scale
                np.testing.assert_allclose(item[key].numpy(), want, rtol=0, atol=1e-7, err_msg=key)
            step = 1 / 65535
            torch.testing.assert_close(item["l"], item["c"] + step, rtol=0, atol=1e-7)
            torch.testing.assert_close(item["r"], item["c"] + 2 * step, rtol=0, atol=1e-7)
    assert len(positions) > 4                             # positions vary with the epoch


def test_draws_are_a_pure_function_of_seed_epoch_and_index_in_any_worker(shifted_views):
    aug = Augment(hflip=True, vflip=True, rot90=True, scale=(0.8, 1.2), rotate_degrees=10.0)

    def epoch_items(num_workers: int, seed: int, epoch: int, augment: Augment):
        ds = WholeImageCrops(shifted_views, "train", keys=["c", "target"], crop=16, augment=augment, seed=seed)
        ds.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=num_workers)
        return torch.cat([b["c"] for b in loader])

    for augment in (Augment(hflip=True), aug):
        reference = epoch_items(0, seed=7, epoch=1, augment=augment)
        assert torch.equal(reference, epoch_items(2, seed=7, epoch=1, augment=augment))
        assert torch.equal(reference, epoch_items(0, seed=7, epoch=1, augment=augment))
        assert not torch.equal(reference, epoch_items(0, seed=7, epoch=2, augment=augment))
        assert not torch.equal(reference, epoch_items(0, seed=8, epoch=1, augment=augment))
    # the flags decide what is applied, not what is drawn: the crop position does not move with them
    plain = WholeImageCrops(shifted_views, "train", crop=16, seed=3)
    flipped = WholeImageCrops(shifted_views, "train", crop=16, augment=Augment(hflip=True, rot90=True), seed=3)
    assert [(plain.draws(i)["y"], plain.draws(i)["x"]) for i in range(2)] == \
           [(flipped.draws(i)["y"], flipped.draws(i)["x"]) for i in range(2)]


def test_resampled_crops_map_pixels_where_the_affine_matrix_says(coordinate_images):
    ds = WholeImageCrops(coordinate_images, "train", keys=["c", "l", "target"], crop=20,
                         augment=Augment(scale=(0.7, 1.4), rotate_degrees=30.0), seed=0)
    store = ds.store
    seen_angles, seen_scales = set(), set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            d, item = ds.draws(i), ds[i]
            e = store.entries[i]
            seen_angles.add(round(d["angle"], 3)), seen_scales.add(round(d["scale"], 3))
            assert abs(math.degrees(d["angle"])) <= 30 and 0.7 <= d["scale"] <= 1.4
            # the turned, scaled crop stays inside the image: no mirrored border in the output
            half = footprint_half_extent(20, d["scale"], d["angle"])
            assert half - 1e-9 <= d["cx"] <= e.width - 1 - half + 1e-9
            assert half - 1e-9 <= d["cy"] <= e.height - 1 - half + 1e-9
            m = inverse_affine(20, d["scale"], d["angle"], d["cx"], d["cy"])
            v, u = np.mgrid[0:20, 0:20]
            src_x = m[0, 0] * u + m[0, 1] * v + m[0, 2]
            src_y = m[1, 0] * u + m[1, 1] * v + m[1, 2]
            got = item["c"].numpy() * 65535
            # bilinear weights are quantised to 1/32 pixel by OpenCV: within 100 * 1/32 of the ramp
            np.testing.assert_allclose(got[0], 100 * src_x, atol=100 / 32 + 0.5)
            np.testing.assert_allclose(got[1], 100 * src_y, atol=100 / 32 + 0.5)
            np.testing.assert_allclose(got[2], 777, atol=0.5)
            for key in ("l", "target"):                   # every key gets the same geometry
                torch.testing.assert_close(item[key], item["c"], rtol=0, atol=0)
    assert len(seen_angles) > 6 and len(seen_scales) > 6


def test_resampled_masks_stay_binary_and_follow_the_image(tmp_path):
    """Detection: the mask is resampled nearest-neighbour with the image's geometry, so it stays 0/1."""
    from tests.data.test_patches import make_cuhk_sized_tree

    root = make_cuhk_sized_tree(tmp_path / "cuhk", count=3)
    manifest, out = tmp_path / "m.json", tmp_path / "patches"
    assert main(["index", "cuhk", "--root", str(root), "--out", str(manifest), "--layout", "cuhk",
                 "--mask-in-focus-value", "255"]) == 0
    assert main(["patches", "--manifest", str(manifest), "--out", str(out), "--preset", "paper",
                 "--presets", str(CONFIG / "presets.yaml")]) == 0
    ds = build_training_set("whole_images", out, keys=["c", "mask"], crop=256,
                            augment={"hflip": True, "scale": [0.75, 1.25], "rotate_degrees": 10.0}, seed=1)
    seen = set()
    for epoch, i in [(epoch, i) for epoch in range(6) for i in range(len(ds))]:
        ds.set_epoch(epoch)
        item = ds[i]
        mask = item["mask"][0].numpy()
        assert item["mask"].shape == (1, 256, 256) and set(np.unique(mask)) <= {0.0, 1.0}
        seen |= set(np.unique(mask).tolist())
        d = ds.draws(i)
        # the synthetic mask is in focus on the left half of the image: the crop's in-focus pixels are those
        # whose source column (from the crop's matrix) lies left of the middle, flips applied after
        m = inverse_affine(256, d["scale"], d["angle"], d["cx"], d["cy"])
        v, u = np.mgrid[0:256, 0:256]
        left = (m[0, 0] * u + m[0, 1] * v + m[0, 2]) < 320 - 0.5
        if d["hflip"]:
            left = left[:, ::-1]
        far = np.abs((m[0, 0] * u + m[0, 1] * v + m[0, 2]) - 319.5) > 1.5   # away from the mask's edge
        if d["hflip"]:
            far = far[:, ::-1]
        np.testing.assert_array_equal(mask[far], left[far].astype(np.float32))
    assert seen == {0.0, 1.0}


def test_a_crop_needs_images_that_hold_it(shifted_views):
    with pytest.raises(ConfigError, match=r"image '1P0A0890' is 56x40 \(WxH\), smaller than the 48px crop"):
        WholeImageCrops(shifted_views, "train", crop=48)
    WholeImageCrops(shifted_views, "train", crop=40)   # the short side of both images


def test_bit_depth_is_read_as_the_recipe_says(shifted_views):
    meta = json.loads((shifted_views / "meta.json").read_text())
    store = ImageStore(shifted_views, "train", ["c"], meta)
    ds = WholeImageCrops(shifted_views, "train", keys=["c"], crop=16, seed=2, bit_depth=8)
    d = ds.draws(1)
    raw = store.view("c", 1)[d["y"]:d["y"] + 16, d["x"]:d["x"] + 16].astype(np.float64)
    np.testing.assert_allclose(ds[1]["c"].numpy().transpose(1, 2, 0), np.round(raw / 257) / 255, atol=1e-6)
    tree8 = make_dpdd_tree(shifted_views.parent / "dpdd8", size=(24, 32), bits=8,
                           layout={"train": ["1P0A0890"], "val": ["1P0A0910"]})
    out8 = cut(shifted_views.parent / "eight", tree8)
    with pytest.raises(ConfigError, match="reads 16-bit data, the patches are 8-bit"):
        WholeImageCrops(out8, "train", keys=["c"], crop=8, bit_depth=16)


def test_sampling_registry_and_augment_spec_refuse_bad_recipes(shifted_views):
    assert SAMPLINGS.names() == ["whole_images", "windows"]
    with pytest.raises(ConfigError, match=r"phase\.sampling = 'tiles'; known: whole_images, windows"):
        build_training_set("tiles", shifted_views, keys=["c"], crop=8, augment=None, seed=0)
    with pytest.raises(ConfigError, match="need `sampling: whole_images`"):
        build_training_set("windows", shifted_views, keys=["c"], crop=8, augment={"rotate_degrees": 5}, seed=0)
    windows = build_training_set("windows", shifted_views, keys=["c"], crop=8, augment={"hflip": True}, seed=0)
    assert type(windows).__name__ == "PatchDataset" and windows.hflip
    for spec, match in [({"scale": [1.2, 0.8]}, r"augment\.scale = \[1\.2, 0\.8\]"),
                        ({"scale": [0, 1]}, r"augment\.scale"),
                        ({"rotate_degrees": 90}, r"augment\.rotate_degrees = 90"),
                        ({"hflip": "yes"}, r"augment\.hflip = 'yes'"),
                        ({"shear": 3}, r"unknown key\(s\) \['shear'\]")]:
        with pytest.raises(ConfigError, match=match):
            Augment.from_recipe(spec)
    assert Augment.from_recipe({"scale": [0.75, 1.25], "rotate_degrees": 10}).resamples
    assert not Augment.from_recipe({"hflip": True, "vflip": True, "rot90": True}).resamples
