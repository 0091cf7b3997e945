"""Export and deployment (issue 5): ONNX with parity, op audit, FP16/INT8 variants, TensorRT engines, edge bundle.

Stages (`python -m pipeline_src <stage>`), in DAG order:
    export-onnx   onnx_export.py      checkpoint -> model.onnx, parity.json, ops.json
    quantize      quantize.py         model.onnx -> model_fp16.onnx, model_int8.onnx, quality.json
    build-engine  tensorrt_engine.py  an ONNX variant -> <model>-<device>_<N>sm-sm<cc>-trt<ver>-<precision>.plan,
                                      build-report-<precision>.json
    bundle        bundle.py           export folder -> data/bundles/<paper>-<dataset>/
Four files run outside the pipeline too and so import nothing from it: `edge_infer.py` (the bundle's `infer.py`),
`trt_builder.py` (the bundle's `build_engine.py`), `edge_cuda.py` and `edge_tiling.py`.

This module holds what the stages share: the settings file, sizes written WIDTHxHEIGHT, and a manifest's
samples as model inputs.
"""
from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np

DEFAULT_CONFIG = "config/export.yaml"
# The keys every stage reads; a settings file missing one is refused with its name.
REQUIRED_SECTIONS = {
    "onnx": ("opset", "input_name", "output_name", "parity", "op_table"),
    "quantize": ("calibration_patches", "calibration_batch", "calibration_method", "seed", "op_types_to_quantize",
                 "max_int8_drop_db", "max_int8_mae_rise", "max_test_images"),
    "tensorrt": ("profile", "workspace_mib", "timing_cache_dir", "compare_images", "min_psnr_vs_onnxruntime_db"),
    "bundle": ("variants", "default_engine_precision"),
    "latency": ("sizes", "warmup", "repeats", "threads"),
}


def load_export_config(path: str | os.PathLike = DEFAULT_CONFIG) -> dict[str, Any]:
    from pipeline_src.config import ConfigError, load_yaml

    cfg = load_yaml(path)
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a mapping with sections {', '.join(REQUIRED_SECTIONS)}")
    for section, keys in REQUIRED_SECTIONS.items():
        if not isinstance(cfg.get(section), dict):
            raise ConfigError(f"{path}: missing section {section!r}")
        missing = [k for k in keys if k not in cfg[section]]
        if missing:
            raise ConfigError(f"{path}: section {section!r} lacks {', '.join(missing)}")
    from pipeline_src.export.config_schema import validate_export_config

    validate_export_config(cfg, path)
    return cfg


def parse_size(text: str) -> tuple[int, int]:
    """"1280x720" (width x height, the way screen sizes are written) -> (height, width) = (720, 1280)."""
    parts = str(text).lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"size {text!r}: expected WIDTHxHEIGHT with positive integers, e.g. 1280x720")
    width, height = (int(p) for p in parts)
    return height, width


def format_size(height: int, width: int) -> str:
    return f"{width}x{height}"


# ---------------------------------------------------------------------------------------------- samples
def split_samples(manifest_path: str | os.PathLike, split: str) -> tuple[dict, list[dict]]:
    """(manifest, the split's samples), refused in one line when the split has none."""
    from pipeline_src.data.samples import load_manifest, samples_of
    from pipeline_src.errors import DataError

    manifest = load_manifest(manifest_path)
    samples = [s for _, s in samples_of(manifest, split)]
    if not samples:
        raise DataError(f"{manifest_path}: no {split!r} samples; its splits: {manifest['splits']}")
    return manifest, samples


def iter_test_inputs(manifest_path: str | os.PathLike, views, limit: int | None = None,
                     task: str = "restoration", split: str = "test"
                     ) -> Iterator[tuple[str, np.ndarray, np.ndarray | None, int]]:
    """Yield (sample id, model input 1 x C x H x W float32 in [0, 1], target, bit depth) for a split.

    The target is what the model's output is scored against: the sharp image (H x W x 3 float32 in [0, 1])
    for restoration, the in-focus mask (H x W float32, 1 = in focus) for detection, None if the set has none.
    """
    from pipeline_src.data.samples import load_sample
    from pipeline_src.fileio import bit_depth_of, to_float

    manifest, samples = split_samples(manifest_path, split)
    for sample in samples[:limit]:
        arrays = load_sample(manifest, sample)
        x = views_to_input(arrays, views)
        if task == "detection":
            target = arrays["mask"].astype(np.float32) if "mask" in arrays else None
        else:
            target = to_float(arrays["target"]) if "target" in arrays else None
        yield sample["id"], x, target, bit_depth_of(arrays[views[0]])


def require_split_files(manifest_path: str | os.PathLike, limit: int | None = None, split: str = "test") -> None:
    """Refuse, naming the first missing file, before long work whose end reads the split (iter_test_inputs)."""
    from pipeline_src.data.samples import sample_paths
    from pipeline_src.fileio import ImageReadError

    manifest, samples = split_samples(manifest_path, split)
    for sample in samples[:limit]:
        for path in sample_paths(manifest, sample).values():
            if not path.is_file():
                raise ImageReadError(f"{path}: no such file ({split} sample {sample['id']!r} of {manifest_path}); "
                                     "restore it or re-run `index` on the dataset")


def views_to_input(arrays: dict[str, np.ndarray], views) -> np.ndarray:
    """{view: H x W x 3 uint8/uint16} -> 1 x 3*len(views) x H x W float32 in [0, 1], views in model order."""
    from pipeline_src.fileio import to_float

    missing = [v for v in views if v not in arrays]
    if missing:
        raise ValueError(f"the model reads view(s) {list(views)}; missing {missing} (have {sorted(arrays)})")
    shapes = {v: arrays[v].shape for v in views}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"views differ in size: {shapes}")
    x = np.concatenate([to_float(arrays[v]) for v in views], axis=2)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])
