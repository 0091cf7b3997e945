"""The stage processes re-execute themselves once with glibc malloc tunables (pipeline_src/malloc_tuning.py), and
`bench-malloc` measures a command both ways."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline_src.malloc_tuning import ENV, TUNABLES, wanted

linux_glibc = pytest.mark.skipif(not wanted({}), reason="the tunables apply to Linux with glibc only")


def env_without_tunables(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    return {**env, **extra}


def test_wanted_only_on_linux_glibc_and_never_over_a_users_setting():
    assert wanted({}, "Linux", "glibc")
    assert not wanted({ENV: ""}, "Linux", "glibc")                        # `GLIBC_TUNABLES=` turns it off
    assert not wanted({ENV: "glibc.malloc.arena_max=2"}, "Linux", "glibc")  # the user's own, left as it is
    assert not wanted({}, "Linux", "")                                    # musl (Alpine): no glibc tunables
    assert not wanted({}, "Darwin", "")


@linux_glibc
def test_reexec_keeps_the_pid_and_the_command_and_happens_once():
    code = ("import os, sys; from pipeline_src.malloc_tuning import reexec_with_tunables; "
            "print(os.getpid(), os.environ.get('GLIBC_TUNABLES'), sys.argv[1:], flush=True); reexec_with_tunables()")
    out = subprocess.run([sys.executable, "-c", code, "a", "b"], env=env_without_tunables(), capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert len(out) == 2                                  # once more after the exec, then no further exec
    (pid1, before, args1), (pid2, after, args2) = (line.split(" ", 2) for line in out)
    assert pid1 == pid2 and before == "None" and after == TUNABLES and args1 == args2 == "['a', 'b']"

    kept = subprocess.run([sys.executable, "-c", code], env=env_without_tunables(**{ENV: ""}), capture_output=True,
                          text=True, check=True).stdout.splitlines()
    assert len(kept) == 1 and kept[0].split(" ")[1] == ""  # an explicit empty setting: no exec


@linux_glibc
def test_a_stage_process_runs_with_the_tunables():
    """Observed from outside, in /proc: the `python -m pipeline_src` process itself (same pid) holds them."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline_src", "bench-malloc", "--repeats", "1", "--",
                             "sleep", "2"], env=env_without_tunables(), stdout=subprocess.DEVNULL)
    environ = b""
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline and f"{ENV}=".encode() not in environ:
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes()
        time.sleep(0.05)
    assert proc.wait(timeout=60) == 0
    # glibc (2.36) splits the setting in place at its colons while parsing it, so /proc shows NULs there
    assert f"{ENV}={TUNABLES}".encode() in environ.replace(b"\0", b":")


def test_bench_malloc_runs_both_arms_in_turn_and_writes_the_figures(tmp_path):
    seen = tmp_path / "seen.txt"
    probe = f"import os; open({str(seen)!r}, 'a').write(os.environ['{ENV}'] + '|')"
    out = tmp_path / "bench" / "malloc.json"
    r = subprocess.run([sys.executable, "-m", "pipeline_src", "bench-malloc", "--repeats", "2", "--out", str(out),
                        "--", sys.executable, "-c", probe], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert seen.read_text().split("|")[:-1] == ["", TUNABLES, TUNABLES, ""]  # default first, then tuned first
    result = json.loads(out.read_text())
    assert result["tunables"] == TUNABLES and result["repeats"] == 2
    for arm in ("default", "tuned"):
        assert len(result["runs"][arm]) == 2
        assert result["median"][arm]["wall_s"] > 0 and result["median"][arm]["max_rss_mb"] > 0
    assert "tuned/default: wall" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--", sys.executable, "-c", "raise SystemExit(3)"], "exit 3 with GLIBC_TUNABLES=''"),
    (["--repeats", "0", "--", "true"], "--repeats 0: expected at least 1"),
    (["--"], "no command to measure"),
    (["--", "no-such-program-here"], "no-such-program-here: cannot run it"),
])
def test_bench_malloc_refuses_in_one_line(args, message, tmp_path):
    r = subprocess.run([sys.executable, "-m", "pipeline_src", "bench-malloc", *args], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode != 0
    assert message in r.stderr and "Traceback" not in r.stderr
