"""Loss registry and the weighted sum that a training phase uses.

Every loss is a module called as `loss(pred, target) -> scalar tensor`. `pred` may be the list of multi-scale
outputs a model returns in training mode (coarse -> fine): single-scale losses use the last item (`finest`),
"multiscale_mse" uses all of them. A phase's loss is data, e.g. ADNet's {"multiscale_mse": 1.0, "gradient": 2.5}
or KPAC phase 2's {"l1": 1.0, "perceptual": 7e-4}, turned into a module by `build_loss`.

Names: "l1" (= "mae"), "mse", "bce" (with logits) in pixel.py; "ssim" (1 - SSIM), "ms_ssim" (1 - MS-SSIM) in
structural.py, computed by the same functions as the evaluation metrics, and "tf_ssim" (1 - tf.image.ssim,
ATTSF's code's SSIM term: 11x11 Gaussian window) there too; "gradient" (ADNet) in gradient.py;
"multiscale_mse" (ADNet) in multiscale.py; "perceptual" (KPAC, VGG19 conv4_4) in perceptual.py.
This module imports no torch, so naming or validating losses stays cheap.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from pipeline_src.errors import ConfigError, UnknownNameError
from pipeline_src.registry import Registry

LOSSES = Registry(
    "loss",
    locations={
        "l1": "pipeline_src.losses.pixel",
        "mae": "pipeline_src.losses.pixel",
        "mse": "pipeline_src.losses.pixel",
        "bce": "pipeline_src.losses.pixel",
        "ssim": "pipeline_src.losses.structural",
        "ms_ssim": "pipeline_src.losses.structural",
        "tf_ssim": "pipeline_src.losses.structural",
        "gradient": "pipeline_src.losses.gradient",
        "multiscale_mse": "pipeline_src.losses.multiscale",
        "perceptual": "pipeline_src.losses.perceptual",
    },
)


def finest(pred):
    """The full-resolution prediction: the last item of a coarse -> fine list, or the tensor itself."""
    if isinstance(pred, (list, tuple)):
        if not pred:
            raise ValueError("loss got an empty list of predictions")
        return pred[-1]
    return pred


def check_same_shape(pred, target, loss: str) -> None:
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"loss {loss!r}: prediction {tuple(pred.shape)} and target {tuple(target.shape)} "
                         "differ in shape")


def build_loss(terms: Mapping[str, float], options: Mapping[str, Mapping[str, Any]] | None = None):
    """{name: weight} (+ optional {name: builder kwargs}) -> CombinedLoss returning (total, {name: value}).

    Only the named terms are built; options for registered losses that are not terms are not used.
    """
    from pipeline_src.losses.combined import CombinedLoss

    if not isinstance(terms, Mapping) or not terms:
        raise ConfigError(f"loss terms must be a non-empty mapping name -> weight, got {terms!r}; "
                          f"known names: {', '.join(LOSSES.names())}")
    # Options are recipe-level construction arguments: they may cover losses this phase does not use
    # (KPAC's perceptual weights in its MAE-only phase), but they must name registered losses.
    options = dict(options or {})
    unknown = sorted(name for name in options if name not in LOSSES)
    if unknown:
        raise UnknownNameError(f"loss options given for unknown losses {unknown}; known: {', '.join(LOSSES.names())}")
    modules, weights = {}, {}
    for name, weight in terms.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                or weight < 0:
            raise ConfigError(f"loss term {name!r}: weight {weight!r}; expected a finite number >= 0")
        modules[name] = LOSSES.build(name, **dict(options.get(name, {})))
        weights[name] = float(weight)
    return CombinedLoss(modules, weights)
