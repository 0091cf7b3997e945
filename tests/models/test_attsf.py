"""ATTSF: the paper's widths give the reference parameter count; a narrow copy (same topology) is used
for the forward/gradient/ONNX checks so the file stays fast on a shared 2-core CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline_src.models import build_model
from pipeline_src.models.attsf import ATTSF, GlobalNonLocal, grid_average_pool
from pipeline_src.models.layers.dual_attention import DualAttention
from tests.model_checks import (
    check_deterministic_init,
    check_forward_shapes,
    check_gradients_reach_every_parameter,
    check_onnx_parity,
    count_parameters,
)

REFERENCE_PARAMETERS = 90_771_262  # PAPERS.md 2.1, PyTorch replica of tuvovan/ATTSF model.py
SMALL = dict(filters=8, triple_pass_filter=16, nonlocal_filter=8)


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def small(**kw) -> ATTSF:
    return build_model("attsf", **SMALL, **kw)


@pytest.fixture(scope="module")
def paper_model() -> ATTSF:
    return build_model("attsf")  # built once: 90 M parameters take seconds to initialise


def test_parameter_count_matches_reference(paper_model):
    n = count_parameters(paper_model)
    assert abs(n - REFERENCE_PARAMETERS) <= 0.005 * REFERENCE_PARAMETERS
    assert n == REFERENCE_PARAMETERS


def test_contract_attributes():
    assert ATTSF.input_views == ("l", "r")
    assert ATTSF.size_multiple == 56
    assert ATTSF.task == "restoration"


def test_forward_shapes_including_odd_size():
    check_forward_shapes(small(), in_channels=6, sizes=[(56, 56), (60, 50)])


def test_output_is_sigmoid_range():
    model = small().eval()
    with torch.no_grad():
        y = model(torch.rand(1, 6, 57, 61))
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    check_gradients_reach_every_parameter(small(), in_channels=6, size=(56, 56))


def test_deterministic_init():
    check_deterministic_init(small)


def test_onnx_parity_at_sizes_not_used_for_export():
    torch.manual_seed(0)
    worst = check_onnx_parity(small(), in_channels=6, export_size=(56, 56), check_sizes=[(60, 50), (113, 57)])
    assert worst <= 1e-4


def test_left_and_right_encoders_have_separate_weights():
    model = small()
    left = dict(model.encoder_l.named_parameters())
    right = dict(model.encoder_r.named_parameters())
    assert left.keys() == right.keys()
    assert all(left[k] is not right[k] for k in left)
    assert any(not torch.equal(left[k], right[k]) for k in left)


def test_swapping_views_changes_the_output():
    torch.manual_seed(0)
    model = small().eval()
    x = torch.rand(1, 6, 56, 56)
    with torch.no_grad():
        a = model(x)
        b = model(torch.cat([x[:, 3:], x[:, :3]], dim=1))
    assert not torch.allclose(a, b)


def test_input_level_dual_attention_keeps_all_channels():
    model = small()
    da0 = model.encoder_l.input_attention
    assert da0.hidden == 3  # code's i == 1: cc = c
    assert da0.channel_attention.squeeze.out_channels == 3
    for da, width in zip(model.encoder_l.attentions, (8, 16, 32, 64)):
        assert da.channel_attention.squeeze.out_channels == width // 8  # cc = c / 8 elsewhere


def test_paper_widths_match_the_code(paper_model):
    model = paper_model
    assert [da.channel_attention.squeeze.out_channels for da in model.encoder_l.attentions] == [8, 16, 32, 64]
    assert model.bottleneck[2].channel_attention.squeeze.out_channels == 64
    assert model.global_nonlocal.theta[0].out_channels == 256
    assert count_parameters(model.triple_local) == 37_229_568  # two modules; PAPERS.md: "about 37 M"


def test_decoder_uses_keras_leaky_relu_slope():
    slopes = {m.negative_slope for m in small().modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.3}


def test_grid_average_pool_equals_adaptive_average_pool():
    x = torch.rand(2, 3, 14, 21)
    assert torch.allclose(grid_average_pool(x, 7), F.adaptive_avg_pool2d(x, 7), atol=1e-6)


def _nonlocal_pair():
    torch.manual_seed(0)
    code = GlobalNonLocal(4, 3, mode="code")
    for w in code.parameters():  # unit-scale weights, so that the softmax is far from uniform
        torch.nn.init.normal_(w)
    transposed = GlobalNonLocal(4, 3, mode="transposed")
    transposed.load_state_dict(code.state_dict())
    return code, transposed


def keras_global_non_local(x_nhwc: np.ndarray, conv1x1) -> np.ndarray:
    """tuvovan/ATTSF model.py global_non_local, read line by line on NHWC numpy arrays (batch 1):
    theta, phi, g = relu(1x1 conv) -> Reshape((h*w, c)), Reshape((c, h*w)), Reshape((h*w, c)) (Keras Reshape is a
    row-major reshape of the per-sample tensor); softmax(theta @ phi) over the last axis; @ g; Reshape((h, w, c));
    relu(1x1 conv) to the input's width; + input."""
    h, w = x_nhwc.shape[1], x_nhwc.shape[2]
    relu = lambda a: np.maximum(a, 0.0)  # noqa: E731
    theta, phi, g = (relu(conv1x1(name, x_nhwc)) for name in ("theta", "phi", "g"))
    c = theta.shape[-1]
    theta_rsh, phi_rsh, g_rsh = theta.reshape(h * w, c), phi.reshape(c, h * w), g.reshape(h * w, c)
    logits = theta_rsh @ phi_rsh
    soft = np.exp(logits - logits.max(axis=-1, keepdims=True))
    soft /= soft.sum(axis=-1, keepdims=True)
    y = (soft @ g_rsh).reshape(1, h, w, c)
    return relu(conv1x1("project", y)) + x_nhwc


def test_default_nonlocal_block_computes_what_the_released_keras_code_computes():
    code, _ = _nonlocal_pair()
    assert GlobalNonLocal(4, 3).mode == "code"
    pooled = torch.rand(1, 4, 7, 7)

    def conv1x1(name, a_nhwc):
        layer = getattr(code, name)[0]
        weight = layer.weight.detach().double().numpy()[:, :, 0, 0]   # out x in
        return a_nhwc @ weight.T + layer.bias.detach().double().numpy()

    want = keras_global_non_local(pooled.permute(0, 2, 3, 1).double().numpy(), conv1x1)
    # the module's input: a 14 x 14 map whose 7 x 7 average pool is `pooled` exactly (2 x 2 equal values)
    x = pooled.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    with torch.no_grad():
        got = code(x)
        # after the block: the code's adaptive_interpolation, nearest x2 then a 3x3 conv + ReLU (the module's own)
        want_up = F.interpolate(torch.from_numpy(want).permute(0, 3, 1, 2).float(), scale_factor=2, mode="nearest")
        expected = code.refine(want_up)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_transposed_mode_is_positions_by_positions_affinity():
    _, transposed = _nonlocal_pair()
    theta, phi = torch.rand(1, 3, 7, 7), torch.rand(1, 3, 7, 7)
    expected = torch.softmax(torch.einsum("ncp,ncq->npq", theta.flatten(2), phi.flatten(2)), dim=-1)
    assert torch.allclose(transposed.affinity(theta, phi), expected, atol=1e-6)


def test_code_mode_reshapes_nhwc_memory_without_transpose():
    code, _ = _nonlocal_pair()
    theta, phi = torch.rand(1, 3, 7, 7), torch.rand(1, 3, 7, 7)
    phi_keras = phi.permute(0, 2, 3, 1).numpy().reshape(1, 3, 49)  # Keras Reshape((256, h*w)) on NHWC
    expected = torch.softmax(theta.flatten(2).transpose(1, 2) @ torch.from_numpy(phi_keras), dim=-1)
    assert torch.allclose(code.affinity(theta, phi), expected, atol=1e-6)


def test_code_mode_is_the_default_and_differs_from_transposed():
    code, transposed = _nonlocal_pair()
    x = torch.rand(1, 4, 14, 21)
    with torch.no_grad():
        assert (code(x) - transposed(x)).abs().max() > 1e-2
    torch.manual_seed(0)
    model_default = small().eval()
    assert model_default.global_nonlocal.mode == "code"
    model_transposed = small(nonlocal_mode="transposed").eval()
    model_transposed.load_state_dict(model_default.state_dict())
    x = torch.rand(1, 6, 56, 56)
    with torch.no_grad():
        assert not torch.allclose(model_default(x), model_transposed(x))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(nonlocal_mode="paper"), "nonlocal_mode='paper'; accepted: code, transposed"),
        (dict(filters=4), "filters=4"),
        (dict(triple_pass_filter=4), "triple_pass_filter=4"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        build_model("attsf", **{**SMALL, **kwargs})


def test_wrong_channel_count_is_rejected():
    with pytest.raises(ValueError, match=r"N x 6 x H x W"):
        small()(torch.rand(1, 3, 56, 56))


def test_global_module_rejects_sizes_not_divisible_by_seven():
    with pytest.raises(ValueError, match="divisible by 7, got 8 x 14"):
        GlobalNonLocal(4, 3)(torch.rand(1, 4, 8, 14))


def test_dual_attention_rejects_empty_bottleneck():
    with pytest.raises(ValueError, match="channels=3, reduction=8"):
        DualAttention(3, reduction=8)
