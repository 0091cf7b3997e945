"""The bundle on a device, end to end, with only what JetPack 6 has: the bundle is copied into an empty folder
and its scripts run in a fresh interpreter where the pipeline, torch and onnxruntime cannot be imported. TensorRT,
trtexec and the CUDA runtime are stand-ins (tests/export/standins; they test OUR control flow, not TensorRT):
build_engine.sh through the Python API and through trtexec alone, the check against the fp32 output stored in
the bundle, the version gate, a failing check, 1080p and 2160p frames through an engine whose profile stops at
1680x1120, engines of another device, CUDA driver faults, and which libcudart is loaded."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from pipeline_src.export import edge_cuda
from tests.export.conftest import run_on_device
from tests.export.standins import device_env

ENGINE = "tiny_export_restorer-orin_16sm-sm87-trt10.3.0-{}.plan"


def _device_copy(bundle_dir, tmp_path):
    device = tmp_path / "device"
    shutil.copytree(bundle_dir, device)
    return device


def _build(device, env, *args):
    return subprocess.run(["sh", "build_engine.sh", *args], cwd=device, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def engine_device(bundle_dir, standin, tmp_path_factory):
    """A device folder holding the bundle and an fp16 engine built there by build_engine.sh (Python API)."""
    device = _device_copy(bundle_dir, tmp_path_factory.mktemp("jetson"))
    result = _build(device, device_env(standin), "fp16")
    assert result.returncode == 0, result.stderr
    return device, result


def _frame(path, height, width, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = (np.sin(xx / 23.0) * np.cos(yy / 17.0) + 1) / 2
    img = np.stack([base, base[::-1], base[:, ::-1]], axis=2) * 220 + rng.normal(0, 4, (height, width, 3))
    cv2.imwrite(str(path), np.clip(img, 0, 255).astype(np.uint8))


def _onnxruntime_png(model, x):
    y = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    return np.round(np.clip(y[0].transpose(1, 2, 0), 0, 1) * 255).astype(np.int32)


def _read_rgb(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[:, :, ::-1].astype(np.int32)


# ------------------------------------------------------------------------------------ build and check
def test_build_engine_sh_builds_checks_against_the_stored_fp32_output_and_then_names_the_engine(engine_device):
    device, result = engine_device
    assert result.stdout == ""  # nothing on standard output; the report is a file
    assert "[TRT] [W] CUDA lazy loading is not enabled" in result.stderr  # TensorRT speaks on standard error
    report = json.loads((device / "build-fp16.json").read_text())
    assert report["built"] and report["checked"] and report["engine"] == ENGINE.format("fp16")
    check = report["check"]
    assert check["against"].startswith("check/fp32_output.npy") and check["passed"]
    assert check["psnr_db"] >= check["min_psnr_db"] == 40.0
    assert (device / ENGINE.format("fp16")).is_file()
    assert not [p.name for p in device.iterdir() if p.name.startswith(".")]  # no candidate left behind
    assert report["timing_cache_status"] == "created" and Path(report["timing_cache"]).is_file()


def test_our_scripts_never_use_tensorrts_stdout_logger(bundle_dir, standin):
    for script in ("infer.py", "build_engine.py"):
        assert "trt.Logger(" not in (bundle_dir / script).read_text()
    # the stand-in reproduces the hazard: its trt.Logger writes to file descriptor 1 whatever sys.stdout is
    code = ("import io, sys, tensorrt as trt; sys.stdout = io.StringIO(); "
            "trt.Logger().log(trt.ILogger.WARNING, 'on fd 1')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(standin.site), "STANDIN_SITE": str(standin.site)})
    assert "[TRT] [W] on fd 1" in out.stdout


def test_a_trtexec_only_device_builds_and_checks_the_same_way(bundle_dir, standin, tmp_path):
    device = _device_copy(bundle_dir, tmp_path)
    result = _build(device, device_env(standin, tensorrt=False, trtexec=True), "int8")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # trtexec's banners and INFO lines went to its log
    report = json.loads((device / "build-int8.json").read_text())
    assert report["builder"] == "trtexec" and report["checked"] and report["check"]["passed"]
    assert report["check"]["min_psnr_db"] == 30.0 and report["engine"] == ENGINE.format("int8")
    log = (device / ENGINE.format("int8").replace(".plan", ".trtexec.log")).read_text()
    assert "&&&& RUNNING TensorRT.trtexec [TensorRT v100300]" in log and "--stronglyTyped" in log
    assert "--exportOutput=" in log and log.count("&&&& PASSED") == 2  # the build, then the check's inference
    record = json.loads((device / "timing-cache-orin_16sm-sm87-trt10.3.0.bin.device.json").read_text())
    assert record["tensorrt"] == "10.3.0" and record["device"]["key"] == "orin_16sm-sm87"


def test_a_tensorrt_8_trtexec_is_refused_before_it_builds_anything(bundle_dir, standin, tmp_path):
    device = _device_copy(bundle_dir, tmp_path)
    result = _build(device, device_env(standin, tensorrt=False, trtexec=True, trt_version="8.6.1.6"), "fp16")
    assert result.returncode == 2
    assert "is TensorRT 8.6.1; these scripts need TensorRT 10.x or 11.x" in result.stderr.splitlines()[-1]
    assert not list(device.glob("*.plan")) and not list(device.glob("*.trtexec.log"))
    assert json.loads((device / "build-fp16.json").read_text())["built"] is False


@pytest.mark.parametrize("tensorrt,trtexec", [(True, False), (False, True)])
def test_an_engine_below_the_floor_is_removed_and_the_script_fails(bundle_dir, standin, tmp_path, tensorrt, trtexec):
    device = _device_copy(bundle_dir, tmp_path)
    result = _build(device, device_env(standin, tensorrt=tensorrt, trtexec=trtexec, engine_noise="0.2"), "fp16")
    assert result.returncode == 1
    assert "differs from the stored fp32 output" in result.stderr and "engine removed" in result.stderr
    report = json.loads((device / "build-fp16.json").read_text())
    assert report["built"] is False and report["check"]["passed"] is False
    assert not list(device.glob("*.plan")) and not [p for p in device.iterdir() if p.name.startswith(".")]


def test_a_second_build_reuses_the_timing_cache_and_sweeps_a_killed_builds_candidate(bundle_dir, standin, tmp_path):
    device = _device_copy(bundle_dir, tmp_path)
    env = device_env(standin)
    assert _build(device, env, "fp32").returncode == 0
    dead = subprocess.Popen(["true"])
    dead.wait()  # a process id that no longer runs: the owner of a build killed before its check
    stale = device / f".{ENGINE.format('fp16')}.{dead.pid}.0badf00d.tmp"
    stale.write_bytes(b"half an engine")
    assert _build(device, env, "fp16").returncode == 0
    assert json.loads((device / "build-fp16.json").read_text())["timing_cache_status"] == "reused"
    assert not stale.exists() and (device / ENGINE.format("fp16")).is_file()


# -------------------------------------------------------------------------------------------- inference
def test_a_1080p_frame_is_deblurred_in_tiles_inside_the_engine_profile(engine_device, env):
    device, _ = engine_device
    _frame(device / "frame1080.png", 1080, 1920)
    result = run_on_device(device, "infer.py", "--model", ENGINE.format("fp16"), "--input", "frame1080.png",
                           "--output", "sharp1080.png", env=env)
    assert result.returncode == 0, result.stderr
    assert "1920x1080, 8-bit, 2 tiles" in result.stderr
    got = _read_rgb(device / "sharp1080.png")
    x = np.ascontiguousarray((_read_rgb(device / "frame1080.png").astype(np.float32) / 255).transpose(2, 0, 1)[None])
    expected = _onnxruntime_png(device / "model_fp16.onnx", x)  # the whole frame at once, no profile limit
    assert got.shape == (1080, 1920, 3) and np.abs(got - expected).max() <= 1


def test_a_2160p_frame_runs_in_six_tiles_and_matches_onnx_runtime_inside(engine_device, env):
    device, _ = engine_device
    _frame(device / "frame2160.png", 2160, 3840, seed=1)
    result = run_on_device(device, "infer.py", "--model", ENGINE.format("fp16"), "--input", "frame2160.png",
                           "--output", "sharp2160.png", env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "3840x2160, 8-bit, 6 tiles" in result.stderr
    got = _read_rgb(device / "sharp2160.png")
    assert got.shape == (2160, 3840, 3)
    # where tiles meet (x = 1680 - 64 ... 1680, y = 1056 ... 1120): a window with 32 px of context, 4-aligned
    frame = _read_rgb(device / "frame2160.png").astype(np.float32) / 255
    y0, x0 = 1024, 1600
    crop = np.ascontiguousarray(frame[y0:y0 + 160, x0:x0 + 160].transpose(2, 0, 1)[None])
    expected = _onnxruntime_png(device / "model_fp16.onnx", crop)[32:-32, 32:-32]
    assert np.abs(got[y0 + 32:y0 + 128, x0 + 32:x0 + 128] - expected).max() <= 1


@pytest.fixture(scope="module")
def env(standin):
    """The environment of the module's stand-in device (the one engine_device was built with)."""
    return device_env(standin)


def test_infer_check_compares_an_engine_with_the_stored_output_and_fails_on_a_wrong_one(engine_device, env,
                                                                                        tmp_path):
    device, _ = engine_device
    ok = run_on_device(device, "infer.py", "--check", "--model", ENGINE.format("fp16"), "--report", "c.json",
                       env=env)
    assert ok.returncode == 0 and ok.stdout == "", ok.stderr
    report = json.loads((device / "c.json").read_text())
    assert report["passed"] and report["precision"] == "fp16" and report["min_psnr_db"] == 40.0
    wrong = _device_copy(device, tmp_path)
    np.save(wrong / "check/fp32_output.npy", np.zeros_like(np.load(wrong / "check/fp32_output.npy")))
    bad = run_on_device(wrong, "infer.py", "--check", "--model", ENGINE.format("fp16"), env=env)
    assert bad.returncode == 1 and "check FAILED" in bad.stderr
    assert json.loads((wrong / f"{ENGINE.format('fp16')}.check.json").read_text())["passed"] is False


def test_an_engine_of_another_device_is_refused_with_what_to_do(engine_device, standin):
    device, _ = engine_device
    env = device_env(standin, gpu_name="Xavier", gpu_cc="72", gpu_sms="8")
    result = run_on_device(device, "infer.py", "--check", "--model", ENGINE.format("fp16"), env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: {ENGINE.format('fp16')}: built for orin_16sm-sm87 with TensorRT 10.3.0; "
                                     "this is xavier_8sm-sm72 with TensorRT 10.3.0: build one here with "
                                     "./build_engine.sh fp16")


@pytest.mark.parametrize("code,message", [
    ("35", "error: the CUDA driver failed: cudaGetDeviceCount returned cudaErrorInsufficientDriver (35): CUDA driver "
           "version is insufficient for CUDA runtime version"),
    ("100", "error: no CUDA device is visible"),
])
def test_cuda_driver_faults_are_reported_as_driver_faults_not_as_missing_devices(engine_device, standin, code,
                                                                                 message):
    device, _ = engine_device
    result = run_on_device(device, "infer.py", "--model", ENGINE.format("fp16"), "--input", "samples/000_c.png",
                           "--output", "o.png", env=device_env(standin, cuda_error=code))
    assert result.returncode == 2 and result.stderr.startswith(message)
    if code == "35":
        assert "no CUDA device" not in result.stderr


# --------------------------------------------------------------------------------------- CUDA runtime
WHICH_CUDART = """
import sys, edge_cuda
if sys.argv[1:] == ["import-tensorrt"]:
    import tensorrt
cuda = edge_cuda.CudaRuntime()
print(cuda.path, "|", cuda.origin)
"""


def test_the_cuda_runtime_shipped_with_the_tensorrt_wheel_is_preferred(bundle_dir, standin, tmp_path):
    device = _device_copy(bundle_dir, tmp_path)
    (device / "which_cudart.py").write_text(WHICH_CUDART)
    other = tmp_path / "other-site" / "nvidia" / "cuda_runtime" / "lib"
    other.mkdir(parents=True)
    shutil.copyfile(standin.cudart, other / "libcudart.so.12")
    env = device_env(standin)
    env["DEVICE_PATH"] = f"{tmp_path / 'other-site'}:{standin.site}"  # another CUDA wheel comes first on sys.path
    wheel = str(standin.site / "nvidia" / "cuda_runtime" / "lib" / "libcudart.so.12")
    before = run_on_device(device, "which_cudart.py", env=env)
    assert before.stdout.strip() == f"{wheel} | shipped with the installed TensorRT wheel", before.stderr
    after = run_on_device(device, "which_cudart.py", "import-tensorrt", env=env)
    assert after.stdout.strip() == f"{wheel} | already loaded in this process", after.stderr
    forced = run_on_device(device, "which_cudart.py", env={**env, "CUDART_LIBRARY": str(other / "libcudart.so.12")})
    assert forced.stdout.strip() == f"{other / 'libcudart.so.12'} | $CUDART_LIBRARY"


def test_no_cuda_runtime_anywhere_says_what_to_install(monkeypatch):
    monkeypatch.delenv("CUDART_LIBRARY", raising=False)
    monkeypatch.setattr(edge_cuda, "cudart_candidates", lambda: [("/nonexistent/libcudart.so.12", "the system")])
    with pytest.raises(edge_cuda.CudaRuntimeNotFound, match="libcudart.*was not found: install the TensorRT wheel .*"
                                                            "tried /nonexistent/libcudart.so.12"):
        edge_cuda.CudaRuntime()


def test_the_device_process_really_cannot_import_onnxruntime(bundle_dir, env, tmp_path):
    device = _device_copy(bundle_dir, tmp_path)
    result = run_on_device(device, "infer.py", "--model", "model.onnx", "--input", "samples/000_c.png", "--output",
                           "o.png", env=env)
    assert result.returncode == 2 and "needs onnxruntime" in result.stderr and not (device / "o.png").exists()
