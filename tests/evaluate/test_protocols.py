"""Protocols: the shipped file loads, bit-depth conversion, output quantisation, and bad files name the fault."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline_src.config import load_yaml
from pipeline_src.evaluate.protocols import ProtocolError, convert_bit_depth, load_protocols, quantize

REPO = Path(__file__).resolve().parents[2]
PROTOCOLS = REPO / "config" / "protocols.yaml"


@pytest.fixture(scope="module")
def book():
    return load_protocols(PROTOCOLS)


def test_shipped_protocols_cover_every_recipe(book):
    named = {load_yaml(p)["protocol"] for p in (REPO / "config" / "models").glob("*.yaml")}
    assert named <= set(book.names())
    assert {"dpdd_single_8bit", "dpdd_dual_8bit", "dpdd_dual_16bit", "gopro_8bit", "dbd_cuhk"} <= set(book.names())


def test_shipped_protocol_facts(book):
    single, dual, gopro, dbd = (book.get(n) for n in ("dpdd_single_8bit", "dpdd_dual_16bit", "gopro_8bit",
                                                      "dbd_cuhk"))
    assert (single.bit_depth, single.quantize) == (8, "round")
    assert (dual.bit_depth, dual.quantize) == (16, "none")
    assert (gopro.bit_depth, gopro.quantize) == (8, "truncate")
    assert dbd.task == "detection" and dbd.activation == "sigmoid" and dbd.baselines == ("sharpness",)
    for p in (single, dual, gopro, dbd):
        assert p.data_range == 1.0 and p.colour_order == "RGB" and p.border_crop == 0
        assert p.ssim == {"window": 7, "gaussian": False, "covariance": "sample"}
    assert single.record()["metrics"] == ["psnr", "ssim", "mae", "lpips"]


def test_kpac_dual_is_scored_at_8_bits_as_its_eval_script_reads_images(book):
    """main_eval_dual.py reads C, L and R at 8 bits and writes rounded 8-bit PNGs: KPAC-dual's row and its
    published Table 9 figures both follow dpdd_dual_8bit; the 16-bit protocol stays for DPDNet / ATTSF."""
    dual8, single8, dual16 = book.get("dpdd_dual_8bit"), book.get("dpdd_single_8bit"), book.get("dpdd_dual_16bit")
    assert (dual8.bit_depth, dual8.quantize, dual8.quantize_bits, dual8.clip) == (8, "round", 8, (0.0, 1.0))
    assert "round(x / 257)" in dual8.conversion_from(16)
    img16 = np.array([[0, 128, 129, 32896, 65535]], np.uint16)
    np.testing.assert_array_equal(dual8.read(img16), [[0, 0, 1, 128, 255]])
    out = np.array([0.3 / 255, 0.6 / 255, 1.2], np.float32)
    np.testing.assert_allclose(dual8.finish(out) * 255, [0, 1, 255], atol=1e-4)
    # the same scoring as the single-image 8-bit protocol, apart from the description and notes
    same = ("task", "bit_depth", "data_range", "activation", "clip", "quantize", "quantize_bits", "border_crop",
            "ssim", "metrics", "splits", "baselines", "tiling")
    assert {k: getattr(dual8, k) for k in same} == {k: getattr(single8, k) for k in same}
    assert dual16.bit_depth == 16 and dual16.quantize == "none"
    recipe = load_yaml(REPO / "config" / "models" / "kpac_dual.yaml")
    assert recipe["protocol"] == "dpdd_dual_8bit"
    assert load_yaml(REPO / "config" / "models" / "attsf.yaml")["protocol"] == "dpdd_dual_16bit"
    published = load_yaml(REPO / "config" / "published.yaml")
    (entry,) = [e for e in published["entries"] if e["recipe"] == "kpac_dual"]
    assert entry["protocol"] == "dpdd_dual_8bit" and entry["source"].startswith("Table 9")
    assert [r["psnr"] for r in entry["rows"] if r["kind"] == "model"] == [25.86]


def test_16_to_8_bit_is_round_x_over_257():
    x = np.arange(65536, dtype=np.uint16)
    got = convert_bit_depth(x, 8)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.round(x / 257.0).astype(np.uint8))
    assert got[0] == 0 and got[-1] == 255 and got[128] == 0 and got[129] == 1
    # every 8-bit level survives the round trip x * 257 -> 8 bit
    levels = np.arange(256, dtype=np.uint16) * 257
    np.testing.assert_array_equal(convert_bit_depth(levels, 8), np.arange(256))


def test_adnets_defocus_protocol_reads_dpdd_as_pillow_does(book, tmp_path):
    """ADNet's defocus() reads DPDD's 16-bit PNGs with scipy.misc.imread, i.e. Pillow: the protocol keeps the same
    8-bit values (the high byte), where the DPDD papers' conversion rounds x / 257."""
    import cv2
    from PIL import Image

    from pipeline_src.fileio import read_image

    pil = book.get("dpdd_single_8bit_pil")
    rgb = np.random.default_rng(0).integers(0, 65536, (6, 7, 3), dtype=np.uint16)
    rgb[0, :3] = [[255, 256, 32896], [65279, 65280, 65535], [128, 129, 257]]  # where the two rules part
    path = tmp_path / "dpdd16.png"
    cv2.imwrite(str(path), rgb[..., ::-1])  # a 16-bit RGB PNG, as DPDD's
    pillow = np.array(Image.open(path))  # what scipy.misc.imread returned: Image.open, then np.array
    assert pillow.dtype == np.uint8
    ours = pil.read(read_image(path))
    np.testing.assert_array_equal(ours, pillow)
    assert not np.array_equal(book.get("dpdd_single_8bit").read(read_image(path)), pillow)
    assert "high byte" in pil.conversion_from(16) and pil.depth_conversion == "high_byte"
    assert (pil.quantize, pil.tiling.tile, pil.bit_depth) == ("truncate", 1792, 8)  # im2uint8; whole 1680 x 1120
    assert book.get("gopro_8bit").depth_conversion == "round"  # the default


def test_same_depth_is_untouched_and_8_to_16_is_refused(book):
    u8 = np.array([[0, 7, 255]], np.uint8)
    assert convert_bit_depth(u8, 8) is u8
    with pytest.raises(ValueError, match="source is 8-bit"):
        convert_bit_depth(u8, 16)
    with pytest.raises(TypeError, match="uint8 or uint16"):
        convert_bit_depth(u8.astype(np.float32), 8)
    dual = book.get("dpdd_dual_16bit")
    with pytest.raises(ProtocolError, match="cannot be converted"):
        dual.conversion_from(8)
    assert "round(x / 257)" in book.get("dpdd_single_8bit").conversion_from(16)


def test_read_and_to_float(book):
    single = book.get("dpdd_single_8bit")
    img16 = np.array([[0, 32896, 65535]], np.uint16)
    as8 = single.read(img16)
    np.testing.assert_array_equal(as8, [[0, 128, 255]])
    np.testing.assert_allclose(single.to_float(as8), [[0, 128 / 255, 1]], rtol=1e-6)
    with pytest.raises(TypeError, match="8-bit"):
        single.to_float(img16)
    dual = book.get("dpdd_dual_16bit")
    np.testing.assert_allclose(dual.to_float(dual.read(img16)), [[0, 32896 / 65535, 1]], rtol=1e-6)


def test_quantisation_modes():
    x = np.array([0.0, 0.5 / 255, 0.7 / 255, 1.3 / 255, 254.9 / 255, 1.0], np.float32)
    np.testing.assert_allclose(quantize(x, "round", 8) * 255, [0, 0, 1, 1, 255, 255], atol=1e-4)  # 0.5 -> even
    np.testing.assert_allclose(quantize(x, "truncate", 8) * 255, [0, 0, 0, 1, 254, 255], atol=1e-4)
    assert quantize(x, "none", 8) is x
    on_grid = (np.arange(256, dtype=np.float32) / 255).astype(np.float32)
    np.testing.assert_array_equal(quantize(on_grid, "truncate", 8), on_grid)  # k / 255 stays k
    with pytest.raises(ValueError, match="quantize mode"):
        quantize(x, "dither", 8)


def test_finish_applies_activation_clip_and_quantisation(book):
    gopro, dbd = book.get("gopro_8bit"), book.get("dbd_cuhk")
    out = gopro.finish(np.array([-0.2, 0.5, 1.7, 100.9 / 255], np.float32))
    np.testing.assert_allclose(out * 255, [0, 127, 255, 100], atol=1e-4)
    np.testing.assert_allclose(dbd.finish(np.array([0.0, 50.0, -50.0])), [0.5, 1.0, 0.0], atol=1e-12)
    with pytest.raises(TypeError, match="floats"):
        gopro.finish(np.array([1, 2], np.uint8))


def _write(tmp_path, mutate) -> Path:
    raw = yaml.safe_load(PROTOCOLS.read_text())
    mutate(raw)
    path = tmp_path / "protocols.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("mutate,match", [
    (lambda r: r["protocols"]["gopro_8bit"].update(bit_depth=12), r"gopro_8bit\.bit_depth"),
    (lambda r: r["protocols"]["gopro_8bit"].update(colour_order="BGR"), r"gopro_8bit\.colour_order"),
    (lambda r: r["protocols"]["gopro_8bit"].update(depth_conversion="floor"), r"gopro_8bit\.depth_conversion"),
    (lambda r: r["protocols"]["gopro_8bit"]["output"].update(quantize="floor"), r"gopro_8bit\.output\.quantize"),
    (lambda r: r["protocols"]["gopro_8bit"].update(typo_field=1), r"typo_field"),
    (lambda r: r["protocols"]["gopro_8bit"].update(metrics=["psnr", "vif"]), r"\['vif'\] not known"),
    (lambda r: r["protocols"]["dbd_cuhk"].update(metrics=["psnr"]), r"dbd_cuhk\.metrics"),
    (lambda r: r["protocols"]["gopro_8bit"]["ssim"].update(gaussian=True), r"gopro_8bit\.ssim"),
    (lambda r: r["protocols"]["gopro_8bit"]["output"].update(clip=[0.5, 0.2]), r"output\.clip"),
    (lambda r: r["protocols"]["gopro_8bit"]["tiling"].update(margin=40), r"tiling: margin 40"),
    (lambda r: r["protocols"]["dbd_cuhk"].update(baselines=["input"]), r"dbd_cuhk\.baselines"),
    (lambda r: r["protocols"]["gopro_8bit"].pop("splits"), r"'splits' is a required property"),
    (lambda r: r["baseline_settings"]["wiener"].update(balance=-1), r"baseline_settings\.wiener\.balance"),
])
def test_bad_protocol_fields_are_named(tmp_path, mutate, match):
    path = _write(tmp_path, mutate)
    with pytest.raises(ProtocolError, match=match) as err:
        load_protocols(path)
    assert str(path) in str(err.value)


def test_unknown_protocol_name_lists_the_known_ones(book):
    known = r"known: dbd_cuhk, dpdd_dual_16bit, dpdd_dual_8bit"
    with pytest.raises(ProtocolError, match=r"no protocol 'dpdd_8bit'; " + known):
        book.get("dpdd_8bit")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(Exception, match="no such config file"):
        load_protocols(tmp_path / "nope.yaml")
