"""The synthetic datasets: determinism, layouts, and the physics measured on the generated files.

Everything runs on the smoke preset or smaller (96x128 images, a handful of them).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline_src.cli import main as cli_main
from pipeline_src.data.synthetic import optics
from pipeline_src.data.synthetic.compositing import composite, depth_slices, sharp_psf
from pipeline_src.data.synthetic.defocus import DefocusWriter, render_defocus
from pipeline_src.data.synthetic.detection import IN_FOCUS_VALUE
from pipeline_src.data.synthetic.generate import generate_dataset
from pipeline_src.data.synthetic.motion import render_sequence
from pipeline_src.data.synthetic.noise import NoiseLevel, add_noise
from pipeline_src.data.synthetic.params import Camera, NoiseParams, SplitSize, SynthConfigError, load_preset
from pipeline_src.data.synthetic.scene import Layer, Scene
from pipeline_src.data.synthetic.seeding import item_rng
from pipeline_src.data.synthetic.srgb import encode, linear_to_srgb, srgb_to_linear
from pipeline_src.fileio import read_image, to_float

REPO = Path(__file__).resolve().parents[2]
PRESETS = REPO / "config" / "presets.yaml"


def smoke(kind: str):
    return load_preset(PRESETS, "smoke", kind)


def tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def smoke_sets(tmp_path_factory) -> dict[str, Path]:
    """Each kind generated once through the CLI with the smoke preset (2 worker processes)."""
    base = tmp_path_factory.mktemp("synthetic")
    out = {}
    for kind in ("defocus", "motion", "detection"):
        out[kind] = base / kind
        rc = cli_main(["synthesize", kind, "--preset", "smoke", "--seed", "0", "--out", str(out[kind]),
                       "--workers", "2", "--presets", str(PRESETS)])
        assert rc == 0
    return out


@pytest.fixture(scope="module")
def defocus_stats_set(tmp_path_factory) -> Path:
    """A larger defocus sample (16 images at the smoke size) for the statistical acceptance checks."""
    spec, physics = smoke("defocus")
    spec = dataclasses.replace(spec, splits={"train": SplitSize(16)})
    out = tmp_path_factory.mktemp("stats") / "defocus"
    generate_dataset("defocus", spec, physics, seed=11, out=out, workers=2)
    return out


def defocus_samples(root: Path):
    for src in sorted(root.glob("*_c/source/*.png")):
        split, stem = src.parts[-3][: -len("_c")], src.stem
        yield {
            "source": to_float(read_image(src)),
            "target": to_float(read_image(root / f"{split}_c/target/{stem}.png")),
            "left": to_float(read_image(root / f"{split}_l/source/{stem}_L.png")),
            "right": to_float(read_image(root / f"{split}_r/source/{stem}_R.png")),
            "coc": np.load(root / f"{split}_c/defocus/{stem}.npy"),
        }


# ------------------------------------------------------------------------------------ determinism
@pytest.mark.parametrize("kind", ["defocus", "motion", "detection"])
def test_same_seed_gives_identical_bytes_whatever_the_workers(smoke_sets, tmp_path, kind):
    spec, physics = smoke(kind)
    serial = tmp_path / "serial"
    generate_dataset(kind, spec, physics, seed=0, out=serial, workers=1, preset="smoke")
    assert tree_hashes(serial) == tree_hashes(smoke_sets[kind])


def test_another_seed_gives_other_images(smoke_sets, tmp_path):
    spec, physics = smoke("defocus")
    other = tmp_path / "seed1"
    generate_dataset("defocus", spec, physics, seed=1, out=other, workers=1, preset="smoke")
    a, b = tree_hashes(smoke_sets["defocus"]), tree_hashes(other)
    assert a.keys() == b.keys()
    images = [k for k in a if k.endswith(".png")]
    assert all(a[k] != b[k] for k in images)


def test_item_generators_differ_by_kind_split_and_index():
    draws = {(k, s, i): item_rng(0, k, s, i).integers(1 << 62)
             for k in ("defocus", "motion") for s in ("train", "test") for i in (0, 1)}
    assert len(set(draws.values())) == len(draws)
    assert item_rng(5, "defocus", "train", 3).integers(1 << 62) == item_rng(5, "defocus", "train", 3).integers(1 << 62)


# ------------------------------------------------------------------------------------------ layouts
def test_defocus_layout_is_dpdd_with_16_bit_views_and_float_coc_maps(smoke_sets):
    root = smoke_sets["defocus"]
    spec, _ = smoke("defocus")
    for split, size in spec.splits.items():
        n = size.images
        assert len(list((root / f"{split}_c/source").glob("*.png"))) == n
        assert len(list((root / f"{split}_c/target").glob("*.png"))) == n
        assert len(list((root / f"{split}_l/source").glob("*_L.png"))) == n
        assert len(list((root / f"{split}_r/source").glob("*_R.png"))) == n
        assert len(list((root / f"{split}_c/defocus").glob("*.npy"))) == n
    img = read_image(root / "train_l/source/train0000_L.png")
    assert img.dtype == np.uint16 and img.shape == (spec.height, spec.width, 3)
    coc = np.load(root / "train_c/defocus/train0000.npy")
    assert coc.dtype == np.float32 and coc.shape == (spec.height, spec.width)
    meta = json.loads((root / "meta.json").read_text())
    assert meta["kind"] == "defocus" and meta["seed"] == 0 and meta["preset"] == "smoke"
    assert meta["counts"] == {"train": 4, "val": 2, "test": 2}
    assert meta["physics"]["camera"]["f_number"] > 0 and len(meta["samples"]) == 8
    assert not list(root.parent.glob(".*partial"))


def test_motion_layout_is_gopro_with_8_bit_frames(smoke_sets):
    root = smoke_sets["motion"]
    spec, _ = smoke("motion")
    for split, size in spec.splits.items():
        sequences = sorted(p for p in (root / split).iterdir() if p.is_dir())
        assert len(sequences) == size.sequences
        frames = [f for seq in sequences for f in sorted((seq / "blur").glob("*.png"))]
        assert len(frames) == size.images
        assert all((f.parent.parent / "sharp" / f.name).is_file() for f in frames)
        assert frames[0].name == "000001.png"
    frame = read_image(next(root.glob("train/*/blur/000001.png")))
    assert frame.dtype == np.uint8 and frame.shape == (spec.height, spec.width, 3)


def test_detection_layout_is_cuhk_with_binary_masks_matching_the_coc(smoke_sets):
    root = smoke_sets["detection"]
    spec, physics = smoke("detection")
    images = sorted((root / "image").glob("out_of_focus*.jpg"))
    assert [p.name for p in images] == [f"out_of_focus{i:04d}.jpg" for i in range(1, spec.total_images() + 1)]
    threshold = physics.detection.in_focus_coc_px
    for img in images:
        mask = read_image(root / "gt" / f"{img.stem}.png", color=False)
        coc = np.load(root / "defocus" / f"{img.stem}.npy")
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, IN_FOCUS_VALUE}
        np.testing.assert_array_equal(mask == IN_FOCUS_VALUE, np.abs(coc) < threshold)
        assert read_image(img).shape == (spec.height, spec.width, 3)
    test_names = (root / "split.txt").read_text().split()
    assert test_names == [p.name for p in images[-spec.splits["test"].images:]]
    assert "255" in (root / "README.txt").read_text()
    assert json.loads((root / "meta.json").read_text())["conventions"]["mask_in_focus_value"] == 255


@pytest.mark.parametrize("kind,layout", [("defocus", "dpdd"), ("motion", "gopro"), ("detection", "cuhk")])
def test_the_real_layout_parsers_read_the_synthetic_sets(smoke_sets, kind, layout):
    from pipeline_src.data.layouts import parse_layout

    scan = parse_layout(layout, smoke_sets[kind])
    spec, _ = smoke(kind)
    assert len(scan.samples) == spec.total_images()
    if kind == "defocus":
        assert all(s.defocus and s.target for s in scan.samples)


# -------------------------------------------------------------------- physics, measured on the data
def test_error_between_blurred_and_sharp_grows_with_the_defocus_map(defocus_stats_set):
    from scipy.stats import spearmanr

    errors, cocs = [], []
    for s in defocus_samples(defocus_stats_set):
        errors.append(np.abs(s["source"] - s["target"]).mean(axis=2).ravel())
        cocs.append(np.abs(s["coc"]).ravel())
    err, coc = np.concatenate(errors), np.concatenate(cocs)
    assert spearmanr(coc, err).statistic > 0.3
    # Bins of one pixel of CoC radius around the rendered values (multiples of 0.5 px): in focus, ~1 px,
    # ~2 px are well populated at this size and must increase. Larger radii are rare here, and once the
    # blur is wider than the texture the error saturates, so they need only stay well above in-focus.
    edges = [0.0, 0.75, 1.75, 2.75, 3.75, np.inf]
    means = [float(err[(coc >= lo) & (coc < hi)].mean()) if ((coc >= lo) & (coc < hi)).sum() >= 5000 else None
             for lo, hi in zip(edges[:-1], edges[1:])]
    assert None not in means[:3], means
    assert means[0] < means[1] < means[2], means
    assert all(m > 3 * means[0] for m in means[2:] if m is not None), means


def test_pixels_at_the_focal_depth_stay_close_to_the_target(defocus_stats_set):
    in_focus, blurred = [], []
    for s in defocus_samples(defocus_stats_set):
        err = np.abs(s["source"] - s["target"]).mean(axis=2)
        in_focus.append(err[np.abs(s["coc"]) < 0.5])
        blurred.append(err[np.abs(s["coc"]) >= 1.5])
    in_focus, blurred = np.concatenate(in_focus), np.concatenate(blurred)
    assert in_focus.size > 1000
    assert np.median(in_focus) < 0.01           # sensor noise only (16-bit sRGB values in [0, 1])
    assert np.median(in_focus) < 0.5 * np.median(blurred)


def _horizontal_shift(left: np.ndarray, right: np.ndarray, region: np.ndarray, max_shift: int = 4) -> float:
    """Sub-pixel shift d minimising |L(x) - R(x + d)| over the region: d > 0 when R sits right of L."""
    region = region.copy()
    region[:, :max_shift] = region[:, -max_shift:] = False
    cost = np.array([np.abs(left - np.roll(right, -d, axis=1))[region].mean()
                     for d in range(-max_shift, max_shift + 1)])
    k = int(np.clip(np.argmin(cost), 1, len(cost) - 2))
    c_minus, c0, c_plus = cost[k - 1: k + 2]
    # Vertex of the parabola through the three costs around the minimum.
    return k - max_shift + 0.5 * (c_minus - c_plus) / max(c_minus - 2 * c0 + c_plus, 1e-12)


def test_left_and_right_views_shift_opposite_ways_on_either_side_of_the_focal_plane(defocus_stats_set):
    found = {"behind": [], "front": []}
    for s in defocus_samples(defocus_stats_set):
        left, right, coc = s["left"].mean(axis=2), s["right"].mean(axis=2), s["coc"]
        for side, region in (("behind", coc >= 1.0), ("front", coc <= -1.0)):
            if region.sum() >= 300:
                found[side].append(_horizontal_shift(left, right, region))
    assert len(found["behind"]) >= 3 and len(found["front"]) >= 3, found
    # Behind the focal plane content moves left in L and right in R (optics.py): L(x) = R(x + d) with d > 0;
    # a half-disc's centroid sits 4r / (3 pi) from the centre, so d is about 0.85 r (>= 0.85 px here).
    assert all(d > 0 for d in found["behind"]), found
    assert all(d < 0 for d in found["front"]), found
    assert np.median(found["behind"]) > 0.5 and np.median(found["front"]) < -0.5, found


def test_combined_view_is_the_mean_of_the_two_views_in_linear_light(smoke_sets):
    for s in defocus_samples(smoke_sets["defocus"]):
        lin = [srgb_to_linear(s[k]) for k in ("left", "right", "source")]
        np.testing.assert_allclose(lin[2], 0.5 * (lin[0] + lin[1]), atol=2e-4)


def test_in_focus_pixels_away_from_blurred_surfaces_equal_the_target_without_noise():
    from scipy import ndimage

    spec, physics = smoke("defocus")
    physics = dataclasses.replace(physics, noise=NoiseParams((0.0, 0.0), (0.0, 0.0)))
    checked = 0
    for i in range(4):
        r = render_defocus(item_rng(3, "defocus", "train", i), spec.height, spec.width, physics, spec.coc_step_px)
        blurred = np.abs(r.coc_px) >= 1.0
        reach = int(np.abs(r.coc_px).max()) + 2
        far_from_blur = ndimage.distance_transform_edt(~blurred) > reach
        far_from_blur[:reach] = far_from_blur[-reach:] = False       # blurred surfaces just outside the frame
        far_from_blur[:, :reach] = far_from_blur[:, -reach:] = False
        sel = (np.abs(r.coc_px) < 0.75) & far_from_blur
        np.testing.assert_allclose(r.combined[sel], r.sharp[sel], atol=1e-5)
        checked += int(sel.sum())
    assert checked > 1000


# --------------------------------------------------------------------------------- optics, compositing
def test_thin_lens_coc_matches_the_distance_formula_and_its_sign():
    camera = Camera(focal_length_mm=50.0, f_number=2.0, sensor_width_mm=36.0)
    width, z_focus = 1000, 1.5
    pitch = 36e-3 / width
    for z in (0.8, 3.0, 100.0):
        f = 0.05
        diameter = f * f / (2.0 * (z_focus - f)) * abs(z - z_focus) / z
        r = optics.signed_coc_px(1.0 / z, 1.0 / z_focus, camera, width)
        assert math.isclose(abs(r), diameter / 2.0 / pitch, rel_tol=1e-9)
        assert (r > 0) == (z > z_focus)
    assert optics.signed_coc_px(1.0 / z_focus, 1.0 / z_focus, camera, width) == 0.0


def test_half_disc_psfs_swap_across_the_focal_plane_and_sum_to_the_disc():
    for radius in (1.5, 3.0, 6.5):
        behind_l, behind_r = optics.dual_pixel_psfs(radius)
        front_l, front_r = optics.dual_pixel_psfs(-radius)
        assert optics.psf_centroid_x(behind_l) < 0 < optics.psf_centroid_x(behind_r)
        assert optics.psf_centroid_x(front_l) > 0 > optics.psf_centroid_x(front_r)
        np.testing.assert_allclose(0.5 * (behind_l + behind_r), optics.disc_psf(radius), atol=1e-7)
        assert math.isclose(float(optics.disc_psf(radius).sum()), 1.0, rel_tol=1e-6)
    assert optics.disc_psf(0.4).shape == (1, 1)
    with pytest.raises(ValueError, match="half="):
        optics.disc_psf(2.0, "top")


def test_convolution_moves_a_point_towards_the_psf_centroid():
    from pipeline_src.data.synthetic.compositing import convolve

    point = np.zeros((21, 21, 4), np.float32)
    point[10, 10] = 1.0
    out = convolve(point, optics.disc_psf(4.0, "right"))[..., 0]
    cols = np.arange(21) - 10
    assert (out.sum(axis=0) * cols).sum() / out.sum() > 1.0


def _flat_layer(h, w, colour, alpha, diopters, label):
    a = np.asarray(alpha, np.float32)
    return Layer(np.asarray(colour, np.float32) * a[..., None], a, np.full((h, w), diopters, np.float32), label)


def test_compositing_is_occlusion_aware():
    h, w = 40, 60
    box = np.zeros((h, w), np.float32)
    box[10:30, 20:40] = 1.0
    background = _flat_layer(h, w, (0.2, 0.2, 0.2), np.ones((h, w)), 0.2, "bg")
    near = _flat_layer(h, w, (0.9, 0.1, 0.1), box, 1.0, "near")
    gain = 5.0
    # Focus on the near box: the blurred background must not leak into it.
    slices, coc = depth_slices(Scene((background, near), 1.0, {}), gain, 0.5)
    out = composite(slices, {"c": optics.disc_psf}, (h, w))["c"]
    np.testing.assert_allclose(out[12:28, 22:38], np.broadcast_to([0.9, 0.1, 0.1], (16, 16, 3)), atol=1e-6)
    assert coc[20, 30] == 0.0 and coc[0, 0] == pytest.approx(4.0)
    # Focus on the background: the blurred near box spreads over it, beyond the box's own edge.
    slices, coc = depth_slices(Scene((background, near), 0.2, {}), gain, 0.5)
    out = composite(slices, {"c": optics.disc_psf, "sharp": sharp_psf}, (h, w))
    assert out["c"][20, 17, 0] > 0.25 and out["sharp"][20, 17, 0] == pytest.approx(0.2)
    assert coc[20, 30] == pytest.approx(-4.0) and coc[0, 0] == 0.0


# -------------------------------------------------------------------------------------------- motion
def test_motion_blur_is_the_mean_of_the_sub_frames_in_linear_light(tmp_path):
    spec, physics = smoke("motion")
    physics = dataclasses.replace(physics, noise=NoiseParams((0.0, 0.0), (0.0, 0.0)))
    spec = dataclasses.replace(spec, splits={"train": SplitSize(3, 1)})
    out = tmp_path / "motion"
    generate_dataset("motion", spec, physics, seed=4, out=out, workers=1)
    frames = list(render_sequence(item_rng(4, "motion", "train", 0), 3, spec.height, spec.width, physics,
                                  keep_subframes=True))
    lo, hi = physics.motion.subframes
    moved = 0
    for f in frames:
        n = len(f.subframes)
        assert lo <= n <= hi and f.info["subframes"] == n
        np.testing.assert_allclose(f.blur_clean, np.mean(f.subframes, axis=0), atol=1e-6)
        np.testing.assert_array_equal(f.sharp, f.subframes[n // 2])
        name = f"{f.info['frame']:06d}.png"
        np.testing.assert_array_equal(read_image(out / "train/train0000/blur" / name), encode(f.blur_clean, 8))
        np.testing.assert_array_equal(read_image(out / "train/train0000/sharp" / name), encode(f.sharp, 8))
        moved += f.info["max_shift_from_middle_px"] > 0.5
        # Averaging in linear light, not in sRGB: the two differ wherever the sub-frames differ.
        if f.info["max_shift_from_middle_px"] > 0.5:
            gamma_mean = np.mean([linear_to_srgb(s) for s in f.subframes], axis=0)
            assert np.abs(linear_to_srgb(f.blur_clean) - gamma_mean).max() > 1e-3
    assert moved >= 1


# --------------------------------------------------------------------------------------- noise, sRGB
def test_noise_variance_follows_the_poisson_gaussian_model():
    rng = np.random.default_rng(0)
    level = NoiseLevel(shot_gain=1e-3, read_variance=1e-5)
    for x in (0.1, 0.5):
        flat = np.full((200, 200, 3), x, np.float32)
        var = float(np.var(add_noise(flat, level, rng) - flat))
        assert var == pytest.approx(1e-3 * x + 1e-5, rel=0.05)


def test_srgb_curve_values_and_round_trip():
    assert float(linear_to_srgb(np.float32(0.5))) == pytest.approx(0.7353569, abs=1e-6)
    assert float(srgb_to_linear(np.float32(0.5))) == pytest.approx(0.2140411, abs=1e-6)
    x = np.linspace(0, 1, 1001, dtype=np.float32)
    np.testing.assert_allclose(srgb_to_linear(linear_to_srgb(x)), x, atol=1e-6)
    assert encode(np.ones((1, 1, 3), np.float32), 16).max() == 65535
    with pytest.raises(ValueError, match="bits=12"):
        encode(x, 12)


# ----------------------------------------------------------------------------------------- bad input
def test_unknown_kind_is_rejected_by_the_command_line(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["synthesize", "blurry", "--preset", "smoke", "--out", "x"])
    assert exc.value.code == 2
    assert "invalid choice: 'blurry'" in capsys.readouterr().err


def test_unknown_preset_names_the_file_and_the_known_presets(tmp_path, capsys):
    rc = cli_main(["synthesize", "defocus", "--preset", "huge", "--out", str(tmp_path / "x"),
                   "--presets", str(PRESETS)])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown preset 'huge'" in err and "smoke" in err and str(PRESETS) in err
    assert not (tmp_path / "x").exists()


def test_negative_seed_is_rejected(tmp_path, capsys):
    rc = cli_main(["synthesize", "defocus", "--preset", "smoke", "--seed", "-1", "--out", str(tmp_path / "x"),
                   "--presets", str(PRESETS)])
    assert rc == 2 and "--seed -1" in capsys.readouterr().err


@pytest.mark.parametrize("edit,message", [
    (lambda s: s["physics"]["scene"].update(photo_background_probability=1.5), "expected a probability"),
    (lambda s: s["physics"]["camera"].pop("f_number"), "missing ['f_number']"),
    (lambda s: s["physics"]["noise"].update(shot_gain=[1e-3, 1e-4]), "expected low <= high"),
    (lambda s: s["motion"]["splits"].update(val={"sequences": 1, "frames": 2}), "unknown split for motion"),
    (lambda s: s["defocus"].update(size=[8, 128]), "integers >= 32"),
    (lambda s: s["physics"]["scene"].update(object_diopters=[0.5, 1.6]), "must lie nearer"),
])
def test_bad_parameters_name_the_key(tmp_path, edit, message):
    import yaml

    presets = yaml.safe_load(PRESETS.read_text())
    section = presets["smoke"]["synthesize"]
    edit(section)
    path = tmp_path / "presets.yaml"
    path.write_text(yaml.safe_dump(presets))
    with pytest.raises(SynthConfigError) as exc:
        for kind in ("defocus", "motion"):
            load_preset(path, "smoke", kind)
    assert message in str(exc.value) and str(path) in str(exc.value)


# ------------------------------------------------------------------------------------------ atomicity
def test_a_failed_run_leaves_no_folder_and_keeps_the_previous_one(tmp_path, monkeypatch):
    spec, physics = smoke("defocus")
    out = tmp_path / "set"
    calls = {"n": 0}
    real_render = DefocusWriter.render

    def render_then_fail(self, task, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full (simulated)")
        return real_render(self, task, *args)

    monkeypatch.setattr(DefocusWriter, "render", render_then_fail)
    with pytest.raises(OSError, match="disk full"):
        generate_dataset("defocus", spec, physics, seed=0, out=out, workers=1)
    assert not out.exists() and list(tmp_path.iterdir()) == []

    out.mkdir()
    (out / "previous.txt").write_text("kept")
    calls["n"] = 0
    with pytest.raises(OSError, match="disk full"):
        generate_dataset("defocus", spec, physics, seed=0, out=out, workers=1)
    assert [p.name for p in out.iterdir()] == ["previous.txt"]


def test_a_killed_run_leaves_nothing_under_the_final_name(tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "pipeline_src", "synthesize", "defocus", "--preset", "default", "--seed", "0",
           "--out", str(out), "--workers", "1", "--presets", str(PRESETS)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            partial = [p for p in tmp_path.glob(".killed.*.partial") if any(p.rglob("*.png"))]
            if partial or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()
        assert partial, "the run never started writing"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert not out.exists()
