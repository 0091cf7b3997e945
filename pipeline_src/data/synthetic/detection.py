"""Defocus blur detection (CUHK-like): a defocused photograph and its binary in-focus mask.

The image is the defocus renderer's full-aperture view (an ordinary camera, no dual pixel); the mask is
255 where the visible surface's |CoC| is below `detection.in_focus_coc_px`, else 0.

Layout, as CUHK's (DATASETS.md §3), numbered from 1 over train then test:
    image/out_of_focusNNNN.jpg     8-bit sRGB JPEG (OpenCV's default quality, 95)
    gt/out_of_focusNNNN.png        8-bit grey mask: 255 = in focus, 0 = defocus-blurred
    defocus/out_of_focusNNNN.npy   float32 signed CoC radius in pixels (the masks' source; not in CUHK)
    split.txt                      the test images' file names, one a line (the others are train)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline_src.data.synthetic.defocus import render_defocus, save_npy
from pipeline_src.data.synthetic.kinds import KINDS, Task, write_readme
from pipeline_src.data.synthetic.params import KindSpec, Physics
from pipeline_src.data.synthetic.srgb import encode

BITS = 8
IN_FOCUS_VALUE = 255
PREFIX = "out_of_focus"


def in_focus_mask(coc_px: np.ndarray, threshold_px: float) -> np.ndarray:
    """uint8 mask: IN_FOCUS_VALUE where |CoC| < threshold, 0 elsewhere."""
    return np.where(np.abs(coc_px) < threshold_px, IN_FOCUS_VALUE, 0).astype(np.uint8)


@KINDS.register("detection")
class DetectionWriter:
    def tasks(self, spec: KindSpec) -> list[Task]:
        tasks, number = [], 1
        for split, size in spec.splits.items():
            for i in range(size.images):
                tasks.append(Task(split, i, f"{PREFIX}{number:04d}"))
                number += 1
        return tasks

    def render(self, task: Task, spec: KindSpec, physics: Physics, rng: np.random.Generator, out: Path) -> list[dict]:
        from pipeline_src.fileio import write_image

        r = render_defocus(rng, spec.height, spec.width, physics, spec.coc_step_px, dual_pixel=False)
        mask = in_focus_mask(r.coc_px, physics.detection.in_focus_coc_px)
        for folder in ("image", "gt", "defocus"):
            (out / folder).mkdir(parents=True, exist_ok=True)
        write_image(out / "image" / f"{task.name}.jpg", encode(r.combined, BITS))
        write_image(out / "gt" / f"{task.name}.png", mask)
        save_npy(out / "defocus" / f"{task.name}.npy", r.coc_px.astype(np.float32))
        in_focus = float((mask == IN_FOCUS_VALUE).mean())
        return [{"split": task.split, "name": task.name, "in_focus_fraction": round(in_focus, 4), **r.info}]

    def finish(self, out: Path, spec: KindSpec, physics: Physics, records: list[dict]) -> dict:
        from pipeline_src.fileio import atomic_write_text

        test = [f"{r['name']}.jpg" for r in records if r["split"] == "test"]
        atomic_write_text(out / "split.txt", "".join(f"{name}\n" for name in test))
        conventions = {
            "layout": "CUHK: image/out_of_focusNNNN.jpg, gt/out_of_focusNNNN.png; split.txt lists the test "
                      "images (the others are train); defocus/out_of_focusNNNN.npy holds the signed CoC maps",
            "bit_depth": BITS,
            "encoding": "sRGB transfer curve (IEC 61966-2-1), 8-bit JPEG at OpenCV's default quality (95)",
            "mask_in_focus_value": IN_FOCUS_VALUE,
            "mask": f"{IN_FOCUS_VALUE} where |CoC| < {physics.detection.in_focus_coc_px} px (in focus), 0 elsewhere "
                    "(defocus-blurred); index with --mask-in-focus-value 255",
            "image": "full-aperture (single-pixel camera) defocus rendering with sensor noise",
        }
        write_readme(out, "Synthetic defocus blur detection dataset (CUHK layout), made by `python -m pipeline_src "
                          "synthesize detection`", conventions)
        return conventions
