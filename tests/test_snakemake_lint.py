"""The Snakemake workflow as the Snakemake workflow catalog checks it (`snakemake --lint`), and what a failing
job leaves behind: its error in its log: file, whose path Snakemake prints."""
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.workspace import copy_repo

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def snakemake(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(BIN / "snakemake"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_lint_is_clean():
    r = snakemake(["--lint"], ROOT)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert not re.search(r"^Lints for ", out, re.M), out
    assert "Congratulations, your workflow is in a good condition!" in out


def test_a_failing_job_leaves_its_error_in_its_log_and_snakemake_names_the_log(tmp_path):
    ws = copy_repo(tmp_path)
    (ws / "data/raw/synth-defocus").mkdir(parents=True)  # a dataset folder without any image: index must fail
    r = snakemake(["data/manifests/synth-defocus.json", "--cores", "1", "--allowed-rules", "index"], ws)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    log = "logs/index/synth-defocus.log"
    assert f"log: {log}" in out, out  # Snakemake points at the log ...
    text = (ws / log).read_text()
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "synth-defocus" in errors[0], text  # ... which holds the one-line error
    assert not (ws / "data/manifests/synth-defocus.json").exists()
