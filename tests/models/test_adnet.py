"""ADNet (RDAN): parameter count, the model contract, shared weights across scales, and the attention block."""
from __future__ import annotations

import pytest
import torch

from pipeline_src.models import build_model
from pipeline_src.models.adnet import ADNet, EncoderDecoder
from pipeline_src.models.layers.residual_attention import ResidualAttentionBlock
from tests.model_checks import (
    check_deterministic_init,
    check_forward_shapes,
    check_gradients_reach_every_parameter,
    check_onnx_parity,
    count_parameters,
)

REFERENCE_PARAMETERS = 6_907_057  # PAPERS.md 4.1 (26.35 MiB fp32, the paper's "26.34 MB")


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model() -> ADNet:
    torch.manual_seed(0)
    return build_model("adnet")


def test_parameter_count_is_exact(model):
    assert count_parameters(model) == REFERENCE_PARAMETERS


def test_contract_attributes():
    assert ADNet.input_views == ("c",)
    assert ADNet.size_multiple == 16
    assert ADNet.task == "restoration"


def test_forward_shapes_including_odd_size(model):
    check_forward_shapes(model, in_channels=3, sizes=[(32, 32), (37, 21)])


def test_eval_output_is_clamped_to_unit_range(model):
    model.eval()
    with torch.no_grad():
        y = model(torch.rand(1, 3, 32, 32) * 4 - 2)
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_training_output_is_three_scales_coarse_to_fine(model):
    model.train()
    with torch.no_grad():
        outs = model(torch.rand(1, 3, 64, 48))
    assert isinstance(outs, list) and len(outs) == 3
    assert [tuple(o.shape) for o in outs] == [(1, 3, 16, 12), (1, 3, 32, 24), (1, 3, 64, 48)]


def test_training_outputs_are_not_clamped(model):
    model.train()
    with torch.no_grad():
        outs = model(torch.rand(1, 3, 32, 32) * 40 - 20)
    assert any(float(o.min()) < 0.0 or float(o.max()) > 1.0 for o in outs)


def test_scales_share_one_encoder_decoder(model):
    nets = [m for m in model.modules() if isinstance(m, EncoderDecoder)]
    assert nets == [model.net]
    assert count_parameters(model) == count_parameters(model.net)
    seen = []
    handle = model.net.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    try:
        model.train()
        with torch.no_grad():
            model(torch.rand(1, 3, 32, 48))
    finally:
        handle.remove()
    assert [tuple(t.shape) for t in seen] == [(1, 6, 8, 12), (1, 6, 16, 24), (1, 6, 32, 48)]


def test_coarsest_scale_gets_the_blurry_image_as_previous_prediction(model):
    seen = []
    handle = model.net.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    try:
        model.eval()
        with torch.no_grad():
            model(torch.rand(1, 3, 32, 32))
    finally:
        handle.remove()
    assert torch.equal(seen[0][:, :3], seen[0][:, 3:])


def test_previous_prediction_is_detached(model):
    seen = []
    handle = model.net.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    try:
        model.train()
        model(torch.rand(1, 3, 32, 32))  # the input does not require grad: only a non-detached prediction would
    finally:
        handle.remove()
    assert [t.requires_grad for t in seen] == [False, False, False]


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    check_gradients_reach_every_parameter(build_model("adnet"), in_channels=3, size=(32, 32))


def test_deterministic_init():
    check_deterministic_init(lambda: build_model("adnet"))


def test_onnx_parity_at_sizes_not_used_for_export(model):
    check_onnx_parity(model, in_channels=3, export_size=(32, 32), check_sizes=[(48, 40), (37, 21)])


def test_onnx_parity_with_the_codes_tf1_resize():
    torch.manual_seed(0)
    code = build_model("adnet", widths=(16, 16, 16), attention_order="serial", resize="tf1").eval()
    check_onnx_parity(code, in_channels=3, export_size=(32, 32), check_sizes=[(48, 40), (37, 21)])


def test_predictions_are_the_unclamped_network_in_eval_mode_too():
    torch.manual_seed(0)
    code = build_model("adnet", widths=(16, 16, 16), resize="tf1").eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert [tuple(p.shape[-2:]) for p in code.predictions(x)] == [(8, 8), (16, 16), (32, 32)]
        assert torch.equal(code(x), code.predictions(x)[-1].clamp(0, 1))


def test_attention_hidden_widths_follow_reduction_16(model):
    hidden = {m.spatial.fc1.in_channels: m.spatial.fc1.out_channels
              for m in model.modules() if isinstance(m, ResidualAttentionBlock)}
    assert hidden == {32: 2, 64: 4, 128: 8}
    assert sum(isinstance(m, ResidualAttentionBlock) for m in model.modules()) == 18


def _block_by_hand(block: ResidualAttentionBlock, x: torch.Tensor, serial: bool) -> torch.Tensor:
    conv1, _, conv2 = block.body
    y = conv2(torch.relu(conv1(x)))
    spatial = torch.sigmoid(block.spatial.fc2(torch.relu(block.spatial.fc1(y))))
    assert spatial.shape == (x.shape[0], 1, *x.shape[2:])  # one weight per pixel, shared by all channels
    gated = y * spatial
    source = gated if serial else y
    squeezed = torch.relu(block.channel.squeeze(source.mean(dim=(2, 3), keepdim=True)))
    channel = torch.sigmoid(block.channel.excite(squeezed))
    return x + gated * channel


@pytest.mark.parametrize("order", ["parallel", "serial"])
def test_residual_attention_block_values(order):
    torch.manual_seed(0)
    block = ResidualAttentionBlock(32, attention_order=order)
    x = torch.rand(2, 32, 9, 7)
    with torch.no_grad():
        assert torch.allclose(block(x), _block_by_hand(block, x, serial=order == "serial"), atol=1e-6)


@pytest.mark.parametrize("code_option", [{"attention_order": "serial"}, {"resize": "tf1"}])
def test_each_of_the_codes_choices_changes_the_network_not_its_parameters(code_option):
    torch.manual_seed(0)
    paper = build_model("adnet", widths=(16, 16, 16)).eval()
    code = build_model("adnet", widths=(16, 16, 16), **code_option).eval()
    code.load_state_dict(paper.state_dict())
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(paper(x), code(x), atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(attention_order="both"), "attention_order='both'; accepted: parallel, serial"),
        (dict(widths=(32, 64)), "needs three widths"),
        (dict(widths=(8, 64, 128)), "channels=8 with reduction=16"),
        (dict(kernel_size=4), "kernel_size=4"),
        (dict(resize="bicubic"), "resize='bicubic'; accepted: half_pixel, tf1"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        build_model("adnet", **kwargs)


def test_wrong_channel_count_is_rejected(model):
    with pytest.raises(ValueError, match=r"N x 3 x H x W"):
        model(torch.rand(1, 6, 32, 32))
