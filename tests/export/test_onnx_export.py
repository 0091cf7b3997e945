"""export-onnx: dynamic H/W, checker, metadata, parity at sizes not used at export, refusals."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from pipeline_src.cli import main as cli_main
from pipeline_src.errors import CheckpointError, ExportError
from pipeline_src.export import load_export_config, parse_size
from pipeline_src.export.onnx_export import check_parity, export_checkpoint, onnx_metadata
from pipeline_src.fileio import sha256_file
from pipeline_src.model_io import load_model
from tests.export.conftest import EXPORT_CONFIG, OP_TABLE, make_checkpoint


def test_export_writes_a_checked_onnx_with_dynamic_height_and_width(exported, tiny_setup):
    proto = onnx.load(str(exported / "model.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert proto.opset_import[0].version == 17
    meta = onnx_metadata(exported / "model.onnx")
    assert meta["model"] == "tiny_export_restorer"
    assert meta["input_views"] == ["c"] and meta["size_multiple"] == 4 and meta["task"] == "restoration"


def test_parity_report_covers_sizes_not_used_at_export_within_1e4(exported):
    parity = json.loads((exported / "parity.json").read_text())
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-4 == parity["atol"]
    assert [r["size"] for r in parity["sizes"]] == ["32x32", "44x36", "51x37"]
    assert not any(r["used_at_export"] for r in parity["sizes"])
    assert parity["inputs"].startswith("crops of test image")


def test_onnx_runtime_matches_pytorch_at_an_odd_size_checked_here(exported, tiny_setup):
    model, _ = load_model(tiny_setup["checkpoint"])
    x = np.random.default_rng(5).random((1, 3, 29, 47), dtype=np.float32)
    got = ort.InferenceSession(str(exported / "model.onnx")).run(None, {"input": x})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert got.shape == (1, 3, 29, 47)
    assert np.abs(got - ref).max() <= 1e-4


def test_ops_report_lists_the_graphs_operators_and_passes(exported):
    ops = json.loads((exported / "ops.json").read_text())
    assert ops["passed"] and ops["problems"] == []
    assert {"Conv", "Pad", "Resize", "Slice"} <= set(ops["operators"])


def test_parity_needs_two_sizes_and_one_not_used_at_export(tiny_setup, exported):
    model, _ = load_model(tiny_setup["checkpoint"])
    x = np.zeros((1, 3, 64, 64), np.float32)
    with pytest.raises(ValueError, match="two or more sizes"):
        check_parity(model, exported / "model.onnx", [x], atol=1e-4, export_size=(64, 64))
    with pytest.raises(ValueError, match="not the export size"):
        check_parity(model, exported / "model.onnx", [x, x], atol=1e-4, export_size=(64, 64))


def test_failed_parity_leaves_reports_and_no_model(tmp_path, tiny_setup):
    cfg = load_export_config(EXPORT_CONFIG)
    cfg["onnx"]["op_table"] = str(OP_TABLE)
    (tmp_path / "model.onnx").write_bytes(b"stale")  # from an earlier run: must not survive a failed export
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_checkpoint(str(tiny_setup["checkpoint"]), tmp_path, cfg, atol=0.0, sizes=["32x32", "40x24"])
    assert not (tmp_path / "model.onnx").exists()
    assert json.loads((tmp_path / "parity.json").read_text())["passed"] is False
    assert json.loads((tmp_path / "ops.json").read_text())["passed"] is True
    assert not list(tmp_path.glob(".*"))  # no temporary left behind


def test_failed_parity_through_the_cli_is_one_error_line(tmp_path, tiny_setup, capsys):
    cfg_path = tmp_path / "export.yaml"
    cfg_path.write_text(EXPORT_CONFIG.read_text().replace("config/tensorrt_onnx_ops.yaml", str(OP_TABLE)))
    rc = cli_main(["export-onnx", "--checkpoint", str(tiny_setup["checkpoint"]), "--out", str(tmp_path / "o"),
                   "--config", str(cfg_path), "--sizes", "32x32", "40x24", "--atol", "0", "--no-tracking"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and "parity.json" in err[0]
    assert not (tmp_path / "o" / "model.onnx").exists()


def test_parity_crop_larger_than_the_test_image_is_refused(tmp_path, tiny_setup):
    cfg = load_export_config(EXPORT_CONFIG)
    cfg["onnx"]["op_table"] = str(OP_TABLE)
    with pytest.raises(ValueError, match="smaller than parity size"):
        export_checkpoint(str(tiny_setup["checkpoint"]), tmp_path, cfg, manifest=str(tiny_setup["manifest"]),
                          sizes=["32x32", "512x512"])


def test_cli_exports_a_dual_view_model_with_noise_inputs(tmp_path):
    ckpt = make_checkpoint(tmp_path / "dual.pt", views=("l", "r"))
    cfg_path = tmp_path / "export.yaml"
    cfg_path.write_text(EXPORT_CONFIG.read_text().replace("config/tensorrt_onnx_ops.yaml", str(OP_TABLE)))
    rc = cli_main(["export-onnx", "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"),
                   "--config", str(cfg_path), "--sizes", "32x32", "37x21"])
    assert rc == 0
    proto = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 6
    assert json.loads((tmp_path / "out" / "parity.json").read_text())["inputs"] == "uniform noise, seed 0"


@pytest.mark.parametrize("text,expected", [("1280x720", (720, 1280)), ("64X32", (32, 64))])
def test_sizes_are_width_by_height(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["1280", "0x720", "ax720", "1280x720x3", "-4x4"])
def test_bad_sizes_are_refused_with_the_expected_form(bad):
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        parse_size(bad)


def test_missing_checkpoint_names_the_file(tmp_path):
    cfg = load_export_config(EXPORT_CONFIG)
    with pytest.raises(CheckpointError, match="nope.pt"):
        export_checkpoint(str(tmp_path / "nope.pt"), tmp_path / "out", cfg)


def test_export_is_logged_as_an_mlflow_run_with_its_reports_and_the_onnx_hash(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("PIPELINE_TRACKING", "1")
    monkeypatch.setenv("PIPELINE_MLFLOW_EXPERIMENT", "export-test")
    ckpt = make_checkpoint(tmp_path / "m.pt")
    cfg_path = tmp_path / "export.yaml"
    cfg_path.write_text(EXPORT_CONFIG.read_text().replace("config/tensorrt_onnx_ops.yaml", str(OP_TABLE)))
    assert cli_main(["export-onnx", "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"),
                     "--config", str(cfg_path), "--sizes", "32x32", "37x21"]) == 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("export-test").experiment_id])
    assert run.data.tags["pipeline.role"] == "export" and run.data.tags["stage"] == "export-onnx"
    assert run.data.metrics["parity/max_abs_diff"] <= 1e-4
    # the ONNX file goes into MLflow with the bundle only; this run names it by hash
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"parity.json", "ops.json"}
    assert run.data.tags["onnx.sha256"] == sha256_file(tmp_path / "out" / "model.onnx")
