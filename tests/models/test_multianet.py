"""MultiANet: parameter count, shapes at odd sizes, gradients, init, ONNX, channel attention, VGG16 weights."""
import hashlib

import numpy as np
import pytest
import torch

from pipeline_src.errors import CheckpointError
from pipeline_src.models import build_model
from pipeline_src.models.layers.channel_attention import ChannelAttention
from pipeline_src.models.vgg import IMAGENET_MEAN, IMAGENET_STD, VGGFeatures
from tests.model_checks import (
    check_deterministic_init,
    check_forward_shapes,
    check_gradients_reach_every_parameter,
    check_onnx_parity,
    count_parameters,
)

torch.set_num_threads(1)

VGG16_CONV = 14_714_688  # torchvision vgg16().features up to conv5_3
# head: 1x1 1280->64 + BN (82,048), 3x3 192->64 + BN (110,720), two gammas (2), spatial attention
# 3x3 64->32 and 32->1 (18,753), fusion 3x3 128->64 + BN (73,856), prediction 3x3 64->1 (577)
HEAD = 82_048 + 110_720 + 2 + 18_753 + 73_856 + 577


def test_parameter_count_and_contract_attributes():
    model = build_model("multianet")
    assert count_parameters(model.backbone) == VGG16_CONV
    assert count_parameters(model) == VGG16_CONV + HEAD == 15_000_644
    assert model.input_views == ("c",) and model.size_multiple == 16 and model.task == "detection"
    assert model.pretrained is False
    assert model.high_channel_attention.gamma.item() == 0.0 and model.low_channel_attention.gamma.item() == 0.0


def test_forward_returns_one_logit_map_at_any_size():
    torch.manual_seed(0)
    check_forward_shapes(build_model("multianet"), 3, [(32, 48), (37, 21)], out_channels=1)


def test_gradients_reach_every_parameter_including_the_zero_gammas():
    torch.manual_seed(0)
    check_gradients_reach_every_parameter(build_model("multianet"), 3, (32, 32))


def test_deterministic_init():
    check_deterministic_init(lambda: build_model("multianet"))


def test_onnx_parity_with_active_attention_at_sizes_not_used_at_export():
    torch.manual_seed(0)
    model = build_model("multianet", dilations=(3, 5))
    with torch.no_grad():  # switch the channel attention on so its graph is compared too
        model.high_channel_attention.gamma.fill_(0.5)
        model.low_channel_attention.gamma.fill_(0.5)
    check_onnx_parity(model, 3, export_size=(37, 45), check_sizes=[(32, 48), (29, 35)], out_channels=1)


def test_model_normalises_its_input_with_imagenet_statistics():
    model = build_model("multianet").eval()
    seen = []
    model.backbone.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        model(x)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(seen[0], (x - mean) / std)


@pytest.mark.parametrize("affinity", ["similarity", "danet"])
def test_channel_attention_matches_the_formula(affinity):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 4) * 0.3
    cam = ChannelAttention(affinity)
    with torch.no_grad():
        assert torch.equal(cam(x), x)  # gamma starts at 0: identity
        cam.gamma.fill_(0.7)
        got = cam(x).numpy()
    for n in range(2):
        X = x[n].reshape(5, -1).double().numpy()
        E = X @ X.T
        logits = E if affinity == "similarity" else E.max(axis=1, keepdims=True) - E
        A = np.exp(logits - logits.max(axis=1, keepdims=True))
        A /= A.sum(axis=1, keepdims=True)
        want = 0.7 * (A @ X) + X
        np.testing.assert_allclose(got[n].reshape(5, -1), want, atol=1e-5)


def test_spatial_attention_scales_the_low_level_features_into_0_1():
    torch.manual_seed(0)
    model = build_model("multianet", dilations=(2, 4)).eval()
    with torch.no_grad():
        z = model.spatial_attention(torch.randn(1, 64, 8, 8))
    assert z.shape == (1, 1, 8, 8) and float(z.min()) > 0.0 and float(z.max()) < 1.0
    assert model.spatial_attention.conv1.dilation == (2, 2) and model.spatial_attention.conv2.dilation == (4, 4)


def test_bad_arguments_and_inputs_are_refused():
    with pytest.raises(ValueError, match=r"dilations=\(2,\)"):
        build_model("multianet", dilations=(2,))
    with pytest.raises(ValueError, match="affinity='softmax'"):
        build_model("multianet", channel_affinity="softmax")
    with pytest.raises(ValueError, match=r"N x 3 x H x W.*\(1, 6, 32, 32\)"):
        build_model("multianet")(torch.rand(1, 6, 32, 32))
    with pytest.raises(CheckpointError, match="vgg16"):
        build_model("multianet", vgg_weights="/nonexistent/vgg16-397923af.pth")


def test_vgg16_weights_in_torchvision_layout_are_verified_and_loaded(tmp_path):
    torch.manual_seed(3)
    state = dict(VGGFeatures("vgg16", taps=("pool5",)).state_dict())
    state["classifier.6.bias"] = torch.zeros(10)  # stand-in for torchvision's classifier keys
    tmp = tmp_path / "weights.pth"
    torch.save(state, tmp)
    path = tmp_path / f"vgg16-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]}.pth"
    tmp.rename(path)
    model = build_model("multianet", vgg_weights=str(path))
    assert model.pretrained is True
    assert torch.equal(model.backbone.features[28].weight, state["features.28.weight"])
    with pytest.raises(ValueError, match=f"{path.name}.*expected 0{{64}}"):
        build_model("multianet", vgg_weights=str(path), vgg_sha256="0" * 64)
