"""BiANet and the criss-cross attention it is built on (CPU, tiny sizes)."""
from __future__ import annotations

import pytest
import torch

from pipeline_src.models import build_model
from pipeline_src.models.bianet import BiANet
from pipeline_src.models.layers.criss_cross import CrissCrossAttention, RecurrentCrissCrossAttention
from tests.model_checks import (
    check_deterministic_init,
    check_forward_shapes,
    check_gradients_reach_every_parameter,
    check_onnx_parity,
    count_parameters,
)

torch.set_num_threads(1)
TINY = dict(widths=(8, 16, 32), blocks_per_level=1)


def _randomise(module: torch.nn.Module, seed: int, gamma: float) -> None:
    """Random weights everywhere and gamma != 0, so the attention path is not gated off."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.full_like(p, gamma) if name.endswith("gamma") else torch.randn(p.shape, generator=g) * 0.5)


def _criss_cross_by_loop(module: CrissCrossAttention, x: torch.Tensor) -> torch.Tensor:
    """Criss-cross attention written per pixel: softmax over the column (without the pixel) and the row."""
    q, k, v = module.query(x), module.key(x), module.value(x)
    n_, _, h_, w_ = x.shape
    out = torch.empty_like(x)
    for n in range(n_):
        for i in range(h_):
            for j in range(w_):
                logits, values = [], []
                for i2 in range(h_):
                    if i2 != i:
                        logits.append(torch.dot(q[n, :, i, j], k[n, :, i2, j]))
                        values.append(v[n, :, i2, j])
                for j2 in range(w_):
                    logits.append(torch.dot(q[n, :, i, j], k[n, :, i, j2]))
                    values.append(v[n, :, i, j2])
                weights = torch.softmax(torch.stack(logits), dim=0)
                context = (weights[:, None] * torch.stack(values)).sum(0)
                out[n, :, i, j] = module.gamma * context + x[n, :, i, j]
    return out


@pytest.mark.parametrize("size", [(5, 7), (6, 4)])
def test_criss_cross_matches_per_pixel_loop(size):
    torch.manual_seed(0)
    cca = CrissCrossAttention(16).double()
    _randomise(cca, seed=1, gamma=0.8)
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    with torch.no_grad():
        fast, slow = cca(x), _criss_cross_by_loop(cca, x)
    assert torch.allclose(fast, slow, atol=1e-10, rtol=0), float((fast - slow).abs().max())
    assert not torch.allclose(fast, x)  # the attention did something


def test_gamma_zero_is_identity():
    torch.manual_seed(0)
    cca = CrissCrossAttention(16)
    assert cca.gamma.item() == 0.0  # CCNet's initialisation
    x = torch.randn(1, 16, 6, 9)
    assert torch.equal(cca(x), x)
    assert torch.equal(RecurrentCrissCrossAttention(16)(x), x)


def test_recurrence_shares_one_parameter_set():
    torch.manual_seed(0)
    rcca = RecurrentCrissCrossAttention(16, recurrence=2)
    single = CrissCrossAttention(16)
    assert count_parameters(rcca) == count_parameters(single)
    assert rcca.recurrence == 2
    _randomise(rcca, seed=2, gamma=0.5)
    x = torch.randn(1, 16, 5, 6)
    with torch.no_grad():
        assert torch.allclose(rcca(x), rcca.attention(rcca.attention(x)))
        assert not torch.allclose(rcca(x), rcca.attention(x))


def test_channel_reduction_is_c_over_8():
    cca = CrissCrossAttention(32)
    assert cca.query.out_channels == cca.key.out_channels == 4
    assert cca.value.out_channels == 32
    assert CrissCrossAttention(4).query.out_channels == 1  # never zero channels


def test_bad_attention_arguments_raise():
    with pytest.raises(ValueError, match="recurrence"):
        RecurrentCrissCrossAttention(8, recurrence=0)
    with pytest.raises(ValueError, match="channels"):
        CrissCrossAttention(0)


def test_registered_with_contract_attributes():
    model = build_model("bianet", **TINY)
    assert isinstance(model, BiANet)
    assert model.input_views == ("c",) and model.task == "restoration"
    assert model.size_multiple == 4
    assert build_model("bianet", **TINY, attention_stride=8).size_multiple == 8
    # two separate attention modules (before and after the encoder-decoder), one parameter set each
    assert model.attention_in.attention is not model.attention_out.attention


def test_forward_shapes_including_odd():
    torch.manual_seed(0)
    check_forward_shapes(build_model("bianet", **TINY), 3, [(16, 24), (23, 17)])


def test_output_range_eval_clamped_train_raw():
    torch.manual_seed(0)
    model = build_model("bianet", **TINY)
    _randomise(model, seed=3, gamma=0.5)
    x = torch.rand(1, 3, 12, 20)
    with torch.no_grad():
        raw = model.train()(x)
        clamped = model.eval()(x)
    assert raw.min() < 0 or raw.max() > 1  # random weights push it out of range
    assert torch.equal(clamped, raw.clamp(0, 1))


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = build_model("bianet", **TINY)
    _randomise(model, seed=4, gamma=0.3)
    check_gradients_reach_every_parameter(model, 3, (16, 20))


def test_deterministic_init():
    check_deterministic_init(lambda: build_model("bianet", **TINY))


def test_onnx_parity_with_attention_active():
    torch.manual_seed(0)
    model = build_model("bianet", **TINY)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.fill_(0.7)
    worst = check_onnx_parity(model, 3, (24, 32), [(20, 28), (27, 33)])
    assert worst <= 1e-4


def test_bad_inputs_raise():
    model = build_model("bianet", **TINY)
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        model(torch.rand(1, 6, 16, 16))
    with pytest.raises(ValueError, match="widths"):
        BiANet(widths=(8, 16))
    with pytest.raises(ValueError, match="attention_stride"):
        BiANet(attention_stride=3)
    with pytest.raises(ValueError, match="blocks_per_level"):
        BiANet(blocks_per_level=0)
