"""bench-train: the runner against a plain loop on a tiny synthetic set made by the real stages."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline_src.benchmarks.train_throughput import (
    BenchArgumentError,
    StepClock,
    benchmark_recipe,
    check_counts,
    events_in_window,
)
from pipeline_src.config import load_recipe

ROOT = Path(__file__).resolve().parents[1]
KPAC = ROOT / "config/models/kpac.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(*args):
    return subprocess.run([sys.executable, "-m", "pipeline_src", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, env=ENV)


def checked(*args):
    r = cli(*args)
    assert r.returncode == 0, f"pipeline_src {' '.join(map(str, args))} failed:\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("bench-train")
    checked("synthesize", "defocus", "--preset", "smoke", "--workers", "1", "--out", base / "raw")
    checked("index", "synth", "--layout", "dpdd", "--root", base / "raw", "--out", base / "manifest.json")
    checked("patches", "--manifest", base / "manifest.json", "--out", base / "patches", "--preset", "smoke")
    return base


def bench_args(data, out, *extra):
    return ["bench-train", "--recipe", KPAC, "--manifest", data / "manifest.json", "--patches", data / "patches",
            "--preset", "smoke", "--out", out, *extra]


def test_command_writes_the_figures_for_both_arms(data, tmp_path):
    out = tmp_path / "bench" / "train_throughput.json"
    r = checked(*bench_args(data, out, "--phase", 1, "--steps", 2, "--warmup", 1, "--repeats", 2,
                            "--batch-size", 3, "--crop", 24, "--threads", 1))
    res = json.loads(out.read_text())
    assert "runner/plain time per step" in r.stdout and str(out) in r.stdout
    assert (res["phase"], res["phase_name"], res["preset"]) == (1, "mae", "smoke")
    assert (res["batch_size"], res["crop"], res["steps"], res["warmup"], res["repeats"]) == (3, 24, 2, 1, 2)
    assert res["device"] == "cpu" and res["torch_version"] == torch.__version__ and res["threads"] == 1
    for arm in ("runner_bare", "plain", "runner_configured"):
        a = res["results"][arm]
        assert len(a["window_s_per_repeat"]) == 2 and all(s > 0 for s in a["window_s_per_repeat"])
        assert a["steps_per_s"] > 0 and a["samples_per_s"] == pytest.approx(3 * a["steps_per_s"])
        # the window excludes setup and the runner's end-of-phase work, so it is shorter than the whole call
        assert all(w < t for w, t in zip(a["window_s_per_repeat"], a["wall_s_per_repeat"]))
    for key, arm in (("runner_bare_over_plain", "runner_bare"), ("runner_configured_over_plain", "runner_configured")):
        o = res["overhead"][key]
        want = [a / p for a, p in zip(res["results"][arm]["window_s_per_repeat"],
                                      res["results"]["plain"]["window_s_per_repeat"])]
        assert o["per_repeat"] == pytest.approx(want) and o["min"] <= o["median"] <= o["max"] and o["min"] > 0
    # smoke phase 1: log every 1, validate every 3, checkpoint every 2; the window holds after-step work of steps 1-2
    settings = res["runner_settings"]
    assert settings["runner_configured"] == {"log_every": 1, "val_every": 3, "ckpt_every": 2, "image_every": 10**9}
    assert settings["events_in_window"]["runner_configured"] == {"log_lines": 2, "validations": 0,
                                                                 "checkpoints": 1, "sample_images": 0}
    assert set(settings["events_in_window"]["runner_bare"].values()) == {0}
    assert os.listdir(out.parent) == [out.name]   # the runner's temporary run folders are gone


@pytest.mark.parametrize("extra, message", [
    (["--phase", 1, "--steps", 0], "--steps 0: expected an integer >= 1"),
    (["--phase", 1, "--warmup", 0], "--warmup 0: expected an integer >= 1"),
    (["--phase", 1, "--repeats", -1], "--repeats -1: expected an integer >= 1"),
    (["--phase", 1, "--batch-size", 0], "--batch-size 0: expected an integer >= 1"),
    (["--phase", 3], "--phase 3: " + str(KPAC) + " has phases 1..2"),
    (["--phase", 0], "has phases 1..2"),
    (["--phase", 1, "--preset", "huge"], "unknown preset 'huge'"),
])
def test_bad_arguments_are_refused_before_any_work(data, tmp_path, extra, message):
    out = tmp_path / "bench.json"
    r = cli(*bench_args(data, out, *extra))
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_asked_for_without_cuda_is_refused(data, tmp_path):
    r = cli(*bench_args(data, tmp_path / "bench.json", "--phase", 1, "--device", "cuda"))
    assert r.returncode == 2 and "--device cuda" in r.stderr and "no CUDA device" in r.stderr


def test_check_counts_accepts_the_smallest_valid_values_and_names_a_bad_one():
    check_counts(1, 1, 1, None, None, None)
    with pytest.raises(BenchArgumentError, match=r"--crop -4: expected an integer >= 1"):
        check_counts(1, 1, 1, 2, -4, None)


def test_benchmark_recipe_sets_length_scratch_start_and_moves_intervals_beyond_the_run():
    recipe = load_recipe(KPAC, "smoke")
    bare = benchmark_recipe(recipe, 2, total_steps=7, batch_size=5, crop=16, bare=True)
    p = bare["phases"][1]
    assert p["length"] == {"iterations": 7} and p["init"] == "scratch" and (p["batch_size"], p["crop"]) == (5, 16)
    assert all(p[k] == 8 for k in ("log_every", "val_every", "ckpt_every", "image_every"))
    configured = benchmark_recipe(recipe, 2, total_steps=7)["phases"][1]
    assert (configured["val_every"], configured["ckpt_every"], configured["crop"]) == (2, 2, 32)
    assert recipe["phases"][1]["init"] == "previous" and recipe["phases"][1]["length"] == {"iterations": 4}


@pytest.mark.parametrize("warmup, steps, every, want", [
    (5, 200, 200, 1),      # steps 5..204 hold step 200
    (5, 195, 200, 0),      # steps 5..199: the checkpoint after step 200 falls outside
    (200, 1, 200, 1),      # the window opens at the end of step 200, so its after-step work counts
    (1, 50, 1, 50),
    (10, 400, 50, 8),
])
def test_events_in_window_counts_the_after_step_work_of_steps_in_the_window(warmup, steps, every, want):
    assert events_in_window({"ckpt_every": every}, warmup, steps) == {"checkpoints": want}


def test_step_clock_times_the_steps_between_its_marks_and_says_when_too_few_ran():
    torch.set_num_threads(1)
    w = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([w], lr=0.1)
    with StepClock(2, 4, torch.device("cpu")) as clock:
        for _ in range(5):
            w.sum().backward()
            opt.step()
    assert clock.count == 5 and set(clock.marks) == {2, 4} and clock.seconds("toy") > 0
    opt.step()   # outside the context: the hook is removed
    assert clock.count == 5
    with StepClock(2, 4, torch.device("cpu")) as short:
        opt.step()
        opt.step()
    with pytest.raises(RuntimeError, match=r"toy: the optimizer stepped 2 times, the window needs steps 2\.\.4"):
        short.seconds("toy")
