"""A fresh copy of the repository to run the real orchestrators in, and what a run there must build.

`copy_repo` copies tracked and untracked-but-not-ignored files, as a clone plus local edits would hold.
`keep_only` trims the stage tables of config/config.yaml, as a user does to run part of the pipeline: the tests
that must run the DAG more than once (DVC experiments, SLURM) take a slice that still holds every rule."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def copy_repo(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    commit(dest, "copy")
    return dest


def commit(ws: Path, message: str) -> None:
    for cmd in (["git", "add", "-A"], ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", message]):
        subprocess.run(cmd, cwd=ws, check=True)


def env_for(ws: Path) -> dict:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "MLFLOW_TRACKING_URI": f"sqlite:///{ws / 'mlflow.db'}", "PIPELINE_TRACKING": "1",
            "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1"}


def tables(ws: Path) -> dict:
    return yaml.safe_load((ws / "config/config.yaml").read_text())


def keep_only(ws: Path, recipes: set[str], export: set[str]) -> None:
    """Keep the stages of `recipes` (their datasets and synthetic sources with them) and the exports in `export`,
    then commit, so that the copy is a clean checkout of the trimmed pipeline."""
    cfg = tables(ws)
    cfg["train"] = {k: v for k, v in cfg["train"].items() if v["recipe"] in recipes}
    cfg["evaluate"] = {k: v for k, v in cfg["evaluate"].items() if v["recipe"] in recipes}
    cfg["export"] = {k: v for k, v in cfg["export"].items() if k in export}
    assert len(cfg["export"]) == len(export) and {v["recipe"] for v in cfg["train"].values()} == recipes
    used = {v["dataset"] for v in cfg["train"].values()}
    cfg["datasets"] = {k: v for k, v in cfg["datasets"].items() if k in used}
    cfg["synthesize"] = {k: v for k, v in cfg["synthesize"].items() if k in used}
    (ws / "config/config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    commit(ws, "slice")


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
