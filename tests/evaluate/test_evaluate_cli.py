"""The evaluate stage end to end on tiny trees indexed by the real indexer, with a tiny registered model."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml
from scipy import ndimage

from pipeline_src.cli import main
from pipeline_src.evaluate.protocols import ProtocolError
from pipeline_src.fileio import read_image, sha256_file, write_image
from pipeline_src.model_io import model_record, save_model_file
from pipeline_src.models import MODELS
from pipeline_src.models.layers.padding import crop_to, pad_to_multiple
from tests.stage import run_stage

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[2]
PROTOCOLS = REPO / "config" / "protocols.yaml"
TRAINING_RUN = "0123456789abcdef0123456789abcdef"


@MODELS.register("eval_test_restorer")
class TinyRestorer(nn.Module):
    """x + a small stride-2 correction: a fully convolutional stand-in with a size multiple of 4."""
    task = "restoration"

    def __init__(self, views=("c",)):
        super().__init__()
        self.input_views = tuple(views)
        self.size_multiple = 4
        self.down = nn.Conv2d(3 * len(self.input_views), 6, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(6, 3, 4, stride=2, padding=1)

    def forward(self, x):
        xp, size = pad_to_multiple(x, self.size_multiple)
        return crop_to(xp[:, :3] + 0.05 * self.up(torch.relu(self.down(xp))), size)


@MODELS.register("eval_test_detector")
class TinyDetector(nn.Module):
    task = "detection"
    input_views = ("c",)
    size_multiple = 1

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def _checkpoint(path: Path, cls: type, name: str, args: dict, protocol: str | None) -> Path:
    torch.manual_seed(0)
    model = cls(**args)
    record = model_record(model, name, args)
    record.update(paper="kpac", recipe="kpac", dataset="tiny", phase=2, step=4, config={"preset": "smoke"},
                  mlflow_run_id=TRAINING_RUN, protocol=protocol)
    save_model_file(path, record)
    return path


def _smooth_rgb(rng, h, w):
    import cv2

    low = rng.random((h // 6 + 2, w // 6 + 2, 3)).astype(np.float32)
    return np.clip(cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC), 0, 1)


@pytest.fixture(scope="module")
def defocus_tree(tmp_path_factory):
    """A DPDD-layout 16-bit tree: 4 test samples (disc radius 2 blur), L/R views, defocus maps; indexed."""
    root = tmp_path_factory.mktemp("tiny-dpdd")
    rng = np.random.default_rng(0)
    from pipeline_src.evaluate.baselines import disc_kernel

    for split, n in (("test", 4), ("val", 1)):
        for i in range(n):
            stem = f"{split}{i:02d}"
            sharp = _smooth_rgb(rng, 44, 58)
            blurry = np.stack([ndimage.convolve(sharp[..., c], disc_kernel(2.0), mode="reflect") for c in range(3)], -1)
            to16 = lambda a: np.round(np.clip(a, 0, 1) * 65535).astype(np.uint16)  # noqa: E731
            write_image(root / f"{split}_c" / "source" / f"{stem}.png", to16(blurry))
            write_image(root / f"{split}_c" / "target" / f"{stem}.png", to16(sharp))
            write_image(root / f"{split}_l" / "source" / f"{stem}_L.png", to16(blurry))
            write_image(root / f"{split}_r" / "source" / f"{stem}_R.png", to16(blurry))
            (root / f"{split}_c" / "defocus").mkdir(parents=True, exist_ok=True)
            np.save(root / f"{split}_c" / "defocus" / f"{stem}.npy", np.full((44, 58), 2.0, np.float32))
    manifest = root / "manifest.json"
    assert main(["index", "tiny", "--layout", "dpdd", "--root", str(root), "--out", str(manifest)]) == 0
    ckpt = _checkpoint(root / "final.pt", TinyRestorer, "eval_test_restorer", {}, "dpdd_single_8bit")
    return {"root": root, "manifest": manifest, "ckpt": ckpt}


def _evaluate(data, out: Path, *extra: str) -> dict:
    """The stage's full record (--record); the numbers-only metrics file is checked against it."""
    argv = ["evaluate", "--checkpoint", str(data["ckpt"]), "--manifest", str(data["manifest"]),
            "--out", str(out / "m.json"), "--record", str(out / "m.record.json"), "--per-image", str(out / "m.csv"),
            "--images", str(out / "m"), "--protocols", str(PROTOCOLS), *extra]
    assert run_stage(argv) == 0
    record = json.loads((out / "m.record.json").read_text())
    numbers = json.loads((out / "m.json").read_text())
    assert all(isinstance(v, (int, float)) for v in numbers.values()) and len(numbers) <= 20
    assert {k: v for k, v in record["model"].items() if v is not None}.items() <= numbers.items()
    return record


def _small_tiles_protocols(tmp_path: Path) -> Path:
    raw = yaml.safe_load(PROTOCOLS.read_text())
    raw["protocols"]["dpdd_single_8bit"]["tiling"] = {"tile": 32, "overlap": 12, "margin": 4, "batch": 2}
    path = tmp_path / "protocols.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_evaluate_twice_gives_identical_outputs(defocus_tree, tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_TRACKING", "0")
    small = _small_tiles_protocols(tmp_path)
    docs, texts = [], []
    for k in range(2):
        out = tmp_path / f"run{k}"
        docs.append(_evaluate(defocus_tree, out, "--baselines", "--protocols", str(small)))
        texts.append(((out / "m.record.json").read_text().replace(str(out), "OUT"), (out / "m.json").read_bytes(),
                      (out / "m.csv").read_bytes(),
                      {p.name: p.read_bytes() for p in (out / "m").iterdir()}))
    assert texts[0] == texts[1]
    doc = docs[0]
    assert doc["images"] == 4 and doc["split"] == "test" and doc["protocol_name"] == "dpdd_single_8bit"
    assert doc["protocol"]["bit_depth"] == 8 and doc["protocol"]["quantize"] == "round"
    assert "round(x / 257)" in doc["bit_depth_conversion"] and doc["source_bit_depth"] == 16
    assert doc["tiling"] == {"tile": 32, "overlap": 12, "margin": 4, "batch": 2, "size_multiple": 4}
    assert doc["checkpoint"]["sha256"] == sha256_file(defocus_tree["ckpt"])
    assert doc["training_run_id"] == TRAINING_RUN and doc["eval_run_id"] is None and doc["preset"] == "smoke"
    assert set(doc["model"]) == {"psnr", "ssim", "mae", "lpips"} and doc["model"]["lpips"] is None
    assert "lpips" in doc["unavailable"]
    assert set(doc["baselines"]) == {"input", "wiener"}
    assert doc["baselines"]["wiener"]["radius_px_median"] == 2.0
    assert doc["baselines"]["wiener"]["radius_source"] == "defocus map median |CoC|"
    # The model is nearly the identity on the blurry input, so it must score close to the input row.
    assert abs(doc["model"]["psnr"] - doc["baselines"]["input"]["psnr"]) < 3.0


def test_per_image_csv_and_side_by_side_images(defocus_tree, tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_TRACKING", "0")
    doc = _evaluate(defocus_tree, tmp_path, "--baselines")
    rows = list(csv.DictReader((tmp_path / "m.csv").open()))
    assert [r["image"] for r in rows] == ["test00", "test01", "test02", "test03"]
    assert {"psnr", "ssim", "mae", "lpips", "input_psnr", "wiener_psnr", "wiener_radius_px"} <= set(rows[0])
    assert {r["protocol"] for r in rows} == {"dpdd_single_8bit"}
    assert [r["index"] for r in rows] == ["0", "1", "2", "3"] and all(r["score"] == r["psnr"] for r in rows)
    assert json.loads((tmp_path / "m" / "protocol.json").read_text())["protocol"]["name"] == "dpdd_single_8bit"
    assert rows[0]["lpips"] == "" and float(rows[0]["wiener_radius_px"]) == 2.0
    mean_psnr = np.mean([float(r["psnr"]) for r in rows])
    assert abs(mean_psnr - doc["model"]["psnr"]) < 1e-5
    pngs = sorted((tmp_path / "m").glob("*.png"))
    assert [p.stem for p in pngs] == ["test00", "test01", "test02"]
    panel = read_image(pngs[0])
    assert panel.dtype == np.uint8 and panel.shape[0] == 44 + 18 and panel.shape[1] == 4 * 58 + 3 * 4
    # the report stage reads what evaluate wrote
    assert main(["report", "--metrics", str(tmp_path / "m.record.json"), "--out", str(tmp_path / "report"),
                 "--published", str(REPO / "config" / "published.yaml")]) == 0
    md = (tmp_path / "report" / "results.md").read_text()
    assert "KPAC 2-level (paper, dpdd, Table 4)" in md and "ours: kpac" in md and "baseline: wiener" in md


def test_protocol_override_and_max_images(defocus_tree, tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_TRACKING", "0")
    doc = _evaluate(defocus_tree, tmp_path, "--protocol", "dpdd_dual_16bit", "--max-images", "2",
                    "--side-by-side", "1")
    assert doc["images"] == 2 and doc["protocol"]["bit_depth"] == 16 and doc["baselines"] == {}
    assert doc["bit_depth_conversion"].startswith("none")
    assert len(list((tmp_path / "m").glob("*.png"))) == 1


def test_tracked_run_has_metrics_protocol_tag_and_training_link(defocus_tree, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipeline_src.tracking import start_parent

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)  # the store's artifact folder goes beside it, in tmp
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("PIPELINE_TRACKING", "1")
    monkeypatch.setenv("PIPELINE_MLFLOW_EXPERIMENT", "evaluate-test")
    parent = start_parent("pipeline", root=tmp_path)
    monkeypatch.setenv("PIPELINE_PARENT_RUN_ID", parent)
    doc = _evaluate(defocus_tree, tmp_path, "--baselines", "--max-images", "2")
    run = MlflowClient(uri).get_run(doc["eval_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["protocol"] == "dpdd_single_8bit"
    assert run.data.tags["training_run_id"] == TRAINING_RUN
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.metrics["psnr"] == pytest.approx(doc["model"]["psnr"])
    assert run.data.metrics["wiener/psnr"] == pytest.approx(doc["baselines"]["wiener"]["psnr"])
    assert run.data.params["protocol.bit_depth"] == "8"
    client = MlflowClient(uri)
    top = {a.path for a in client.list_artifacts(doc["eval_run_id"])}
    assert {"m.record.json", "m.csv", "side_by_side"} <= top
    assert len(client.list_artifacts(doc["eval_run_id"], "side_by_side")) == 2


@pytest.fixture(scope="module")
def detection_tree(tmp_path_factory):
    """A CUHK-layout tree: 3 images with in-focus masks (white = in focus), all listed as test."""
    root = tmp_path_factory.mktemp("tiny-cuhk")
    rng = np.random.default_rng(3)
    for i in range(3):
        write_image(root / "image" / f"img{i}.png", (rng.random((36, 40, 3)) * 255).astype(np.uint8))
        mask = np.zeros((36, 40), np.uint8)
        mask[:, : 10 + 8 * i] = 255
        write_image(root / "gt" / f"img{i}.png", mask)
    (root / "split.txt").write_text("img0.png\nimg1.png\nimg2.png\n")
    manifest = root / "manifest.json"
    assert main(["index", "tiny-cuhk", "--layout", "cuhk", "--root", str(root), "--out", str(manifest),
                 "--mask-in-focus-value", "255"]) == 0
    ckpt = _checkpoint(root / "final.pt", TinyDetector, "eval_test_detector", {}, "dbd_cuhk")
    return {"root": root, "manifest": manifest, "ckpt": ckpt}


def test_detection_evaluation_reports_f_measures(detection_tree, tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_TRACKING", "0")
    doc = _evaluate(detection_tree, tmp_path)
    assert doc["task"] == "detection" and doc["images"] == 3
    assert set(doc["model"]) == {"max_f", "mean_max_f", "f_at_0_5", "mae"}
    assert all(0.0 <= v <= 1.0 for v in doc["model"].values())
    rows = list(csv.DictReader((tmp_path / "m.csv").open()))
    assert len(rows) == 3 and "max_f" in rows[0] and all(r["score"] == r["max_f"] for r in rows)


def test_bad_requests_are_refused_with_a_reason(defocus_tree, detection_tree, tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_TRACKING", "0")
    with pytest.raises(ProtocolError, match="no protocol 'dpdd_8bit'; known:"):
        _evaluate(defocus_tree, tmp_path, "--protocol", "dpdd_8bit")
    with pytest.raises(ProtocolError, match="for task 'detection'"):
        _evaluate(defocus_tree, tmp_path, "--protocol", "dbd_cuhk")
    with pytest.raises(ProtocolError, match="not 'train'"):
        _evaluate(defocus_tree, tmp_path, "--split", "train")
    with pytest.raises(ValueError, match="--max-images 0"):
        _evaluate(defocus_tree, tmp_path, "--max-images", "0")
    with pytest.raises(ProtocolError, match="cannot be converted"):  # 8-bit images under a 16-bit protocol
        _evaluate({**detection_tree, "ckpt": _checkpoint(tmp_path / "r.pt", TinyRestorer, "eval_test_restorer",
                                                         {}, "dpdd_dual_16bit")}, tmp_path)
    no_protocol = _checkpoint(tmp_path / "np.pt", TinyRestorer, "eval_test_restorer", {}, None)
    with pytest.raises(ProtocolError, match="records no protocol; pass --protocol"):
        _evaluate({**defocus_tree, "ckpt": no_protocol}, tmp_path)
    dual = _checkpoint(tmp_path / "dual.pt", TinyRestorer, "eval_test_restorer", {"views": ("l", "r")},
                       "dpdd_single_8bit")
    with pytest.raises(ValueError, match=r"lacks \['l', 'r'\]"):
        _evaluate({**detection_tree, "ckpt": dual}, tmp_path, "--protocol", "gopro_8bit")
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "m.record.json").exists()  # nothing half-written
