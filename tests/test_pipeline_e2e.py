"""The whole DAG on the smoke preset, run by the real Snakemake and the real DVC, each in a fresh copy of
the repository (tracked and untracked-but-not-ignored files, as a clone plus local edits would hold)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def copy_repo(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dest, check=True)
    return dest


def env_for(ws: Path) -> dict:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "MLFLOW_TRACKING_URI": f"sqlite:///{ws / 'mlflow.db'}", "PIPELINE_TRACKING": "1",
            "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1"}


def run(cmd, ws, timeout=900):
    r = subprocess.run(cmd, cwd=ws, env=env_for(ws), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-4000:]}\n{r.stderr[-6000:]}"
    return r


def expected_outputs(ws: Path) -> list[Path]:
    import yaml

    cfg = yaml.safe_load((ws / "config/config.yaml").read_text())
    out = [ws / "data/weights/status.json"]
    for d in cfg["datasets"]:
        out += [ws / f"data/manifests/{d}.json", ws / f"data/patches/{d}/meta.json"]
    for j in cfg["train"].values():
        out.append(ws / f"data/runs/{j['recipe']}/{j['dataset']}/phase{j['phase']}/final.pt")
    for name in cfg["evaluate"]:
        out.append(ws / f"data/metrics/{name}.json")
    if cfg["evaluate"]:
        out.append(ws / "data/report/results.md")
    for name in cfg["export"]:
        out += [ws / f"data/export/{name}/model.onnx", ws / f"data/bundles/{name}/manifest.json"]
    return out


def check_logs_and_benchmarks(ws: Path) -> None:
    """A log per job under logs/<rule>/, a benchmark per training, evaluation and export job."""
    import yaml

    cfg = yaml.safe_load((ws / "config/config.yaml").read_text())
    logs = {str(p.relative_to(ws / "logs")) for p in (ws / "logs").rglob("*.log")}
    n_jobs = (len(cfg["synthesize"]) + 1 + 2 * len(cfg["datasets"]) + len(cfg["train"]) + len(cfg["evaluate"])
              + 1 + 4 * len(cfg["export"]))
    assert len(logs) == n_jobs, sorted(logs)
    assert all((ws / "logs" / p).stat().st_size > 0 for p in logs)  # every stage prints what it did
    bench = {p.parent.relative_to(ws / "benchmarks").parts[0] for p in (ws / "benchmarks").rglob("*.tsv")}
    assert bench == {"train", "evaluate", "export_onnx", "quantize", "build_engine", "bundle"}
    tsv = next((ws / "benchmarks/train").rglob("*.tsv")).read_text().splitlines()
    assert tsv[0].split("\t")[:3] == ["s", "h:m:s", "max_rss"] and float(tsv[1].split("\t")[0]) > 0


def check_report(ws: Path) -> None:
    """`snakemake --report`: the results table, the plots and the side-by-side images, a category per paper."""
    import yaml

    cfg = yaml.safe_load((ws / "config/config.yaml").read_text())
    run([str(BIN / "snakemake"), "--report", "report.html", "--config", "preset=smoke"], ws)
    html = (ws / "report.html").read_text()
    for paper in ("KPAC", "ADNet", "BiANet", "MultiANet", "Results"):
        assert f'"{paper}"' in html, f"no report category {paper}"
    for name in cfg["evaluate"]:
        assert f"{name}_bars.png" in html and f"{name}_per_image.png" in html and f"{name}.csv" in html, name
    panels = [p for name in cfg["evaluate"] for p in (ws / f"data/metrics/{name}").glob("*.png")]
    assert panels and all(f'"{p.relative_to(ws)}"' in html for p in panels)
    # plots and panels are embedded in the file, not linked
    assert html.count("data:image/png;") >= 2 * len(cfg["evaluate"]) + len(panels)
    # the results caption renders rows.csv as a table (docutils csv-table), every row without an RST error
    assert '"data/report/rows.csv"' in html and '<th class=\\"head\\">psnr</th>' in html
    rows = (ws / "data/report/rows.csv").read_text().splitlines()
    assert html.count("<tr>") >= len(rows)
    assert "csv-table" not in html and "ERROR/" not in html and "problematic" not in html


def test_snakemake_smoke_builds_the_dag_and_a_second_call_has_nothing_to_do(tmp_path):
    ws = copy_repo(tmp_path)
    run([str(BIN / "snakemake"), "--cores", "8", "all", "--config", "preset=smoke"], ws)
    missing = [str(p.relative_to(ws)) for p in expected_outputs(ws) if not p.exists()]
    assert not missing, f"not built: {missing}"

    again = run([str(BIN / "snakemake"), "--cores", "8", "all", "--config", "preset=smoke"], ws)
    assert "Nothing to be done" in again.stdout + again.stderr
    check_logs_and_benchmarks(ws)
    check_report(ws)

    # DVC records what Snakemake built, without recomputing anything (same preset, so the same commands)
    cfg = ws / "config/config.yaml"
    cfg.write_text(cfg.read_text().replace("preset: default", "preset: smoke"))
    run([str(BIN / "dvc"), "commit", "-f"], ws)
    assert "up to date" in run([str(BIN / "dvc"), "status"], ws).stdout
    assert "kpac-synth-defocus" in run([str(BIN / "dvc"), "metrics", "show"], ws).stdout

    # MLflow: one parent run for the invocation; each training phase is a run nested under it
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    exp = client.get_experiment_by_name("blur-papers")
    runs = client.search_runs([exp.experiment_id], max_results=500)
    parents = [r for r in runs if r.data.tags.get("pipeline.role") == "invocation"]
    assert len(parents) >= 1 and parents[-1].info.status == "FINISHED"
    first = min(parents, key=lambda r: r.info.start_time)
    trains = [r for r in runs if r.data.tags.get("pipeline.role") == "train"]
    assert len(trains) == len([p for p in expected_outputs(ws) if p.name == "final.pt"])
    assert all(r.data.tags.get("mlflow.parentRunId") == first.info.run_id for r in trains)
    assert all(r.data.tags["weights.perceptual.pretrained"] == "false" for r in trains
               if r.data.tags["phase.name"] == "mae_perceptual")
    p2 = json.loads((ws / "data/runs/kpac/synth-defocus/phase2/phase.json").read_text())
    p1 = json.loads((ws / "data/runs/kpac/synth-defocus/phase1/phase.json").read_text())
    assert p2["init"]["state_digest"] == p1["final_state_digest"]


def test_dvc_repro_runs_the_same_stages_with_the_preset_set_for_dvc(tmp_path):
    ws = copy_repo(tmp_path)
    # the documented way to choose a preset for DVC (it rewrites config/config.yaml in the workspace)
    run([str(BIN / "dvc"), "exp", "run", "-S", "config/config.yaml:preset=smoke"], ws)
    missing = [str(p.relative_to(ws)) for p in expected_outputs(ws) if not p.exists()]
    assert not missing, f"not built: {missing}"
    status = run([str(BIN / "dvc"), "status"], ws)
    assert "up to date" in status.stdout
    assert "preset: smoke" in (ws / "config/config.yaml").read_text()
    metrics = run([str(BIN / "dvc"), "metrics", "show"], ws).stdout
    assert "data/metrics/kpac-synth-defocus.json" in metrics and "model.psnr" in metrics
    run([str(BIN / "dvc"), "plots", "show", "-o", "plots-html"], ws)
    assert (ws / "plots-html" / "index.html").stat().st_size > 1000
