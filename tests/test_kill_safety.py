"""Kill safety: every stage killed with SIGKILL at each of its commit points (and synthesize mid-render), then
rerun, ends with exactly the outputs of an uninterrupted run; a killed stage never leaves a partial set of
outputs under their final names, its worker processes die with it, and the rerun removes what it left behind.

The kill points come from fileio's PIPELINE_KILL_AT=N: the main process SIGKILLs itself just before its N-th
commit (rename). Export and quantize have their own kill tests in tests/export/.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.train.conftest import write_recipe

# Each test runs the stage once per commit point, and again after each kill: make test, not make test-fast.
pytestmark = pytest.mark.repeated_runs

ROOT = Path(__file__).resolve().parents[1]
ENV = {"PIPELINE_TRACKING": "0", "OMP_NUM_THREADS": "1"}
MAX_KILLS = 12


def cli(*args, kill_at: int | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, **ENV}
    env.pop("PIPELINE_KILL_AT", None)
    if kill_at is not None:
        env["PIPELINE_KILL_AT"] = str(kill_at)
    r = subprocess.run([sys.executable, "-m", "pipeline_src", *map(str, args)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def contents(paths: list[Path], base: Path) -> dict[str, bytes]:
    """Every file under `paths`, keyed by its path relative to `base`, with `base` itself replaced in the bytes
    (records name their own paths). Temporary siblings (dot-names) are reported, never expected."""
    out = {}
    for p in paths:
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else []
        for f in files:
            out[str(f.relative_to(base))] = (_torch_content(f) if f.suffix == ".pt"
                                             else f.read_bytes().replace(str(base).encode(), b"BASE"))
    return out


def _torch_content(path: Path) -> bytes:
    """A model file's content: torch.save's zip carries a per-process serialization id, so its bytes differ
    between two processes saving the same record; the record itself must not."""
    import hashlib
    import json

    import torch

    record = torch.load(path, map_location="cpu", weights_only=True)
    h = hashlib.sha256()
    for key, tensor in sorted(record.pop("state_dict").items()):
        h.update(key.encode() + tensor.numpy().tobytes())
    return h.hexdigest().encode() + json.dumps(record, sort_keys=True, default=str).encode()


def leftovers(base: Path) -> list[str]:
    return sorted(str(p.relative_to(base)) for p in base.rglob(".*") if p.name.endswith((".tmp", ".partial"))
                  or ".old-" in p.name)


def kill_at_every_commit(make_args, outputs, base: Path, check_after_kill) -> int:
    """Kill the stage at commit 1, 2, ... in `base` until a run completes; returns how many kills happened."""
    for n in range(1, MAX_KILLS + 1):
        r = cli(*make_args(base), kill_at=n, check=False)
        if r.returncode == 0:
            return n - 1
        assert r.returncode == -signal.SIGKILL, r.stderr
        check_after_kill(base, n)
    raise AssertionError(f"still killed after {MAX_KILLS} commits")


def committed_in_order(paths: list[Path]):
    """After a kill, what exists under final names is a prefix of the commit order: the marker (last, the file a
    later stage reads) never exists without the files before it. (The old set was removed when the run began.)"""
    def check(base: Path, n: int):
        present = [p.exists() for p in paths]
        assert present == sorted(present, reverse=True), f"kill at commit {n} left {present} (commit order {paths})"
    return check


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    base = tmp_path_factory.mktemp("killdata")
    cli("synthesize", "defocus", "--preset", "smoke", "--seed", "0", "--workers", "1", "--out", base / "raw")
    cli("index", "synth", "--layout", "dpdd", "--root", base / "raw", "--out", base / "manifest.json")
    cli("patches", "--manifest", base / "manifest.json", "--out", base / "patches", "--preset", "smoke")
    return base


def test_synthesize_killed_mid_render_takes_its_workers_and_the_rerun_cleans_up(raw, tmp_path):
    import psutil

    out = tmp_path / "raw"
    cmd = [sys.executable, "-m", "pipeline_src", "synthesize", "defocus", "--preset", "smoke", "--seed", "0",
           "--workers", "2", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **ENV}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 300
    workers = []
    while time.time() < deadline and proc.poll() is None:  # kill it once the workers have written something
        partial = [p for p in tmp_path.glob(".raw.*.partial") if any(p.rglob("*.png"))]
        if partial:
            workers = psutil.Process(proc.pid).children(recursive=True)
            if workers:
                break
        time.sleep(0.05)
    assert proc.poll() is None and workers, "synthesize finished before it could be killed mid-render"
    proc.kill()
    proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"workers outlived their killed parent: {[p.pid for p in alive]}"
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")]

    cli(*cmd[3:])
    assert not leftovers(tmp_path), leftovers(tmp_path)
    assert contents([out], tmp_path) == contents([raw / "raw"], raw)  # byte-identical to the uninterrupted run


@pytest.mark.parametrize("stage", ["synthesize", "index", "patches"])
def test_data_stages_killed_at_each_commit_then_rerun_equal_an_uninterrupted_run(stage, raw, tmp_path):
    args = {
        # two workers: the images are committed in the workers, so the main process's commits are meta.json and
        # the folder (with one worker every image is a kill point); the bytes are the same whatever --workers is
        "synthesize": lambda b: ["synthesize", "defocus", "--preset", "smoke", "--seed", "0", "--workers", "2",
                                 "--out", b / "raw"],
        "index": lambda b: ["index", "synth", "--layout", "dpdd", "--root", raw / "raw", "--out",
                            b / "manifest.json"],
        "patches": lambda b: ["patches", "--manifest", raw / "manifest.json", "--out", b / "patches",
                              "--preset", "smoke"],
    }[stage]
    name = {"synthesize": "raw", "index": "manifest.json", "patches": "patches"}[stage]
    base = tmp_path / "killed"
    base.mkdir()
    kills = kill_at_every_commit(args, None, base, committed_in_order([base / name]))
    assert kills >= 1
    cli(*args(base))
    assert not leftovers(base), leftovers(base)
    expected = {k: v for k, v in contents([raw / name], raw).items()}
    got = contents([base / name], base)
    if stage != "synthesize":  # the manifest names its tree, meta.json its manifest: in `raw` for both runs
        got = {k: v.replace(str(raw).encode(), b"BASE") for k, v in got.items()}
    assert got == expected


def test_train_killed_at_each_commit_resumes_to_the_uninterrupted_run(raw, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", iterations=3, ckpt_every=1)

    def args(b):
        return ["train", "--recipe", recipe, "--phase", 1, "--dataset", "synth", "--manifest", raw / "manifest.json",
                "--patches", raw / "patches", "--out", b / "run", "--curves", b / "curves.csv",
                "--loss-curve", b / "loss.csv", "--preset", "smoke", "--seed", 0]

    straight = tmp_path / "straight"
    cli(*args(straight))
    base = tmp_path / "killed"
    outputs = [base / "loss.csv", base / "curves.csv", base / "run/phase.json", base / "run/final.pt"]
    kills = kill_at_every_commit(args, outputs, base, committed_in_order(outputs))
    assert kills >= 4  # each rerun resumes, so the kills reach the checkpoints, then the final set of four files
    cli(*args(base))
    assert not leftovers(base), leftovers(base)
    names = ["loss.csv", "curves.csv", "run/phase.json", "run/final.pt"]
    assert contents([base / n for n in names], base) == contents([straight / n for n in names], straight)


@pytest.fixture(scope="module")
def checkpoint(raw):
    recipe = write_recipe(raw / "r.yaml", iterations=2, ckpt_every=2)
    cli("train", "--recipe", recipe, "--phase", 1, "--dataset", "synth", "--manifest", raw / "manifest.json",
        "--patches", raw / "patches", "--out", raw / "run", "--preset", "smoke", "--seed", 0)
    return raw / "run" / "final.pt"


def test_evaluate_and_report_killed_at_each_commit_then_rerun_equal_an_uninterrupted_run(raw, checkpoint, tmp_path):
    def evaluate(b):
        return ["evaluate", "--checkpoint", checkpoint, "--manifest", raw / "manifest.json", "--baselines",
                "--out", b / "metrics/e.json", "--record", b / "metrics/e.record.json",
                "--per-image", b / "metrics/e.csv", "--images", b / "images/e", "--no-tracking"]

    def report(b):
        return ["report", "--metrics-dir", b / "metrics", "--out", b / "report"]

    straight = tmp_path / "straight"
    cli(*evaluate(straight))
    cli(*report(straight))
    base = tmp_path / "killed"
    files = [base / "metrics/e.record.json", base / "metrics/e.csv", base / "metrics/e.json"]
    assert kill_at_every_commit(evaluate, files, base, committed_in_order(files)) >= 4
    cli(*evaluate(base))
    assert kill_at_every_commit(report, [base / "report"], base, committed_in_order([base / "report"])) >= 1
    cli(*report(base))
    assert not leftovers(base), leftovers(base)
    names = ["metrics", "images", "report"]
    got, want = contents([base / n for n in names], base), contents([straight / n for n in names], straight)
    assert got.keys() == want.keys()
    differing = [k for k in got if got[k] != want[k] and not k.endswith(".png")]
    assert not differing, differing
