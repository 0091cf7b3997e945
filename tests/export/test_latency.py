"""bench-latency: median after warm-up, every backend at every size, JSON and table out, TensorRT skipped with
its reason where absent, MLflow only on request."""
import json

import pytest

from pipeline_src.benchmarks.latency import benchmark, format_table, time_runs
from pipeline_src.cli import main as cli_main
from tests.export.conftest import EXPORT_CONFIG


def test_time_runs_discards_warmup_and_reports_the_median():
    calls = []
    timing = time_runs(lambda: calls.append(1), warmup=2, repeats=5)
    assert len(calls) == 7 and len(timing["runs_ms"]) == 5
    ordered = sorted(timing["runs_ms"])
    assert timing["median_ms"] == ordered[2] and timing["min_ms"] == ordered[0] and timing["max_ms"] == ordered[-1]


@pytest.mark.parametrize("warmup,repeats", [(-1, 3), (0, 0)])
def test_time_runs_refuses_bad_counts(warmup, repeats):
    with pytest.raises(ValueError, match="repeats >= 1"):
        time_runs(lambda: None, warmup, repeats)


def test_benchmark_times_pytorch_and_each_onnx_variant_at_each_size(tiny_setup, exported, tmp_path):
    result = benchmark(str(tiny_setup["checkpoint"]), [str(exported / "model.onnx")],
                       [str(tmp_path / "tiny-sm90-trt10.16.1-fp16.plan")], [(32, 48), (24, 40)],
                       warmup=1, repeats=2, threads=1)
    rows = [(r["backend"], r["size"]) for r in result["results"]]
    assert rows == [("pytorch-eager", "48x32"), ("onnxruntime", "48x32"), ("pytorch-eager", "40x24"),
                    ("onnxruntime", "40x24")]
    assert all(r["median_ms"] > 0 and len(r["runs_ms"]) == 2 for r in result["results"])
    assert result["results"][1]["precision"] == "fp32" and result["results"][1]["file"] == "model.onnx"
    assert result["skipped"][0]["backend"] == "tensorrt" and result["skipped"][0]["reason"]
    assert result["host"]["cpu_count"] >= 1
    table = format_table(result)
    assert table.splitlines()[0] == "| backend | precision | device | 48x32 (ms) | 40x24 (ms) |"
    assert "| onnxruntime | fp32 | CPUExecutionProvider |" in table


def test_cli_writes_json_and_accepts_mlflow_with_tracking_off(tiny_setup, exported, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PIPELINE_TRACKING", "0")  # the flag is honoured without touching an MLflow store
    out = tmp_path / "latency.json"
    rc = cli_main(["bench-latency", "--checkpoint", str(tiny_setup["checkpoint"]), "--onnx",
                   str(exported / "model.onnx"), "--sizes", "32x32", "--warmup", "0", "--repeats", "1",
                   "--threads", "1", "--config", str(EXPORT_CONFIG), "--out", str(out), "--mlflow"])
    assert rc == 0
    saved = json.loads(out.read_text())
    assert saved["sizes"] == ["32x32"] and saved["repeats"] == 1 and saved["statistic"] == "median"
    assert "| pytorch-eager | fp32 | cpu |" in capsys.readouterr().out


def test_default_sizes_are_the_two_issue_sizes():
    import yaml

    assert yaml.safe_load(EXPORT_CONFIG.read_text())["latency"]["sizes"] == ["1280x720", "1680x1120"]
