"""The generator's parameters, read from the `synthesize:` section of config/presets.yaml and checked.

A preset's section holds `physics` (the camera, scene statistics, noise and motion: shared by every preset
through a YAML anchor) and one entry per kind with the image size and split counts. Every key is required
and no other key is accepted, so a typo is an error naming the file and the key rather than a silent default.
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from pipeline_src.errors import PipelineError

# Splits each kind writes, as its real counterpart has them (GoPro and CUHK have no val split).
KIND_SPLITS: dict[str, tuple[str, ...]] = {
    "defocus": ("train", "val", "test"),
    "motion": ("train", "test"),
    "detection": ("train", "test"),
}
MIN_SIDE_PX = 32


class SynthConfigError(PipelineError, ValueError):
    """A preset or parameter that cannot be used; the message names the file, the key and what is accepted."""


@dataclasses.dataclass(frozen=True)
class Camera:
    focal_length_mm: float
    f_number: float
    sensor_width_mm: float   # the image width spans the sensor width, so the pixel pitch follows the size


@dataclasses.dataclass(frozen=True)
class SceneParams:
    # Depths are inverse depths in dioptres (1/m): defocus is linear in them (thin lens).
    background_diopters: tuple[float, float]
    object_diopters: tuple[float, float]
    focus_on_background_probability: float
    object_layers: tuple[int, int]
    leaves_per_object_layer: tuple[int, int]
    object_radius_fraction: tuple[float, float]          # of min(height, width)
    background_leaves: tuple[int, int]
    background_leaf_radius_fraction: tuple[float, float]
    photo_background_probability: float


@dataclasses.dataclass(frozen=True)
class NoiseParams:
    # Poisson-Gaussian in linear light: variance = shot_gain * signal + read_variance (signal in [0, 1]).
    shot_gain: tuple[float, float]
    read_variance: tuple[float, float]


@dataclasses.dataclass(frozen=True)
class MotionParams:
    subframes: tuple[int, int]                   # sharp sub-frames averaged per blurry frame (GoPro: 7-13)
    max_speed_fraction: float                    # of the image width, per sub-frame
    angular_frequency: tuple[float, float]       # rad per sub-frame of the sinusoids that make a path
    own_motion_probability: float                # chance that an object layer moves besides the camera


@dataclasses.dataclass(frozen=True)
class DetectionParams:
    in_focus_coc_px: float                       # |CoC| below this (pixels) counts as in focus (mask 255)


@dataclasses.dataclass(frozen=True)
class Physics:
    camera: Camera
    scene: SceneParams
    noise: NoiseParams
    motion: MotionParams
    detection: DetectionParams


@dataclasses.dataclass(frozen=True)
class SplitSize:
    images: int                 # images (defocus, detection) or frames (motion)
    sequences: int | None = None  # motion only: the frames are spread over this many sequences


@dataclasses.dataclass(frozen=True)
class KindSpec:
    kind: str
    height: int
    width: int
    splits: dict[str, SplitSize]
    coc_step_px: float | None   # defocus is rendered in depth slices this many CoC pixels apart (not motion)

    def total_images(self) -> int:
        return sum(s.images for s in self.splits.values())


def load_preset(path: str | Path, preset: str, kind: str) -> tuple[KindSpec, Physics]:
    """Read `<preset>.synthesize` from the presets file; returns the kind's sizes and the shared physics."""
    from pipeline_src.config import load_presets_file

    path = Path(path)
    if kind not in KIND_SPLITS:
        raise SynthConfigError(f"unknown synthetic kind {kind!r}; expected one of {', '.join(KIND_SPLITS)}")
    if not path.is_file():
        raise SynthConfigError(f"{path}: presets file not found (pass --presets)")
    presets = load_presets_file(path)  # the schema checks the layout; the physics' relations are checked below
    if preset not in presets:
        raise SynthConfigError(f"{path}: unknown preset {preset!r}; known: {', '.join(map(str, presets))}")
    section = (presets[preset] or {}).get("synthesize") or {}
    where = f"{path}: {preset}.synthesize"
    for key in ("physics", kind):
        if key not in section:
            raise SynthConfigError(f"{where}.{key}: missing")
    physics = build_dataclass(Physics, section["physics"], f"{where}.physics")
    check_physics(physics, f"{where}.physics")
    spec = parse_kind_spec(kind, section[kind], f"{where}.{kind}")
    return spec, physics


def check_physics(physics: Physics, where: str) -> None:
    """Relations between values that their types cannot express."""
    problems = []
    for name, p in (("scene.focus_on_background_probability", physics.scene.focus_on_background_probability),
                    ("scene.photo_background_probability", physics.scene.photo_background_probability),
                    ("motion.own_motion_probability", physics.motion.own_motion_probability)):
        if not 0.0 <= p <= 1.0:
            problems.append(f"{name}: {p}; expected a probability in [0, 1]")
    cam = physics.camera
    if min(cam.focal_length_mm, cam.f_number, cam.sensor_width_mm) <= 0:
        problems.append(f"camera: {cam}; expected positive focal length, f-number and sensor width")
    scene = physics.scene
    if scene.object_diopters[0] <= scene.background_diopters[1]:
        problems.append(f"scene.object_diopters {list(scene.object_diopters)} must lie nearer (more dioptres) than "
                        f"scene.background_diopters {list(scene.background_diopters)}, so objects occlude the "
                        "background")
    # The focus lands on a layer, and a thin lens cannot focus nearer than its focal length.
    if scene.object_diopters[1] >= 1000.0 / cam.focal_length_mm:
        problems.append(f"scene.object_diopters: {scene.object_diopters[1]} D is nearer than the focal length "
                        f"({cam.focal_length_mm} mm); expected < {1000.0 / cam.focal_length_mm:.1f} D")
    if scene.object_layers[0] < 1 or scene.leaves_per_object_layer[0] < 1:
        problems.append("scene.object_layers and scene.leaves_per_object_layer: expected at least 1")
    for name, bounds in (("scene.object_radius_fraction", scene.object_radius_fraction),
                         ("scene.background_leaf_radius_fraction", scene.background_leaf_radius_fraction)):
        if not 0.0 < bounds[0] <= bounds[1] <= 1.0:
            problems.append(f"{name}: {list(bounds)}; expected 0 < low <= high <= 1")
    if physics.motion.subframes[0] < 1:
        problems.append(f"motion.subframes: {list(physics.motion.subframes)}; expected at least 1")
    if physics.motion.angular_frequency[0] <= 0:
        problems.append(f"motion.angular_frequency: {list(physics.motion.angular_frequency)}; expected > 0")
    if physics.detection.in_focus_coc_px <= 0:
        problems.append(f"detection.in_focus_coc_px: {physics.detection.in_focus_coc_px}; expected > 0")
    if problems:
        raise SynthConfigError(f"{where}: " + "; ".join(problems))


def parse_kind_spec(kind: str, raw: dict, where: str) -> KindSpec:
    if not isinstance(raw, dict):
        raise SynthConfigError(f"{where}: {raw!r}; expected a mapping with size and splits")
    defocused = kind != "motion"   # motion sub-frames are all in focus: no depth slices
    _check_keys(raw, {"size", "splits"} | ({"coc_step_px"} if defocused else set()), where)
    size = raw["size"]
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v >= MIN_SIDE_PX for v in size)):
        raise SynthConfigError(f"{where}.size: {size!r}; expected [height, width], integers >= {MIN_SIDE_PX}")
    step = None
    if defocused:
        step = _number(raw["coc_step_px"], float, f"{where}.coc_step_px")
        if step <= 0:
            raise SynthConfigError(f"{where}.coc_step_px: {step}; expected > 0")
    splits_raw = raw["splits"]
    if not isinstance(splits_raw, dict) or not splits_raw:
        raise SynthConfigError(f"{where}.splits: {splits_raw!r}; expected a mapping split -> count")
    allowed = KIND_SPLITS[kind]
    splits = {}
    for name, value in splits_raw.items():
        if name not in allowed:
            raise SynthConfigError(f"{where}.splits.{name}: unknown split for {kind}; expected {', '.join(allowed)}")
        splits[name] = _split_size(kind, value, f"{where}.splits.{name}")
    ordered = {name: splits[name] for name in allowed if name in splits}
    return KindSpec(kind, int(size[0]), int(size[1]), ordered, step)


def _split_size(kind: str, value, where: str) -> SplitSize:
    if kind == "motion":
        if not isinstance(value, dict):
            raise SynthConfigError(f"{where}: {value!r}; expected {{sequences: S, frames: F}} with 1 <= S <= F")
        _check_keys(value, {"sequences", "frames"}, where)
        seqs = _number(value["sequences"], int, f"{where}.sequences")
        frames = _number(value["frames"], int, f"{where}.frames")
        if not 1 <= seqs <= frames:
            raise SynthConfigError(f"{where}: {seqs} sequences for {frames} frames; expected 1 <= sequences <= frames")
        return SplitSize(frames, seqs)
    count = _number(value, int, where)
    if count < 1:
        raise SynthConfigError(f"{where}: {count}; expected an image count >= 1")
    return SplitSize(count)


def build_dataclass(cls, raw, where: str):
    """Build a (nested) frozen dataclass from a mapping, with exactly its fields and their types."""
    if not isinstance(raw, dict):
        raise SynthConfigError(f"{where}: {raw!r}; expected a mapping with keys {_field_names(cls)}")
    hints = typing.get_type_hints(cls)
    _check_keys(raw, set(_field_names(cls)), where)
    values = {}
    for name in _field_names(cls):
        values[name] = _convert(hints[name], raw[name], f"{where}.{name}")
    return cls(**values)


def _convert(hint, value, where: str):
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, where)
    if typing.get_origin(hint) is tuple:
        item_type = typing.get_args(hint)[0]
        if not (isinstance(value, list) and len(value) == 2):
            raise SynthConfigError(f"{where}: {value!r}; expected [low, high]")
        low, high = (_number(v, item_type, where) for v in value)
        if low > high:
            raise SynthConfigError(f"{where}: [{low}, {high}]; expected low <= high")
        return (low, high)
    return _number(value, hint, where)


def _number(value, kind, where: str):
    if kind is int and not _is_int(value):
        raise SynthConfigError(f"{where}: {value!r}; expected an integer")
    if kind is float and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
        raise SynthConfigError(f"{where}: {value!r}; expected a number")
    if value < 0:
        raise SynthConfigError(f"{where}: {value!r}; expected a non-negative value")
    return kind(value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _check_keys(raw: dict, expected: set[str], where: str) -> None:
    missing = sorted(expected - set(raw))
    unknown = sorted(set(raw) - expected)
    if missing or unknown:
        parts = ([f"missing {missing}"] if missing else []) + ([f"unknown {unknown}"] if unknown else [])
        raise SynthConfigError(f"{where}: {'; '.join(parts)}; expected exactly {sorted(expected)}")


def physics_as_dict(physics: Physics) -> dict:
    """JSON-ready copy (tuples become lists) for meta.json."""
    return dataclasses.asdict(physics)
