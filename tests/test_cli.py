"""`python -m pipeline_src --help` lists every stage, stays light, and each stage has its own --help."""
import subprocess
import sys

import pytest

from pipeline_src.cli import STAGES


def test_help_lists_every_stage_without_importing_heavy_libraries():
    code = ("import sys, contextlib, io\n"
            "from pipeline_src.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try: main(['--help'])\n"
            "    except SystemExit: pass\n"
            "print(out.getvalue())\n"
            "print('HEAVY', sorted(m for m in ('torch', 'mlflow', 'onnx', 'cv2', 'skimage') if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    for stage in STAGES:
        assert stage in r.stdout
    assert "HEAVY []" in r.stdout


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_has_its_own_help(stage):
    r = subprocess.run([sys.executable, "-m", "pipeline_src", stage, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "usage:" in r.stdout, r.stderr


def test_an_unknown_stage_is_refused_with_the_list():
    r = subprocess.run([sys.executable, "-m", "pipeline_src", "trian"], capture_output=True, text=True)
    assert r.returncode == 2 and "invalid choice" in r.stderr and "train" in r.stderr
