"""ATTSF: the paper's widths give the reference parameter count; a narrow copy (same topology) is used
for the forward/gradient/ONNX checks so the file stays fast on a shared 2-core CPU."""
from __future__ import annotations

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
    paper = GlobalNonLocal(4, 3, mode="paper")
    for w in paper.parameters():  # unit-scale weights, so that the softmax is far from uniform
        torch.nn.init.normal_(w)
    code = GlobalNonLocal(4, 3, mode="code")
    code.load_state_dict(paper.state_dict())
    return paper, code


def test_nonlocal_paper_mode_is_positions_by_positions_affinity():
    paper, _ = _nonlocal_pair()
    theta, phi = torch.rand(1, 3, 7, 7), torch.rand(1, 3, 7, 7)
    expected = torch.softmax(torch.einsum("ncp,ncq->npq", theta.flatten(2), phi.flatten(2)), dim=-1)
    assert torch.allclose(paper.affinity(theta, phi), expected, atol=1e-6)


def test_nonlocal_code_mode_reshapes_nhwc_memory_without_transpose():
    _, code = _nonlocal_pair()
    theta, phi = torch.rand(1, 3, 7, 7), torch.rand(1, 3, 7, 7)
    phi_keras = phi.permute(0, 2, 3, 1).numpy().reshape(1, 3, 49)  # Keras Reshape((256, h*w)) on NHWC
    expected = torch.softmax(theta.flatten(2).transpose(1, 2) @ torch.from_numpy(phi_keras), dim=-1)
    assert torch.allclose(code.affinity(theta, phi), expected, atol=1e-6)


def test_nonlocal_code_mode_differs_from_paper_on_asymmetric_input():
    paper, code = _nonlocal_pair()
    x = torch.rand(1, 4, 14, 21)
    with torch.no_grad():
        assert (paper(x) - code(x)).abs().max() > 1e-2
    torch.manual_seed(0)
    model_paper = small().eval()
    model_code = small(nonlocal_mode="code").eval()
    model_code.load_state_dict(model_paper.state_dict())
    x = torch.rand(1, 6, 56, 56)
    with torch.no_grad():
        assert not torch.allclose(model_paper(x), model_code(x))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(nonlocal_mode="transpose"), "nonlocal_mode='transpose'; accepted: paper, code"),
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
