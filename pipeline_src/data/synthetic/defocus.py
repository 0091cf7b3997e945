"""Defocus (DPDD-like): dual-pixel views, their combination, the all-in-focus target and the CoC map.

Layout, as DPDD's (DATASETS.md §1), 16-bit sRGB PNGs:
    {split}_c/source/<stem>.png      combined view = (L + R) / 2 in linear light (the full aperture)
    {split}_c/target/<stem>.png      all-in-focus, noise-free
    {split}_l/source/<stem>_L.png    left dual-pixel view
    {split}_r/source/<stem>_R.png    right dual-pixel view
    {split}_c/defocus/<stem>.npy     float32 signed CoC radius in pixels (negative in front of the focal
                                     plane, positive behind it): the ground truth real data lacks
"""
from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path

import numpy as np

from pipeline_src.data.synthetic import optics
from pipeline_src.data.synthetic.compositing import composite, depth_slices, sharp_psf
from pipeline_src.data.synthetic.kinds import KINDS, Task, write_readme
from pipeline_src.data.synthetic.noise import NoiseLevel, add_half_aperture_noise, add_noise, sample_noise_level
from pipeline_src.data.synthetic.params import KindSpec, Physics
from pipeline_src.data.synthetic.scene import sample_scene
from pipeline_src.data.synthetic.srgb import encode

BITS = 16


@dataclasses.dataclass(frozen=True)
class DefocusRender:
    """Linear-light images (H, W, 3) float32 and the CoC map (H, W); `clean` holds the views before noise."""
    sharp: np.ndarray
    combined: np.ndarray
    left: np.ndarray | None
    right: np.ndarray | None
    coc_px: np.ndarray
    clean: dict[str, np.ndarray]
    noise: NoiseLevel
    info: dict


def max_abs_coc_px(physics: Physics, width: int) -> float:
    """Bound on |CoC| over every depth and focus the scene sampler can draw."""
    depths = (physics.scene.background_diopters[0], physics.scene.object_diopters[1])
    return optics.max_coc_px(physics.camera, width, depths, depths)


def margin_px(physics: Physics, width: int) -> int:
    """Canvas border rendered beyond the image, so blur near the edge sees real scene content."""
    return int(math.ceil(max_abs_coc_px(physics, width))) + 2


def render_defocus(rng: np.random.Generator, height: int, width: int, physics: Physics, coc_step_px: float,
                   dual_pixel: bool = True) -> DefocusRender:
    """One scene seen through the thin lens: all-in-focus, and either both DP views or one full-aperture view."""
    m = margin_px(physics, width)
    scene = sample_scene(rng, height + 2 * m, width + 2 * m, min(height, width), physics.scene)
    gain = optics.coc_px_per_diopter(physics.camera, width, scene.focus_diopters)
    slices, coc = depth_slices(scene, gain, coc_step_px)
    psf_of = {"sharp": sharp_psf}
    if dual_pixel:
        psf_of["left"] = lambda c: optics.dual_pixel_psfs(c)[0]
        psf_of["right"] = lambda c: optics.dual_pixel_psfs(c)[1]
    else:
        psf_of["combined"] = optics.disc_psf
    views = {k: np.ascontiguousarray(v[m:m + height, m:m + width])
             for k, v in composite(slices, psf_of, scene.shape).items()}
    coc = np.ascontiguousarray(coc[m:m + height, m:m + width])
    level = sample_noise_level(rng, physics.noise)
    if dual_pixel:
        left = add_half_aperture_noise(views["left"], level, rng)
        right = add_half_aperture_noise(views["right"], level, rng)
        combined = 0.5 * (left + right)
        views["combined"] = 0.5 * (views["left"] + views["right"])
    else:
        left = right = None
        combined = add_noise(views["combined"], level, rng)
    info = {**scene.info, "coc_px_per_diopter": gain,
            "coc_px_range": [float(coc.min()), float(coc.max())],
            "noise": dataclasses.asdict(level)}
    return DefocusRender(views["sharp"], combined.astype(np.float32), left, right, coc, views, level, info)


def save_npy(path: Path, array: np.ndarray) -> None:
    from pipeline_src.fileio import atomic_write_bytes

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


@KINDS.register("defocus")
class DefocusWriter:
    def tasks(self, spec: KindSpec) -> list[Task]:
        return [Task(split, i, f"{split}{i:04d}") for split, size in spec.splits.items() for i in range(size.images)]

    def render(self, task: Task, spec: KindSpec, physics: Physics, rng: np.random.Generator, out: Path) -> list[dict]:
        from pipeline_src.fileio import write_image

        r = render_defocus(rng, spec.height, spec.width, physics, spec.coc_step_px, dual_pixel=True)
        s, stem = task.split, task.name
        for folder in (f"{s}_c/source", f"{s}_c/target", f"{s}_c/defocus", f"{s}_l/source", f"{s}_r/source"):
            (out / folder).mkdir(parents=True, exist_ok=True)
        write_image(out / f"{s}_c/source/{stem}.png", encode(r.combined, BITS))
        write_image(out / f"{s}_c/target/{stem}.png", encode(r.sharp, BITS))
        write_image(out / f"{s}_l/source/{stem}_L.png", encode(r.left, BITS))
        write_image(out / f"{s}_r/source/{stem}_R.png", encode(r.right, BITS))
        save_npy(out / f"{s}_c/defocus/{stem}.npy", r.coc_px.astype(np.float32))
        return [{"split": s, "name": stem, **r.info}]

    def finish(self, out: Path, spec: KindSpec, physics: Physics, records: list[dict]) -> dict:
        conventions = {
            "layout": "DPDD: {split}_c/{source,target,defocus}, {split}_l/source/<stem>_L.png, "
                      "{split}_r/source/<stem>_R.png; source and target share the stem",
            "bit_depth": BITS,
            "encoding": "sRGB transfer curve (IEC 61966-2-1), RGB, 16-bit PNG",
            "source": "combined view = (L + R) / 2 in linear light: the full-aperture image (in photodiode "
                      "units it is L + R, the two half-discs summing to the full disc)",
            "target": "all-in-focus, noise-free",
            "defocus_map": "float32 (H, W): signed circle-of-confusion radius in pixels of the front-most "
                           "surface at each pixel, negative in front of the focal plane, positive behind it; "
                           f"quantised to {spec.coc_step_px} px (the slices it was rendered with)",
            "dual_pixel": "behind the focal plane the left view is blurred by the left half-disc and the right "
                          "view by the right half-disc; in front of it the halves swap. Each view is "
                          "normalised to full brightness; its noise is that of half the light",
            "max_abs_coc_px": max_abs_coc_px(physics, spec.width),
        }
        write_readme(out, "Synthetic dual-pixel defocus dataset (DPDD layout), made by `python -m pipeline_src "
                          "synthesize defocus`", conventions)
        return conventions
