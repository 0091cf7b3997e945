"""Baselines: Wiener / Richardson-Lucy with a disc PSF beat the blurry input; radius from map or estimate."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from skimage import data

from pipeline_src.evaluate.baselines import disc_kernel, estimate_disc_radius, richardson_lucy, run_baseline, wiener
from pipeline_src.evaluate.metrics import psnr
from pipeline_src.evaluate.protocols import load_protocols

SETTINGS = load_protocols(Path(__file__).resolve().parents[2] / "config" / "protocols.yaml").baseline_settings


def _blurred(radius: float, noise: float = 0.002):
    """A 128 px crop of skimage's astronaut, disc-blurred, with a little noise, on the 8-bit grid."""
    sharp = data.astronaut()[120:248, 150:278].astype(np.float64) / 255
    k = disc_kernel(radius)
    blurry = np.stack([ndimage.convolve(sharp[..., c], k, mode="reflect") for c in range(3)], axis=-1)
    blurry += noise * np.random.default_rng(0).standard_normal(blurry.shape)
    return sharp, np.round(np.clip(blurry, 0, 1) * 255) / 255


def test_disc_kernel_sums_to_one_and_is_round():
    k = disc_kernel(3.0)
    assert k.shape == (7, 7) and abs(k.sum() - 1) < 1e-9
    np.testing.assert_allclose(k, k.T, atol=1e-12)
    assert disc_kernel(0.3).shape == (1, 1)
    k[0, 0] = 1.0  # a copy: the generator's cached kernel must not change
    assert disc_kernel(3.0)[0, 0] != 1.0


@pytest.mark.parametrize("radius", [2.0, 4.0])
def test_wiener_with_the_true_radius_beats_the_blurry_input(radius):
    sharp, blurry = _blurred(radius)
    restored = np.clip(wiener(blurry, radius, SETTINGS["wiener"]["balance"]), 0, 1).astype(np.float64)
    assert restored.shape == blurry.shape
    assert psnr(restored, sharp) > psnr(blurry, sharp) + 1.0


def test_richardson_lucy_with_the_true_radius_beats_the_blurry_input():
    sharp, blurry = _blurred(3.0)
    restored = np.clip(richardson_lucy(blurry, 3.0, 15), 0, 1).astype(np.float64)
    assert psnr(restored, sharp) > psnr(blurry, sharp) + 0.5


def test_radius_comes_from_the_defocus_map_when_there_is_one():
    sharp, blurry = _blurred(3.0)
    coc = np.full(blurry.shape[:2], -3.0, np.float32)  # signed CoC: in front of the focal plane
    coc[:10] = 50.0
    out = run_baseline("wiener", blurry.astype(np.float32), coc, SETTINGS)
    assert out.radius_px == 3.0 and out.radius_source == "defocus map median |CoC|"
    assert psnr(np.clip(out.image, 0, 1).astype(np.float64), sharp) > psnr(blurry, sharp)


@pytest.mark.parametrize("radius", [2.0, 4.0, 6.0])
def test_edge_estimate_is_near_the_true_radius(radius):
    _, blurry = _blurred(radius)
    assert 0.6 * radius < estimate_disc_radius(blurry) < 1.5 * radius


def test_without_a_map_the_radius_is_estimated_and_in_focus_images_are_left_alone():
    _, blurry = _blurred(4.0)
    out = run_baseline("wiener", blurry.astype(np.float32), None, SETTINGS)
    assert out.radius_source.startswith("edge estimate") and 2.4 < out.radius_px < 6.0
    flat = np.full((40, 40, 3), 0.5, np.float32)
    assert estimate_disc_radius(flat) == 0.0  # no edges at all
    kept = run_baseline("wiener", flat, None, SETTINGS)
    assert kept.radius_px == 0.0 and np.array_equal(kept.image, flat)


def test_input_baseline_is_the_image_itself():
    img = np.random.default_rng(1).random((9, 11, 3)).astype(np.float32)
    out = run_baseline("input", img, None, SETTINGS)
    assert np.array_equal(out.image, img) and out.radius_px is None


def test_bad_baseline_inputs_are_refused():
    img = np.zeros((8, 8, 3), np.float32)
    with pytest.raises(KeyError, match="unknown baseline 'deconv'; known: input, wiener, richardson_lucy"):
        run_baseline("deconv", img, None, SETTINGS)
    with pytest.raises(ValueError, match="float H x W x C"):
        run_baseline("wiener", np.zeros((8, 8, 3), np.uint8), None, SETTINGS)
    with pytest.raises(ValueError, match="defocus map"):
        run_baseline("wiener", img, np.zeros((4, 4), np.float32), SETTINGS)
    with pytest.raises(ValueError, match="H x W"):
        estimate_disc_radius(np.zeros(5))


def test_sharpness_detector_scores_the_sharp_half_higher_and_fits_its_threshold_on_val():
    """The classical blur-detection row: more local Laplacian energy where in focus; the threshold fitted on val
    images separates the halves of a new image, and the logistic's scale keeps the MAE low."""
    from scipy import ndimage
    from scipy.special import expit

    from pipeline_src.evaluate.sharpness import fit, logits, sharpness_score

    def half_blurred(seed):
        img = np.random.default_rng(seed).random((48, 64, 3))
        blurred = np.stack([ndimage.gaussian_filter(img[..., c], 3) for c in range(3)], axis=2)
        out = img.copy()
        out[:, 32:] = blurred[:, 32:]
        mask = np.zeros((48, 64), bool)
        mask[:, :32] = True
        return out, mask

    val = [half_blurred(s) for s in range(3)]
    scores = [sharpness_score(im) for im, _ in val]
    assert all(s[:, :24].mean() > s[:, 40:].mean() + 1.0 for s in scores)
    fitted = fit(scores, [m for _, m in val])
    assert fitted.val_images == 3 and fitted.val_f_beta > 0.9 and fitted.scale > 0
    test_img, test_mask = half_blurred(99)
    prob = expit(logits(test_img, fitted))
    assert prob.shape == (48, 64) and np.mean(np.abs(prob - test_mask)) < 0.2
    assert (prob[4:-4, 4:24] > 0.5).mean() > 0.85 and (prob[4:-4, 40:60] < 0.5).mean() > 0.85
    with pytest.raises(ValueError, match="at least one val image"):
        fit([], [])
