"""Motion blur (GoPro-like): sharp sub-frames of moving layers averaged in linear light.

GoPro's blurry frames are averages of 7-13 consecutive sharp frames of a 240 fps camera, and the sharp
target is the middle one (DATASETS.md §2). Here a sequence is one layered scene filmed over time. Every
layer moves on a smooth path made of a few sinusoids: the camera's rotation (the same shift for every
layer), the camera's translation (a shift proportional to the layer's inverse depth: parallax) and, for
some object layers, their own motion. Consecutive blurry frames take consecutive windows of sub-frames.

Layout, as GoPro's, 8-bit sRGB PNGs:
    {train,test}/<sequence>/blur/NNNNNN.png    mean of the sub-frames in linear light, plus sensor noise
    {train,test}/<sequence>/sharp/NNNNNN.png   the middle sub-frame, noise-free
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline_src.data.synthetic.kinds import KINDS, Task, write_readme
from pipeline_src.data.synthetic.noise import add_noise, sample_noise_level
from pipeline_src.data.synthetic.params import KindSpec, MotionParams, Physics
from pipeline_src.data.synthetic.scene import Scene, sample_scene
from pipeline_src.data.synthetic.srgb import encode

BITS = 8
PATH_COMPONENTS = 3
MIN_SPEED_SHARE = 0.2     # a sequence's speed is uniform in [0.2, 1] x the maximum


@dataclasses.dataclass(frozen=True)
class SinusoidPath:
    """p(t) = sum_k a_k u_k sin(w_k t + phi_k): smooth, bounded by sum a_k, speed at most sum a_k w_k."""
    amplitudes: np.ndarray      # (k,) pixels
    directions: np.ndarray      # (k, 2) unit vectors (dx, dy)
    omegas: np.ndarray          # (k,) rad per sub-frame
    phases: np.ndarray          # (k,)

    def at(self, t: np.ndarray) -> np.ndarray:
        """(len(t), 2) displacement (dx, dy) in pixels."""
        s = np.sin(np.outer(np.asarray(t, np.float64), self.omegas) + self.phases)   # (T, k)
        return (s * self.amplitudes) @ self.directions

    def bound(self) -> float:
        return float(self.amplitudes.sum())


def still_path() -> SinusoidPath:
    return SinusoidPath(np.zeros(1), np.array([[1.0, 0.0]]), np.zeros(1), np.zeros(1))


def sample_path(rng: np.random.Generator, speed: float, omega_range: tuple[float, float]) -> SinusoidPath:
    """A path whose speed never exceeds `speed` pixels per sub-frame."""
    share = rng.dirichlet(np.ones(PATH_COMPONENTS))
    omegas = rng.uniform(*omega_range, size=PATH_COMPONENTS)
    angles = rng.uniform(0.0, 2.0 * math.pi, size=PATH_COMPONENTS)
    phases = rng.uniform(0.0, 2.0 * math.pi, size=PATH_COMPONENTS)
    directions = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return SinusoidPath(speed * share / omegas, directions, omegas, phases)


@dataclasses.dataclass(frozen=True)
class LayerPath:
    camera_rotation: SinusoidPath
    camera_translation: SinusoidPath
    parallax: float             # layer's inverse depth over the nearest layer's: 1 for the nearest
    own: SinusoidPath

    def at(self, t: np.ndarray) -> np.ndarray:
        return self.camera_rotation.at(t) + self.parallax * self.camera_translation.at(t) + self.own.at(t)


@dataclasses.dataclass(frozen=True)
class MotionFrame:
    blur: np.ndarray                    # linear, with noise
    blur_clean: np.ndarray              # linear mean of the sub-frames
    sharp: np.ndarray                   # linear, the middle sub-frame
    subframes: list[np.ndarray] | None  # kept only when asked for (tests)
    info: dict


def _max_speed_px(params: MotionParams, width: int) -> float:
    return params.max_speed_fraction * width


def render_sequence(rng: np.random.Generator, n_frames: int, height: int, width: int, physics: Physics,
                    keep_subframes: bool = False) -> Iterator[MotionFrame]:
    """The frames of one sequence, in order (a generator: one frame's sub-frames in memory at a time)."""
    mp = physics.motion
    speed = rng.uniform(MIN_SPEED_SHARE, 1.0) * _max_speed_px(mp, width)
    # Paths are bounded by speed / slowest omega: the canvas margin keeps every shifted layer covering the frame.
    margin = int(math.ceil(speed / mp.angular_frequency[0])) + 2
    scene = sample_scene(rng, height + 2 * margin, width + 2 * margin, min(height, width), physics.scene)
    paths = _layer_paths(rng, scene, speed, mp)
    level = sample_noise_level(rng, physics.noise)
    stacked = [np.dstack([layer.rgb_premultiplied, layer.alpha]).astype(np.float32) for layer in scene.layers]
    t0 = 0
    for frame in range(n_frames):
        n_sub = int(rng.integers(mp.subframes[0], mp.subframes[1] + 1))
        times = t0 + np.arange(n_sub)
        t0 += n_sub
        mid = n_sub // 2
        shifts = [_centred_on_pixel(p.at(times), mid) for p in paths]
        total = np.zeros((height, width, 3), np.float64)
        subframes = [] if keep_subframes else None
        sharp = None
        for i in range(n_sub):
            sub = render_subframe(stacked, [s[i] for s in shifts], margin, height, width)
            total += sub
            if keep_subframes:
                subframes.append(sub)
            if i == mid:
                sharp = sub
        blur_clean = (total / n_sub).astype(np.float32)
        extent = max(float(np.abs(s - s[mid]).max()) for s in shifts)
        info = {"frame": frame + 1, "subframes": n_sub, "max_shift_from_middle_px": round(extent, 3)}
        yield MotionFrame(add_noise(blur_clean, level, rng), blur_clean, sharp, subframes, info)


def _layer_paths(rng, scene: Scene, speed: float, mp: MotionParams) -> list[LayerPath]:
    rot_share, trans_share, own_share = rng.dirichlet(np.ones(3))
    rotation = sample_path(rng, speed * rot_share, mp.angular_frequency)
    translation = sample_path(rng, speed * trans_share, mp.angular_frequency)
    depth = [float(layer.diopters.mean()) for layer in scene.layers]
    paths = []
    for i, layer in enumerate(scene.layers):
        moves = i > 0 and rng.random() < mp.own_motion_probability     # the background does not move by itself
        own = sample_path(rng, speed * own_share, mp.angular_frequency) if moves else still_path()
        paths.append(LayerPath(rotation, translation, depth[i] / max(depth), own))
    return paths


def _centred_on_pixel(positions: np.ndarray, mid: int) -> np.ndarray:
    """Shift a frame's window of positions so the middle sub-frame falls on whole pixels.

    The sharp target (the middle sub-frame) is then an exact copy of the layers, not interpolated; the
    motion within the frame is unchanged, and consecutive frames differ by under half a pixel of offset.
    """
    return positions - positions[mid] + np.round(positions[mid])


def render_subframe(stacked: list[np.ndarray], shifts: list[np.ndarray], margin: int, height: int,
                    width: int) -> np.ndarray:
    """Composite the shifted layers (premultiplied RGB + alpha) back to front; crop the frame from the canvas."""
    import cv2

    image = np.zeros((height, width, 3), np.float32)
    for k, (layer, (dx, dy)) in enumerate(zip(stacked, shifts)):
        m = np.array([[1.0, 0.0, dx - margin], [0.0, 1.0, dy - margin]], np.float64)
        border = cv2.BORDER_REPLICATE if k == 0 else cv2.BORDER_CONSTANT
        moved = cv2.warpAffine(layer, m, (width, height), flags=cv2.INTER_LINEAR, borderMode=border)
        image = moved[..., :3] + (1.0 - moved[..., 3:4]) * image
    return image


@KINDS.register("motion")
class MotionWriter:
    def tasks(self, spec: KindSpec) -> list[Task]:
        tasks = []
        for split, size in spec.splits.items():
            base, extra = divmod(size.images, size.sequences)
            for i in range(size.sequences):
                tasks.append(Task(split, i, f"{split}{i:04d}", frames=base + (1 if i < extra else 0)))
        return tasks

    def render(self, task: Task, spec: KindSpec, physics: Physics, rng: np.random.Generator, out: Path) -> list[dict]:
        from pipeline_src.fileio import write_image

        seq = out / task.split / task.name
        (seq / "blur").mkdir(parents=True, exist_ok=True)
        (seq / "sharp").mkdir(parents=True, exist_ok=True)
        records = []
        for frame in render_sequence(rng, task.frames, spec.height, spec.width, physics):
            name = f"{frame.info['frame']:06d}.png"
            write_image(seq / "blur" / name, encode(frame.blur, BITS))
            write_image(seq / "sharp" / name, encode(frame.sharp, BITS))
            records.append({"split": task.split, "sequence": task.name, **frame.info})
        return records

    def finish(self, out: Path, spec: KindSpec, physics: Physics, records: list[dict]) -> dict:
        conventions = {
            "layout": "GoPro: {train,test}/<sequence>/{blur,sharp}/NNNNNN.png (no blur_gamma: the blur is "
                      "already averaged in linear light, like GoPro's gamma-corrected variant)",
            "bit_depth": BITS,
            "encoding": "sRGB transfer curve (IEC 61966-2-1), RGB, 8-bit PNG",
            "blur": f"mean of {physics.motion.subframes[0]}-{physics.motion.subframes[1]} sharp sub-frames in "
                    "linear light, then sensor noise",
            "sharp": "the middle sub-frame (index n // 2), noise-free",
            "motion": "per layer: camera rotation (shared) + camera translation x parallax (inverse depth) + "
                      "own motion for some object layers; sums of sinusoids",
        }
        write_readme(out, "Synthetic motion-blur dataset (GoPro layout), made by `python -m pipeline_src "
                          "synthesize motion`", conventions)
        return conventions
