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
