"""The smoke preset run by the real Snakemake (the whole DAG) and with the real DVC (a slice of the stage tables
that holds every stage: recorded, pushed, pulled, then rebuilt as an experiment), each in a fresh copy of the
repository (tests/workspace.py)."""
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_src.fileio import sha256_file
from tests.workspace import BIN, commit, copy_repo, env_for, expected_outputs, keep_only, tables

pytestmark = pytest.mark.slow


def run(cmd, ws, timeout=1700):  # generous: under `-n 2` another end-to-end test shares the CPU
    r = subprocess.run(cmd, cwd=ws, env=env_for(ws), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-4000:]}\n{r.stderr[-6000:]}"
    return r


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


SMOKE = ["--cores", "8", "all", "--config", "preset=smoke"]


@pytest.mark.timeout(2700)  # the whole smoke DAG, a no-op second call, a report
def test_snakemake_smoke_builds_the_dag_and_a_second_call_has_nothing_to_do(tmp_path):
    ws = copy_repo(tmp_path / "ws")
    run([str(BIN / "snakemake"), *SMOKE], ws)
    missing = [str(p.relative_to(ws)) for p in expected_outputs(ws) if not p.exists()]
    assert not missing, f"not built: {missing}"

    again = run([str(BIN / "snakemake"), *SMOKE], ws)
    assert "Nothing to be done" in again.stdout + again.stderr
    check_logs_and_benchmarks(ws)
    check_report(ws)
    check_metrics_are_few_numbers(ws)  # `dvc metrics show` reads the workspace: every paper's file is here

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


@pytest.mark.timeout(2700)  # a slice of the DAG built by Snakemake, then rebuilt by a DVC experiment
def test_dvc_records_snakemake_outputs_then_a_new_seed_experiment_retrains_without_hand_deletion(tmp_path):
    """The README's DVC flow on a slice of the stage tables that holds every stage: `dvc-commit` records what
    Snakemake built (only with the parameters that built it); push, clone, pull, and Snakemake has nothing to do;
    `dvc exp run -S` with another seed then rebuilds every stage, starting over (and saying why) where an
    interrupted run had left a last.pt of the first seed; `dvc exp show` compares the numbers."""
    ws = copy_repo(tmp_path / "ws")
    # KPAC: two chained phases and every stage after them (the metrics check runs in the smoke-DAG test above)
    keep_only(ws, recipes={"kpac"}, export={"kpac-synth-defocus"})
    config_before = (ws / "config/config.yaml").read_bytes()
    run([str(BIN / "snakemake"), *SMOKE], ws)

    refused = subprocess.run([sys.executable, "-m", "pipeline_src", "dvc-commit"], cwd=ws, env=env_for(ws),
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "built with preset=smoke, but preset: default" in refused.stderr
    set_params(ws, preset="smoke")
    run([sys.executable, "-m", "pipeline_src", "dvc-commit"], ws)
    assert "up to date" in run([str(BIN / "dvc"), "status"], ws).stdout
    run([str(BIN / "dvc"), "plots", "show", "-o", "plots-html"], ws)
    html = (ws / "plots-html" / "index.html").read_text()
    assert '"val_score"' in html and '"train_loss"' in html and '"score"' in html

    # on another machine: commit, push; clone, pull, touch -> Snakemake has nothing to do
    run([str(BIN / "dvc"), "remote", "add", "-d", "store", str(tmp_path / "remote")], ws)
    commit(ws, "run")
    run([str(BIN / "dvc"), "push"], ws)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(ws), str(clone)], tmp_path)
    run([str(BIN / "dvc"), "pull"], clone)
    run([str(BIN / "snakemake"), "--touch", "--cores", "1", "all"], clone)
    dry = run([str(BIN / "snakemake"), "-n", "--cores", "1", "all"], clone)
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-3000:]

    runs = ws / "data/runs"
    assert not list(runs.rglob("last.pt"))  # a finished phase keeps no resume state
    digests = {p: sha256_file(p) for p in runs.rglob("final.pt")}

    # the issue-9 fault: a phase interrupted after a checkpoint leaves a last.pt DVC knows nothing of, then the
    # user changes the seed; the rerun must start over (and say why), never continue the seed-0 state
    phase1 = runs / "kpac/synth-defocus/phase1"
    interrupted = subprocess.run(
        [sys.executable, "-m", "pipeline_src", "train", "--recipe", "config/models/kpac.yaml", "--phase", "1",
         "--dataset", "synth-defocus", "--manifest", "data/manifests/synth-defocus.json",
         "--patches", "data/patches/synth-defocus", "--out", str(phase1), "--preset", "smoke", "--seed", "0"],
        cwd=ws, env={**env_for(ws), "PIPELINE_TRACKING": "0", "PIPELINE_KILL_AT": "2"}, capture_output=True)
    assert interrupted.returncode == -signal.SIGKILL and (phase1 / "last.pt").exists()

    second = run([str(BIN / "dvc"), "exp", "run", "-S", "config/params.yaml:seed=1"], ws)
    said = second.stdout + second.stderr
    assert "starting phase 1 of kpac on synth-defocus over:" in said and "seed 0 -> 1" in said
    assert not list(runs.rglob("last.pt"))
    assert all(sha256_file(p) != digest for p, digest in digests.items()), "a phase kept its seed-0 weights"
    assert all(json.loads((p.parent / "phase.json").read_text())["seed"] == 1 for p in digests)
    assert "up to date" in run([str(BIN / "dvc"), "status"], ws).stdout
    assert (ws / "config/config.yaml").read_bytes() == config_before  # the stage tables keep their layout
    assert "seed: 1" in (ws / "config/params.yaml").read_text()

    shown = json.loads(run([str(BIN / "dvc"), "exp", "show", "--json"], ws).stdout)
    experiments = [e for commit in shown for e in ([commit] + [x for x in commit.get("experiments") or []])]
    numbers = []
    for exp in experiments:
        for rev in (exp.get("revs") or [exp]):
            data = (rev.get("data") or {})
            for file, entry in (data.get("metrics") or {}).items():
                numbers += [v for v in (entry.get("data") or {}).values() if isinstance(v, (int, float))]
    assert len(numbers) > 20, json.dumps(shown)[:2000]
