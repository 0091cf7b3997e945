"""The phase runner for real: CLI runs on a tiny synthetic set, kill-and-resume, DDP, MLflow under load."""
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from pipeline_src.fileio import sha256_file
from pipeline_src.model_io import load_model

from .conftest import ROOT, cli, write_recipe

NO_TRACKING = {"PIPELINE_TRACKING": "0"}


def train_args(data, recipe, out, phase=1, *extra):
    return ["train", "--recipe", recipe, "--phase", phase, "--dataset", "synth", "--manifest", data["manifest"],
            "--patches", data["patches"], "--out", out, "--preset", "smoke", "--seed", "0", *extra]


def test_kpac_two_phases_and_phase2_starts_from_phase1_weights(defocus_data, tmp_path):
    recipe = ROOT / "config/models/kpac.yaml"
    run = tmp_path / "runs"
    cli(*train_args(defocus_data, recipe, run / "phase1", 1), env=NO_TRACKING)
    cli(*train_args(defocus_data, recipe, run / "phase2", 2), env=NO_TRACKING)
    p1 = json.loads((run / "phase1/phase.json").read_text())
    p2 = json.loads((run / "phase2/phase.json").read_text())
    assert p1["init"]["mode"] == "scratch" and p2["init"]["mode"] == "previous"
    # phase 2's starting weights are phase 1's final weights, byte for byte
    assert p2["init"]["state_digest"] == p1["final_state_digest"]
    assert p2["init"]["sha256"] == sha256_file(run / "phase1/final.pt")
    assert p2["steps"] == 4 and p1["steps"] == 6  # smoke lengths from config/models/kpac.yaml
    model, record = load_model(run / "phase2/final.pt")
    assert record["phase"] == 2 and record["model"] == {"name": "kpac", "args": {"levels": 2}}
    assert set(p2["validation"]) >= {"val/psnr", "val/psnr_input", "val/psnr_gain"}


def test_phase2_without_phase1_weights_says_which_file_is_missing(defocus_data, tmp_path):
    r = cli(*train_args(defocus_data, ROOT / "config/models/kpac.yaml", tmp_path / "phase2", 2), env=NO_TRACKING,
            check=False)
    assert r.returncode != 0 and "phase1/final.pt" in r.stderr


def test_killed_run_resumes_and_ends_with_the_same_weights(defocus_data, tmp_path):
    recipe = write_recipe(tmp_path / "tiny.yaml", iterations=24, ckpt_every=4)
    cli(*train_args(defocus_data, recipe, tmp_path / "straight"), env=NO_TRACKING)

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "pipeline_src", *map(str, train_args(defocus_data, recipe, out))]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **NO_TRACKING}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill it after its second checkpoint, mid-run
        if (out / "last.pt").exists() and torch.load(out / "last.pt", weights_only=True)["step"] >= 8:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (out / "final.pt").exists()

    r = cli(*train_args(defocus_data, recipe, out), env=NO_TRACKING)
    assert "resuming" in r.stderr
    straight = json.loads((tmp_path / "straight/phase.json").read_text())
    resumed = json.loads((out / "phase.json").read_text())
    assert resumed["final_state_digest"] == straight["final_state_digest"]
    assert resumed["validation"] == straight["validation"]


def test_resume_refuses_a_checkpoint_from_another_configuration(defocus_data, tmp_path):
    out = tmp_path / "run"
    cli(*train_args(defocus_data, write_recipe(tmp_path / "a.yaml", iterations=4, ckpt_every=2), out),
        env=NO_TRACKING)
    (out / "final.pt").unlink()
    r = cli(*train_args(defocus_data, write_recipe(tmp_path / "a.yaml", iterations=6, ckpt_every=2), out),
            env=NO_TRACKING, check=False)
    assert r.returncode != 0 and "different configuration" in r.stderr and "--restart" in r.stderr


def test_ddp_with_two_cpu_processes_on_gloo(defocus_data, tmp_path):
    recipe = write_recipe(tmp_path / "tiny.yaml", iterations=4, ckpt_every=2)
    out = tmp_path / "ddp"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    r = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "pipeline_src",
                        *map(str, train_args(defocus_data, recipe, out))], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, **NO_TRACKING, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads((out / "phase.json").read_text())
    assert summary["steps"] == 4
    model, _ = load_model(out / "final.pt")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_eight_parallel_jobs_against_one_fresh_mlflow_store(defocus_data, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe = write_recipe(tmp_path / "tiny.yaml", iterations=3, ckpt_every=3)
    env = {"MLFLOW_TRACKING_URI": uri, "PIPELINE_TRACKING": "1", "OMP_NUM_THREADS": "1",
           "PIPELINE_MLFLOW_EXPERIMENT": "parallel-test"}

    def job(i):
        return cli(*train_args(defocus_data, recipe, tmp_path / f"job{i}", 1, "--seed", i), env=env, check=False)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(job, range(8)))
    assert [r.returncode for r in results] == [0] * 8, "\n".join(r.stderr[-2000:] for r in results if r.returncode)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("parallel-test")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 8 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        for key in ("train/loss", "train/l1", "lr", "samples_per_s"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert steps == [1, 2, 3], (key, steps)
        assert {"val/psnr", "val/psnr_input", "final/psnr"} <= set(run.data.metrics)
        assert run.data.tags["paper"] == "kpac" and run.data.tags["git.commit"]
        assert run.data.params["phase.loss.l1"] == "1.0"
        arts = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
        assert arts, "sample images were not logged"
