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


def tables(ws: Path) -> dict:
    import yaml

    return yaml.safe_load((ws / "config/config.yaml").read_text())


def expected_outputs(ws: Path) -> list[Path]:
    cfg = tables(ws)
    out = [ws / "data/weights/status.json"]
    for d in cfg["datasets"]:
        out += [ws / f"data/manifests/{d}.json", ws / f"data/patches/{d}/meta.json"]
    for j in cfg["train"].values():
        out.append(ws / f"data/runs/{j['recipe']}/{j['dataset']}/phase{j['phase']}/final.pt")
        out.append(ws / f"data/metrics/train/{j['recipe']}-{j['dataset']}-phase{j['phase']}.csv")
    for name in cfg["evaluate"]:
        out += [ws / f"data/metrics/{name}.json", ws / f"data/metrics/{name}.record.json"]
    if cfg["evaluate"]:
        out.append(ws / "data/report/results.md")
    for name in cfg["export"]:
        out += [ws / f"data/export/{name}/model.onnx", ws / f"data/bundles/{name}/manifest.json",
                ws / f"data/metrics/export/{name}.json"]
    return out


def check_logs_and_benchmarks(ws: Path) -> None:
    """A log per job under logs/<rule>/, a benchmark per training, evaluation and export job."""
    cfg = tables(ws)
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
    cfg = tables(ws)
    run([str(BIN / "snakemake"), "--report", "report.html", "--config", "preset=smoke"], ws)
    html = (ws / "report.html").read_text()
    for paper in ("KPAC", "ATTSF", "ADNet", "BiANet", "MultiANet", "Results"):
        assert f'"{paper}"' in html, f"no report category {paper}"
    for name in cfg["evaluate"]:
        assert f"{name}_bars.png" in html and f"{name}_per_image.png" in html and f"{name}.csv" in html, name
    panels = [p for name in cfg["evaluate"] for p in (ws / f"data/evaluate/{name}").glob("*.png")]
    assert panels and all(f'"{p.relative_to(ws)}"' in html for p in panels)
    # plots and panels are embedded in the file, not linked
    assert html.count("data:image/png;") >= 2 * len(cfg["evaluate"]) + len(panels)
    # the results caption renders rows.csv as a table (docutils csv-table), every row without an RST error
    assert '"data/report/rows.csv"' in html and '<th class=\\"head\\">psnr</th>' in html
    rows = (ws / "data/report/rows.csv").read_text().splitlines()
    assert html.count("<tr>") >= len(rows)
    assert "csv-table" not in html and "ERROR/" not in html and "problematic" not in html


def check_metrics_are_few_numbers(ws: Path) -> dict:
    """`dvc metrics show`: per file a short, flat set of numbers (the descriptive record lives beside it)."""
    shown = json.loads(run([str(BIN / "dvc"), "metrics", "show", "--json"], ws).stdout)
    files = next(iter(shown.values()))["data"]
    assert files, shown
    for path, entry in files.items():
        data = entry["data"]
        assert 3 <= len(data) <= 20 and all(isinstance(v, (int, float)) for v in data.values()), (path, data)
    assert "psnr" in files["data/metrics/kpac-synth-defocus.json"]["data"]
    assert "max_f" in files["data/metrics/multianet-synth-detection.json"]["data"]
    assert "sharpness.max_f" in files["data/metrics/multianet-synth-detection.json"]["data"]
    return files


def set_params(ws: Path, **values) -> None:
    import re

    params = ws / "config/params.yaml"
    text = params.read_text()
    for key, value in values.items():
        text = re.sub(rf"^{key}: \S+", f"{key}: {value}", text, flags=re.M)
    params.write_text(text)


def test_snakemake_smoke_builds_the_dag_and_a_second_call_has_nothing_to_do(tmp_path):
    ws = copy_repo(tmp_path / "ws")
    run([str(BIN / "snakemake"), "--cores", "8", "all", "--config", "preset=smoke"], ws)
    missing = [str(p.relative_to(ws)) for p in expected_outputs(ws) if not p.exists()]
    assert not missing, f"not built: {missing}"

    again = run([str(BIN / "snakemake"), "--cores", "8", "all", "--config", "preset=smoke"], ws)
    assert "Nothing to be done" in again.stdout + again.stderr
    check_logs_and_benchmarks(ws)
    check_report(ws)

    # DVC records what Snakemake built without recomputing anything, only with the parameters that built it
    refused = subprocess.run([sys.executable, "-m", "pipeline_src", "dvc-commit"], cwd=ws, env=env_for(ws),
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "built with preset=smoke, but preset: default" in refused.stderr
    set_params(ws, preset="smoke")
    run([sys.executable, "-m", "pipeline_src", "dvc-commit"], ws)
    assert "up to date" in run([str(BIN / "dvc"), "status"], ws).stdout
    check_metrics_are_few_numbers(ws)

    # the README's flow on another machine: commit, push; clone, pull, touch -> Snakemake has nothing to do
    remote = tmp_path / "remote"
    run([str(BIN / "dvc"), "remote", "add", "-d", "store", str(remote)], ws)
    for cmd in (["git", "add", "-A"], ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "run"]):
        run(cmd, ws)
    run([str(BIN / "dvc"), "push"], ws)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(ws), str(clone)], tmp_path)
    run([str(BIN / "dvc"), "pull"], clone)
    run([str(BIN / "snakemake"), "--touch", "--cores", "1", "all"], clone)
    dry = run([str(BIN / "snakemake"), "-n", "--cores", "1", "all"], clone)
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-3000:]

    # MLflow: one parent run for the invocation; each training phase is a run nested under it
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    exp = client.get_experiment_by_name("blur-papers")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([exp.experiment_id], max_results=500)
    parents = [r for r in runs if r.data.tags.get("pipeline.role") == "invocation"]
    assert len(parents) >= 1 and parents[-1].info.status == "FINISHED"
    first = min(parents, key=lambda r: r.info.start_time)
    trains = [r for r in runs if r.data.tags.get("pipeline.role") == "train"]
    assert len(trains) == len([p for p in expected_outputs(ws) if p.name == "final.pt"])
    assert all(r.data.tags.get("mlflow.parentRunId") == first.info.run_id for r in trains)
    assert all(r.data.tags["weights.perceptual.pretrained"] == "false" for r in trains
               if r.data.tags["phase.name"] == "mae_perceptual")
    detection = [r for r in trains if r.data.tags["recipe"] == "multianet"]
    assert detection and all("val/max_f" in r.data.metrics and "val/psnr" not in r.data.metrics for r in detection)
    # every exported model is a registered model with one version per bundle
    registered = {m.name for m in client.search_registered_models()}
    assert registered == set(tables(ws)["export"])
    p2 = json.loads((ws / "data/runs/kpac/synth-defocus/phase2/phase.json").read_text())
    p1 = json.loads((ws / "data/runs/kpac/synth-defocus/phase1/phase.json").read_text())
    assert p2["init"]["state_digest"] == p1["final_state_digest"]


def test_dvc_experiments_compare_numbers_and_a_new_seed_retrains_without_hand_deletion(tmp_path):
    """`dvc exp run -S` on the smoke preset, then on another seed: the second run retrains every phase although the
    first left its last.pt (an orchestrator reran the phase because the seed changed: it starts over, says why)."""
    ws = copy_repo(tmp_path)
    config_before = (ws / "config/config.yaml").read_bytes()
    run([str(BIN / "dvc"), "exp", "run", "-S", "config/params.yaml:preset=smoke"], ws)
    missing = [str(p.relative_to(ws)) for p in expected_outputs(ws) if not p.exists()]
    assert not missing, f"not built: {missing}"
    assert "up to date" in run([str(BIN / "dvc"), "status"], ws).stdout
    assert (ws / "config/config.yaml").read_bytes() == config_before  # the stage tables keep their layout
    assert "preset: smoke" in (ws / "config/params.yaml").read_text()
    check_metrics_are_few_numbers(ws)
    run([str(BIN / "dvc"), "plots", "show", "-o", "plots-html"], ws)
    html = (ws / "plots-html" / "index.html").read_text()
    assert '"val_score"' in html and '"train_loss"' in html and '"score"' in html

    second = run([str(BIN / "dvc"), "exp", "run", "-S", "config/params.yaml:seed=1"], ws)
    assert "seed 0 -> 1" in second.stdout + second.stderr
    shown = json.loads(run([str(BIN / "dvc"), "exp", "show", "--json"], ws).stdout)
    experiments = [e for commit in shown for e in ([commit] + [x for x in commit.get("experiments") or []])]
    numbers = []
    for exp in experiments:
        for rev in (exp.get("revs") or [exp]):
            data = (rev.get("data") or {})
            for file, entry in (data.get("metrics") or {}).items():
                numbers += [v for v in (entry.get("data") or {}).values() if isinstance(v, (int, float))]
    assert len(numbers) > 20, json.dumps(shown)[:2000]
