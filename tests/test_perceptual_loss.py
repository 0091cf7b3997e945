"""Perceptual loss (VGG19 conv4_4): values, gradients, frozen VGG, random-weight warning, weight loading."""
import hashlib
import logging

import pytest
import torch
import torch.nn.functional as F

from pipeline_src.losses import LOSSES
from pipeline_src.losses.perceptual import PerceptualLoss
from pipeline_src.models.vgg import IMAGENET_MEAN, IMAGENET_STD, VGGFeatures

torch.set_num_threads(1)


def _random_weight_loss(**kwargs):
    with pytest.warns(RuntimeWarning, match="RANDOM VGG19 weights"):
        return PerceptualLoss(None, **kwargs)


@pytest.fixture(scope="module")
def loss_fn():
    torch.manual_seed(0)
    return _random_weight_loss()


@pytest.fixture(scope="module")
def vgg19_file(tmp_path_factory):
    """torchvision's key layout (features.N.*, classifier.*), hash prefix in the name; features up to conv4_4
    only, to keep the file small (the layers past the loss's tap are not needed)."""
    torch.manual_seed(5)
    state = dict(VGGFeatures("vgg19", taps=("conv4_4",)).state_dict())
    state["classifier.0.bias"] = torch.zeros(4)
    folder = tmp_path_factory.mktemp("weights")
    tmp = folder / "staging.pth"
    torch.save(state, tmp)
    path = folder / f"vgg19-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]}.pth"
    tmp.rename(path)
    return path, state


def test_zero_for_identical_inputs_positive_otherwise(loss_fn):
    x = torch.rand(2, 3, 24, 24)
    assert float(loss_fn(x, x.clone())) == 0.0
    assert float(loss_fn(x, (x + 0.2 * torch.randn_like(x)).clamp(0, 1))) > 0.0


def test_value_is_the_mse_of_normalised_conv4_4_features(loss_fn):
    torch.manual_seed(1)
    pred, target = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        want = F.mse_loss(loss_fn.vgg.features((pred - mean) / std), loss_fn.vgg.features((target - mean) / std))
        assert torch.allclose(loss_fn(pred, target), want)


def test_multiscale_prediction_uses_the_last_item(loss_fn):
    target = torch.rand(1, 3, 16, 16)
    coarse = torch.rand(1, 3, 8, 8)
    assert float(loss_fn([coarse, target.clone()], target)) == 0.0


def test_gradient_reaches_the_prediction_and_not_the_frozen_vgg(loss_fn):
    pred = torch.rand(1, 3, 16, 16, requires_grad=True)
    loss_fn(pred, torch.rand(1, 3, 16, 16)).backward()
    assert pred.grad is not None and float(pred.grad.abs().sum()) > 0
    assert all(not p.requires_grad and p.grad is None for p in loss_fn.vgg.parameters())
    loss_fn.train()
    assert loss_fn.training and not loss_fn.vgg.training


def test_without_weights_it_warns_logs_and_reports_not_pretrained(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline_src.losses.perceptual"):
        with pytest.warns(RuntimeWarning, match=r"missing-dcbb9e9d.pth does not exist.*fetch vgg19"):
            absent = PerceptualLoss(tmp_path / "missing-dcbb9e9d.pth")
    assert absent.pretrained is False and absent.weights_sha256 is None
    assert "RANDOM VGG19 weights" in caplog.text
    assert _random_weight_loss().pretrained is False


def test_random_weights_are_the_same_vgg_whatever_the_seed_and_leave_the_global_generator_alone():
    """A training phase's random stream must not depend on whether its model drew initial weights before the loss
    was built (phases that start from the previous one build it without drawing)."""
    torch.manual_seed(1)
    before = torch.random.get_rng_state()
    first = _random_weight_loss().vgg.state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(2)
    second = _random_weight_loss().vgg.state_dict()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert any(v.abs().sum() > 0 for v in first.values())  # drawn, not left at zero


def test_loads_verified_weights_without_warning(vgg19_file, recwarn):
    path, state = vgg19_file
    loss = PerceptualLoss(str(path))
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert loss.pretrained is True
    assert loss.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert torch.equal(loss.vgg.features[25].weight, state["features.25.weight"])


def test_corrupt_weight_file_is_an_error_not_a_fallback(vgg19_file, tmp_path):
    path, _ = vgg19_file
    cut = tmp_path / path.name
    cut.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match=rf"{cut.name}.*does not start with"):
        PerceptualLoss(cut)


def test_mismatched_inputs_are_refused(loss_fn):
    with pytest.raises(ValueError, match=r"prediction \(1, 3, 16, 16\) and target \(1, 3, 16, 24\)"):
        loss_fn(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 24))
    with pytest.raises(ValueError, match=r"N x 3 x H x W.*\(1, 1, 16, 16\)"):
        loss_fn(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match="conv4_4"):
        PerceptualLoss(None, layer="conv6_1")


def test_registered_as_perceptual():
    with pytest.warns(RuntimeWarning):
        loss = LOSSES.build("perceptual", weights_path=None)
    assert isinstance(loss, PerceptualLoss)
