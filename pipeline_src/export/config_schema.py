"""The schema of config/export.yaml (JSON Schema, draft 2020-12), checked whenever the settings are loaded.

A wrong type or a missing key is refused when the file is read, with the field's path, instead of failing in
the middle of a stage.
"""
from __future__ import annotations

from typing import Any

SIZE = {"type": "string", "pattern": r"^[0-9]+[xX][0-9]+$"}
PER_PRECISION = {"type": "object", "required": ["fp32", "fp16", "int8"],
                 "properties": {p: {"type": "number"} for p in ("fp32", "fp16", "int8")}}
POSITIVE_INT = {"type": "integer", "minimum": 1}

EXPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["onnx", "quantize", "tensorrt", "bundle", "latency"],
    "properties": {
        "onnx": {"type": "object", "required": ["opset", "input_name", "output_name", "parity", "op_table"],
                 "properties": {"opset": POSITIVE_INT, "input_name": {"type": "string"},
                                "output_name": {"type": "string"}, "op_table": {"type": "string"},
                                "parity": {"type": "object", "required": ["export_size", "check_sizes", "atol", "seed"],
                                           "properties": {"export_size": SIZE,
                                                          "check_sizes": {"type": "array", "items": SIZE,
                                                                          "minItems": 2},
                                                          "atol": {"type": "number", "minimum": 0},
                                                          "seed": {"type": "integer"}}}}},
        "quantize": {"type": "object",
                     "required": ["calibration_patches", "calibration_batch", "calibration_method", "seed",
                                  "op_types_to_quantize", "tensorrt_float_ops", "device_checked_qdq_ops",
                                  "max_int8_drop_db", "max_int8_mae_rise", "max_test_images"],
                     "properties": {"calibration_patches": POSITIVE_INT, "calibration_batch": POSITIVE_INT,
                                    "calibration_method": {"type": "string"}, "seed": {"type": "integer"},
                                    "op_types_to_quantize": {"type": "array", "items": {"type": "string"},
                                                             "minItems": 1},
                                    "tensorrt_float_ops": {"type": "object",
                                                           "additionalProperties": {"type": "string", "minLength": 1}},
                                    "device_checked_qdq_ops": {"type": "array", "items": {"type": "string"}},
                                    "max_int8_drop_db": {"type": "number"}, "max_int8_mae_rise": {"type": "number"},
                                    "max_test_images": {"type": ["integer", "null"], "minimum": 1},
                                    # counts a scale preset may lower (quantize --preset): never the gate
                                    "presets": {"type": "object",
                                                "propertyNames": {"enum": ["smoke", "default", "paper"]},
                                                "additionalProperties": {
                                                    "type": "object", "additionalProperties": False,
                                                    "properties": {"calibration_patches": POSITIVE_INT,
                                                                   "calibration_batch": POSITIVE_INT,
                                                                   "max_test_images": {"type": ["integer", "null"],
                                                                                       "minimum": 1}}}}}},
        "tensorrt": {"type": "object",
                     "required": ["profile", "workspace_mib", "timing_cache_dir", "compare_images",
                                  "min_psnr_vs_onnxruntime_db"],
                     "properties": {"profile": {"type": "object", "required": ["min", "opt", "max"],
                                                "properties": {k: SIZE for k in ("min", "opt", "max")}},
                                    "workspace_mib": POSITIVE_INT, "timing_cache_dir": {"type": "string"},
                                    "compare_images": POSITIVE_INT, "min_psnr_vs_onnxruntime_db": PER_PRECISION}},
        "bundle": {"type": "object",
                   "required": ["variants", "default_engine_precision", "check_size", "min_psnr_vs_fp32_db",
                                "check_margin_db", "tiling"],
                   "properties": {"variants": {"type": "object", "required": ["fp32", "fp16", "int8"]},
                                  "default_engine_precision": {"enum": ["fp32", "fp16", "int8"]},
                                  "check_size": SIZE, "min_psnr_vs_fp32_db": PER_PRECISION,
                                  "check_margin_db": {"type": "number", "minimum": 0},
                                  "tiling": {"type": "object", "required": ["tile", "overlap", "margin"],
                                             "properties": {"tile": {"anyOf": [SIZE, {"type": "null"}]},
                                                            "overlap": {"type": "integer", "minimum": 0},
                                                            "margin": {"type": "integer", "minimum": 0}}}}},
        "latency": {"type": "object", "required": ["sizes", "warmup", "repeats", "threads"]},
    },
}


def validate_export_config(cfg: Any, path) -> None:
    """Raise ConfigError naming the file and every offending field (first ten)."""
    import jsonschema

    from pipeline_src.config import ConfigError

    errors = sorted(jsonschema.Draft202012Validator(EXPORT_SCHEMA).iter_errors(cfg), key=lambda e: list(e.path))
    if errors:
        fields = "; ".join(f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors[:10])
        raise ConfigError(f"{path}: {fields}")
