import os
import stat

import numpy as np
import pytest

from pipeline_src.fileio import ImageReadError, atomic_dir, atomic_path, atomic_write_text, read_image, write_image


def test_atomic_file_is_renamed_into_place_with_normal_permissions(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "hello")
    assert (tmp_path / "a.txt").read_text() == "hello"
    umask = os.umask(0); os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_a_failed_write_leaves_neither_the_file_nor_a_temp_behind(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_only_when_complete(tmp_path):
    final = tmp_path / "out"
    with atomic_dir(final) as d:
        (d / "x").write_text("1")
    with pytest.raises(ValueError):
        with atomic_dir(final) as d:
            (d / "x").write_text("2")
            raise ValueError("crash")
    assert (final / "x").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_images_keep_bit_depth_and_colour_order_and_truncation_is_named(tmp_path):
    img = (np.arange(4 * 5 * 3).reshape(4, 5, 3) * 1000).astype(np.uint16)
    write_image(tmp_path / "a.png", img)
    back = read_image(tmp_path / "a.png")
    assert back.dtype == np.uint16 and np.array_equal(back, img)
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.png"):
        read_image(tmp_path / "cut.png")
    with pytest.raises(ImageReadError, match="missing.png"):
        read_image(tmp_path / "missing.png")
