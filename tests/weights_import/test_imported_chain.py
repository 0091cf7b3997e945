"""An imported KPAC (the authors' format, TF 'SAME' stride-2 padding) through the later stages like a trained one:
evaluate (protocol taken from the file), export-onnx with parity at sizes not used at export (dynamic H and W),
quantize (FP16 and INT8), bundle and bench-latency, all through the real CLI on a tiny DPDD-layout set."""
from __future__ import annotations

import json

import pytest
import torch

from pipeline_src.cli import main as cli_main
from tests.export.conftest import EXPORT_CONFIG, OP_TABLE, make_dataset
from tests.weights_import.helpers import fixture

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("authors-kpac")
    ckpt = root / "runs/kpac/authors/final.pt"
    assert cli_main(["import-weights", "kpac_single_2level", "--file", str(fixture("single_2level")),
                     "--out", str(ckpt)]) == 0
    # a tiny 8-bit DPDD-layout set (tests/export/conftest.py): two 76 x 108 test images, 48-px train patches
    manifest, patches = make_dataset(root / "data", size_hw=(76, 108), n_test=2, n_patches=16, patch=48)
    cfg = root / "export.yaml"
    cfg.write_text(EXPORT_CONFIG.read_text().replace("config/tensorrt_onnx_ops.yaml", str(OP_TABLE)))
    common = ["--config", str(cfg)]
    assert cli_main(["evaluate", "--checkpoint", str(ckpt), "--manifest", str(manifest), "--out",
                     str(root / "metrics/authors.json"), "--record", str(root / "metrics/authors.record.json"),
                     "--per-image", str(root / "metrics/authors.csv"),
                     "--images", str(root / "metrics/authors"), "--baselines", "--no-tracking"]) == 0
    assert cli_main(["export-onnx", "--checkpoint", str(ckpt), "--out", str(root / "export"),
                     "--manifest", str(manifest), "--no-tracking", *common]) == 0
    assert cli_main(["quantize", "--onnx", str(root / "export/model.onnx"), "--manifest", str(manifest),
                     "--patches", str(patches), "--calibration-patches", "8", "--no-tracking", *common]) == 0
    assert cli_main(["bundle", "--export-dir", str(root / "export"), "--out", str(root / "bundles/kpac-authors"),
                     "--manifest", str(manifest), *common]) == 0
    assert cli_main(["bench-latency", "--checkpoint", str(ckpt), "--onnx", str(root / "export/model.onnx"),
                     "--sizes", "96x64", "--warmup", "0", "--repeats", "1", "--threads", "1",
                     "--out", str(root / "latency.json"), *common]) == 0
    return root


def test_evaluate_takes_the_protocol_the_authors_evaluation_used_from_the_file(chain):
    doc = json.loads((chain / "metrics/authors.record.json").read_text())
    assert doc["protocol_name"] == "dpdd_single_8bit" and doc["recipe"] == "kpac" and doc["images"] == 2
    assert doc["model_name"] == "kpac" and doc["checkpoint"]["phase"] is None
    assert doc["weights_source"] == "authors' release" and doc["provenance"]["import"] == "kpac_single_2level"
    # the model row is a real score (random weights: far from the target, unlike the blurry input)
    assert 0 < doc["model"]["psnr"] < doc["baselines"]["input"]["psnr"]


def test_export_passes_parity_with_tf_same_padding_at_sizes_not_used_at_export(chain):
    parity = json.loads((chain / "export/parity.json").read_text())
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-4
    unseen = [r for r in parity["sizes"] if not r["used_at_export"]]
    assert {"104x72", "83x61"} <= {r["size"] for r in unseen}
    ops = json.loads((chain / "export/ops.json").read_text())
    assert ops["passed"] and {"Pad", "Conv", "ConvTranspose", "GlobalAveragePool"} <= set(ops["operators"])


def test_quantized_variants_are_scored_and_the_bundle_names_the_imported_model(chain):
    quality = json.loads((chain / "export/quality.json").read_text())
    variants = quality["variants"]
    assert abs(variants["fp16"]["drop_db"]) < 0.1
    assert variants["int8"]["accepted"] and (chain / "export/model_int8.onnx").is_file()
    assert variants["int8"]["psnr_vs_fp32_db"] > 30  # Q/DQ stays close to fp32 with the TF pads in the graph
    assert variants["fp16"]["ops"]["Pad"] == 3  # the input's pad to a multiple of 4, then c2's and c3's (0, 1) pads
    manifest = json.loads((chain / "bundles/kpac-authors/manifest.json").read_text())
    assert manifest["model"]["name"] == "kpac" and manifest["model"]["args"]["stride2_padding"] == "tf_same"
    assert manifest["input"]["size_multiple"] == 4


def test_bench_latency_times_the_imported_checkpoint(chain):
    bench = json.loads((chain / "latency.json").read_text())
    assert bench["model"] == "kpac" and bench["checkpoint"].endswith("authors/final.pt")
    timed = {(r["backend"], r["size"]): r["median_ms"] for r in bench["results"]}
    assert set(timed) == {("pytorch-eager", "96x64"), ("onnxruntime", "96x64")}
    assert all(ms > 0 for ms in timed.values())
