"""A tiny synthetic defocus set, indexed and cut into patches once for all training tests."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def cli(*args, env=None, check=True, **kw):
    """Run `python -m pipeline_src ...` from the repository root, as the orchestrators do."""
    r = subprocess.run([sys.executable, "-m", "pipeline_src", *map(str, args)], cwd=ROOT, capture_output=True,
                       text=True, env={**os.environ, **(env or {})}, **kw)
    if check and r.returncode != 0:
        command = " ".join(map(str, args))
        raise AssertionError(f"pipeline_src {command} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture(scope="session")
def defocus_data(tmp_path_factory):
    base = tmp_path_factory.mktemp("defocus")
    cli("synthesize", "defocus", "--preset", "smoke", "--seed", "0", "--out", base / "raw")
    cli("index", "synth", "--layout", "dpdd", "--root", base / "raw", "--out", base / "manifest.json")
    cli("patches", "--manifest", base / "manifest.json", "--out", base / "patches", "--preset", "smoke")
    return {"manifest": base / "manifest.json", "patches": base / "patches"}


def write_recipe(path: Path, iterations: int, ckpt_every: int, phases: int = 1, **phase_overrides) -> Path:
    """A small KPAC recipe (2-level, 32-px crops of whole images, as KPAC's paper samples them) for tests that
    need more steps than the smoke preset; `sampling="windows"` etc. through phase_overrides."""
    phase = {"name": "mae", "loss": {"l1": 1.0}, "optimizer": {"name": "adam", "lr": 1e-4, "betas": [0.9, 0.99]},
             "schedule": {"name": "constant"}, "batch_size": 2, "sampling": "whole_images", "crop": 32,
             "length": {"iterations": iterations},
             "init": "scratch", "val_every": ckpt_every, "ckpt_every": ckpt_every, "log_every": 1,
             "val_samples": 2, "num_workers": 0, **phase_overrides}
    recipe = {"paper": "kpac", "model": {"name": "kpac", "args": {"levels": 2}}, "protocol": "dpdd_single_8bit",
              "phases": [phase] + [{**phase, "name": f"p{i + 2}", "init": "previous"} for i in range(phases - 1)]}
    path.write_text(yaml.safe_dump(recipe))
    return path
