"""The three dataset kinds: a registry from kind name to its writer, and the writer's contract.

A writer is a class with
  tasks(spec) -> list[Task]                   the independent items (an image, or a whole motion sequence)
  render(task, spec, physics, rng, out) -> list[dict]
                                              render one task, write its files under `out`, return one
                                              small record per written sample (it goes into meta.json)
  finish(out, spec, physics, records) -> dict write kind-level files (README, split list) and return the
                                              kind's conventions for meta.json
Writers are imported on first use, in each worker process.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline_src.registry import Registry

KINDS = Registry("synthetic dataset kind", locations={
    "defocus": "pipeline_src.data.synthetic.defocus",
    "motion": "pipeline_src.data.synthetic.motion",
    "detection": "pipeline_src.data.synthetic.detection",
})


@dataclasses.dataclass(frozen=True)
class Task:
    split: str
    index: int          # within the split: seeds the task's random generator
    name: str           # file stem (defocus, detection) or sequence folder (motion)
    frames: int = 1     # motion: frames in the sequence


def write_readme(out: Path, title: str, conventions: dict) -> None:
    """README.txt at the dataset root: what the files mean, for a person opening the folder."""
    from pipeline_src.fileio import atomic_write_text

    lines = [f"{title}. Same seed and preset give byte-identical files; meta.json records every parameter.", ""]
    lines += [f"{key}: {value}" for key, value in conventions.items()]
    atomic_write_text(out / "README.txt", "\n".join(lines) + "\n")
