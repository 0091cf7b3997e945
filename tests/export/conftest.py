"""Fixtures for the export tests: a tiny registered model, its checkpoint, a tiny dataset manifest and patches.

The tiny model has what the real ones have that matters to export: in-graph padding to a size multiple
(Pad with dynamic amounts), a stride-2 level and an upsampling (Resize), a residual, a crop back (Slice).
Everything is 32-64 px so the whole folder runs in well under a minute on two CPU cores.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline_src.fileio import sha256_file, write_image
from pipeline_src.model_io import model_record, save_model_file
from pipeline_src.models import MODELS
from pipeline_src.models.layers.padding import crop_to, pad_to_multiple

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[2]
EXPORT_CONFIG = REPO / "config" / "export.yaml"
OP_TABLE = REPO / "config" / "tensorrt_onnx_ops.yaml"


# Runs a bundle script with `pipeline_src` and `torch` (and whatever DEVICE_REFUSE adds) unimportable, so the
# test proves the script needs none of them; DEVICE_PATH adds folders to sys.path (the stand-in TensorRT site).
HARNESS = """
import importlib.abc, os, runpy, sys
refused = {"pipeline_src", "torch", *filter(None, os.environ.get("DEVICE_REFUSE", "").split(","))}
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in refused:
            raise ImportError(f"{name} is not available on the device", name=name)
sys.meta_path.insert(0, Refuse())
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, ".")
sys.path += [p for p in os.environ.get("DEVICE_PATH", "").split(os.pathsep) if p]
runpy.run_path(script, run_name="__main__")
"""


def run_on_device(folder: Path, script: str, *args: str, env: dict | None = None,
                  timeout: int = 120) -> subprocess.CompletedProcess:
    """Run a bundle script in `folder` as a device would: a fresh interpreter, no pipeline, no torch."""
    return subprocess.run([sys.executable, "-I", "-c", HARNESS, script, *args], cwd=folder, capture_output=True,
                          text=True, timeout=timeout, env=env)


class TinyRestorer(nn.Module):
    """Residual two-level conv net; input views concatenated along channels, output N x 3 x H x W."""
    task = "restoration"

    def __init__(self, views=("c",), width: int = 8):
        super().__init__()
        self.input_views = tuple(views)
        self.size_multiple = 4
        cin = 3 * len(self.input_views)
        self.head = nn.Conv2d(cin, width, 3, padding=1)
        self.down = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.tail = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x):
        x, size = pad_to_multiple(x, self.size_multiple)
        y = F.leaky_relu(self.head(x), 0.2)
        z = F.interpolate(F.leaky_relu(self.down(y), 0.2), scale_factor=2, mode="nearest")
        out = x[:, :3] + 0.2 * torch.tanh(self.tail(y + z))
        return crop_to(out, size)


class TinyDetector(TinyRestorer):
    """The same body with one output channel of logits: a blur-detection model (task "detection")."""
    task = "detection"

    def __init__(self, views=("c",), width: int = 8):
        super().__init__(views, width)
        self.tail = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, x):
        x, size = pad_to_multiple(x, self.size_multiple)
        y = F.leaky_relu(self.head(x), 0.2)
        z = F.interpolate(F.leaky_relu(self.down(y), 0.2), scale_factor=2, mode="nearest")
        return crop_to(self.tail(y + z), size)


class TinyDeconv(TinyRestorer):
    """Upsamples with a ConvTranspose (as KPAC's decoder does): the operator TensorRT takes only in float."""

    def __init__(self, views=("c",), width: int = 8):
        super().__init__(views, width)
        self.up = nn.ConvTranspose2d(width, width, 4, stride=2, padding=1)

    def forward(self, x):
        x, size = pad_to_multiple(x, self.size_multiple)
        y = F.leaky_relu(self.head(x), 0.2)
        z = self.up(F.leaky_relu(self.down(y), 0.2))
        out = x[:, :3] + 0.2 * torch.tanh(self.tail(y + z))
        return crop_to(out, size)


@MODELS.register("tiny_export_deconv")
def tiny_export_deconv(views=("c",), width: int = 8):
    return TinyDeconv(views, width)


@MODELS.register("tiny_export_detector")
def tiny_export_detector(views=("c",), width: int = 8):
    return TinyDetector(views, width)


@MODELS.register("tiny_export_restorer")
def tiny_export_restorer(views=("c",), width: int = 8):
    return TinyRestorer(views, width)


def make_checkpoint(path: Path, views=("c",), seed: int = 0, name: str = "tiny_export_restorer") -> Path:
    torch.manual_seed(seed)
    model = MODELS.build(name, views=list(views))
    record = model_record(model, name, {"views": list(views)})
    record.update({"paper": "tiny", "dataset": "synthetic", "phase": 1, "step": 0, "config": {},
                   "mlflow_run_id": None})
    save_model_file(path, record)
    return path


def make_dataset(root: Path, views=("c",), bit_depth: int = 8, n_test: int = 2, size_hw=(40, 56),
                 n_patches: int = 24, patch: int = 32, seed: int = 0, masks: bool = False) -> tuple[Path, Path]:
    """A manifest (format 2, as `index` writes it) of smooth images with noise, and train patch arrays;
    with `masks`, each sample also has an 8-bit in-focus mask (255 = in focus), as detection sets do."""
    rng = np.random.default_rng(seed)
    top = (1 << bit_depth) - 1
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    h, w = size_hw
    samples = []
    for i in range(n_test):
        yy, xx = np.mgrid[0:h, 0:w]
        sharp = np.stack([(np.sin(xx / (3 + i + c)) * np.cos(yy / (4 + c)) + 1) / 2 for c in range(3)], axis=2)
        inputs = {}
        for v in views:
            blurry = np.clip(sharp * 0.8 + 0.1 + rng.normal(0, 0.02, sharp.shape), 0, 1)
            rel = f"test/{v}/{i:03d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            write_image(root / rel, (blurry * top + 0.5).astype(dtype))
            inputs[v] = rel
        (root / "test/target").mkdir(parents=True, exist_ok=True)
        write_image(root / f"test/target/{i:03d}.png", (sharp * top + 0.5).astype(dtype))
        mask = None
        if masks:
            mask = f"test/mask/{i:03d}.png"
            (root / "test/mask").mkdir(parents=True, exist_ok=True)
            write_image(root / mask, np.where(xx < w // 2, 255, 0).astype(np.uint8))
        files = {**inputs, "target": f"test/target/{i:03d}.png", **({"mask": mask} if mask else {})}
        samples.append({"split": "test", "id": f"{i:03d}", "inputs": inputs, "target": f"test/target/{i:03d}.png",
                        "mask": mask, "defocus": None, "height": h, "width": w,
                        "sha256": {k: sha256_file(root / rel) for k, rel in files.items()}})
    manifest = {"format": 2, "dataset": "synthetic", "layout": "dpdd", "root": str(root), "bit_depth": bit_depth,
                "views": list(views), "has_target": True, "has_mask": masks, "has_defocus": False,
                "mask_source_in_focus_value": 255 if masks else None, "splits": {"test": n_test}, "samples": samples}
    manifest_path = root / "manifest.json"
    manifest_path.write_text(json.dumps(manifest))
    patches = root / "patches" / "train"
    patches.mkdir(parents=True)
    for v in views:
        np.save(patches / f"{v}.npy", (rng.random((n_patches, patch, patch, 3)) * top).astype(dtype))
    return manifest_path, patches


@pytest.fixture(scope="session")
def tiny_setup(tmp_path_factory):
    """checkpoint, manifest and patch folder of the single-view tiny model (built once per session)."""
    root = tmp_path_factory.mktemp("tiny")
    ckpt = make_checkpoint(root / "final.pt")
    manifest, patches = make_dataset(root / "data")
    return {"root": root, "checkpoint": ckpt, "manifest": manifest, "patches": patches}


@pytest.fixture(scope="session")
def exported(tiny_setup, tmp_path_factory):
    """The tiny model exported by the stage's function (model.onnx, parity.json, ops.json)."""
    from pipeline_src.export import load_export_config
    from pipeline_src.export.onnx_export import export_checkpoint

    out = tmp_path_factory.mktemp("export")
    cfg = load_export_config(EXPORT_CONFIG)
    cfg["onnx"]["op_table"] = str(OP_TABLE)
    export_checkpoint(str(tiny_setup["checkpoint"]), out, cfg, manifest=str(tiny_setup["manifest"]),
                      sizes=["32x32", "44x36", "51x37"])
    return out


@pytest.fixture(scope="session")
def variants(exported, tiny_setup, tmp_path_factory):
    """The tiny model's export folder after quantize: model.onnx, model_fp16.onnx, model_int8.onnx and reports."""
    import shutil

    from pipeline_src.export import load_export_config
    from pipeline_src.export.quantize import quantize_model

    out = tmp_path_factory.mktemp("variants")
    for name in ("model.onnx", "parity.json", "ops.json"):
        shutil.copyfile(exported / name, out / name)
    cfg = load_export_config(EXPORT_CONFIG)
    cfg["onnx"]["op_table"] = str(OP_TABLE)
    cfg["quantize"]["calibration_patches"] = 16
    quantize_model(str(out / "model.onnx"), str(tiny_setup["manifest"]), str(tiny_setup["patches"]), cfg, out)
    return out


@pytest.fixture(scope="session")
def bundle_dir(variants, tiny_setup, tmp_path_factory):
    """The tiny model's edge bundle (with the manifest's first test sample and the stored check)."""
    from pipeline_src.export import load_export_config
    from pipeline_src.export.bundle import build_bundle

    cfg = load_export_config(EXPORT_CONFIG)
    cfg["onnx"]["op_table"] = str(OP_TABLE)
    out = tmp_path_factory.mktemp("bundles") / "tiny-synthetic"
    build_bundle(variants, out, cfg, str(tiny_setup["manifest"]))
    return out


@pytest.fixture(scope="session")
def standin(tmp_path_factory):
    """The stand-in TensorRT site, trtexec and libcudart (tests/export/standins): for OUR control flow only."""
    from tests.export.standins import build_site

    return build_site(tmp_path_factory.mktemp("standin-device"), HARNESS)
