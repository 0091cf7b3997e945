"""How a training phase samples its crops: the recipe's `sampling` key names one of these.

    windows       crops of the windows the `patches` stage cut (with its sharpness discard, when the preset
                  asks for one): DPDNet's pre-cut patches, which ATTSF trained on (560 px, stride 140);
                  an epoch is one pass over the windows.
    whole_images  random crops anywhere in the whole training images, no discard: KPAC's paper ("each image
                  in a batch is randomly cropped to 512 x 512"), ADNet's code (tf.random_crop of whole
                  frames); an epoch is one crop from every image, as ADNet's code counts epochs.
Both read memory-mapped arrays written by the `patches` stage, and both draw everything an item needs from
(seed, epoch, index) only. Builders are registered by the module that defines them and imported on first use.
"""
from __future__ import annotations

from pathlib import Path

from pipeline_src.registry import Registry

SAMPLINGS = Registry(
    "training sampling",
    locations={
        "windows": "pipeline_src.data.patch_dataset",
        "whole_images": "pipeline_src.data.image_crops",
    },
)


def build_training_set(sampling: str, patch_dir: str | Path, keys: list[str], crop: int, augment: dict | None,
                       seed: int, bit_depth: int | None = None, where: str = "phase"):
    """The training Dataset a phase's `sampling`, `crop`, `augment` and `bit_depth` describe."""
    from pipeline_src.config import ConfigError
    from pipeline_src.data.augment import Augment

    if sampling not in SAMPLINGS:
        raise ConfigError(f"{where}.sampling = {sampling!r}; known: {', '.join(SAMPLINGS.names())}")
    spec = Augment.from_recipe(augment, f"{where}.augment")
    return SAMPLINGS.build(sampling, Path(patch_dir), keys=list(keys), crop=int(crop), augment=spec, seed=seed,
                           bit_depth=bit_depth)
