"""quantize: FP16 keeps fp32 I/O, INT8 has symmetric per-channel Q/DQ, quality report, the INT8 gate."""
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from pipeline_src.cli import main as cli_main
from pipeline_src.errors import DataError
from pipeline_src.export import load_export_config
from pipeline_src.export.quantize import calibration_batches, psnr, quantize_model
from tests.export.conftest import EXPORT_CONFIG, OP_TABLE


def _config(**quantize):
    cfg = load_export_config(EXPORT_CONFIG)
    cfg["onnx"]["op_table"] = str(OP_TABLE)
    cfg["quantize"].update({"calibration_patches": 16, "calibration_batch": 8, **quantize})
    return cfg


@pytest.fixture(scope="module")
def quantized(exported, tiny_setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("quantized")
    report = quantize_model(str(exported / "model.onnx"), str(tiny_setup["manifest"]), str(tiny_setup["patches"]),
                            _config(), out)
    return out, report


def test_fp16_variant_has_half_weights_and_float32_io(quantized):
    out, _ = quantized
    proto = onnx.load(str(out / "model_fp16.onnx"))
    conv_weights = [t for t in proto.graph.initializer if t.dims and len(t.dims) == 4]
    assert conv_weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in conv_weights)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    meta = {e.key: e.value for e in proto.metadata_props}
    assert meta["pipeline.precision"] == "fp16" and meta["pipeline.model"] == "tiny_export_restorer"


def test_int8_variant_is_symmetric_per_channel_qdq_with_float_bias(quantized, exported):
    out, _ = quantized
    proto = onnx.load(str(out / "model_int8.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    weight_dq = [n for n in dq if inits.get(n.input[0]) is not None and inits[n.input[0]].ndim == 4]
    assert len(weight_dq) == 3  # the three convolutions
    for n in weight_dq:
        assert inits[n.input[0]].dtype == np.int8
        assert inits[n.input[1]].shape == (inits[n.input[0]].shape[0],)  # one scale per output channel
    for n in proto.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
            assert not inits[n.input[2]].any()  # zero points are 0: symmetric
    assert not any("bias" in n.input[0] for n in dq)
    # the fp32 file's metadata, with its own precision
    fp32 = {e.key: e.value for e in onnx.load(str(exported / "model.onnx")).metadata_props}
    assert {e.key: e.value for e in proto.metadata_props} == {**fp32, "pipeline.precision": "int8"}


def test_quality_report_scores_every_variant_against_fp32(quantized, tiny_setup):
    out, report = quantized
    saved = json.loads((out / "quality.json").read_text())
    assert saved["metric"] == "psnr_db" and saved["images"] == 2
    v = saved["variants"]
    assert set(v) == {"fp32", "fp16", "int8"}
    assert v["fp16"]["drop_db"] == pytest.approx(v["fp32"]["psnr_db"] - v["fp16"]["psnr_db"])
    assert abs(v["fp16"]["drop_db"]) < 0.05 and v["fp16"]["psnr_vs_fp32_db"] > 50
    assert v["int8"]["accepted"] is True and v["int8"]["file"] == "model_int8.onnx"
    assert v["int8"]["drop_db"] <= saved["int8_limit"]["max_int8_drop_db"]
    assert saved["calibration"]["patches"] == 16
    assert "DequantizeLinear" in v["int8"]["ops"]


def test_fp32_score_is_the_psnr_of_onnx_runtime_outputs(quantized, exported, tiny_setup):
    from pipeline_src.export import iter_test_inputs

    _, report = quantized
    session = ort.InferenceSession(str(exported / "model.onnx"))
    ids, x, target, _ = next(iter_test_inputs(tiny_setup["manifest"], ["c"], limit=1))
    y = np.clip(session.run(None, {"input": x})[0][0].transpose(1, 2, 0), 0, 1)
    mse = np.mean((y.astype(np.float64) - target) ** 2)
    assert report["variants"]["fp32"]["per_image"][0]["score"] == pytest.approx(10 * np.log10(1 / mse), abs=1e-6)


def test_int8_beyond_the_allowed_drop_is_refused_and_not_written(exported, tiny_setup, tmp_path):
    cfg_path = tmp_path / "export.yaml"
    cfg_path.write_text(EXPORT_CONFIG.read_text().replace("config/tensorrt_onnx_ops.yaml", str(OP_TABLE)))
    rc = cli_main(["quantize", "--onnx", str(exported / "model.onnx"), "--manifest", str(tiny_setup["manifest"]),
                   "--patches", str(tiny_setup["patches"]), "--out", str(tmp_path / "q"), "--config", str(cfg_path),
                   "--preset", "smoke", "--max-int8-drop-db", "-1", "--metrics", str(tmp_path / "m.json")])
    assert rc == 0  # the gate's verdict is recorded, not an error: the bundle ships without INT8
    report = json.loads((tmp_path / "q" / "quality.json").read_text())
    assert report["calibration"]["patches"] == 8  # the smoke preset's count (config/export.yaml quantize.presets)
    # the DVC metrics: flat numbers, the same figures as the report's
    numbers = json.loads((tmp_path / "m.json").read_text())
    assert numbers["int8.accepted"] == 0 and numbers["fp16.drop_db"] == report["variants"]["fp16"]["drop_db"]
    assert numbers["fp32.psnr_db"] == report["variants"]["fp32"]["psnr_db"] and numbers["images"] == report["images"]
    assert all(isinstance(v, (int, float)) for v in numbers.values())
    assert report["variants"]["int8"]["accepted"] is False and report["variants"]["int8"]["file"] is None
    assert not (tmp_path / "q" / "model_int8.onnx").exists()
    assert (tmp_path / "q" / "model_fp16.onnx").exists()
    assert not list((tmp_path / "q").glob(".quantize-*"))


def test_the_tracked_run_holds_the_report_and_names_each_variant_file_by_hash(exported, tiny_setup, tmp_path,
                                                                              monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipeline_src.fileio import sha256_file

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("PIPELINE_TRACKING", "1")
    monkeypatch.setenv("PIPELINE_MLFLOW_EXPERIMENT", "quantize-test")
    cfg_path = tmp_path / "export.yaml"
    cfg_path.write_text(EXPORT_CONFIG.read_text().replace("config/tensorrt_onnx_ops.yaml", str(OP_TABLE)))
    out = tmp_path / "q"
    assert cli_main(["quantize", "--onnx", str(exported / "model.onnx"), "--manifest", str(tiny_setup["manifest"]),
                     "--patches", str(tiny_setup["patches"]), "--out", str(out), "--config", str(cfg_path),
                     "--preset", "smoke"]) == 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("quantize-test").experiment_id])
    assert run.data.tags["stage"] == "quantize" and run.data.metrics["int8/accepted"] == 1.0
    # the ONNX files go into MLflow once, with the bundle's registered version; this run names them by hash
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"quality.json"}
    assert run.data.tags["onnx.sha256"] == sha256_file(exported / "model.onnx")
    assert run.data.tags["fp16.sha256"] == sha256_file(out / "model_fp16.onnx")
    assert run.data.tags["int8.sha256"] == sha256_file(out / "model_int8.onnx")


def test_a_missing_test_image_is_named_before_calibration_and_nothing_is_written(exported, tiny_setup, tmp_path,
                                                                                 capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(Path(tiny_setup["manifest"]).parent, data)
    manifest = json.loads(Path(tiny_setup["manifest"]).read_text())
    manifest["root"] = str(data)
    moved = tmp_path / "manifest.json"
    moved.write_text(json.dumps(manifest))
    last = [s for s in manifest["samples"] if s["split"] == "test"][-1]  # not the first: every file is checked
    (data / last["target"]).unlink()
    cfg_path = tmp_path / "export.yaml"
    cfg_path.write_text(EXPORT_CONFIG.read_text().replace("config/tensorrt_onnx_ops.yaml", str(OP_TABLE)))
    out = tmp_path / "q"
    # the patch folder does not exist either: the test image is named first, so it was checked before calibration
    rc = cli_main(["quantize", "--onnx", str(exported / "model.onnx"), "--manifest", str(moved), "--patches",
                   str(tmp_path / "no-patches"), "--out", str(out), "--config", str(cfg_path), "--no-tracking"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"{data / last['target']}: no such file (test sample {last['id']!r} of {moved})" in err
    assert not out.exists() or not any(out.iterdir())  # no variant, report or scratch folder


def test_a_manifest_without_test_samples_is_one_line(exported, tiny_setup, tmp_path, capsys):
    manifest = json.loads(Path(tiny_setup["manifest"]).read_text())
    manifest["samples"] = [s for s in manifest["samples"] if s["split"] != "test"]
    trimmed = tmp_path / "manifest.json"
    trimmed.write_text(json.dumps(manifest))
    rc = cli_main(["quantize", "--onnx", str(exported / "model.onnx"), "--manifest", str(trimmed), "--patches",
                   str(tiny_setup["patches"]), "--out", str(tmp_path / "q"), "--no-tracking"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and f"error: {trimmed}: no 'test' samples" in err


@pytest.mark.parametrize("fault", ["missing", "cut"])
def test_a_missing_or_cut_onnx_file_is_one_line_from_the_command(fault, exported, tiny_setup, tmp_path, capsys):
    onnx_path = tmp_path / "model.onnx"
    if fault == "cut":
        onnx_path.write_bytes((exported / "model.onnx").read_bytes()[:1000])
    rc = cli_main(["quantize", "--onnx", str(onnx_path), "--manifest", str(tiny_setup["manifest"]), "--patches",
                   str(tiny_setup["patches"]), "--out", str(tmp_path / "q"), "--no-tracking"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    said = {"missing": "no such ONNX file; run export-onnx first", "cut": "not a readable ONNX file"}[fault]
    assert err.startswith(f"error: {onnx_path}: {said}")


def test_calibration_draws_the_configured_number_of_patches_in_model_view_order(tmp_path):
    a = np.zeros((10, 8, 8, 3), np.uint16)
    b = np.full((10, 8, 8, 3), 65535, np.uint16)
    np.save(tmp_path / "l.npy", a)
    np.save(tmp_path / "r.npy", b)
    batches = calibration_batches(tmp_path, ["l", "r"], count=5, batch=2, seed=0)
    assert [x.shape for x in batches] == [(2, 6, 8, 8), (2, 6, 8, 8), (1, 6, 8, 8)]
    assert all(x[:, :3].max() == 0 and x[:, 3:].min() == 1.0 for x in batches)


def test_calibration_refuses_a_missing_view_and_bad_arrays(tmp_path):
    np.save(tmp_path / "c.npy", np.zeros((4, 8, 8, 3), np.float32))
    with pytest.raises(DataError, match="l.npy: no patch array for view 'l'"):
        calibration_batches(tmp_path, ["l"], 4, 2, 0)
    with pytest.raises(DataError, match="uint8/uint16"):
        calibration_batches(tmp_path, ["c"], 4, 2, 0)
    (tmp_path / "t.npy").write_bytes(np.lib.format.MAGIC_PREFIX + b"\x01\x00")  # a cut header
    with pytest.raises(DataError, match="t.npy: not a readable .npy array"):
        calibration_batches(tmp_path, ["t"], 4, 2, 0)


def test_a_missing_patch_folder_is_one_line_from_the_command(exported, tiny_setup, tmp_path, capsys):
    cfg_path = tmp_path / "export.yaml"
    cfg_path.write_text(EXPORT_CONFIG.read_text().replace("config/tensorrt_onnx_ops.yaml", str(OP_TABLE)))
    rc = cli_main(["quantize", "--onnx", str(exported / "model.onnx"), "--manifest", str(tiny_setup["manifest"]),
                   "--patches", str(tmp_path / "no-patches"), "--out", str(tmp_path / "q"), "--config",
                   str(cfg_path), "--no-tracking"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"error: {tmp_path / 'no-patches' / 'c.npy'}: no patch array for view 'c'")


def test_psnr_is_capped_for_identical_images_and_known_for_a_constant_error():
    x = np.full((4, 4, 3), 0.5)
    assert psnr(x, x) == 100.0
    assert psnr(x, x + 0.1) == pytest.approx(20.0)


def test_unknown_calibration_method_is_refused(exported, tiny_setup, tmp_path):
    with pytest.raises(ValueError, match="calibration_method 'Best'"):
        quantize_model(str(exported / "model.onnx"), str(tiny_setup["manifest"]), str(tiny_setup["patches"]),
                       _config(calibration_method="Best"), tmp_path)


def test_a_detection_model_is_scored_by_mae_against_the_mask_and_gated_by_its_rise(tmp_path):
    from pipeline_src.export.onnx_export import export_checkpoint
    from tests.export.conftest import make_checkpoint, make_dataset

    ckpt = make_checkpoint(tmp_path / "det.pt", name="tiny_export_detector")
    manifest, patches = make_dataset(tmp_path / "data", masks=True)
    export_checkpoint(str(ckpt), tmp_path / "e", _config(), sizes=["32x32", "40x24"])
    report = quantize_model(str(tmp_path / "e/model.onnx"), str(manifest), str(patches), _config(), tmp_path / "e")
    assert report["metric"] == "mae" and report["better"] == "lower"
    v = report["variants"]
    assert 0 < v["fp32"]["mae"] < 1
    assert v["int8"]["mae_rise"] == pytest.approx(v["int8"]["mae"] - v["fp32"]["mae"])
    assert report["int8_limit"] == {"max_int8_mae_rise": 0.02} and v["int8"]["accepted"] is True


# ----------------------------------------------------------------------------- ConvTranspose stays float
@pytest.fixture(scope="module")
def deconv_export(tmp_path_factory, tiny_setup):
    from pipeline_src.export.onnx_export import export_checkpoint
    from tests.export.conftest import make_checkpoint

    root = tmp_path_factory.mktemp("deconv")
    ckpt = make_checkpoint(root / "deconv.pt", name="tiny_export_deconv")
    export_checkpoint(str(ckpt), root / "e", _config(), sizes=["32x32", "40x24"])
    return root / "e" / "model.onnx"


def _weight_dq_axes(path):
    """{op type: [axis of the DequantizeLinear feeding its weight]} of a Q/DQ graph."""
    proto = onnx.load(str(path))
    producers = {o: n for n in proto.graph.node for o in n.output}
    out = {}
    for n in proto.graph.node:
        if n.op_type in ("Conv", "ConvTranspose") and producers.get(n.input[1]) is not None \
                and producers[n.input[1]].op_type == "DequantizeLinear":
            axis = next((a.i for a in producers[n.input[1]].attribute if a.name == "axis"), 1)
            out.setdefault(n.op_type, []).append(axis)
    return out


def test_int8_keeps_convtranspose_in_float_and_quantizes_the_convolutions(deconv_export, tiny_setup, tmp_path):
    from pipeline_src.export.qdq_policy import weights_through_dequantize

    report = quantize_model(str(deconv_export), str(tiny_setup["manifest"]), str(tiny_setup["patches"]), _config(),
                            tmp_path)
    proto = onnx.load(str(tmp_path / "model_int8.onnx"))
    assert "ConvTranspose" in {n.op_type for n in proto.graph.node}
    assert weights_through_dequantize(proto, {"ConvTranspose"}) == []
    assert _weight_dq_axes(tmp_path / "model_int8.onnx") == {"Conv": [0, 0, 0]}  # per output channel
    calibration = report["calibration"]
    assert "ConvTranspose" not in calibration["op_types"]
    assert "2380" in calibration["float_for_tensorrt"]["ConvTranspose"]
    assert report["variants"]["int8"]["accepted"] is True  # the quality gate still decides


def test_a_device_checked_convtranspose_is_quantized_and_the_policy_refuses_it_otherwise(deconv_export, tiny_setup,
                                                                                         tmp_path):
    from pipeline_src.errors import ExportError
    from pipeline_src.export.qdq_policy import ops_to_quantize, require_float

    cfg = _config(device_checked_qdq_ops=["ConvTranspose"])
    quantize_model(str(deconv_export), str(tiny_setup["manifest"]), str(tiny_setup["patches"]), cfg, tmp_path)
    axes = _weight_dq_axes(tmp_path / "model_int8.onnx")
    assert axes["ConvTranspose"] == [1]  # what ONNX Runtime does: axis 1, the axis TensorRT does not take
    _, kept = ops_to_quantize(_config()["quantize"])
    with pytest.raises(ExportError, match="ConvTranspose .*must stay float for TensorRT.*device_checked_qdq_ops"):
        require_float(onnx.load(str(tmp_path / "model_int8.onnx")), kept, "model_int8.onnx")


def test_export_config_schema_refuses_a_bad_float_op_list(tmp_path):
    from pipeline_src.config import ConfigError

    bad = tmp_path / "export.yaml"
    bad.write_text(EXPORT_CONFIG.read_text().replace("device_checked_qdq_ops: []", "device_checked_qdq_ops: yes"))
    with pytest.raises(ConfigError, match="quantize.device_checked_qdq_ops: True is not of type 'array'"):
        load_export_config(bad)
