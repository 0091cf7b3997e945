"""Where a Snakemake run's time, memory and disk went: a summary of its `benchmark:` files and of `data/`.

    python -m pipeline_src run-summary [--benchmarks benchmarks] [--data data] [--top 12] [--out FILE.json]

Reads every `benchmarks/<rule>/<wildcards>.tsv` (Snakemake's `benchmark:`: wall seconds, peak resident memory,
CPU seconds) and sizes every folder of `data/` (bytes on disk, each file once per folder, with the part that is
hard links shared with another folder, and a total that counts each file once). Prints Markdown: the slowest
jobs, the jobs with the largest peak memory, time per rule, disk per folder; `--out` writes the same
figures as JSON. Every run's jobs are summarised as they were last run (a job Snakemake skipped keeps its
previous benchmark).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path

from pipeline_src.errors import DataError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmarks", type=Path, default=Path("benchmarks"), help="Snakemake's benchmark folder")
    parser.add_argument("--data", type=Path, default=Path("data"), help="the outputs' root")
    parser.add_argument("--top", type=int, default=12, help="rows in the slowest / largest tables")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON")


def read_benchmarks(root: Path) -> list[dict]:
    jobs = []
    for path in sorted(root.rglob("*.tsv")):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if not rows:
            continue
        last = rows[-1]  # `repeat()` benchmarks append rows; the last is the latest
        jobs.append({"job": str(path.relative_to(root).with_suffix("")), "rule": path.relative_to(root).parts[0],
                     "wall_s": float(last["s"]), "max_rss_mb": float(last["max_rss"]),
                     "cpu_s": float(last.get("cpu_time") or 0.0)})
    return jobs


def folder_sizes(data: Path) -> tuple[dict[str, dict[str, int]], int]:
    """Per top folder of `data`: `bytes` on disk (each inode once, as `du` of that folder alone says) and `shared`,
    the part of it that is hard links to files of another folder (the bundles link the export's ONNX files); and
    the bytes of all of `data`, each inode once."""
    inodes: dict[str, dict[tuple[int, int], int]] = {}
    for top in sorted(p for p in data.iterdir() if p.is_dir()):
        files = inodes[top.name] = {}
        for dirpath, _, names in os.walk(top):
            for name in names:
                st = os.lstat(os.path.join(dirpath, name))
                files[(st.st_dev, st.st_ino)] = st.st_blocks * 512
    folders_of = Counter(key for files in inodes.values() for key in files)
    sizes = {name: {"bytes": sum(files.values()),
                    "shared": sum(size for key, size in files.items() if folders_of[key] > 1)}
             for name, files in inodes.items()}
    everything = {key: size for files in inodes.values() for key, size in files.items()}
    return sizes, sum(everything.values())


def summarise(jobs: list[dict], sizes: dict[str, dict[str, int]], total_bytes: int, top: int) -> dict:
    per_rule = defaultdict(lambda: {"jobs": 0, "wall_s": 0.0, "cpu_s": 0.0, "max_rss_mb": 0.0})
    for j in jobs:
        r = per_rule[j["rule"]]
        r["jobs"] += 1
        r["wall_s"] += j["wall_s"]
        r["cpu_s"] += j["cpu_s"]
        r["max_rss_mb"] = max(r["max_rss_mb"], j["max_rss_mb"])
    return {"slowest": sorted(jobs, key=lambda j: -j["wall_s"])[:top],
            "largest_memory": sorted(jobs, key=lambda j: -j["max_rss_mb"])[:top],
            "per_rule": dict(sorted(per_rule.items(), key=lambda kv: -kv[1]["wall_s"])),
            "disk_bytes": sizes, "disk_total_bytes": total_bytes}


def markdown(s: dict) -> str:
    out = ["| slowest jobs | wall (s) | CPU (s) | peak memory (MB) |", "|---|---:|---:|---:|"]
    out += [f"| {j['job']} | {j['wall_s']:.0f} | {j['cpu_s']:.0f} | {j['max_rss_mb']:.0f} |" for j in s["slowest"]]
    out += ["", "| largest peak memory | peak memory (MB) | wall (s) |", "|---|---:|---:|"]
    out += [f"| {j['job']} | {j['max_rss_mb']:.0f} | {j['wall_s']:.0f} |" for j in s["largest_memory"]]
    out += ["", "| rule | jobs | wall, summed (s) | CPU, summed (s) | largest peak memory (MB) |",
            "|---|---:|---:|---:|---:|"]
    out += [f"| {rule} | {r['jobs']} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | {r['max_rss_mb']:.0f} |"
            for rule, r in s["per_rule"].items()]
    out += ["", "| data/ folder | on disk (MiB) | of which hard links shared with another folder (MiB) |",
            "|---|---:|---:|"]
    out += [f"| {name} | {size['bytes'] / 2**20:.1f} | {size['shared'] / 2**20:.1f} |"
            for name, size in s["disk_bytes"].items()]
    if s["disk_bytes"]:  # no data/ folder: no sizes, and no total row of zero that would look measured
        out += [f"| all of data/, each file once | {s['disk_total_bytes'] / 2**20:.1f} | |"]
    return "\n".join(out) + "\n"


def run(args: argparse.Namespace) -> int:
    from pipeline_src.fileio import atomic_write_json

    if not args.benchmarks.is_dir():
        raise DataError(f"{args.benchmarks}: no benchmark folder; run the DAG with Snakemake first (its rules write "
                        "benchmarks/<rule>/...tsv)")
    jobs = read_benchmarks(args.benchmarks)
    sizes, total_bytes = folder_sizes(args.data) if args.data.is_dir() else ({}, 0)
    summary = summarise(jobs, sizes, total_bytes, args.top)
    sys.stdout.write(markdown(summary))
    if args.out:
        atomic_write_json(args.out, summary)
    return 0
