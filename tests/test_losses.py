"""Losses by name through build_loss: values, multi-scale handling, agreement with the metrics, bad inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline_src.evaluate import metrics as M
from pipeline_src.losses import LOSSES, build_loss
from pipeline_src.models.layers.tf1_resize import resize_tf1

torch.set_num_threads(1)


def _images(shape=(2, 3, 24, 28), seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=g, dtype=torch.float64)
    pred = (target + 0.1 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return pred, target


def _single(name, pred, target, **options):
    total, values = build_loss({name: 1.0}, {name: options} if options else None)(pred, target)
    assert set(values) == {name}
    assert torch.equal(values[name], total.detach())
    return total


def test_registered_names():
    expected = {"l1", "mae", "mse", "ssim", "tf_ssim", "ms_ssim", "gradient", "multiscale_mse", "bce", "perceptual"}
    assert expected <= set(LOSSES.names())


@pytest.mark.parametrize("name,reference", [
    ("l1", F.l1_loss), ("mae", F.l1_loss), ("mse", F.mse_loss),
])
def test_pixel_losses(name, reference):
    pred, target = _images()
    assert _single(name, pred, target).item() == pytest.approx(reference(pred, target).item(), abs=1e-12)


def test_bce_on_logits():
    g = torch.Generator().manual_seed(1)
    logits, mask = torch.randn(2, 1, 9, 11, generator=g), (torch.rand(2, 1, 9, 11, generator=g) > 0.5).float()
    expected = -(mask * F.logsigmoid(logits) + (1 - mask) * F.logsigmoid(-logits)).mean()
    assert _single("bce", logits, mask).item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="mask in \\[0, 1\\]"):
        _single("bce", logits, mask * 255)


def test_ssim_loss_is_one_minus_the_metric():
    pred, target = _images()
    per_image = [M.ssim(pred[i].permute(1, 2, 0).numpy(), target[i].permute(1, 2, 0).numpy()) for i in range(2)]
    assert _single("ssim", pred, target).item() == pytest.approx(1 - np.mean(per_image), abs=1e-10)
    assert _single("ssim", target, target).item() == pytest.approx(0.0, abs=1e-12)


def test_ms_ssim_loss_is_one_minus_the_metric():
    pred, target = _images((1, 3, 161, 165))
    expected = 1 - M.ms_ssim(pred[0].permute(1, 2, 0).numpy(), target[0].permute(1, 2, 0).numpy())
    assert _single("ms_ssim", pred, target).item() == pytest.approx(expected, abs=1e-10)
    # fewer scales for small crops, chosen in config
    small_pred, small_target = _images((1, 3, 32, 32))
    value = _single("ms_ssim", small_pred, small_target, weights=[0.5, 0.5], window="uniform7")
    expected = 1 - M.ms_ssim(small_pred[0].permute(1, 2, 0).numpy(), small_target[0].permute(1, 2, 0).numpy(),
                             weights=(0.5, 0.5), window="uniform7")
    assert value.item() == pytest.approx(expected, abs=1e-10)
    with pytest.raises(ValueError, match="161x161"):
        _single("ms_ssim", small_pred, small_target)


def tf_image_ssim_reference(img1: np.ndarray, img2: np.ndarray, max_val: float = 1.0) -> float:
    """tf.image.ssim on one H x W x C image, read off TensorFlow's image_ops_impl.py line by line, in float64:
    _fspecial_gauss(11, 1.5) = softmax over the 11 x 11 grid of -0.5 (i^2 + j^2) / sigma^2, coordinates
    range(11) - 5; reducer = depthwise conv2d with that kernel, padding VALID; _ssim_helper with k1 0.01,
    k2 0.03, compensation 1.0; reduce_mean over height and width, then over channels."""
    from scipy.signal import correlate2d

    coords = np.arange(11, dtype=np.float64) - (11 - 1) / 2.0
    g = coords ** 2 * (-0.5 / 1.5 ** 2)
    g = (g.reshape(1, -1) + g.reshape(-1, 1)).reshape(1, -1)
    kernel = (np.exp(g - g.max()) / np.exp(g - g.max()).sum()).reshape(11, 11)   # nn_ops.softmax

    def reducer(a):
        return correlate2d(a, kernel, mode="valid")

    c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
    per_channel = []
    for ch in range(img1.shape[-1]):
        x, y = img1[..., ch], img2[..., ch]
        mean0, mean1 = reducer(x), reducer(y)
        num0 = mean0 * mean1 * 2.0
        den0 = mean0 ** 2 + mean1 ** 2
        luminance = (num0 + c1) / (den0 + c1)
        num1 = reducer(x * y) * 2.0
        den1 = reducer(x ** 2 + y ** 2)
        cs = (num1 - num0 + c2) / (den1 - den0 + c2)
        per_channel.append(np.mean(luminance * cs))
    return float(np.mean(per_channel))


def test_tf_ssim_loss_is_one_minus_tf_image_ssim_as_tensorflow_defines_it():
    pred, target = _images((2, 3, 23, 30))
    per_image = [tf_image_ssim_reference(target[i].permute(1, 2, 0).numpy(), pred[i].permute(1, 2, 0).numpy())
                 for i in range(2)]
    assert _single("tf_ssim", pred, target).item() == pytest.approx(1 - np.mean(per_image), abs=1e-10)
    assert _single("tf_ssim", target, target).item() == pytest.approx(0.0, abs=1e-12)
    # the smallest image TF accepts is the window itself: one valid position
    tiny_pred, tiny_target = _images((1, 3, 11, 11), seed=3)
    want = 1 - tf_image_ssim_reference(tiny_target[0].permute(1, 2, 0).numpy(), tiny_pred[0].permute(1, 2, 0).numpy())
    assert _single("tf_ssim", tiny_pred, tiny_target).item() == pytest.approx(want, abs=1e-10)
    # the same number as the metrics' Gaussian-window SSIM (MS-SSIM with one scale), which scipy computes
    one_scale = [M.ms_ssim(pred[i].permute(1, 2, 0).numpy(), target[i].permute(1, 2, 0).numpy(), weights=(1.0,),
                           window="gaussian11") for i in range(2)]
    assert np.mean(per_image) == pytest.approx(np.mean(one_scale), abs=1e-10)
    # and a different number from the evaluation tables' SSIM (7x7 uniform window, sample covariance)
    assert abs(_single("tf_ssim", pred, target).item() - _single("ssim", pred, target).item()) > 1e-3


def test_tf_ssim_loss_needs_the_window_and_has_gradients():
    from pipeline_src.config import ConfigError

    pred, target = _images((1, 3, 10, 40))
    with pytest.raises(ConfigError, match="10x40; tf.image.ssim needs at least 11x11"):
        _single("tf_ssim", pred, target)
    pred, target = _images((2, 3, 16, 16))
    pred = pred.clone().requires_grad_(True)
    _single("tf_ssim", pred, target).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="differ in shape"):
        _single("tf_ssim", pred, target[:, :, :15])


def test_gradient_loss_zero_for_identical_and_right_on_a_ramp():
    _, target = _images()
    assert _single("gradient", target, target).item() == 0.0
    # horizontal ramp of slope a in every channel vs a constant image: dx = -a * (grey weights' sum), dy = 0
    a = 0.02
    ramp = (a * torch.arange(16, dtype=torch.float64)).view(1, 1, 1, 16).expand(1, 3, 12, 16).contiguous()
    flat = torch.full_like(ramp, 0.3)
    grey_sum = 0.2989 + 0.5870 + 0.1140
    assert _single("gradient", ramp, flat).item() == pytest.approx((a * grey_sum) ** 2, rel=1e-12)
    # a vertical ramp adds the same amount through dy
    both = ramp + (a * torch.arange(12, dtype=torch.float64)).view(1, 1, 12, 1)
    assert _single("gradient", both, flat).item() == pytest.approx(2 * (a * grey_sum) ** 2, rel=1e-12)
    # only the colour-to-grey weights matter: a change in blue alone is weighted 0.1140
    blue = flat.clone()
    blue[:, 2] = ramp[:, 2]
    assert _single("gradient", blue, flat).item() == pytest.approx((a * 0.1140) ** 2, rel=1e-12)


def test_single_scale_losses_use_the_finest_prediction():
    pred, target = _images()
    coarse = torch.zeros(2, 3, 6, 7, dtype=torch.float64)
    for name in ("l1", "mse", "ssim", "gradient"):
        assert _single(name, [coarse, pred], target).item() == pytest.approx(_single(name, pred, target).item())


def test_multiscale_mse_sums_over_the_list():
    pred, target = _images((1, 3, 16, 20))
    half, quarter = [F.interpolate(target, size=s, mode="bilinear", align_corners=False) for s in ((8, 10), (4, 5))]
    preds = [quarter + 0.1, half + 0.2, pred]
    expected = 0.1 ** 2 + 0.2 ** 2 + F.mse_loss(pred, target).item()
    assert _single("multiscale_mse", preds, target).item() == pytest.approx(expected, rel=1e-9)
    assert _single("multiscale_mse", pred, target).item() == pytest.approx(F.mse_loss(pred, target).item())


def test_multiscale_mse_with_tf1_resize_compares_with_tf1s_resize_of_the_target():
    pred, target = _images((1, 3, 16, 20))
    preds = [target[..., ::4, ::4] + 0.1, target[..., ::2, ::2] + 0.2, pred]
    expected = 0.1 ** 2 + 0.2 ** 2 + F.mse_loss(pred, target).item()
    assert _single("multiscale_mse", preds, target, resize="tf1").item() == pytest.approx(expected, rel=1e-9)
    assert _single("multiscale_mse", preds, target).item() != pytest.approx(expected, rel=1e-3)  # half-pixel
    odd = _single("multiscale_mse", [torch.zeros(1, 3, 6, 7, dtype=torch.float64), pred], target, resize="tf1")
    expected_odd = (resize_tf1(target, (6, 7)) ** 2).mean().item() + F.mse_loss(pred, target).item()
    assert odd.item() == pytest.approx(expected_odd)  # any size: TF1's bilinear in general
    with pytest.raises(ValueError, match="resize='area'; accepted: half_pixel, tf1"):
        _single("multiscale_mse", pred, target, resize="area")


def test_adnet_combination_weights_and_logged_terms():
    pred, target = _images((1, 3, 16, 20))
    preds = [F.interpolate(pred, size=(8, 10), mode="bilinear", align_corners=False), pred]
    loss = build_loss({"multiscale_mse": 1.0, "gradient": 2.5})
    total, values = loss(preds, target)
    assert set(values) == {"multiscale_mse", "gradient"}
    assert total.item() == pytest.approx(values["multiscale_mse"].item() + 2.5 * values["gradient"].item())
    assert not values["gradient"].requires_grad


def test_options_for_unused_losses_are_not_built():
    # a recipe's perceptual options reach its MAE-only phase too; nothing is built for them there
    loss = build_loss({"l1": 1.0}, {"perceptual": {"weights_path": "/nonexistent/vgg19.pth"}})
    assert list(loss.terms) == ["l1"]
    assert loss.pretrained == {}


def test_total_is_differentiable():
    pred, target = _images()
    pred.requires_grad_(True)
    total, _ = build_loss({"l1": 1.0, "ssim": 0.5, "gradient": 2.0})(pred, target)
    total.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()


def test_bad_names_and_weights_raise():
    with pytest.raises(KeyError, match="known: .*l1.*mse"):
        build_loss({"l2": 1.0})
    with pytest.raises(ValueError, match="weight"):
        build_loss({"l1": -1.0})
    with pytest.raises(ValueError, match="weight"):
        build_loss({"l1": "1"})
    with pytest.raises(ValueError, match="non-empty"):
        build_loss({})
    with pytest.raises(KeyError, match="unknown losses \\['vgg'\\]"):
        build_loss({"l1": 1.0}, {"vgg": {}})
    with pytest.raises(ValueError, match="unknown window"):
        build_loss({"ms_ssim": 1.0}, {"ms_ssim": {"window": "box"}})
    pred, target = _images()
    with pytest.raises(ValueError, match="differ in shape"):
        build_loss({"l1": 1.0})(pred, target[..., :10])
    with pytest.raises(ValueError, match="batch or channels"):
        build_loss({"multiscale_mse": 1.0})([pred[:, :1]], target)
    with pytest.raises(ValueError, match="RGB"):
        build_loss({"gradient": 1.0})(pred[:, :2], target[:, :2])
