"""`run-summary` reads Snakemake's benchmark files and sizes data/ (hard links once)."""
import os

from pipeline_src.cli import main


def _bench(root, rule, name, wall, rss, cpu):
    path = root / rule / f"{name}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
                    f"{wall}\t0:00:01\t{rss}\t0\t0\t0\t0\t0\t50\t{cpu}\n")


def test_slowest_jobs_memory_per_rule_and_disk(tmp_path, capsys):
    bench = tmp_path / "benchmarks"
    _bench(bench, "train", "kpac/synth/phase1", 300.0, 900.0, 580.0)
    _bench(bench, "train", "attsf/synth/phase1", 120.0, 2100.0, 230.0)
    _bench(bench, "evaluate", "kpac-synth", 20.0, 400.0, 35.0)
    data = tmp_path / "data"
    (data / "export").mkdir(parents=True)
    (data / "export/model.onnx").write_bytes(b"x" * (3 << 20))
    (data / "bundles").mkdir()
    os.link(data / "export/model.onnx", data / "bundles/model.onnx")  # the bundle links, it does not copy
    (data / "bundles/manifest.json").write_bytes(b"y" * (1 << 20))
    summary = tmp_path / "s.json"
    assert main(["run-summary", "--benchmarks", str(bench), "--data", str(data), "--out", str(summary)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[2].startswith("| train/kpac/synth/phase1 | 300 | 580 | 900 |")
    assert "| train | 2 | 420 | 810 | 2100 |" in out and "| evaluate | 1 | 20 | 35 | 400 |" in out
    disk = {line.split("|")[1].strip(): line.split("|")[2:4] for line in lines if line.startswith("| ")
            and line.split("|")[1].strip() in ("export", "bundles", "all of data/, each file once")}
    mib = {name: [float(v) if v.strip() else None for v in values] for name, values in disk.items()}
    # the 3 MiB ONNX file is in both folders and shared by both; the total counts it once (3 + 1 MiB)
    assert 3.0 <= mib["export"][0] < 3.1 and 3.0 <= mib["export"][1] < 3.1
    assert 4.0 <= mib["bundles"][0] < 4.1 and 3.0 <= mib["bundles"][1] < 3.1
    assert 4.0 <= mib["all of data/, each file once"][0] < 4.1


def test_no_benchmarks_is_one_line(tmp_path, capsys):
    assert main(["run-summary", "--benchmarks", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
