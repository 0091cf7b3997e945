"""Evaluation protocols (config/protocols.yaml): loading, checking, and applying one to images.

A protocol fixes everything that makes two papers' PSNRs differ although both say "PSNR": the bit depth the
data is read at (DPDD is 16-bit; single-image methods score it at 8 bits), the data range, the colour order,
what happens to the network's output before scoring (activation, clipping, quantisation to 8 bits by rounding
or truncation), the border crop, the SSIM variant, the metrics, and how full-resolution images are tiled.

    book = load_protocols()                      # config/protocols.yaml, validated
    p = book.get("dpdd_single_8bit")
    target = p.to_float(p.read(sample["target"]))   # 16-bit source -> round(x / 257) -> / 255
    pred = p.finish(model_output)                   # activation, clip, quantise
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from pipeline_src.config import ConfigError, load_yaml, validate_schema

DETECTION_BASELINES = frozenset({"sharpness"})  # they give in-focus logits; the others restore images

DEFAULT_PATH = Path("config/protocols.yaml")
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "protocols.schema.yaml"

METRICS_BY_TASK = {
    "restoration": ("psnr", "ssim", "mae", "ms_ssim", "lpips"),
    "detection": ("max_f", "mean_max_f", "f_at_0_5", "mae"),
}
# The SSIM that pipeline_src/evaluate/metrics.py computes (skimage's defaults, the papers' SSIM).
IMPLEMENTED_SSIM = {"window": 7, "gaussian": False, "covariance": "sample"}
# A value already on the quantisation grid (k / 255 in float32) must not truncate to k - 1.
TRUNCATE_GUARD = 1e-6


class ProtocolError(ConfigError):
    """A protocol that is unknown or wrong; the message names the file, the protocol and the field."""


@dataclasses.dataclass(frozen=True)
class Tiling:
    tile: int      # tile side in pixels (rounded down to the model's size multiple when used)
    overlap: int   # pixels shared by neighbouring tiles
    margin: int    # pixels at a tile's inner edges that get zero weight (covers the receptive field)
    batch: int     # tiles per forward pass


@dataclasses.dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    task: str
    bit_depth: int
    data_range: float
    colour_order: str
    activation: str
    clip: tuple[float, float]
    quantize: str
    quantize_bits: int
    border_crop: int
    ssim: dict
    metrics: tuple[str, ...]
    splits: tuple[str, ...]
    baselines: tuple[str, ...]
    tiling: Tiling
    notes: str
    source: str  # the file it was read from
    # 16 -> 8 bits: "round" (round(x / 257), the DPDD papers' conversion) or "high_byte" (x >> 8: what Pillow,
    # and so scipy.misc.imread, returns for a 16-bit RGB PNG; ADNet's defocus evaluation reads DPDD that way)
    depth_conversion: str = "round"

    # ------------------------------------------------------------------------------ reading the data
    def read(self, img: np.ndarray) -> np.ndarray:
        """An 8/16-bit image from a manifest -> the same image at this protocol's bit depth."""
        return convert_bit_depth(img, self.bit_depth, what=f"protocol {self.name!r}", method=self.depth_conversion)

    def to_float(self, img: np.ndarray) -> np.ndarray:
        """An image at this protocol's depth -> float32 on [0, data_range]."""
        want = np.uint8 if self.bit_depth == 8 else np.uint16
        if img.dtype != want:
            raise TypeError(f"protocol {self.name!r} reads {self.bit_depth}-bit images; got {img.dtype} "
                            "(call Protocol.read first)")
        return (img.astype(np.float32) / float(np.iinfo(want).max)) * np.float32(self.data_range)

    def conversion_from(self, source_bit_depth: int) -> str:
        """How a source of the given depth is brought to this protocol's depth (recorded in every output)."""
        if source_bit_depth == self.bit_depth:
            return f"none ({source_bit_depth}-bit source read as is)"
        if source_bit_depth == 16 and self.bit_depth == 8:
            return ("16-bit source converted to 8-bit as round(x / 257)" if self.depth_conversion == "round" else
                    "16-bit source converted to 8-bit as its high byte, x >> 8 (Pillow's reading of a 16-bit PNG)")
        raise ProtocolError(f"protocol {self.name!r} reads {self.bit_depth}-bit data; a {source_bit_depth}-bit "
                            "source cannot be converted to it (bits cannot be invented)")

    # --------------------------------------------------------------------------- the model's output
    def finish(self, out: np.ndarray) -> np.ndarray:
        """The model's raw output (float, H x W [x C]) -> what is scored: activation, clip, quantisation."""
        if not np.issubdtype(out.dtype, np.floating):
            raise TypeError(f"protocol {self.name!r}: model output has dtype {out.dtype}; expected floats")
        if self.activation == "sigmoid":
            from scipy.special import expit

            out = expit(out)
        out = np.clip(out, self.clip[0], self.clip[1])
        return quantize(out, self.quantize, self.quantize_bits)

    def record(self) -> dict:
        """Everything about the protocol, for metrics files and MLflow params."""
        d = dataclasses.asdict(self)
        d["clip"] = list(self.clip)
        for key in ("metrics", "splits", "baselines"):
            d[key] = list(d[key])
        return d


def convert_bit_depth(img: np.ndarray, bits: int, what: str = "image", method: str = "round") -> np.ndarray:
    """uint8/uint16 -> uint8/uint16. 16 -> 8 is round(x / 257) (257 = 65535 / 255, so 65535 -> 255 exactly), or
    with method "high_byte" x >> 8, as Pillow reads a 16-bit PNG; 8 -> 16 is refused: it would pretend to a
    precision the data does not have."""
    if img.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"{what}: images must be uint8 or uint16, got {img.dtype}")
    if bits not in (8, 16):
        raise ValueError(f"{what}: bit depth {bits}; expected 8 or 16")
    source = 8 if img.dtype == np.uint8 else 16
    if source == bits:
        return img
    if source == 16 and method == "high_byte":
        return (img >> 8).astype(np.uint8)
    if source == 16:
        # (x + 128) // 257 == round(x / 257): x / 257 is never exactly k + 1/2 for an integer x
        return ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    raise ConfigError(f"{what}: reads 16-bit data but the source is 8-bit; evaluate 8-bit datasets with an "
                      "8-bit protocol")


def quantize(x: np.ndarray, mode: str, bits: int) -> np.ndarray:
    """Floats on [0, 1] -> the same dtype on the grid k / (2^bits - 1): round (half to even, numpy's rint),
    truncate (floor, as `astype(uint8)` after `* 255`), or none."""
    levels = float(2 ** bits - 1)
    if mode == "none":
        return x
    if mode == "round":
        return (np.rint(x * levels) / levels).astype(x.dtype, copy=False)
    if mode == "truncate":
        return (np.floor(x * levels + TRUNCATE_GUARD) / levels).astype(x.dtype, copy=False)
    raise ValueError(f"quantize mode {mode!r}; expected none, round or truncate")


# ------------------------------------------------------------------------------------------------ loading
@dataclasses.dataclass(frozen=True)
class ProtocolBook:
    path: str
    protocols: dict[str, Protocol]
    baseline_settings: dict

    def get(self, name: str) -> Protocol:
        if name not in self.protocols:
            raise ProtocolError(f"{self.path}: no protocol {name!r}; known: {', '.join(sorted(self.protocols))}")
        return self.protocols[name]

    def names(self) -> list[str]:
        return sorted(self.protocols)


def load_protocols(path: str | os.PathLike = DEFAULT_PATH) -> ProtocolBook:
    path = Path(path)
    raw = load_yaml(path)
    try:
        validate_schema(raw, SCHEMA_PATH, str(path))
    except ConfigError as exc:
        raise ProtocolError(str(exc)) from None
    protocols = {name: _build(name, entry, path) for name, entry in raw["protocols"].items()}
    return ProtocolBook(path=str(path), protocols=protocols, baseline_settings=raw["baseline_settings"])


def _build(name: str, entry: dict, path: Path) -> Protocol:
    where = f"{path}: protocols.{name}"
    known = METRICS_BY_TASK[entry["task"]]
    bad = [m for m in entry["metrics"] if m not in known]
    if bad:
        raise ProtocolError(f"{where}.metrics: {bad} not known for task {entry['task']!r}; known: {', '.join(known)}")
    if entry["ssim"] != IMPLEMENTED_SSIM:
        raise ProtocolError(f"{where}.ssim: {entry['ssim']}; metrics.ssim implements only {IMPLEMENTED_SSIM} "
                            "(skimage's defaults, the DPDD papers' SSIM)")
    lo, hi = entry["output"]["clip"]
    if not 0.0 <= lo < hi <= 1.0:
        raise ProtocolError(f"{where}.output.clip: [{lo}, {hi}]; need 0 <= lo < hi <= 1")
    wrong = [b for b in entry["baselines"] if (b in DETECTION_BASELINES) != (entry["task"] == "detection")]
    if wrong:
        raise ProtocolError(f"{where}.baselines: {wrong} do not fit a {entry['task']} protocol; detection takes "
                            f"{sorted(DETECTION_BASELINES)}, restoration the image baselines")
    tiling = Tiling(**entry["tiling"])
    _check_tiling(tiling, f"{where}.tiling")
    out = entry["output"]
    return Protocol(
        name=name, description=entry["description"], task=entry["task"], bit_depth=entry["bit_depth"],
        data_range=float(entry["data_range"]), colour_order=entry["colour_order"], activation=out["activation"],
        clip=(float(lo), float(hi)), quantize=out["quantize"], quantize_bits=out["quantize_bits"],
        border_crop=entry["border_crop"], ssim=dict(entry["ssim"]), metrics=tuple(entry["metrics"]),
        splits=tuple(entry["splits"]), baselines=tuple(entry["baselines"]), tiling=tiling,
        notes=entry.get("notes", "").strip(), source=str(path),
        depth_conversion=entry.get("depth_conversion", "round"))


def _check_tiling(t: Tiling, where: str) -> None:
    if t.overlap >= t.tile:
        raise ProtocolError(f"{where}: overlap {t.overlap} must be smaller than tile {t.tile}")
    if t.overlap and 2 * t.margin >= t.overlap:
        raise ProtocolError(f"{where}: margin {t.margin} leaves no blend band in overlap {t.overlap}; "
                            "need 2 * margin < overlap")
    if not t.overlap and t.margin:
        raise ProtocolError(f"{where}: margin {t.margin} needs an overlap (overlap is 0)")
    if t.tile < 2 * t.overlap:
        raise ProtocolError(f"{where}: tile {t.tile} must be at least twice the overlap {t.overlap}, so that a "
                            "tile's two blend bands do not cross")
