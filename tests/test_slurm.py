"""SLURM: the `slurm` extra keeps every pin; the profile (workflow/profiles/slurm) asks for partitions, GPUs and
memory from its settings; and a slice of the smoke DAG that holds every rule runs through a real one-node SLURM
cluster (Debian's slurm-wlm and munge, no accounting daemon) to "Nothing to be done", with its MLflow runs on a
real `mlflow server`.

The plugin comes from `pip install .[slurm]`, which `make test` (and so CI) installs."""
import os
import re
import subprocess
import sys
import time
import tomllib
from importlib.metadata import requires, version
from pathlib import Path

import pytest

from tests.slurm_cluster import (
    GENERATED,
    PARTITIONS,
    daemon_logs,
    left_by_a_killed_test,
    mlflow_server,
    one_node_cluster,
)
from tests.workspace import copy_repo, expected_outputs, keep_only

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROFILE = "workflow/profiles/slurm"
DATA_RULES = {"synthesize", "weights", "index", "patches", "evaluate", "report", "export_onnx", "quantize", "bundle"}


def project_pins(extra: str | None = None) -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["optional-dependencies"][extra] if extra else project["dependencies"]
    return {n.lower(): v for n, _, v in (r.partition("==") for r in reqs)}


def test_the_slurm_extra_is_installed_and_keeps_every_pin():
    from packaging.requirements import Requirement

    extra = project_pins("slurm")
    assert "snakemake-executor-plugin-slurm" in extra and all(extra.values()), extra
    assert {n: version(n) for n in extra} == extra  # installed as pinned (pip install .[slurm])
    pins = {**project_pins(), **project_pins("test"), **extra}
    for package in extra:
        for req in map(Requirement, requires(package) or []):
            if req.marker is not None and not req.marker.evaluate():
                continue
            name = req.name.lower()
            if name in pins:  # the extra must not move any pinned version
                assert req.specifier.contains(pins[name]), f"{package} requires {req}, pyproject pins {pins[name]}"
            assert req.specifier.contains(version(name), prereleases=True), f"{package}: {req}, got {version(name)}"


def dry_run_resources(settings: dict) -> dict[str, list[dict]]:
    """Resources of each job as the profile resolves them (a dry run: nothing is submitted)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **settings}
    r = subprocess.run([str(BIN / "snakemake"), "-n", "--forceall", "--workflow-profile", PROFILE, "all"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    jobs, rule = {}, None
    for line in r.stdout.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):", line):
            rule = m.group(1)
        elif rule and (m := re.match(r"^\s+resources: (.*)$", line)):
            jobs.setdefault(rule, []).append(dict(kv.split("=", 1) for kv in m.group(1).split(", ")))
    return jobs


def test_profile_without_gpu_gres_requests_no_gpu_and_sends_data_jobs_to_the_cpu_partition():
    jobs = dry_run_resources({"BLUR_SLURM_GPUS": "0", "BLUR_SLURM_CPU_PARTITION": "short",
                              "BLUR_SLURM_GPU_PARTITION": "long", "BLUR_SLURM_MEM_MB": "1500",
                              "BLUR_SLURM_GPU_MEM_MB": "2500"})
    assert DATA_RULES | {"train", "build_engine"} <= set(jobs)
    for rule, resources in jobs.items():
        for res in resources:
            assert res.get("gpu", "0") == "0", (rule, res)  # the plugin adds --gpus only for gpu > 0
            want = ("long", "2500") if rule == "train" else ("short", "1500")
            assert (res["slurm_partition"], res["mem_mb"]) == want, (rule, res)


def test_profile_with_gpus_asks_one_per_training_and_engine_build_only():
    jobs = dry_run_resources({k: "" for k in os.environ if k.startswith("BLUR_SLURM_")})  # the defaults
    for rule, resources in jobs.items():
        for res in resources:
            if rule in ("train", "build_engine"):
                assert (res["slurm_partition"], res["gpu"], res["mem_mb"]) == ("gpu", "1", "32000"), (rule, res)
            else:
                assert (res["slurm_partition"], res.get("gpu", "0"), res["mem_mb"]) == ("cpu", "0", "8000"), res


def test_a_link_left_by_a_killed_test_cluster_is_recognised_and_a_real_configuration_is_not(tmp_path):
    """The cluster links /etc/slurm/slurm.conf to its generated file; a killed run leaves that link behind."""
    conf, link = tmp_path / "cluster/slurm.conf", tmp_path / "slurm.conf"
    (conf.parent / "run").mkdir(parents=True)
    link.symlink_to(conf)
    assert left_by_a_killed_test(link)  # its folder's conf is gone
    conf.write_text(f"{GENERATED}: one node\nSlurmctldPidFile={conf.parent}/run/slurmctld.pid\n")
    assert left_by_a_killed_test(link)  # no slurmctld pid file
    (conf.parent / "run/slurmctld.pid").write_text(f"{os.getpid()}\n")
    assert not left_by_a_killed_test(link)  # its slurmctld runs: a live test cluster
    dead = subprocess.Popen(["true"])
    dead.wait()
    (conf.parent / "run/slurmctld.pid").write_text(f"{dead.pid}\n")
    assert left_by_a_killed_test(link)
    conf.write_text("ClusterName=site\n")
    assert not left_by_a_killed_test(link)  # somebody's own configuration
    link.unlink()
    link.write_text("ClusterName=site\n")
    assert not left_by_a_killed_test(link)  # a file, not our link


def squeue_records(env: dict) -> list[dict]:
    """Every job slurmctld still knows (MinJobAge=3600 keeps finished ones): id, run, partition, rule, state."""
    r = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i|%j|%P|%k|%T"], env=env, capture_output=True,
                       text=True, check=True)
    keys = ("id", "run", "partition", "comment", "state")
    return [dict(zip(keys, line.split("|"))) for line in r.stdout.splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a few minutes on an idle 2-core machine; the margin is for a busy one
def test_smoke_dag_through_a_one_node_slurm_cluster_to_nothing_to_be_done(tmp_path):
    ws = copy_repo(tmp_path / "ws")
    keep_only(ws, recipes={"kpac"}, export={"kpac-synth-defocus"})  # every rule; the whole DAG is the e2e test's
    with one_node_cluster(tmp_path / "cluster") as cluster_env, mlflow_server(tmp_path / "mlflow", BIN) as uri:
        # as a cluster user has it: the plugin's venv first on PATH, MLflow on a server, the cluster's settings
        env = {**cluster_env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "MLFLOW_TRACKING_URI": uri,
               "PIPELINE_TRACKING": "1", "OMP_NUM_THREADS": "1", "BLUR_SLURM_GPUS": "0",
               "BLUR_SLURM_MEM_MB": "1000", "BLUR_SLURM_GPU_MEM_MB": "2000"}
        cmd = [str(BIN / "snakemake"), "--workflow-profile", PROFILE, "all", "--config", "preset=smoke",
               "--slurm-init-seconds-before-status-checks", "2"]

        def run() -> subprocess.CompletedProcess:
            t0 = time.monotonic()
            r = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=1500)
            out = r.stdout + r.stderr
            assert r.returncode == 0, (f"{' '.join(cmd)} failed after {time.monotonic() - t0:.0f} s:\n"
                                       f"{out[-6000:]}\n{daemon_logs(tmp_path / 'cluster')}")
            return r

        first = run()
        assert f"workflow specific profile {PROFILE}" in first.stdout + first.stderr
        missing = [str(p.relative_to(ws)) for p in expected_outputs(ws) if not p.exists()]
        assert not missing, f"not built: {missing}"
        again = run()
        assert "Nothing to be done" in again.stdout + again.stderr

        # every job went through sbatch and completed, each rule in the partition the settings say
        jobs = squeue_records(env)
        runs = {j["run"] for j in jobs}
        assert len(runs) == 1, f"jobs from more than one snakemake run (the second one submitted some): {jobs}"
        by_rule: dict[str, set] = {}
        for j in jobs:
            assert j["state"] == "COMPLETED", j
            rule = re.match(r"rule_(\w+?)(?:_wildcards_|$)", j["comment"]).group(1)
            by_rule.setdefault(rule, set()).add(j["partition"])
        assert by_rule.pop("train") == {PARTITIONS[1]}
        assert set(by_rule) == DATA_RULES | {"build_engine"}
        assert all(p == {PARTITIONS[0]} for p in by_rule.values()), by_rule
        assert len(jobs) == sum(1 for f in (ws / "logs").rglob("*.log")), "one log: file per job"

        # the MLflow runs are on the server: one parent for the first invocation, every training nested in it
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("blur-papers")
        assert exp is not None, f"no experiment on {uri}"
        all_runs = client.search_runs([exp.experiment_id], max_results=1000)
        parents = [r for r in all_runs if r.data.tags.get("pipeline.role") == "invocation"]
        assert parents and all(p.info.status == "FINISHED" for p in parents), [p.info.status for p in parents]
        first_parent = min(parents, key=lambda r: r.info.start_time)
        trains = [r for r in all_runs if r.data.tags.get("pipeline.role") == "train"]
        n_train = sum(1 for p in expected_outputs(ws) if p.name == "final.pt")
        assert len(trains) == n_train  # one training run per phase, none from the second call
        assert all(r.info.status == "FINISHED" for r in trains)
        assert all(r.data.tags.get("mlflow.parentRunId") == first_parent.info.run_id for r in trains)
        assert not (ws / "mlflow.db").exists(), "a job wrote to a local SQLite store instead of the server"
