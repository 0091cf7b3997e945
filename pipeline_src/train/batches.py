"""What the phase runner feeds the model: training sets, loaders, validation and sample images.

The phase's `sampling` picks the training set (pipeline_src/data/sampling.py): crops of the stored windows
(`windows`) or of the whole images (`whole_images`). Either returns one dict per item (each view, the target
or mask, as CHW float tensors in [0, 1]) with the same crop and flips on every view. Here the model's
`input_views` are concatenated along channels in the model's order, which is the one input tensor every
model takes. Validation always uses the stored val windows, whole (no crop, no flips).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline_src.errors import DataError


def target_key(model) -> str:
    return "mask" if getattr(model, "task", "restoration") == "detection" else "target"


def training_set(patch_dir: Path, phase: dict, model, seed: int):
    """The phase's training Dataset: its `sampling`, `crop`, `augment` and `bit_depth` (a pure function of
    (seed, epoch, index) per item, whichever sampling)."""
    from pipeline_src.config import ConfigError
    from pipeline_src.data.sampling import build_training_set

    where = f"phase {phase.get('name', '?')!r}"
    if "sampling" not in phase:
        raise ConfigError(f"{where}: no `sampling` (windows | whole_images); the recipe must say how it crops")
    return build_training_set(phase["sampling"], patch_dir, keys=[*model.input_views, target_key(model)],
                              crop=phase["crop"], augment=phase.get("augment"), seed=seed,
                              bit_depth=phase.get("bit_depth"), where=where)


def validation_batches(patch_dir: Path, model, count: int,
                       bit_depth: int | None = None) -> list[dict[str, torch.Tensor]]:
    """The first `count` validation patches, whole (no crop, no flips), one per batch; fixed for the phase.
    `bit_depth`: the phase's (KPAC validates at the 8 bits it trains at, once the runner passes it)."""
    from pipeline_src.data.patch_dataset import PatchDataset

    val = PatchDataset(patch_dir, "val", keys=[*model.input_views, target_key(model)], crop=None, seed=0,
                       bit_depth=bit_depth)
    if len(val) == 0:
        raise DataError(f"{patch_dir}: no validation patches; the val split needs at least one sample")
    return [{k: v.unsqueeze(0) for k, v in val[i].items()} for i in range(min(count, len(val)))]


def loader(dataset, batches: list[list[int]], num_workers: int):
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                                       pin_memory=torch.cuda.is_available(), persistent_workers=False)


def to_device(batch: dict[str, torch.Tensor], model, device: torch.device):
    inputs = torch.cat([batch[v] for v in model.input_views], dim=1).to(device, non_blocking=True)
    target = batch[target_key(model)].to(device, non_blocking=True)
    if device.type == "cuda":
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return inputs, target


def loss_options(recipe: dict, phase: dict, weights_dir: Path) -> dict:
    """Per-loss construction arguments the recipe implies: the perceptual loss's VGG19 weight file; the multi-scale
    MSE resizes its target as the model resizes its input (ADNet's `resize`)."""
    opts: dict = {}
    resize = (recipe.get("model", {}).get("args") or {}).get("resize")
    if resize is not None and "multiscale_mse" in phase["loss"]:
        opts["multiscale_mse"] = {"resize": resize}
    role = recipe.get("weights", {}).get("perceptual")
    if role is not None and "perceptual" in phase["loss"]:
        from pipeline_src.config import REPO_ROOT
        from pipeline_src.data.registry import load_registry

        entry = load_registry(REPO_ROOT / "config" / "datasets.yaml").weight(role)
        opts["perceptual"] = {"weights_path": str(Path(weights_dir) / entry.filename),
                              "expected_sha256": entry.sha256}
    return opts


def load_pretrained_backbone(model, recipe: dict, weights_dir: Path) -> dict[str, str]:
    """Load the recipe's backbone weights (MultiANet: torchvision's VGG16 file) into `model.backbone`.

    Only for a phase that starts from scratch; the file is hash-checked. Missing: a loud warning, a tag,
    and training goes on from random backbone weights (as the perceptual loss does).
    """
    role = recipe.get("weights", {}).get("backbone")
    if role is None:
        return {}
    import warnings

    from pipeline_src.config import REPO_ROOT
    from pipeline_src.data.registry import load_registry
    from pipeline_src.models.vgg import load_vgg_weights

    entry = load_registry(REPO_ROOT / "config" / "datasets.yaml").weight(role)
    path = Path(weights_dir) / entry.filename
    if not path.is_file():
        warnings.warn(f"backbone weights {path} are missing: {recipe['model']['name']} trains from a RANDOM "
                      f"backbone. Fetch them with `python -m pipeline_src fetch {role}`.", RuntimeWarning)
        return {"weights.backbone.pretrained": "false"}
    sha = load_vgg_weights(model.backbone, path, expected_sha256=entry.sha256)
    model.pretrained = True
    return {"weights.backbone.pretrained": "true", "weights.backbone.sha256": sha}


def pretrained_flags(loss_fn) -> dict[str, bool]:
    """Which loss terms run on pretrained weights (perceptual: VGG19 from the weights stage) — an MLflow tag."""
    return {name: bool(m.pretrained) for name, m in loss_fn.terms.items() if hasattr(m, "pretrained")}


@torch.no_grad()
def validate(model, batches, device) -> dict[str, float]:
    """The task's own figures on the whole val patches: PSNR of the output and of the blurry input against the
    target (restoration), or the evaluation's F-measures and MAE of the in-focus probability (detection)."""
    from pipeline_src.evaluate.metrics import psnr_torch

    was_training = model.training
    model.eval()
    if getattr(model, "task", "restoration") == "detection":
        from pipeline_src.evaluate.detection_metrics import DetectionAccumulator

        acc = DetectionAccumulator()
        for i, b in enumerate(batches):
            inputs, target = to_device(b, model, device)
            prob = torch.sigmoid(model(inputs).float())[0, 0].cpu().numpy()
            acc.update(str(i), prob, target[0, 0].cpu().numpy() > 0.5)
        model.train(was_training)
        results = acc.results()
        return {f"val/{k}": float(results[k]) for k in ("max_f", "f_at_0_5", "mae")}
    out_psnr, in_psnr = [], []
    for b in batches:
        inputs, target = to_device(b, model, device)
        pred = model(inputs).float()
        out_psnr.append(float(psnr_torch(pred.clamp(0, 1), target).mean()))
        blurry = b["c" if "c" in model.input_views else model.input_views[0]].to(device)
        in_psnr.append(float(psnr_torch(blurry, target).mean()))
    model.train(was_training)
    metrics = {"val/psnr": float(np.mean(out_psnr))}
    metrics["val/psnr_input"] = float(np.mean(in_psnr))
    metrics["val/psnr_gain"] = metrics["val/psnr"] - metrics["val/psnr_input"]
    return metrics


@torch.no_grad()
def sample_strip(model, batches, device) -> np.ndarray:
    """input | output | target of the first validation patch, uint8 RGB, for the MLflow run's images."""
    was_training = model.training
    model.eval()
    b = batches[0]
    inputs, target = to_device(b, model, device)
    pred = model(inputs).float()
    if getattr(model, "task", "restoration") == "detection":
        pred = torch.sigmoid(pred)
    model.train(was_training)
    view = "c" if "c" in model.input_views else model.input_views[0]

    def rgb(t):
        t = t[0].detach().float().cpu().clamp(0, 1)
        t = t.expand(3, -1, -1) if t.shape[0] == 1 else t[:3]
        return (t.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)

    return np.concatenate([rgb(b[view]), rgb(pred), rgb(target)], axis=1)
