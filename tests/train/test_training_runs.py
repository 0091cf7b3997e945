"""The phase runner for real: CLI runs on a tiny synthetic set, kill-and-resume, DDP, MLflow under load."""
import json
import os
import shutil
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


@pytest.mark.repeated_runs
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
    # the training curves (DVC plots) of the resumed run are the uninterrupted run's, row for row
    curves = (out / "curves.csv").read_text()
    assert curves == (tmp_path / "straight/curves.csv").read_text()
    assert (out / "loss.csv").read_text() == (tmp_path / "straight/loss.csv").read_text()
    header, *rows = curves.splitlines()
    assert header.split(",")[:5] == ["step", "train_loss", "lr", "val_score", "val_psnr"] and len(rows) == 24 // 4
    assert [int(r.split(",")[0]) for r in rows] == [4, 8, 12, 16, 20, 24]
    assert all(r.split(",")[3] == r.split(",")[4] for r in rows)  # val_score is the PSNR for restoration
    assert len((out / "loss.csv").read_text().splitlines()) == 1 + 24  # log_every 1


def _digest(out):
    return json.loads((out / "phase.json").read_text())["final_state_digest"]


def _one_pixel_changed_copy(data, base):
    """The same tree with one pixel of one training target changed, indexed and cut into patches again."""
    import cv2

    raw = base / "raw"
    shutil.copytree(data["manifest"].parent / "raw", raw)
    target = sorted((raw / "train_c" / "target").glob("*.png"))[0]
    img = cv2.imread(str(target), cv2.IMREAD_UNCHANGED)
    img[5, 7, 1] = img[5, 7, 1] ^ 1
    cv2.imwrite(str(target), img)
    cli("index", "synth", "--layout", "dpdd", "--root", raw, "--out", base / "manifest.json")
    cli("patches", "--manifest", base / "manifest.json", "--out", base / "patches", "--preset", "smoke")
    return {"manifest": base / "manifest.json", "patches": base / "patches"}


def _killed_after_first_checkpoint(data, recipe, out, *extra):
    """A run killed just after its step-2 checkpoint (commit 1), before its outputs (commit 2): leaves last.pt."""
    r = cli(*train_args(data, recipe, out, 1, *extra), env={**NO_TRACKING, "PIPELINE_KILL_AT": "2"}, check=False)
    assert r.returncode == -signal.SIGKILL and (out / "last.pt").exists() and not (out / "final.pt").exists()


@pytest.mark.repeated_runs
def test_resume_only_on_identical_configuration_and_data_else_start_over_and_say_why(defocus_data, tmp_path):
    """The stale-resume fault: a last.pt of another seed, recipe value or data must never be continued (an
    orchestrator reran the phase because something changed); an identical rerun resumes bit-identically."""
    recipe = write_recipe(tmp_path / "a.yaml", iterations=4, ckpt_every=2)
    cli(*train_args(defocus_data, recipe, tmp_path / "straight"), env=NO_TRACKING)
    straight = _digest(tmp_path / "straight")
    assert not (tmp_path / "straight/last.pt").exists()  # a finished phase keeps no resume state

    out = tmp_path / "run"
    _killed_after_first_checkpoint(defocus_data, recipe, out)
    killed = shutil.copytree(out, tmp_path / "killed")  # the killed run's folder, put back before each rerun
    r = cli(*train_args(defocus_data, recipe, out), env=NO_TRACKING)
    assert "resuming" in r.stderr and "at step 2/4" in r.stderr and _digest(out) == straight

    def rerun(data, recipe_path, *extra):
        shutil.rmtree(out)
        shutil.copytree(killed, out)  # a last.pt of the original configuration, at the same path
        r = cli(*train_args(data, recipe_path, out, 1, *extra), env=NO_TRACKING)
        assert "resuming" not in r.stderr
        return r.stderr, _digest(out)

    # one recipe value
    changed = write_recipe(tmp_path / "b.yaml", iterations=4, ckpt_every=2, optimizer={"name": "adam", "lr": 2e-4})
    why, digest = rerun(defocus_data, changed)
    assert "starting phase 1 of b on synth over" in why and "phase_settings.optimizer.lr 0.0001 -> 0.0002" in why
    cli(*train_args(defocus_data, changed, tmp_path / "fresh-lr"), env=NO_TRACKING)
    assert digest == _digest(tmp_path / "fresh-lr") != straight  # exactly a fresh run: nothing of the old mixed in

    # one seed (the train command's last --seed wins, as argparse does)
    why, digest = rerun(defocus_data, recipe, "--seed", "1")
    assert "over:" in why and "seed 0 -> 1" in why and digest != straight

    # one pixel of the data: the manifest hashes content, so the identity changes
    pixel = _one_pixel_changed_copy(defocus_data, tmp_path / "pixel")
    assert sha256_file(pixel["manifest"]) != sha256_file(defocus_data["manifest"])
    why, digest = rerun(pixel, recipe)
    assert "over:" in why and "data.manifest_sha256" in why
    cli(*train_args(pixel, recipe, tmp_path / "fresh-pixel"), env=NO_TRACKING)
    assert digest == _digest(tmp_path / "fresh-pixel")

    # --restart forces a fresh start even on an identical configuration
    why, digest = rerun(defocus_data, recipe, "--restart")
    assert "over: --restart" in why and digest == straight


@pytest.mark.repeated_runs
def test_a_truncated_last_pt_is_set_aside_with_a_reason_and_the_phase_starts_over(defocus_data, tmp_path):
    recipe = write_recipe(tmp_path / "a.yaml", iterations=4, ckpt_every=2)
    out = tmp_path / "run"
    _killed_after_first_checkpoint(defocus_data, recipe, out)
    data = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(data[: len(data) // 2])
    r = cli(*train_args(defocus_data, recipe, out), env=NO_TRACKING)
    assert "over:" in r.stderr and "last.pt: unreadable training state" in r.stderr
    cli(*train_args(defocus_data, recipe, tmp_path / "fresh"), env=NO_TRACKING)
    assert _digest(out) == _digest(tmp_path / "fresh")


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


@pytest.mark.repeated_runs
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
