"""Checks every model must pass; each model's test file calls them with its own builder and sizes."""
from __future__ import annotations

import io

import numpy as np
import torch


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_forward_shapes(model, in_channels: int, sizes, out_channels: int = 3):
    """Forward at each (H, W) (include an odd one) and check the output keeps H and W."""
    model.eval()
    with torch.no_grad():
        for h, w in sizes:
            y = model(torch.rand(1, in_channels, h, w))
            assert isinstance(y, torch.Tensor), "eval-mode forward must return a tensor"
            assert y.shape == (1, out_channels, h, w), (y.shape, (h, w))
            assert torch.isfinite(y).all()


def check_gradients_reach_every_parameter(model, in_channels: int, size, loss_fn=None):
    """One backward pass; every parameter must get a finite, non-None gradient.

    Parameters initialised so that they gate a branch off (e.g. gamma = 0 in an attention block) still
    receive a gradient, so this catches branches that are built but never used.
    """
    model.train()
    out = model(torch.rand(2, in_channels, *size))
    outs = out if isinstance(out, (list, tuple)) else [out]
    loss = sum((o - 0.5).pow(2).mean() for o in outs) if loss_fn is None else loss_fn(out)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:10]}"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad[:10]}"


def check_deterministic_init(builder):
    """Same seed -> identical weights; different seed -> different weights."""
    torch.manual_seed(123)
    a = builder().state_dict()
    torch.manual_seed(123)
    b = builder().state_dict()
    torch.manual_seed(124)
    c = builder().state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs for the same seed"
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point() and a[k].numel() > 1)


def check_onnx_parity(model, in_channels: int, export_size, check_sizes, atol: float = 1e-4, out_channels=3):
    """Export with dynamic H/W (opset 17), run in ONNX Runtime at sizes not used at export, compare."""
    import onnx
    import onnxruntime as ort

    model.eval()
    buf = io.BytesIO()
    x = torch.rand(1, in_channels, *export_size)
    torch.onnx.export(
        model, (x,), buf, dynamo=False, opset_version=17, input_names=["input"], output_names=["output"],
        dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch", 2: "height", 3: "width"}},
    )
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto)
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    worst = 0.0
    for h, w in check_sizes:
        xi = torch.rand(1, in_channels, h, w)
        with torch.no_grad():
            ref = model(xi).numpy()
        got = sess.run(None, {"input": xi.numpy()})[0]
        assert got.shape == (1, out_channels, h, w)
        worst = max(worst, float(np.abs(got - ref).max()))
    assert worst <= atol, f"ONNX Runtime differs from PyTorch by {worst:.3g} > {atol}"
    return worst
