"""KPAC (2-level, 3-level, dual-pixel): exact parameter counts, shapes at awkward sizes, gradients, init, ONNX."""
import pytest
import torch

from pipeline_src.models import build_model
from pipeline_src.models.kpac import KPACBlock
from tests.model_checks import (
    check_deterministic_init,
    check_forward_shapes,
    check_gradients_reach_every_parameter,
    check_onnx_parity,
    count_parameters,
)

torch.set_num_threads(1)

# (registry name, constructor args, input channels, size multiple, parameter count from the authors' code)
VARIANTS = [
    ("kpac", {"levels": 2}, 3, 4, 1_578_277),
    ("kpac", {"levels": 3}, 3, 8, 2_057_893),
    ("kpac_dual", {}, 9, 8, 2_061_493),
]
IDS = ["2level", "3level", "dual"]


@pytest.mark.parametrize("name,kwargs,cin,multiple,params", VARIANTS, ids=IDS)
def test_parameter_count_matches_the_authors_code(name, kwargs, cin, multiple, params):
    model = build_model(name, **kwargs)
    assert count_parameters(model) == params
    assert model.size_multiple == multiple
    assert 3 * len(model.input_views) == cin


def test_one_block_has_one_shared_atrous_weight_and_the_published_count():
    block = KPACBlock()
    assert count_parameters(block) == 448_145
    assert tuple(block.shared_weight.shape) == (48, 96, 5, 5)
    shared = [n for n, _ in block.named_parameters() if "shared" in n]
    assert shared == ["shared_weight"]  # one tensor, no bias


@pytest.mark.parametrize("name,kwargs,cin,multiple,params", VARIANTS, ids=IDS)
def test_forward_keeps_size_including_sizes_not_a_multiple(name, kwargs, cin, multiple, params):
    torch.manual_seed(0)
    model = build_model(name, **kwargs)
    check_forward_shapes(model, cin, [(16, 24), (13, 19)])


@pytest.mark.parametrize("name,kwargs,cin,multiple,params", VARIANTS, ids=IDS)
def test_gradients_reach_every_parameter(name, kwargs, cin, multiple, params):
    torch.manual_seed(0)
    check_gradients_reach_every_parameter(build_model(name, **kwargs), cin, (16, 16))


@pytest.mark.parametrize("name,kwargs", [("kpac", {"levels": 2}), ("kpac_dual", {})], ids=["2level", "dual"])
def test_deterministic_init(name, kwargs):
    check_deterministic_init(lambda: build_model(name, **kwargs))


def test_authors_init_is_normal_004_with_zero_bias_and_torch_init_is_available():
    torch.manual_seed(0)
    model = build_model("kpac", levels=3)
    with torch.no_grad():
        weights = torch.cat([p.flatten() for n, p in model.named_parameters() if not n.endswith("bias")])
        assert abs(float(weights.std()) - 0.04) < 1e-3
        assert all(float(p.abs().max()) == 0.0 for n, p in model.named_parameters() if n.endswith("bias"))
        torch_init = build_model("kpac", init="torch")
        assert any(float(p.abs().max()) > 0 for n, p in torch_init.named_parameters() if n.endswith("bias"))


def test_zero_residual_returns_the_input_and_dual_returns_the_combined_view():
    """With the last conv zeroed the network is the identity on C: checks the [-1, 1] residual bookkeeping."""
    torch.manual_seed(0)
    single = build_model("kpac").eval()
    dual = build_model("kpac_dual").eval()
    for m in (single, dual):
        torch.nn.init.zeros_(m.d2_2.weight)
    x = torch.rand(1, 3, 12, 20)
    lrc = torch.rand(1, 9, 12, 20)
    with torch.no_grad():
        assert torch.allclose(single(x), x, atol=1e-6)
        assert torch.allclose(dual(lrc), lrc[:, 6:9], atol=1e-6)


def test_dual_convolutions_do_not_see_the_combined_view():
    torch.manual_seed(0)
    dual = build_model("kpac_dual").eval()
    lrc = torch.rand(1, 9, 16, 16)
    changed = lrc.clone()
    changed[:, 6:9] += 0.1
    with torch.no_grad():
        diff = dual(changed) - dual(lrc)
    # C only enters through the residual (halved by the [-1, 1] -> [0, 1] map twice: + 0.1 stays + 0.1)
    assert torch.allclose(diff, torch.full_like(diff, 0.1), atol=1e-5)


def test_bad_arguments_and_inputs_are_refused_with_the_value():
    with pytest.raises(ValueError, match="levels=4"):
        build_model("kpac", levels=4)
    with pytest.raises(ValueError, match="levels=2"):
        build_model("kpac_dual", levels=2)
    with pytest.raises(ValueError, match="init='xavier'"):
        build_model("kpac", init="xavier")
    with pytest.raises(ValueError, match=r"N x 9 x H x W"):
        build_model("kpac_dual")(torch.rand(1, 3, 16, 16))


@pytest.mark.parametrize("name,kwargs,cin", [("kpac", {"levels": 2}, 3), ("kpac_dual", {}, 9)], ids=["2level", "dual"])
def test_onnx_parity_at_sizes_not_used_at_export(name, kwargs, cin):
    torch.manual_seed(0)
    model = build_model(name, **kwargs)
    check_onnx_parity(model, cin, export_size=(21, 27), check_sizes=[(16, 24), (13, 34)])


# ------------------------------------------------------------------ stride-2 padding (the authors' TF 'SAME')
def test_default_stride2_padding_is_symmetric_so_older_checkpoints_load_unchanged():
    torch.manual_seed(0)
    old_style = build_model("kpac", levels=3)
    assert old_style.stride2_padding == "symmetric"
    assert [m.padding for m in (old_style.c2, old_style.c3, old_style.c4)] == [(1, 1)] * 3
    tf_same = build_model("kpac", levels=3, stride2_padding="tf_same")
    # the same parameter names and shapes: a state dict moves between the two modes as it is
    assert {k: v.shape for k, v in old_style.state_dict().items()} == \
        {k: v.shape for k, v in tf_same.state_dict().items()}
    tf_same.load_state_dict(old_style.state_dict(), strict=True)


@pytest.mark.parametrize("size", [(8, 12), (10, 6)])
def test_tf_same_stride2_conv_pads_zero_before_and_one_after(size):
    from pipeline_src.models.kpac import STRIDE2_CONVS

    torch.manual_seed(0)
    conv = STRIDE2_CONVS["tf_same"](4, 5)
    x = torch.randn(1, 4, *size)
    by_hand = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 1, 0, 1)), conv.weight, conv.bias, stride=2)
    symmetric = torch.nn.functional.conv2d(x, conv.weight, conv.bias, stride=2, padding=1)
    with torch.no_grad():
        y = conv(x)
    assert y.shape == (1, 5, size[0] // 2, size[1] // 2)  # TF 'SAME': ceil(n / 2)
    assert torch.allclose(y, by_hand, atol=1e-6)
    assert not torch.allclose(y, symmetric, atol=1e-3)  # a one-pixel phase shift, not a rounding difference


@pytest.mark.parametrize("name,kwargs,cin,multiple,params", VARIANTS, ids=IDS)
def test_tf_same_models_keep_the_count_and_the_contract_at_awkward_sizes(name, kwargs, cin, multiple, params):
    torch.manual_seed(0)
    model = build_model(name, stride2_padding="tf_same", **kwargs)
    assert count_parameters(model) == params
    check_forward_shapes(model, cin, [(16, 24), (13, 19)])


def test_tf_same_exports_with_dynamic_size_and_passes_parity():
    torch.manual_seed(0)
    model = build_model("kpac", levels=3, stride2_padding="tf_same")
    check_onnx_parity(model, 3, export_size=(21, 27), check_sizes=[(16, 24), (13, 34)])


def test_an_unknown_stride2_padding_is_refused_with_the_accepted_values():
    with pytest.raises(ValueError, match=r"stride2_padding='valid': accepted \('symmetric', 'tf_same'\)"):
        build_model("kpac", stride2_padding="valid")
