"""KPAC (2 levels) through the whole export chain with the project's own settings: export-onnx, quantize and
bundle as the pipeline calls them, then the bundle's infer.py from an empty folder against ONNX Runtime.

The weights are the authors' initialisation (seeded), not trained ones: this checks that KPAC's graph exports,
passes parity and the TensorRT operator audit, quantizes, and ships; the quality figures of a trained KPAC come
from the pipeline run itself.
"""
import json
import shutil

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from pipeline_src.cli import main as cli_main
from pipeline_src.model_io import model_record, save_model_file
from pipeline_src.models import build_model
from tests.export.conftest import EXPORT_CONFIG, OP_TABLE, make_dataset, run_on_device


@pytest.fixture(scope="module")
def kpac_chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("kpac")
    torch.manual_seed(0)
    model = build_model("kpac", levels=2)
    record = model_record(model, "kpac", {"levels": 2})
    record.update({"paper": "kpac", "dataset": "synthetic", "phase": 2})
    save_model_file(root / "final.pt", record)
    manifest, patches = make_dataset(root / "data", size_hw=(80, 112), n_patches=16, patch=48)
    cfg = root / "export.yaml"
    cfg.write_text(EXPORT_CONFIG.read_text().replace("config/tensorrt_onnx_ops.yaml", str(OP_TABLE)))
    common = ["--config", str(cfg)]
    assert cli_main(["export-onnx", "--checkpoint", str(root / "final.pt"), "--out", str(root / "export"),
                     "--manifest", str(manifest), *common]) == 0
    assert cli_main(["quantize", "--onnx", str(root / "export/model.onnx"), "--manifest", str(manifest),
                     "--patches", str(patches), "--calibration-patches", "8", *common]) == 0
    assert cli_main(["bundle", "--export-dir", str(root / "export"), "--out", str(root / "bundles/kpac-synthetic"),
                     "--manifest", str(manifest), *common]) == 0
    return root


def test_kpac_onnx_passes_parity_at_sizes_not_used_at_export(kpac_chain):
    parity = json.loads((kpac_chain / "export/parity.json").read_text())
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-4 and parity["opset"] == 17
    assert {"104x72", "83x61"} <= {r["size"] for r in parity["sizes"] if not r["used_at_export"]}


def test_kpac_graph_is_in_the_tensorrt_parsers_list(kpac_chain):
    ops = json.loads((kpac_chain / "export/ops.json").read_text())
    assert ops["passed"]
    assert {"Conv", "ConvTranspose", "LeakyRelu", "Sigmoid", "GlobalAveragePool", "Pad"} <= set(ops["operators"])


def test_kpac_fp16_and_int8_variants_are_scored_against_fp32(kpac_chain):
    quality = json.loads((kpac_chain / "export/quality.json").read_text())
    v = quality["variants"]
    assert abs(v["fp16"]["drop_db"]) < 0.1 and v["fp16"]["psnr_vs_fp32_db"] > 50
    assert v["int8"]["accepted"] and v["int8"]["drop_db"] <= quality["int8_limit"]["max_int8_drop_db"]
    assert {"QuantizeLinear", "DequantizeLinear", "ConvTranspose"} <= set(v["int8"]["ops"])


def test_kpac_int8_keeps_its_convtranspose_weights_in_float_for_tensorrt(kpac_chain):
    import onnx

    from pipeline_src.export.qdq_policy import weights_through_dequantize

    proto = onnx.load(str(kpac_chain / "export/model_int8.onnx"))
    assert weights_through_dequantize(proto, {"ConvTranspose"}) == []
    assert weights_through_dequantize(proto, {"Conv"})  # the convolutions are quantized


def test_kpac_bundle_infers_from_an_empty_folder_like_onnx_runtime(kpac_chain, tmp_path):
    bundle = kpac_chain / "bundles/kpac-synthetic"
    device = tmp_path / "device"
    shutil.copytree(bundle, device)
    manifest = json.loads((device / "manifest.json").read_text())
    assert manifest["model"]["name"] == "kpac" and manifest["input"]["size_multiple"] == 4
    result = run_on_device(device, "infer.py", "--model", "model_fp16.onnx", "--input", "samples/000_c.png",
                           "--output", "sharp.png")
    assert result.returncode == 0, result.stderr
    got = cv2.imread(str(device / "sharp.png"), cv2.IMREAD_UNCHANGED)[:, :, ::-1]
    blurry = cv2.imread(str(bundle / "samples/000_c.png"), cv2.IMREAD_UNCHANGED)[:, :, ::-1]
    x = np.ascontiguousarray((blurry.astype(np.float32) / 255).transpose(2, 0, 1)[None])
    y = ort.InferenceSession(str(bundle / "model_fp16.onnx")).run(None, {"input": x})[0]
    expected = np.round(np.clip(y[0].transpose(1, 2, 0), 0, 1) * 255).astype(np.uint8)
    assert got.shape == (80, 112, 3) and np.abs(got.astype(int) - expected).max() <= 1
