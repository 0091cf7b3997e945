"""Snakemake and DVC describe the same DAG: the same stages, each running the same command on the same
inputs and outputs. Nothing keeps the two in step but this test."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def snakemake_jobs(root: Path = ROOT, *extra: str) -> dict[str, dict]:
    r = subprocess.run([BIN / "snakemake", "-n", "-p", "--forceall", "--cores", "1", "all", *extra], cwd=root,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    jobs, cur = {}, None
    for line in r.stdout.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):", line):
            cur = {"rule": m.group(1), "input": set(), "output": set(), "threads": 1}
        elif cur is not None and (m := re.match(r"^\s+threads: (\d+)$", line)):  # printed only above 1
            cur["threads"] = int(m.group(1))
        elif cur is not None and (m := re.match(r"^\s+(input|output): (.*)$", line)):
            cur[m.group(1)] = set(m.group(2).split(", "))
        elif cur is not None and (m := re.match(r"^\s+log: (.*)$", line)):
            cur["log"] = m.group(1)
        elif cur is not None and line.startswith("Shell command: "):
            if cur["rule"] != "all":  # the target rule runs nothing
                jobs[stage_command(line[len("Shell command: "):].strip(), cur)] = cur
            cur = None
    return jobs


def stage_command(shell: str, job: dict) -> str:
    """The stage's command as DVC runs it: Snakemake's rule adds only `> <log> 2>&1` (its log: file)."""
    redirect = f" > {job.get('log')} 2>&1"
    assert job.get("log") and shell.endswith(redirect), f"rule {job['rule']} does not log to its log: file: {shell}"
    return shell[: -len(redirect)]


def dvc_stages(root: Path = ROOT) -> dict[str, dict]:
    from dvc.repo import Repo

    stages = {}
    with Repo(str(root)) as repo:
        for st in repo.index.stages:
            # the params files are DVC's params, not data inputs (Snakemake passes their values on the command line)
            deps = {str(d.def_path) for d in st.deps} - {"config/config.yaml", "config/params.yaml"}
            stages[" ".join(st.cmd.split())] = {"stage": st.name.split("@")[0], "input": deps,
                                                "output": {str(o.def_path) for o in st.outs}}
    return stages


@pytest.fixture(scope="module")
def graphs():
    return snakemake_jobs(), dvc_stages()


def test_same_commands(graphs):
    smk, dvc = graphs
    assert set(smk) == set(dvc), (f"only in Snakemake: {sorted(set(smk) - set(dvc))}\n"
                                  f"only in DVC: {sorted(set(dvc) - set(smk))}")


def covered(inputs: set[str], deps: set[str]) -> set[str]:
    """Snakemake lists files where DVC may name their folder (the report reads every metrics file in
    data/metrics, a set DVC cannot enumerate): map each file onto the DVC dep that holds it."""
    return {next((d for d in deps if i.startswith(d.rstrip("/") + "/")), i) for i in inputs}


def test_same_stage_families_inputs_and_outputs(graphs):
    same_jobs(*graphs)


def same_jobs(smk: dict, dvc: dict) -> None:
    assert set(smk) == set(dvc), (f"only in Snakemake: {sorted(set(smk) - set(dvc))}\n"
                                  f"only in DVC: {sorted(set(dvc) - set(smk))}")
    for cmd, job in smk.items():
        stage = dvc[cmd]
        assert job["rule"] == stage["stage"], cmd
        assert job["output"] == stage["output"], cmd
        assert covered(job["input"], stage["input"]) == stage["input"], cmd


def test_every_job_logs_under_logs_rule(graphs):
    smk, _ = graphs
    for cmd, job in smk.items():
        assert job["log"].startswith(f"logs/{job['rule']}"), (job["rule"], job["log"])
    assert len({j["log"] for j in smk.values()}) == len(smk)  # one log per job


def test_every_configured_job_is_in_the_graph(graphs):
    import yaml

    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    smk, _ = graphs
    outputs = set().union(*(j["output"] for j in smk.values()))
    for job in cfg["train"].values():
        assert f"data/runs/{job['recipe']}/{job['dataset']}/phase{job['phase']}/final.pt" in outputs
    for name in cfg["datasets"]:
        assert f"data/manifests/{name}.json" in outputs and f"data/patches/{name}" in outputs
