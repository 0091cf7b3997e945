"""export-onnx and quantize killed (SIGKILL) at each of their commit points (fileio's PIPELINE_KILL_AT=N kills the
main process just before its N-th rename): the file a later stage reads never exists without the rest of its
set, whatever is left is a prefix of the commit order, and rerunning the same command gives the same files as
a run that was never interrupted (byte for byte: both stages are deterministic on one machine)."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.export.conftest import EXPORT_CONFIG, OP_TABLE, REPO

# Each test runs the stage once per commit point, and again after each kill: make test, not make test-fast.
pytestmark = pytest.mark.repeated_runs

# The stage in a fresh interpreter, with the tests' tiny models registered (importing conftest registers them).
RUN_STAGE = "import sys; import tests.export.conftest; from pipeline_src.cli import main; sys.exit(main(sys.argv[1:]))"
EXPORT_SET = ["parity.json", "ops.json", "model.onnx"]             # commit order; the marker last
QUANTIZE_SET = ["quality.json", "model_int8.onnx", "model_fp16.onnx"]


def _stage(args: list[str], kill_at: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PIPELINE_TRACKING": "0", "OMP_NUM_THREADS": "1"}
    env.pop("PIPELINE_KILL_AT", None)
    if kill_at is not None:
        env["PIPELINE_KILL_AT"] = str(kill_at)
    return subprocess.run([sys.executable, "-c", RUN_STAGE, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def _contents(folder: Path, names: list[str]) -> dict[str, bytes]:
    return {n: (folder / n).read_bytes() for n in names if (folder / n).exists()}


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _kill_each_commit_point(args_for, commit_order: list[str], tmp_path: Path) -> None:
    reference = tmp_path / "uninterrupted"
    done = _stage(args_for(reference), kill_at=len(commit_order) + 1)  # one past the last commit: no kill
    assert done.returncode == 0, done.stderr
    expected = _contents(reference, commit_order)
    assert set(expected) == set(commit_order)
    for n in range(1, len(commit_order) + 1):
        out = tmp_path / f"killed-at-{n}"
        killed = _stage(args_for(out), kill_at=n)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        left = _contents(out, commit_order)
        assert commit_order[-1] not in left  # the marker never appears without the rest of its set
        assert list(left) == commit_order[:n - 1]  # committed files are a prefix of the order ...
        assert all(left[name] == expected[name] for name in left)  # ... and complete, not half-written
        rerun = _stage(args_for(out))
        assert rerun.returncode == 0, rerun.stderr
        assert _contents(out, commit_order) == expected, f"rerun after a kill at commit {n} differs"
        assert _hidden(out) == []  # the killed run's temporaries were swept away by the rerun


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "export.yaml"
    path.write_text(EXPORT_CONFIG.read_text().replace("config/tensorrt_onnx_ops.yaml", str(OP_TABLE)))
    return path


def test_export_onnx_killed_at_each_commit_leaves_no_partial_set_and_reruns_identically(tiny_setup, config_file,
                                                                                        tmp_path):
    def args_for(out):
        return ["export-onnx", "--checkpoint", str(tiny_setup["checkpoint"]), "--out", str(out), "--config",
                str(config_file), "--manifest", str(tiny_setup["manifest"]), "--sizes", "32x32", "44x36",
                "--no-tracking"]

    _kill_each_commit_point(args_for, EXPORT_SET, tmp_path)


def test_quantize_killed_at_each_commit_leaves_no_partial_set_and_reruns_identically(exported, tiny_setup,
                                                                                     config_file, tmp_path):
    def args_for(out):
        return ["quantize", "--onnx", str(exported / "model.onnx"), "--manifest", str(tiny_setup["manifest"]),
                "--patches", str(tiny_setup["patches"]), "--out", str(out), "--config", str(config_file),
                "--calibration-patches", "8", "--no-tracking"]

    _kill_each_commit_point(args_for, QUANTIZE_SET, tmp_path)
