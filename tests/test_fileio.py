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


def test_stale_partials_of_dead_processes_are_removed_but_a_live_ones_kept(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    (tmp_path / f".out.{dead_pid}.abc.partial").mkdir()
    (tmp_path / f".out.{dead_pid}.abc.partial" / "half.png").write_bytes(b"x")
    (tmp_path / f".f.json.{dead_pid}.xyz.tmp").write_text("{")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / f".out.{live.pid}.def.partial").mkdir()
        with atomic_dir(tmp_path / "out") as d:
            (d / "x").write_text("1")
        atomic_write_text(tmp_path / "f.json", "{}")
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == [f".out.{live.pid}.def.partial", "f.json", "out"]
    finally:
        live.kill()
        live.wait()


def test_an_output_set_appears_together_marker_last_and_a_failure_leaves_none(tmp_path):
    from pipeline_src.fileio import output_set

    a, marker = tmp_path / "quality.json", tmp_path / "model.onnx"
    with output_set([a, marker]) as tmp:
        tmp[a].write_text("1")
        tmp[marker].write_bytes(b"m1")
    assert a.read_text() == "1" and marker.read_bytes() == b"m1"
    with pytest.raises(ValueError):
        with output_set([a, marker]) as tmp:
            tmp[a].write_text("2")
            raise ValueError("crash")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the old set is gone too: it was being replaced
    with pytest.raises(RuntimeError, match="model.onnx"):
        with output_set([a, marker]) as tmp:
            tmp[a].write_text("3")  # the marker is never written
    assert list(tmp_path.iterdir()) == []


def test_the_kill_switch_kills_the_main_process_at_its_nth_commit(tmp_path):
    import subprocess
    import sys

    code = ("from pipeline_src.fileio import atomic_write_text\n"
            "for i in range(5):\n"
            f"    atomic_write_text(r'{tmp_path}/f%d.txt' % i, 'x')\n")
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PIPELINE_KILL_AT": "3"})
    assert r.returncode == -9
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["f0.txt", "f1.txt"]
