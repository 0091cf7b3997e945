"""How many jobs Snakemake runs at once: each preset's `job_threads` (config/presets.yaml) on the compute
rules, and the one-GPU-job cap only where an NVIDIA GPU may be present."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline_src.config import load_presets, load_presets_file
from pipeline_src.errors import ConfigError
from pipeline_src.gpus import nvidia_gpu_maybe_visible
from tests.test_orchestrators import snakemake_jobs

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SIZED_RULES = {"synthesize", "patches", "train", "evaluate", "quantize"}


def planned_threads(preset: str) -> dict[str, set[int]]:
    """rule -> the thread counts of its jobs in a dry run of `all` (--cores 8, so that none is scaled down)."""
    threads: dict[str, set[int]] = {}
    for job in snakemake_jobs(ROOT, "--cores", "8", "--config", f"preset={preset}").values():
        threads.setdefault(job["rule"], set()).add(job["threads"])
    return threads


@pytest.mark.parametrize("preset", ["smoke", "default"])
def test_sized_rules_take_the_presets_job_threads(preset):
    want = load_presets()[preset]["job_threads"]
    planned = planned_threads(preset)
    assert SIZED_RULES <= planned.keys()
    for rule in SIZED_RULES:
        assert planned[rule] == {want}, (rule, planned[rule])
    assert planned["export_onnx"] == {1}  # a fixed single thread, whatever the preset


def test_a_job_threads_of_zero_is_refused_naming_the_field(tmp_path):
    presets = yaml.safe_load((ROOT / "config" / "presets.yaml").read_text())
    presets["smoke"]["job_threads"] = 0
    bad = tmp_path / "presets.yaml"
    bad.write_text(yaml.safe_dump(presets))
    with pytest.raises(ConfigError, match=r"presets.yaml.*smoke.*job_threads.*0"):
        load_presets_file(bad)


def test_gpu_cap_follows_what_the_machine_shows(tmp_path):
    proc = tmp_path / "gpus"
    none = lambda name: None  # noqa: E731  (no nvidia-smi on the PATH)
    assert not nvidia_gpu_maybe_visible({}, proc, none)                       # no driver entry, no nvidia-smi
    proc.mkdir()
    assert not nvidia_gpu_maybe_visible({}, proc, none)                       # the driver lists no GPU
    (proc / "0000:01:00.0").mkdir()
    assert nvidia_gpu_maybe_visible({}, proc, none)
    assert nvidia_gpu_maybe_visible({"CUDA_VISIBLE_DEVICES": "0"}, proc, none)
    for hidden in ("", "-1", " "):
        assert not nvidia_gpu_maybe_visible({"CUDA_VISIBLE_DEVICES": hidden}, proc, none)
    assert nvidia_gpu_maybe_visible({}, tmp_path / "absent", lambda name: "/usr/bin/nvidia-smi")  # WSL2


def test_the_snakefile_parses_without_a_core_count():
    """`snakemake --report` and the SLURM executor give no --cores: nothing at parse time may ask for it."""
    r = subprocess.run([BIN / "snakemake", "--summary", "--config", "preset=smoke"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
