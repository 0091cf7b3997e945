"""build-engine: profile snapping, engine naming, precision from the graph, the "no TensorRT" path, and real
builds (these need tensorrt and a CUDA device and skip, with the reason, where either is missing)."""
import json
import shutil

import numpy as np
import pytest

from pipeline_src.cli import main as cli_main
from pipeline_src.export import load_export_config
from pipeline_src.export.quantize import quantize_model
from pipeline_src.export.tensorrt_engine import build_engine_stage, comparison_inputs, detect_precision
from pipeline_src.export.trt_builder import (
    NoEngineBuilt,
    engine_name,
    parse_trtexec_banner,
    probe,
    snap_profile,
    timing_cache_name,
    version_tag,
)
from tests.export.conftest import EXPORT_CONFIG, OP_TABLE


def _config():
    cfg = load_export_config(EXPORT_CONFIG)
    cfg["onnx"]["op_table"] = str(OP_TABLE)
    cfg["quantize"]["calibration_patches"] = 16
    # a tiny profile keeps a real build fast; 72 is not a multiple of 8 or 16 on purpose
    cfg["tensorrt"]["profile"] = {"min": "32x32", "opt": "64x48", "max": "72x72"}
    return cfg


def _tensorrt_state() -> str | None:
    """None when an engine can be built here, else the reason it cannot."""
    try:
        probe()
    except NoEngineBuilt as e:
        return str(e)
    return None


@pytest.fixture(scope="module")
def variants(exported, tiny_setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("variants")
    for name in ("model.onnx", "parity.json", "ops.json"):
        shutil.copyfile(exported / name, out / name)
    quantize_model(str(out / "model.onnx"), str(tiny_setup["manifest"]), str(tiny_setup["patches"]), _config(), out)
    return out


# ------------------------------------------------------------------------------------ profile and naming
def test_profile_sides_are_rounded_up_to_the_size_multiple():
    snapped = snap_profile({"min": (61, 64), "opt": (720, 1280), "max": (1125, 1680)}, 16)
    assert snapped == {"min": (64, 64), "opt": (720, 1280), "max": (1136, 1680)}


def test_profile_out_of_order_after_snapping_is_refused():
    with pytest.raises(ValueError, match="heights must satisfy 0 < min <= opt <= max.*min 128, opt 64"):
        snap_profile({"min": (100, 64), "opt": (64, 64), "max": (256, 256)}, 32)


@pytest.mark.parametrize("profile,multiple,match", [
    ({"min": (8, 8), "opt": (8, 8)}, 4, "lacks \\['max'\\]"),
    ({"min": (8, 8), "opt": (8, 8), "max": (8, 8)}, 0, "size multiple 0"),
])
def test_incomplete_profile_or_bad_multiple_is_refused(profile, multiple, match):
    with pytest.raises(ValueError, match=match):
        snap_profile(profile, multiple)


def test_engine_is_named_by_gpu_tensorrt_version_and_precision():
    assert engine_name("kpac", (9, 0), "10.16.1.11", "fp16") == "kpac-sm90-trt10.16.1-fp16.plan"
    assert engine_name("kpac_dual", (8, 7), "11.4.1", "int8") == "kpac_dual-sm87-trt11.4.1-int8.plan"
    assert timing_cache_name((8, 9), "10.16.1.11") == "timing-cache-sm89-trt10.16.1.bin"


@pytest.mark.parametrize("args,match", [
    (("kpac", (9, 0), "10.16.1", "bf16"), "precision 'bf16'"),
    (("kp/ac", (9, 0), "10.16.1", "fp16"), "cannot go into a file name"),
    (("kpac", (9, 0), "ten", "fp16"), "TensorRT version 'ten'"),
])
def test_bad_name_parts_are_refused(args, match):
    with pytest.raises(ValueError, match=match):
        engine_name(*args)


def test_version_tag_and_trtexec_banner():
    assert version_tag("11.4") == "11.4"
    assert parse_trtexec_banner("&&&& RUNNING TensorRT.trtexec [TensorRT v101601] # trtexec") == "10.16.1"
    assert parse_trtexec_banner("[TensorRT v8601]") == "8.6.1"
    with pytest.raises(ValueError, match="banner"):
        parse_trtexec_banner("trtexec: command not found")


# ----------------------------------------------------------------------------------------------- inputs
def test_precision_is_read_from_the_graph(variants):
    assert detect_precision(variants / "model.onnx") == "fp32"
    assert detect_precision(variants / "model_fp16.onnx") == "fp16"
    assert detect_precision(variants / "model_int8.onnx") == "int8"


def test_precision_metadata_contradicting_the_graph_is_refused(variants, tmp_path):
    import onnx

    proto = onnx.load(str(variants / "model_fp16.onnx"))
    next(e for e in proto.metadata_props if e.key == "pipeline.precision").value = "int8"
    onnx.save(proto, str(tmp_path / "liar.onnx"))
    with pytest.raises(ValueError, match="metadata says int8, but the graph is fp16"):
        detect_precision(tmp_path / "liar.onnx")


def test_comparison_inputs_are_test_images_cropped_to_the_profile(tiny_setup):
    meta = {"input_views": ["c"], "task": "restoration", "in_channels": 3}
    inputs = comparison_inputs(str(tiny_setup["manifest"]), meta, {"min": (32, 32), "opt": (32, 48), "max": (32, 48)}, 4)
    assert [(name, x.shape) for name, x in inputs] == [("000", (1, 3, 32, 48)), ("001", (1, 3, 32, 48))]
    noise = comparison_inputs(None, meta, {"min": (32, 32), "opt": (48, 64), "max": (64, 64)}, 4)
    assert [x.shape for _, x in noise] == [(1, 3, 32, 32), (1, 3, 48, 64)]
    assert all(x.dtype == np.float32 for _, x in noise)


# ------------------------------------------------------------------------------------------ no TensorRT
def test_without_tensorrt_or_cuda_the_stage_says_so_writes_the_report_and_no_engine(variants, tmp_path, capsys):
    reason = _tensorrt_state()
    if reason is None:
        pytest.skip("TensorRT and a CUDA device are present here: engines build for real (tests below)")
    cfg_path = tmp_path / "export.yaml"
    cfg_path.write_text(EXPORT_CONFIG.read_text().replace("config/tensorrt_onnx_ops.yaml", str(OP_TABLE)))
    rc = cli_main(["build-engine", "--onnx", str(variants / "model_fp16.onnx"), "--out-dir", str(tmp_path / "eng"),
                   "--config", str(cfg_path), "--timing-cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    assert "No TensorRT engine was built" in capsys.readouterr().err
    report = json.loads((tmp_path / "eng" / "build-report-fp16.json").read_text())
    assert report == {"onnx": str(variants / "model_fp16.onnx"), "precision": "fp16",
                      "model": "tiny_export_restorer", "built": False, "engine": None, "reason": reason}
    assert not list((tmp_path / "eng").glob("*.plan")) and not (tmp_path / "cache").exists()


def test_engines_demanded_without_tensorrt_fail_and_switched_off_build_nothing(variants, tmp_path, capsys):
    reason = _tensorrt_state()
    if reason is None:
        pytest.skip("TensorRT and a CUDA device are present here: `--when on` would build for real")
    cfg_path = tmp_path / "export.yaml"
    cfg_path.write_text(EXPORT_CONFIG.read_text().replace("config/tensorrt_onnx_ops.yaml", str(OP_TABLE)))
    args = ["build-engine", "--onnx", str(variants / "model_fp16.onnx"), "--config", str(cfg_path),
            "--timing-cache-dir", str(tmp_path / "cache")]
    assert cli_main([*args, "--out-dir", str(tmp_path / "on"), "--when", "on"]) == 1
    assert json.loads((tmp_path / "on" / "build-report-fp16.json").read_text())["built"] is False
    assert cli_main([*args, "--out-dir", str(tmp_path / "off"), "--when", "off"]) == 0
    report = json.loads((tmp_path / "off" / "build-report-fp16.json").read_text())
    assert report["built"] is False and "engines: off" in report["reason"]
    assert not list(tmp_path.rglob("*.plan"))


# ------------------------------------------------------------------------------------------ real builds
def _require_engine_build():
    pytest.importorskip("tensorrt", reason="tensorrt is not installed (GPU hosts: pip install .[trt])")
    reason = _tensorrt_state()
    if reason is not None:
        pytest.skip(f"no engine can be built here: {reason}")


@pytest.mark.tensorrt
@pytest.mark.parametrize("variant,precision", [("model.onnx", "fp32"), ("model_fp16.onnx", "fp16"),
                                               ("model_int8.onnx", "int8")])
def test_real_engine_builds_matches_onnx_runtime_and_reuses_the_timing_cache(variants, tiny_setup, tmp_path,
                                                                             variant, precision):
    _require_engine_build()
    cfg = _config()
    cache = tmp_path / "cache"
    first = build_engine_stage(str(variants / variant), tmp_path / "eng", cfg, manifest=str(tiny_setup["manifest"]),
                               timing_cache_dir=str(cache))
    assert first["built"] and first["check"]["passed"] and not first["timing_cache_reused"]
    assert first["engine"].endswith(f"-{precision}.plan") and "-sm" in first["engine"] and "-trt1" in first["engine"]
    assert first["profile"]["max"] == {"height": 72, "width": 72}  # 72 is already a multiple of 4
    second = build_engine_stage(str(variants / variant), tmp_path / "eng", cfg, timing_cache_dir=str(cache))
    assert second["timing_cache_reused"] and second["check"]["passed"]
