"""The bad-input battery: every kind of mistake a user can make ends in ONE line, `error: <message>` naming the
culprit (file, field or value), exit code 2, no traceback — and nothing under the stage's final output name.

Each case runs the real CLI entry point (`pipeline_src.cli.main`, in-process to keep the suite fast) on real
files: data trees and images, config / recipe / preset values and types, checkpoints truncated or of another
model or variant, archives, registries, unreachable hosts and command-line values.
"""
from __future__ import annotations

import json
import re
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml

from pipeline_src.cli import main
from pipeline_src.fileio import read_image, write_image
from tests.data.test_manifest import make_cuhk_tree, make_dpdd_tree

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class World:
    """Good inputs every case starts from; a case breaks one thing."""
    tmp: Path
    dpdd: Path          # a small DPDD-layout tree (16-bit, 24x32)
    manifest: Path      # its manifest
    patches: Path       # its patches (32-px, the smoke recipes' crop)
    kpac: Path          # a KPAC 2-level model file (random weights)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    from pipeline_src.model_io import model_record, save_model_file
    from pipeline_src.models import build_model

    tmp = tmp_path_factory.mktemp("world")
    dpdd = make_dpdd_tree(tmp / "dpdd", size=(32, 32))
    manifest = tmp / "manifest.json"
    assert main(["index", "w", "--layout", "dpdd", "--root", str(dpdd), "--out", str(manifest)]) == 0
    patches = tmp / "patches"
    assert main(["patches", "--manifest", str(manifest), "--out", str(patches), "--preset", "smoke",
                 "--size", "32", "--stride", "32"]) == 0
    kpac = tmp / "kpac" / "final.pt"
    record = model_record(build_model("kpac", levels=2), "kpac", {"levels": 2})
    record.update(protocol="dpdd_single_8bit", recipe="kpac", paper="kpac", dataset="w", phase=1, step=0)
    save_model_file(kpac, record)
    return World(tmp, dpdd, manifest, patches, kpac)


def copy_tree(world: World, tmp_path: Path) -> Path:
    return Path(shutil.copytree(world.dpdd, tmp_path / "dpdd"))


def index_argv(root: Path, out: Path, layout: str = "dpdd", *extra: str) -> list[str]:
    return ["index", "x", "--layout", layout, "--root", str(root), "--out", str(out), *extra]


def evaluate_argv(world: World, checkpoint: Path, out: Path, *extra: str) -> list[str]:
    return ["evaluate", "--checkpoint", str(checkpoint), "--manifest", str(world.manifest), "--out", str(out),
            "--record", str(out.with_suffix(".record.json")), "--per-image", str(out.with_suffix(".csv")),
            "--images", str(out.with_suffix("")), "--no-tracking", *extra]


def train_argv(world: World, recipe: Path, out: Path, *extra: str) -> list[str]:
    args = {"--recipe": recipe, "--phase": 1, "--dataset": "w", "--manifest": world.manifest,
            "--patches": world.patches, "--out": out, "--preset": "smoke", "--seed": 0}
    for flag, value in zip(extra[::2], extra[1::2]):
        args[flag] = value
    return ["train", *[str(x) for kv in args.items() for x in kv], "--no-tracking"]


def recipe_copy(tmp_path: Path, edit: Callable[[dict], None], name: str = "kpac.yaml") -> Path:
    recipe = yaml.safe_load((ROOT / "config/models/kpac.yaml").read_text())
    edit(recipe)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return path


# ------------------------------------------------------------------------------------------------ the cases
# Each case: (world, tmp_path) -> (argv, culprit regex, outputs that must not exist afterwards).
def data_root_missing(w, t):
    return index_argv(t / "nowhere", t / "m.json"), r"nowhere: dataset root is not a folder", [t / "m.json"]


def image_truncated(w, t):
    root = copy_tree(w, t)
    bad = root / "val_c/target/1P0A0911.png"
    bad.write_bytes(bad.read_bytes()[:-40])
    return index_argv(root, t / "m.json"), r"1P0A0911\.png: truncated PNG", [t / "m.json"]


def jpeg_renamed_png(w, t):
    import cv2

    root = copy_tree(w, t)
    bad = root / "train_r/source/1P0A0890_R.png"
    bad.write_bytes(cv2.imencode(".jpg", (read_image(bad) // 257).astype(np.uint8))[1].tobytes())
    return index_argv(root, t / "m.json"), r"1P0A0890_R\.png: named \.png but its bytes are a JPEG", [t / "m.json"]


def text_named_png(w, t):
    root = copy_tree(w, t)
    (root / "test_c/source/1P0A0920.png").write_text("<html>quota exceeded</html>")
    return index_argv(root, t / "m.json"), r"1P0A0920\.png: not an image file", [t / "m.json"]


def rgba_in_rgb_set(w, t):
    root = copy_tree(w, t)
    bad = root / "train_l/source/1P0A0890_L.png"
    img = read_image(bad)
    write_image(bad, np.dstack([img, np.full(img.shape[:2], 65535, img.dtype)]))
    return index_argv(root, t / "m.json"), r"1P0A0890_L\.png: an RGBA image where RGB is expected", [t / "m.json"]


def grey_in_rgb_set(w, t):
    root = copy_tree(w, t)
    bad = root / "train_c/target/1P0A0891.png"
    write_image(bad, read_image(bad)[:, :, 1])
    return index_argv(root, t / "m.json"), r"1P0A0891\.png: a grey image where RGB is expected", [t / "m.json"]


def link_out_of_tree(w, t):
    root = copy_tree(w, t)
    victim = root / "val_r/source/1P0A0910_R.png"
    shutil.move(victim, t / "outside.png")
    victim.symlink_to(t / "outside.png")
    return index_argv(root, t / "m.json"), r"1P0A0910_R\.png: links to .*outside\.png, outside the dataset tree", \
        [t / "m.json"]


def pair_of_two_sizes(w, t):
    root = copy_tree(w, t)
    bad = root / "test_c/target/1P0A0921.png"
    write_image(bad, read_image(bad)[:, :30])
    return index_argv(root, t / "m.json"), r"1P0A0921\.png: 30x32 \(WxH\) but", [t / "m.json"]


def mixed_bit_depths(w, t):
    root = copy_tree(w, t)
    bad = root / "val_l/source/1P0A0910_L.png"
    write_image(bad, (read_image(bad) // 257).astype(np.uint8))
    return index_argv(root, t / "m.json"), r"mixed bit depths: .*1P0A0910_L\.png is 8-bit", [t / "m.json"]


def missing_view(w, t):
    root = copy_tree(w, t)
    (root / "test_l/source/1P0A0920_L.png").unlink()
    return index_argv(root, t / "m.json"), r"1P0A0920_L\.png: missing file", [t / "m.json"]


def mask_with_colours(w, t):
    root = make_cuhk_tree(t / "cuhk")
    mask = root / "gt/out_of_focus0002.png"
    rgb = np.dstack([read_image(mask, color=False)] * 3)
    rgb[0, 0, 0] ^= 255
    write_image(mask, rgb)
    return index_argv(root, t / "m.json", "cuhk", "--mask-in-focus-value", "0"), \
        r"out_of_focus0002\.png: a 3-channel image with differing channels", [t / "m.json"]


def corrupt_defocus_map(w, t):
    root = make_dpdd_tree(t / "dpdd", defocus=True)
    (root / "train_c/defocus/1P0A0890.npy").write_bytes(b"\x93NUMPY garbage")
    return index_argv(root, t / "m.json"), r"1P0A0890\.npy: unreadable defocus map", [t / "m.json"]


def manifest_not_json(w, t):
    (t / "m.json").write_text("{ half")
    return ["patches", "--manifest", str(t / "m.json"), "--out", str(t / "p"), "--preset", "smoke"], \
        r"m\.json: not JSON", [t / "p"]


def manifest_of_old_format(w, t):
    old = {**json.loads(w.manifest.read_text()), "format": 1}
    (t / "m.json").write_text(json.dumps(old))
    return ["patches", "--manifest", str(t / "m.json"), "--out", str(t / "p"), "--preset", "smoke"], \
        r"m\.json: manifest format 1, this code reads \(2,\); rebuild it", [t / "p"]


def manifest_missing(w, t):
    return ["patches", "--manifest", str(t / "none.json"), "--out", str(t / "p"), "--preset", "smoke"], \
        r"none\.json: no such manifest", [t / "p"]


def patch_size_not_an_integer(w, t):
    (t / "presets.yaml").write_text((ROOT / "config/presets.yaml").read_text().replace(
        "patches: {size: 48, stride: 24", "patches: {size: \"48\", stride: 24"))
    return ["patches", "--manifest", str(w.manifest), "--out", str(t / "p"), "--preset", "smoke", "--presets",
            str(t / "presets.yaml")], r"presets\.yaml: smoke\.patches\.size: '48' is not of type 'integer'", [t / "p"]


def preset_batch_size_zero(w, t):
    def edit(r):
        r["presets"]["smoke"]["phases"][0]["batch_size"] = 0
    return train_argv(w, recipe_copy(t, edit), t / "run"), \
        r"kpac\.yaml: presets\.smoke.*phases\.0\.batch_size: 0 is less than the minimum of 1", [t / "run/final.pt"]


def preset_iterations_a_string(w, t):
    def edit(r):
        r["presets"]["smoke"]["phases"][0]["length"] = {"iterations": "6"}
    return train_argv(w, recipe_copy(t, edit), t / "run"), \
        r"presets\.smoke.*phases\.0\.length\.iterations: '6' is not of type 'integer'", [t / "run/final.pt"]


def preset_changes_the_recipe(w, t):
    def edit(r):
        r["presets"]["smoke"]["phases"][0]["loss"] = {"l2": 1.0}
    return train_argv(w, recipe_copy(t, edit), t / "run"), \
        r"presets\.smoke\.phases\[0\] may change only .*not \['loss'\]", [t / "run/final.pt"]


def recipe_unknown_optimizer(w, t):
    def edit(r):
        r["phases"][0]["optimizer"]["name"] = "adamax"
    return train_argv(w, recipe_copy(t, edit), t / "run"), r"phases\.0\.optimizer\.name: 'adamax' is not one of", \
        [t / "run/final.pt"]


def recipe_unknown_loss(w, t):
    def edit(r):
        r["phases"][0]["loss"] = {"l3": 1.0}
    return train_argv(w, recipe_copy(t, edit), t / "run"), r"unknown loss 'l3'; known: .*l1", [t / "run/final.pt"]


def recipe_not_yaml(w, t):
    (t / "bad.yaml").write_text("phases: [ {name: mae\n")
    return train_argv(w, t / "bad.yaml", t / "run"), r"bad\.yaml: not valid YAML", [t / "run/final.pt"]


def recipe_missing(w, t):
    return train_argv(w, t / "absent.yaml", t / "run"), r"absent\.yaml: no such config file", [t / "run/final.pt"]


def unknown_preset(w, t):
    return train_argv(w, ROOT / "config/models/kpac.yaml", t / "run", "--preset", "huge"), \
        r"unknown preset 'huge'; choose one of smoke, default, paper", [t / "run/final.pt"]


def phase_out_of_range(w, t):
    return train_argv(w, ROOT / "config/models/kpac.yaml", t / "run", "--phase", "3"), \
        r"kpac\.yaml has phases 1\.\.2, not --phase 3", [t / "run/final.pt"]


def negative_seed(w, t):
    return train_argv(w, ROOT / "config/models/kpac.yaml", t / "run", "--seed", "-1"), \
        r"--seed -1: expected a non-negative integer", [t / "run/final.pt"]


def previous_phase_of_another_model(w, t):
    from pipeline_src.model_io import model_record, save_model_file
    from pipeline_src.models import build_model

    prev = t / "run/phase1/final.pt"
    save_model_file(prev, model_record(build_model("kpac_dual"), "kpac_dual", {}))
    return train_argv(w, ROOT / "config/models/kpac.yaml", t / "run/phase2", "--phase", "2"), \
        r"phase1/final\.pt: holds model \{'name': 'kpac_dual'", [t / "run/phase2/final.pt"]


def checkpoint_truncated(w, t):
    bad = t / "final.pt"
    bad.write_bytes(w.kpac.read_bytes()[:5000])
    return evaluate_argv(w, bad, t / "m/x.json"), r"final\.pt: unreadable model file, truncated or not a PyTorch", \
        [t / "m/x.json", t / "m/x.record.json", t / "m/x.csv", t / "m/x"]


def checkpoint_not_torch(w, t):
    bad = t / "final.pt"
    bad.write_text("not a checkpoint")
    return evaluate_argv(w, bad, t / "m/x.json"), r"final\.pt: unreadable model file", [t / "m/x.json"]


def checkpoint_of_another_variant(w, t):
    import torch

    from pipeline_src.models import build_model

    record = torch.load(w.kpac, weights_only=True)
    record["state_dict"] = {k: v for k, v in build_model("kpac_dual").state_dict().items()}
    bad = t / "final.pt"
    torch.save(record, bad)
    return evaluate_argv(w, bad, t / "m/x.json"), \
        r"final\.pt: weights do not fit model 'kpac'|final\.pt: \S+ has shape \(.*\), model 'kpac' needs", \
        [t / "m/x.json"]


def checkpoint_missing(w, t):
    return evaluate_argv(w, t / "nope/final.pt", t / "m/x.json"), r"nope/final\.pt: no such model file", \
        [t / "m/x.json"]


def evaluate_split_empty(w, t):
    return evaluate_argv(w, w.kpac, t / "m/x.json", "--split", "nosuch"), r"split.*not 'nosuch'", \
        [t / "m/x.json"]


def evaluate_unknown_protocol(w, t):
    return evaluate_argv(w, w.kpac, t / "m/x.json", "--protocol", "dpdd_9bit"), r"dpdd_9bit", [t / "m/x.json"]


def evaluate_max_images_zero(w, t):
    return evaluate_argv(w, w.kpac, t / "m/x.json", "--max-images", "0"), r"--max-images 0; must be >= 1", \
        [t / "m/x.json"]


def synthesize_no_workers(w, t):
    return ["synthesize", "defocus", "--preset", "smoke", "--workers", "0", "--out", str(t / "raw")], \
        r"--workers 0: expected at least 1", [t / "raw"]


def registry_unknown_weight(w, t):
    (t / "config.yaml").write_text("weights: [vgg19, resnet9000]\n")
    return ["weights", "--config", str(t / "config.yaml"), "--out", str(t / "status.json"), "--root", str(t)], \
        r"unknown weight 'resnet9000'.*known weights:", [t / "status.json"]


def registry_not_yaml(w, t):
    (t / "reg.yaml").write_text("datasets: {a: [\n")
    return ["fetch", "a", "--registry", str(t / "reg.yaml"), "--root", str(t / "data")], \
        r"reg\.yaml: not valid YAML", [t / "data/raw/a"]


def _registry(t: Path, url: str, archive: str = "zip", sha256: str | None = None) -> Path:
    entry = {"title": "mini", "task": "defocus_dual_pixel", "layout": "dpdd", "bit_depth": 16,
             "splits": {"train": 1}, "test_only": False, "licence": "test data", "mask_in_focus_value": None,
             "root_in_archive": "mini",
             "files": [{"name": f"mini.{archive}", "archive": archive, "sha256": sha256, "urls": [url]}]}
    (t / "reg.yaml").write_text(yaml.safe_dump({"datasets": {"mini": entry}, "weights": {}}))
    return t / "reg.yaml"


def host_unreachable(w, t):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reg = _registry(t, f"http://127.0.0.1:{port}/mini.zip")
    return ["fetch", "mini", "--registry", str(reg), "--root", str(t / "data"), "--retries", "0",
            "--timeout", "2"], r"127\.0\.0\.1:\d+/mini\.zip", [t / "data/raw/mini"]


def archive_escaping_its_folder(w, t, server=None):
    import hashlib
    import io

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"x"
        info = tarfile.TarInfo("mini/../../evil.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    blob = buf.getvalue()
    (t / "downloads").mkdir()
    (t / "downloads/mini.tar.gz").write_bytes(blob)  # already downloaded: verified, then extracted
    reg = _registry(t, "http://127.0.0.1:9/mini.tar.gz", "tar.gz", hashlib.sha256(blob).hexdigest())
    return ["fetch", "mini", "--registry", str(reg), "--root", str(t)], r"evil\.txt", \
        [t / "raw/mini", t.parent / "evil.txt"]


CASES = [data_root_missing, image_truncated, jpeg_renamed_png, text_named_png, rgba_in_rgb_set, grey_in_rgb_set,
         link_out_of_tree, pair_of_two_sizes, mixed_bit_depths, missing_view, mask_with_colours,
         corrupt_defocus_map, manifest_not_json, manifest_of_old_format, manifest_missing, patch_size_not_an_integer,
         preset_batch_size_zero, preset_iterations_a_string, preset_changes_the_recipe, recipe_unknown_optimizer,
         recipe_unknown_loss, recipe_not_yaml, recipe_missing, unknown_preset, phase_out_of_range, negative_seed,
         previous_phase_of_another_model, checkpoint_truncated, checkpoint_not_torch, checkpoint_of_another_variant,
         checkpoint_missing, evaluate_split_empty, evaluate_unknown_protocol, evaluate_max_images_zero,
         synthesize_no_workers, registry_unknown_weight, registry_not_yaml, host_unreachable,
         archive_escaping_its_folder]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_a_user_mistake_ends_in_one_line_naming_the_culprit_and_leaves_no_output(case, world, tmp_path, capsys,
                                                                                 monkeypatch):
    monkeypatch.chdir(ROOT)
    argv, culprit, outputs = case(world, tmp_path)
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert re.search(culprit, errors[0]), errors[0]
    left = [str(p) for p in outputs if p.exists()]
    assert not left, f"output left under its final name: {left}"


def test_the_battery_covers_at_least_25_kinds_across_stages():
    stages = set()
    for case in CASES:
        src = case.__code__.co_names + case.__code__.co_consts
        stages |= {s for s in ("index_argv", "evaluate_argv", "train_argv") if s in src}
    assert len(CASES) >= 25 and len(stages) == 3


def test_debug_shows_the_traceback_of_a_user_error(world, tmp_path, capsys):
    argv = index_argv(tmp_path / "nowhere", tmp_path / "m.json")
    assert main([*argv, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith("error: ")


def test_a_bug_keeps_its_traceback(monkeypatch):
    import pipeline_src.data.manifest as manifest

    def broken(args):
        raise ZeroDivisionError("a bug, not a user error")

    monkeypatch.setattr(manifest, "run", broken)
    with pytest.raises(ZeroDivisionError):
        main(["index", "x", "--layout", "dpdd", "--root", "r", "--out", "o"])
