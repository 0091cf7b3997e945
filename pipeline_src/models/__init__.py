"""Model registry. Each model file registers its builders; this table says which module holds which name.

Contract every model follows (tests/model_checks.py checks it for each):
- `forward(x)` takes one tensor N x C x H x W, float, values in [0, 1]: the views named in the class
  attribute `input_views` concatenated along channels in that order ("c" = the single blurry image or the
  dual-pixel combined view, "l"/"r" = dual-pixel left/right views).
- It returns N x 3 x H x W in [0, 1] (task "restoration") or N x 1 x H x W logits (task "detection").
  A multi-scale model in training mode returns a list, coarse to fine, whose last item is that output.
- Any H and W are accepted: the model pads to its `size_multiple` and crops back (layers/padding.py).
- It exports to ONNX (opset 17, dynamic H and W) without export-only code in the model.
"""
from pipeline_src.registry import Registry

MODELS = Registry(
    "model",
    locations={
        "kpac": "pipeline_src.models.kpac",
        "kpac_dual": "pipeline_src.models.kpac",
        "attsf": "pipeline_src.models.attsf",
        "multianet": "pipeline_src.models.multianet",
        "adnet": "pipeline_src.models.adnet",
        "bianet": "pipeline_src.models.bianet",
    },
)


def build_model(name: str, **kwargs):
    return MODELS.build(name, **kwargs)
