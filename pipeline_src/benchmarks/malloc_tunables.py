"""Benchmark: one stage command with glibc's default malloc settings against the pipeline's (malloc_tuning.py).

    python -m pipeline_src bench-malloc [--repeats 3] [--out data/benchmarks/malloc.json] -- COMMAND ...

e.g. `-- python -m pipeline_src quantize --onnx data/export/attsf-synth-defocus/model.onnx --manifest
data/manifests/synth-defocus.json --patches data/patches/synth-defocus/train --preset smoke --no-tracking`
(it rewrites that folder's variants, as the stage does).

The two arms run the same command as child processes, taking turns within each repeat (these machines are noisy,
so every ratio compares runs made seconds apart): `default` with GLIBC_TUNABLES set empty (glibc's own settings;
the stage does not re-execute itself), `tuned` with GLIBC_TUNABLES=malloc_tuning.TUNABLES. Per run: wall time,
user and system CPU time, peak resident memory (never below this process's own, which the child holds until its
exec) and minor page faults of the child (os.wait4's rusage). Figures are medians over repeats; ratios (tuned /
default) are medians of the per-repeat ratios.
"""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

from pipeline_src.errors import PipelineError
from pipeline_src.fileio import atomic_write_json
from pipeline_src.malloc_tuning import ENV, TUNABLES

ARMS = {"default": "", "tuned": TUNABLES}
FIGURES = ("wall_s", "user_s", "sys_s", "max_rss_mb", "minor_faults")


class BenchError(PipelineError):
    """The measured command failed or was not given; the message says which and how."""


def add_arguments(parser) -> None:
    parser.add_argument("--repeats", type=int, default=3, help="runs per arm (default 3)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("command", nargs="*", help="the command to measure, after `--`")


def run_once(command: list[str], tunables: str) -> dict[str, float]:
    """Run `command` with GLIBC_TUNABLES=`tunables`; its wall time and rusage."""
    start = time.perf_counter()
    try:
        proc = subprocess.Popen(command, env={**os.environ, ENV: tunables}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
    except OSError as exc:
        raise BenchError(f"{command[0]}: cannot run it ({exc.strerror}); give the command to measure after `--`") \
            from exc
    # stderr is read to the end before waiting, so a chatty command cannot block on a full pipe
    err = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        last = err.strip().splitlines()[-1] if err.strip() else "(no output)"
        raise BenchError(f"{' '.join(command)}: exit {proc.returncode} with {ENV}={tunables!r}: {last}")
    return {"wall_s": wall, "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
            "max_rss_mb": usage.ru_maxrss / 1024, "minor_faults": float(usage.ru_minflt)}


def measure(command: list[str], repeats: int) -> dict:
    if repeats < 1:
        raise BenchError(f"--repeats {repeats}: expected at least 1")
    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for i in range(repeats):
        order = list(ARMS) if i % 2 == 0 else list(reversed(ARMS))  # neither arm always runs second
        for arm in order:
            runs[arm].append(run_once(command, ARMS[arm]))
    median = {arm: {k: statistics.median(r[k] for r in rs) for k in FIGURES} for arm, rs in runs.items()}
    ratio = {k: _median_ratio([t[k] for t in runs["tuned"]], [d[k] for d in runs["default"]]) for k in FIGURES}
    return {"command": command, "repeats": repeats, "tunables": TUNABLES, "median": median,
            "ratio_tuned_over_default": ratio, "runs": runs,
            "host": {"platform": platform.platform(), "libc": "-".join(platform.libc_ver()),
                     "cpus": os.cpu_count(), "thp": _thp_mode()}}


def _median_ratio(tuned: list[float], default: list[float]) -> float | None:
    """Median of the paired ratios; None where the default arm measured zero (sys time of a tiny command)."""
    ratios = [t / d for t, d in zip(tuned, default) if d]
    return statistics.median(ratios) if ratios else None


def _thp_mode() -> str:
    """The kernel's transparent huge page mode ([madvise] on most distributions; hugetlb=1 needs always/madvise)."""
    try:
        return Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    except OSError:
        return "unknown"


def run(args) -> int:
    command = args.command[1:] if args.command and args.command[0] == "--" else args.command
    if not command:
        raise BenchError("no command to measure: give it after `--`")
    result = measure(command, args.repeats)
    for arm, fig in result["median"].items():
        print(f"{arm:8s} wall {fig['wall_s']:7.2f} s  user {fig['user_s']:7.2f} s  sys {fig['sys_s']:6.2f} s  "
              f"peak {fig['max_rss_mb']:7.0f} MB  minor faults {fig['minor_faults']:10.0f}")
    r = {k: "n/a" if v is None else f"{v:.2f}" for k, v in result["ratio_tuned_over_default"].items()}
    print(f"tuned/default: wall {r['wall_s']}, sys {r['sys_s']}, peak memory {r['max_rss_mb']} "
          f"(medians of {args.repeats} paired runs; host THP: {result['host']['thp']})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out, result)
    return 0
