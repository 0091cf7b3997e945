"""build-engine: profile snapping, engine naming, precision from the graph, the "no TensorRT" path, and the
stage's whole control flow on a stand-in GPU host (tests/export/standins: a stand-in `tensorrt` package and
libcudart; they test OUR control flow, not TensorRT): the check before the engine gets its name, the timing
cache (reuse, a cache from another device, None from TensorRT, the lock), the version gate, driver errors,
and where TensorRT's messages go. Real builds run where tensorrt and a CUDA device exist (skipped elsewhere)."""
import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from pipeline_src.cli import main as cli_main
from pipeline_src.errors import ExportError
from pipeline_src.export import load_export_config
from pipeline_src.export.edge_cuda import Device, device_slug
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
from tests.export.conftest import EXPORT_CONFIG, OP_TABLE, REPO
from tests.export.standins import stage_env


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
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "export.yaml"
    path.write_text(EXPORT_CONFIG.read_text().replace("config/tensorrt_onnx_ops.yaml", str(OP_TABLE))
                    .replace("max: 1680x1120", "max: 96x96").replace("opt: 1280x720", "opt: 64x64"))
    return path


def _stage(standin, variant, out_dir, config_file, cache_dir, manifest=None, **settings):
    """`python -m pipeline_src build-engine` in a subprocess on a stand-in GPU host."""
    args = [sys.executable, "-m", "pipeline_src", "build-engine", "--onnx", str(variant), "--out-dir", str(out_dir),
            "--config", str(config_file), "--timing-cache-dir", str(cache_dir)]
    if manifest:
        args += ["--manifest", str(manifest)]
    return subprocess.run(args, cwd=REPO, env=stage_env(standin, REPO, **settings), capture_output=True, text=True,
                          timeout=300)


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


def test_engines_and_caches_are_named_by_device_name_sm_count_architecture_and_tensorrt_version():
    agx = Device("Orin", (8, 7), 16, {})
    nano = Device("Orin", (8, 7), 8, {})
    h200 = Device("NVIDIA H200", (9, 0), 132, {})
    assert engine_name("kpac", agx.key, "10.3.0.30", "fp16") == "kpac-orin_16sm-sm87-trt10.3.0-fp16.plan"
    assert engine_name("kpac", nano.key, "10.3.0.30", "fp16") == "kpac-orin_8sm-sm87-trt10.3.0-fp16.plan"
    assert (engine_name("kpac_dual", h200.key, "11.1.0", "int8")
            == "kpac_dual-nvidia_h200_132sm-sm90-trt11.1.0-int8.plan")
    assert timing_cache_name(agx.key, "10.3.0.30") == "timing-cache-orin_16sm-sm87-trt10.3.0.bin"
    assert device_slug("NVIDIA GeForce RTX 4090 (laptop)") == "nvidia_geforce_rtx_4090_laptop"


@pytest.mark.parametrize("args,match", [
    (("kpac", "orin_16sm-sm87", "10.16.1", "bf16"), "precision 'bf16'"),
    (("kp/ac", "orin_16sm-sm87", "10.16.1", "fp16"), "cannot go into a file name"),
    (("kpac", "orin_16sm-sm87", "ten", "fp16"), "TensorRT version 'ten'"),
    (("kpac", "sm87", "10.3.0", "fp16"), "device key 'sm87'"),
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
    with pytest.raises(ExportError, match="metadata says int8, but the graph is fp16"):
        detect_precision(tmp_path / "liar.onnx")


def test_comparison_inputs_are_test_images_cropped_to_the_profile(tiny_setup):
    meta = {"input_views": ["c"], "task": "restoration", "in_channels": 3}
    profile = {"min": (32, 32), "opt": (32, 48), "max": (32, 48)}
    inputs = comparison_inputs(str(tiny_setup["manifest"]), meta, profile, 4)
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


def test_a_missing_onnx_is_one_error_line(tmp_path, capsys):
    rc = cli_main(["build-engine", "--onnx", str(tmp_path / "nope.onnx"), "--out-dir", str(tmp_path / "e")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "nope.onnx: no such ONNX file" in err and "\n" not in err


# ------------------------------------------------------------------- the stage on a stand-in GPU host
def _hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.is_dir() else []


def test_stand_in_host_builds_checks_then_names_the_engine_and_reuses_the_timing_cache(standin, variants, tiny_setup,
                                                                                       config_file, tmp_path):
    out, cache = tmp_path / "eng", tmp_path / "cache"
    first = _stage(standin, variants / "model_fp16.onnx", out, config_file, cache, tiny_setup["manifest"])
    assert first.returncode == 0, first.stderr
    assert first.stdout == ""  # TensorRT's messages went to standard error through our logger, not to stdout
    assert "[TRT] [W] CUDA lazy loading is not enabled" in first.stderr
    report = json.loads((out / "build-report-fp16.json").read_text())
    engine = out / "tiny_export_restorer-orin_16sm-sm87-trt10.3.0-fp16.plan"
    assert report["built"] and report["engine"] == str(engine) and engine.is_file()
    assert report["check"]["passed"] and report["check"]["worst_psnr_db"] >= report["check"]["min_psnr_db"] == 40
    assert [r["input"] for r in report["check"]["images"]] == ["000", "001"]
    assert report["device"]["key"] == "orin_16sm-sm87" and report["timing_cache_status"] == "created"
    assert report["profile"]["max"] == {"height": 96, "width": 96}
    assert _hidden(out) == []  # the candidate was renamed, nothing temporary is left
    record = json.loads((cache / "timing-cache-orin_16sm-sm87-trt10.3.0.bin.device.json").read_text())
    assert record["device"]["fingerprint"]["memory_clock_khz"] == 3199000 and record["tensorrt"] == "10.3.0"
    second = _stage(standin, variants / "model_fp16.onnx", out, config_file, cache)
    assert second.returncode == 0, second.stderr
    assert json.loads((out / "build-report-fp16.json").read_text())["timing_cache_status"] == "reused"


def test_a_timing_cache_from_another_device_is_replaced_and_the_build_says_so(standin, variants, config_file,
                                                                               tmp_path):
    out, cache = tmp_path / "eng", tmp_path / "cache"
    assert _stage(standin, variants / "model.onnx", out, config_file, cache).returncode == 0
    cache_file = cache / "timing-cache-orin_16sm-sm87-trt10.3.0.bin"
    # an Orin with the same name and SM count but other memory clocks: the same key, another device
    other = _stage(standin, variants / "model.onnx", out, config_file, cache, gpu_memclk="2133000")
    assert other.returncode == 0, other.stderr
    assert "not used, it was written on orin_16sm-sm87" in other.stderr and "starting a fresh one" in other.stderr
    report = json.loads((out / "build-report-fp32.json").read_text())
    assert report["timing_cache_status"] == "replaced: made on another device (our record)" and report["built"]
    # the same cache copied without our record: TensorRT itself refuses it (set_timing_cache returns False)
    (cache / (cache_file.name + ".device.json")).unlink()
    third = _stage(standin, variants / "model.onnx", out, config_file, cache)
    assert third.returncode == 0, third.stderr
    assert "TensorRT refused it" in third.stderr and "[TRT] [E] The provided timing cache was created" in third.stderr
    report = json.loads((out / "build-report-fp32.json").read_text())
    assert report["timing_cache_status"] == "replaced: TensorRT refused it (another device)"
    assert b'"memclk": 3199000' in cache_file.read_bytes()  # rewritten for this device


def test_no_timing_cache_from_tensorrt_leaves_the_file_and_still_names_a_checked_engine(standin, variants,
                                                                                        config_file, tmp_path):
    out, cache = tmp_path / "eng", tmp_path / "cache"
    result = _stage(standin, variants / "model_fp16.onnx", out, config_file, cache, trt_no_timing_cache="1")
    assert result.returncode == 0, result.stderr
    assert "TensorRT returned none after the build; the file is left as it was" in result.stderr
    report = json.loads((out / "build-report-fp16.json").read_text())
    assert report["built"] and report["check"]["passed"] and report["timing_cache_saved"] is False
    assert not (cache / "timing-cache-orin_16sm-sm87-trt10.3.0.bin").exists()


def test_an_engine_failing_its_check_never_gets_its_name(standin, variants, config_file, tmp_path):
    out, cache = tmp_path / "eng", tmp_path / "cache"
    result = _stage(standin, variants / "model_fp16.onnx", out, config_file, cache, engine_noise="0.2")
    assert result.returncode == 2
    err = result.stderr.strip().splitlines()[-1]
    assert err.startswith("error: ") and "engine output differs from ONNX Runtime: PSNR" in err
    report = json.loads((out / "build-report-fp16.json").read_text())
    assert report["built"] is False and report["engine"] is None and report["check"]["passed"] is False
    assert not list(out.glob("*.plan")) and _hidden(out) == []


@pytest.mark.parametrize("settings,reason", [
    ({"trt_version": "8.6.1.6"}, "is TensorRT 8.6.1.6; these scripts need TensorRT 10.x or 11.x"),
    ({"cuda_error": "35"}, "the CUDA driver failed: cudaGetDeviceCount returned cudaErrorInsufficientDriver (35)"),
    ({"cuda_error": "100"}, "no CUDA device is visible"),
])
def test_unsupported_tensorrt_and_cuda_faults_are_reported_as_what_they_are(standin, variants, config_file, tmp_path,
                                                                           settings, reason):
    out = tmp_path / "eng"
    result = _stage(standin, variants / "model_fp16.onnx", out, config_file, tmp_path / "cache", **settings)
    assert result.returncode == 0, result.stderr  # engines: auto reports and goes on
    report = json.loads((out / "build-report-fp16.json").read_text())
    assert report["built"] is False and reason in report["reason"]
    assert "No TensorRT engine was built" in result.stderr and not list(out.glob("*.plan"))


def test_tensorrt_11_builds_without_the_strongly_typed_flag(standin, variants, config_file, tmp_path):
    out = tmp_path / "eng"
    result = _stage(standin, variants / "model_int8.onnx", out, config_file, tmp_path / "cache",
                    trt_version="11.1.0.5")
    assert result.returncode == 0, result.stderr
    engine = out / "tiny_export_restorer-orin_16sm-sm87-trt11.1.0-int8.plan"
    assert engine.is_file() and b'"precision": "int8"' in engine.read_bytes()[:2000]


def test_parallel_builds_wait_for_the_timing_cache_and_keep_both_entries(standin, variants, config_file, tmp_path):
    cache = tmp_path / "cache"
    results = {}

    def build(name):
        results[name] = _stage(standin, variants / name, tmp_path / name, config_file, cache,
                               trt_build_seconds="2")

    threads = [threading.Thread(target=build, args=(n,)) for n in ("model.onnx", "model_fp16.onnx")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.returncode == 0 for r in results.values()), [r.stderr for r in results.values()]
    assert sum("waiting for" in r.stderr and ".build-lock" in r.stderr for r in results.values()) == 1
    content = json.loads((cache / "timing-cache-orin_16sm-sm87-trt10.3.0.bin").read_bytes().split(b"\n", 1)[1])
    assert len({key.split(":")[0] for key in content["entries"]}) == 2  # neither build lost the other's tactics


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
    assert first["built"] and first["check"]["passed"] and first["timing_cache_status"] == "created"
    assert first["engine"].endswith(f"-{precision}.plan") and "-sm" in first["engine"] and "-trt1" in first["engine"]
    assert first["profile"]["max"] == {"height": 72, "width": 72}  # 72 is already a multiple of 4
    second = build_engine_stage(str(variants / variant), tmp_path / "eng", cfg, timing_cache_dir=str(cache))
    assert second["timing_cache_status"] == "reused" and second["check"]["passed"]


def test_a_profile_out_of_order_in_the_settings_is_one_error_line_naming_the_field(variants, tmp_path, capsys):
    cfg_path = tmp_path / "export.yaml"
    cfg_path.write_text(EXPORT_CONFIG.read_text().replace("config/tensorrt_onnx_ops.yaml", str(OP_TABLE))
                        .replace("max: 1680x1120", "max: 640x480"))
    rc = cli_main(["build-engine", "--onnx", str(variants / "model_fp16.onnx"), "--out-dir", str(tmp_path / "e"),
                   "--config", str(cfg_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: export settings tensorrt.profile: optimisation profile heights")
    assert not (tmp_path / "e" / "build-report-fp16.json").exists()
