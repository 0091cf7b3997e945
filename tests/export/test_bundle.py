"""bundle: contents, manifest (layout, normalisation, hashes, metrics), and the standalone scripts run from an
empty folder holding only the bundle, with the pipeline (and torch) made unimportable."""
import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from pipeline_src.cli import main as cli_main
from pipeline_src.errors import ExportError
from pipeline_src.export import load_export_config
from pipeline_src.export.bundle import build_bundle
from pipeline_src.fileio import sha256_file
from tests.export.conftest import EXPORT_CONFIG, OP_TABLE, make_checkpoint, make_dataset, run_on_device

ALLOWED_IMPORTS = {"numpy", "cv2", "onnxruntime", "tensorrt", "infer", "edge_cuda", "edge_tiling"}


def _config():
    cfg = load_export_config(EXPORT_CONFIG)
    cfg["onnx"]["op_table"] = str(OP_TABLE)
    cfg["quantize"]["calibration_patches"] = 16
    return cfg


@pytest.fixture(scope="module")
def bundle(bundle_dir, variants):
    """(bundle folder, its manifest, the export folder it was made from): the session's tiny bundle."""
    return bundle_dir, json.loads((bundle_dir / "manifest.json").read_text()), variants


def test_bundle_holds_the_variants_reports_scripts_and_a_sample(bundle):
    out, manifest, _ = bundle
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"model.onnx", "model_fp16.onnx", "model_int8.onnx", "parity.json", "ops.json", "quality.json",
            "manifest.json", "infer.py", "build_engine.py", "build_engine.sh", "edge_cuda.py", "edge_tiling.py",
            "samples/000_c.png", "check/input.npy", "check/fp32_output.npy"} == names
    assert os.access(out / "build_engine.sh", os.X_OK) and os.access(out / "infer.py", os.X_OK)
    assert not list(out.parent.glob(".tiny-synthetic*"))  # built under a temporary name, renamed when complete


def test_manifest_describes_input_output_profile_and_metrics(bundle):
    out, manifest, export_dir = bundle
    saved = json.loads((out / "manifest.json").read_text())
    assert saved == manifest
    assert saved["input"]["layout"] == "NCHW" and saved["input"]["color_order"] == "RGB"
    assert saved["input"]["views"] == ["c"] and saved["input"]["channels"] == 3
    assert saved["input"]["divide_by"] == {"8": 255, "16": 65535} and saved["input"]["size_multiple"] == 4
    assert saved["output"]["task"] == "restoration"
    quality = json.loads((export_dir / "quality.json").read_text())
    assert saved["expected_metrics"]["fp16"]["psnr_db"] == quality["variants"]["fp16"]["psnr_db"]
    assert set(saved["variants"]) == {"fp32", "fp16", "int8"}
    profile = saved["tensorrt"]["profile"]
    assert all(v % 4 == 0 for side in profile.values() for v in side.values())
    assert profile["opt"] == {"height": 720, "width": 1280}
    assert saved["commands"]["build_and_check_engine"] == "./build_engine.sh fp16"
    assert saved["tiling"]["tile"] == profile["max"] and saved["tiling"]["overlap"] == 64


def test_the_stored_check_is_the_fp32_output_on_the_first_test_sample_with_floors_per_precision(bundle):
    out, manifest, _ = bundle
    check = manifest["check"]
    x, reference = np.load(out / check["input"]), np.load(out / check["reference"])
    assert x.shape == (1, 3, 40, 56) and x.dtype == np.float32 and check["size"] == "56x40"
    blurry = cv2.imread(str(out / "samples/000_c.png"), cv2.IMREAD_UNCHANGED)[:, :, ::-1]
    assert np.array_equal(x[0].transpose(1, 2, 0), blurry.astype(np.float32) / 255)
    # the reference is model.onnx on that input, padded as an engine pads it (profile min 64x64), cropped back
    padded = np.pad(x, ((0, 0), (0, 0), (0, 24), (0, 8)), mode="edge")
    y = ort.InferenceSession(str(out / "model.onnx")).run(None, {"input": padded})[0][:, :, :40, :56]
    assert np.array_equal(reference, y)
    ort_psnr = check["onnxruntime_psnr_vs_fp32_db"]
    assert ort_psnr["fp32"] == 100.0 and ort_psnr["fp16"] > ort_psnr["int8"] > 30
    assert check["min_psnr_vs_fp32_db"] == {p: round(min(floor, ort_psnr[p] - 6.0), 2)
                                            for p, floor in (("fp32", 60.0), ("fp16", 40.0), ("int8", 30.0))}


def test_manifest_lists_the_sha256_of_every_other_file(bundle):
    out, manifest, _ = bundle
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == files
    assert all(manifest["files"][name] == sha256_file(out / name) for name in files)


def test_standalone_scripts_import_only_numpy_opencv_and_a_runtime(bundle):
    out, _, _ = bundle
    stdlib = set(sys.stdlib_module_names)
    for script in ("infer.py", "build_engine.py", "edge_cuda.py", "edge_tiling.py"):
        # JetPack 6's python3 is 3.10: the scripts must parse there
        tree = ast.parse((out / script).read_text(), feature_version=(3, 10))
        roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        roots |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
        assert roots - stdlib <= ALLOWED_IMPORTS, (script, roots - stdlib)


def test_infer_from_an_empty_folder_matches_onnx_runtime_in_process(bundle, tmp_path):
    out, manifest, _ = bundle
    device = tmp_path / "device"
    shutil.copytree(out, device)  # an empty folder that now holds the bundle alone
    result = run_on_device(device, "infer.py", "--model", "model.onnx", "--input", "samples/000_c.png",
                         "--output", "sharp.png")
    assert result.returncode == 0, result.stderr
    got = cv2.imread(str(device / "sharp.png"), cv2.IMREAD_UNCHANGED)[:, :, ::-1]

    blurry = cv2.imread(str(out / "samples/000_c.png"), cv2.IMREAD_UNCHANGED)[:, :, ::-1]
    x = np.ascontiguousarray((blurry.astype(np.float32) / 255).transpose(2, 0, 1)[None])
    y = ort.InferenceSession(str(out / "model.onnx")).run(None, {"input": x})[0]
    expected = np.round(np.clip(y[0].transpose(1, 2, 0), 0, 1) * 255).astype(np.uint8)
    assert got.shape == blurry.shape == (40, 56, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - expected).max() <= 1  # padding outside vs inside the graph: same pixels


def test_infer_keeps_16_bit_and_runs_the_int8_variant(bundle, tmp_path):
    out, _, _ = bundle
    device = tmp_path / "device"
    shutil.copytree(out, device)
    img16 = (np.random.default_rng(1).random((23, 30, 3)) * 65535).astype(np.uint16)
    cv2.imwrite(str(device / "in16.png"), img16)
    result = run_on_device(device, "infer.py", "--model", "model_int8.onnx", "--input", "in16.png", "--output", "o.png")
    assert result.returncode == 0, result.stderr
    got = cv2.imread(str(device / "o.png"), cv2.IMREAD_UNCHANGED)
    assert got.dtype == np.uint16 and got.shape == (23, 30, 3)


def test_check_mode_compares_two_variants_on_the_shipped_sample(bundle, tmp_path):
    out, _, _ = bundle
    device = tmp_path / "device"
    shutil.copytree(out, device)
    result = run_on_device(device, "infer.py", "--check", "--model", "model_fp16.onnx", "--onnx", "model.onnx",
                           "--min-psnr", "40", "--report", "fp16-check.json")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # the report goes to its file, never to standard output
    report = json.loads((device / "fp16-check.json").read_text())
    assert report["passed"] and report["psnr_db"] >= 40 and report["size"] == "56x40"
    strict = run_on_device(device, "infer.py", "--check", "--model", "model_int8.onnx", "--onnx", "model.onnx",
                           "--min-psnr", "99")
    assert strict.returncode == 1 and "check FAILED" in strict.stderr
    assert json.loads((device / "model_int8.onnx.check.json").read_text())["passed"] is False
    # without --onnx: against the stored fp32 output, no onnxruntime session of the reference needed; each ONNX
    # variant is held to its own precision's floor, which the manifest's `variants` names by file
    manifest = json.loads((device / "manifest.json").read_text())
    floors = manifest["check"]["min_psnr_vs_fp32_db"]
    # the stored input (56x40) is below the profile's min: the fp32 file meets the stored output (60 dB) only when
    # padded as that output was made (to the min), not to the size multiple alone (53.7 dB)
    low = manifest["tensorrt"]["profile"]["min"]
    assert manifest["check"]["size"] == "56x40" and low["width"] > 56 and low["height"] > 40
    for precision, file in (("fp32", "model.onnx"), ("fp16", "model_fp16.onnx"), ("int8", "model_int8.onnx")):
        stored = run_on_device(device, "infer.py", "--check", "--model", file)
        assert stored.returncode == 0, stored.stderr
        report = json.loads((device / f"{file}.check.json").read_text())
        assert report["against"].startswith("check/fp32_output.npy")
        assert report["precision"] == precision and report["min_psnr_db"] == floors[precision]
    assert floors["int8"] < floors["fp32"]  # else the int8 case above could not tell a wrong default
    # an ONNX file the manifest does not list: its precision is asked for, in one line
    shutil.copy(device / "model_int8.onnx", device / "renamed.onnx")
    unknown = run_on_device(device, "infer.py", "--check", "--model", "renamed.onnx")
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert "renamed.onnx: cannot tell its precision" in unknown.stderr and "--precision" in unknown.stderr
    named = run_on_device(device, "infer.py", "--check", "--model", "renamed.onnx", "--precision", "int8")
    assert named.returncode == 0, named.stderr


def test_infer_refuses_a_wrong_number_of_views(bundle, tmp_path):
    out, _, _ = bundle
    result = run_on_device(out, "infer.py", "--model", "model.onnx", "--input", "samples/000_c.png",
                         "samples/000_c.png", "--output", str(tmp_path / "x.png"))
    assert result.returncode != 0 and "reads 1 view(s) ['c']; got 2" in result.stderr


def test_device_build_without_tensorrt_says_so_and_writes_no_engine(bundle, tmp_path):
    pytest.importorskip("onnx")  # always present; the point is the absence of tensorrt below
    if shutil.which("trtexec"):
        pytest.skip(reason="trtexec (TensorRT) is installed here, so the bundle would build for real")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here, so the bundle would build for real")
    except ImportError:
        pass
    out, _, _ = bundle
    device = tmp_path / "device"
    shutil.copytree(out, device)
    result = run_on_device(device, "build_engine.py", "--precision", "fp16")
    assert result.returncode == 2
    assert "error: no engine: neither the tensorrt Python package nor trtexec" in result.stderr
    assert json.loads((device / "build-fp16.json").read_text())["built"] is False
    script = subprocess.run(["sh", "build_engine.sh"], cwd=device, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHON": sys.executable})
    assert script.returncode == 2 and "error: no engine" in script.stderr and script.stdout == ""
    assert not list(device.glob("*.plan"))


def test_bundle_stage_refuses_an_export_without_quality_report(exported, tmp_path):
    export_dir = tmp_path / "export"
    export_dir.mkdir()
    for name in ("model.onnx", "parity.json", "ops.json"):
        shutil.copyfile(exported / name, export_dir / name)
    with pytest.raises(ExportError, match="quality.json: missing"):
        build_bundle(export_dir, tmp_path / "bundle", _config())
    assert not (tmp_path / "bundle").exists()


def test_rejected_int8_is_left_out_and_the_cli_bundles_a_dual_view_model(tmp_path):
    ckpt = make_checkpoint(tmp_path / "dual.pt", views=("l", "r"))
    manifest, patches = make_dataset(tmp_path / "data", views=("l", "r"), bit_depth=16)
    cfg_path = tmp_path / "export.yaml"
    cfg_path.write_text(EXPORT_CONFIG.read_text().replace("config/tensorrt_onnx_ops.yaml", str(OP_TABLE)))
    base = ["--config", str(cfg_path)]
    assert cli_main(["export-onnx", "--checkpoint", str(ckpt), "--out", str(tmp_path / "e"), "--sizes", "32x32",
                     "40x24", *base]) == 0
    assert cli_main(["quantize", "--onnx", str(tmp_path / "e/model.onnx"), "--manifest", str(manifest),
                     "--patches", str(patches), "--calibration-patches", "8", "--max-int8-drop-db", "-1", *base]) == 0
    assert cli_main(["bundle", "--export-dir", str(tmp_path / "e"), "--out", str(tmp_path / "b"),
                     "--manifest", str(manifest), *base]) == 0
    saved = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert set(saved["variants"]) == {"fp32", "fp16"} and not (tmp_path / "b" / "model_int8.onnx").exists()
    assert saved["input"]["views"] == ["l", "r"] and saved["check_inputs"] == ["samples/000_l.png",
                                                                                 "samples/000_r.png"]
    result = run_on_device(tmp_path / "b", "infer.py", "--model", "model_fp16.onnx", "--input",
                         "samples/000_l.png", "samples/000_r.png", "--output", "o.png")
    assert result.returncode == 0, result.stderr
    assert cv2.imread(str(tmp_path / "b" / "o.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16


def test_a_detection_bundle_writes_the_in_focus_probability_as_a_grey_image(tmp_path):
    ckpt = make_checkpoint(tmp_path / "det.pt", name="tiny_export_detector")
    manifest, patches = make_dataset(tmp_path / "data", masks=True)
    cfg_path = tmp_path / "export.yaml"
    cfg_path.write_text(EXPORT_CONFIG.read_text().replace("config/tensorrt_onnx_ops.yaml", str(OP_TABLE)))
    base = ["--config", str(cfg_path)]
    assert cli_main(["export-onnx", "--checkpoint", str(ckpt), "--out", str(tmp_path / "e"), "--sizes", "32x32",
                     "40x24", *base]) == 0
    assert cli_main(["quantize", "--onnx", str(tmp_path / "e/model.onnx"), "--manifest", str(manifest),
                     "--patches", str(patches), "--calibration-patches", "8", *base]) == 0
    assert cli_main(["bundle", "--export-dir", str(tmp_path / "e"), "--out", str(tmp_path / "b"),
                     "--manifest", str(manifest), *base]) == 0
    saved = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert saved["output"]["task"] == "detection" and saved["output"]["channels"] == 1
    assert saved["expected_metrics"]["metric"] == "mae"
    result = run_on_device(tmp_path / "b", "infer.py", "--model", "model.onnx", "--input", "samples/000_c.png",
                           "--output", "focus.png")
    assert result.returncode == 0, result.stderr
    got = cv2.imread(str(tmp_path / "b" / "focus.png"), cv2.IMREAD_UNCHANGED)
    blurry = cv2.imread(str(tmp_path / "b" / "samples/000_c.png"), cv2.IMREAD_UNCHANGED)[:, :, ::-1]
    x = np.ascontiguousarray((blurry.astype(np.float32) / 255).transpose(2, 0, 1)[None])
    logits = ort.InferenceSession(str(tmp_path / "e/model.onnx")).run(None, {"input": x})[0][0, 0]
    expected = np.round(255 / (1 + np.exp(-logits.astype(np.float64)))).astype(np.uint8)
    assert got.shape == (40, 56) and np.abs(got.astype(int) - expected).max() <= 1


def test_each_bundle_is_a_new_version_of_its_registered_model_and_downloads_by_models_uri(variants, tiny_setup,
                                                                                           tmp_path):
    """The MLflow Model Registry: one registered model per export name, a version per bundle, tagged with the
    training run and the parity and quantization figures; `mlflow artifacts download -u models:/...` gives the
    bundle back, as a deployment engineer would fetch it."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PIPELINE_TRACKING": "1", "OMP_NUM_THREADS": "1"}
    cfg_path = tmp_path / "export.yaml"
    cfg_path.write_text(EXPORT_CONFIG.read_text().replace("config/tensorrt_onnx_ops.yaml", str(OP_TABLE)))
    out = tmp_path / "bundles" / "tiny-registry"
    for _ in range(2):
        r = subprocess.run([sys.executable, "-m", "pipeline_src", "bundle", "--export-dir", str(variants),
                            "--out", str(out), "--manifest", str(tiny_setup["manifest"]), "--config", str(cfg_path)],
                           env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    assert "registered as models:/tiny-registry/2" in r.stderr
    client = MlflowClient(uri)
    versions = sorted(client.search_model_versions("name='tiny-registry'"), key=lambda v: int(v.version))
    assert [str(v.version) for v in versions] == ["1", "2"]
    latest = versions[-1]
    quality = json.loads((variants / "quality.json").read_text())
    assert latest.tags["int8.accepted"] == str(quality["variants"]["int8"]["accepted"]).lower()
    assert float(latest.tags["figure.fp16/drop_db"]) == pytest.approx(quality["variants"]["fp16"]["drop_db"], abs=1e-5)
    assert latest.tags["checkpoint.sha256"] and latest.tags["data_manifest.sha256"]
    run = client.get_run(latest.run_id)
    assert run.data.tags["registered_model.version"] == "2" and "parity/max_abs_diff" in run.data.metrics
    got = tmp_path / "downloaded"
    r = subprocess.run([str(Path(sys.executable).parent / "mlflow"), "artifacts", "download", "-u",
                        "models:/tiny-registry/2", "-d", str(got)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (got / "manifest.json").read_bytes() == (out / "manifest.json").read_bytes()
    assert {p.name for p in got.glob("*.onnx")} == {p.name for p in out.glob("*.onnx")}
