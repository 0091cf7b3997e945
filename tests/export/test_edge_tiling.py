"""The bundle's numpy tiling (edge_tiling.py): frames larger than a model's limit in overlapping tiles inside
it, equal to the whole-image result for a model whose receptive field fits the margin, and equal to the
evaluation stage's torch tiling with the same plan."""
import numpy as np
import onnxruntime as ort
import pytest
import torch

from pipeline_src.evaluate.tiling import plan_tiles, tiled_forward
from pipeline_src.export import edge_tiling
from pipeline_src.model_io import load_model


class Limited:
    """A model that refuses inputs beyond `max_hw` (as an engine's profile does) and records what it was given."""

    def __init__(self, fn, max_hw):
        self.fn, self.max_hw, self.seen = fn, max_hw, []

    def __call__(self, x):
        assert x.shape[-2] <= self.max_hw[0] and x.shape[-1] <= self.max_hw[1], x.shape
        self.seen.append(tuple(x.shape[-2:]))
        return self.fn(x)


@pytest.fixture(scope="module")
def session(exported):
    return ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])


def test_tiles_equal_the_whole_image_for_a_receptive_field_inside_the_margin(session):
    x = np.random.default_rng(0).random((1, 3, 203, 301), dtype=np.float32)
    whole = session.run(None, {"input": x})[0]
    model = Limited(lambda t: session.run(None, {"input": t})[0], (96, 128))
    spec = edge_tiling.plan((96, 128), overlap=32, margin=8, size_multiple=4)
    tiled = edge_tiling.run_tiled(model, x, spec)
    assert tiled.shape == whole.shape and tiled.dtype == np.float32
    assert np.abs(tiled - whole).max() < 1e-5
    assert len(model.seen) == edge_tiling.count_tiles(203, 301, spec) == 3 * 3 and set(model.seen) == {(96, 128)}


def test_numpy_tiling_equals_the_evaluation_stages_torch_tiling(tiny_setup):
    model, _ = load_model(tiny_setup["checkpoint"])
    x = np.random.default_rng(1).random((1, 3, 150, 170), dtype=np.float32)
    with torch.no_grad():
        reference = tiled_forward(model, torch.from_numpy(x), plan_tiles(96, 32, 8, 1, 4)).numpy()

        def run(t):
            return model(torch.from_numpy(t)).numpy()

        ours = edge_tiling.run_tiled(run, x, edge_tiling.plan((96, 96), 32, 8, 4))
    assert np.abs(ours - reference).max() < 1e-5


@pytest.mark.parametrize("width,height,tiles", [(1920, 1080, 2), (3840, 2160, 6), (1680, 1120, 1), (640, 480, 1)])
def test_frames_beyond_a_1680x1120_profile_are_cut_into_tiles_inside_it(width, height, tiles):
    spec = edge_tiling.plan((1120, 1680), overlap=64, margin=16, size_multiple=4, min_hw=(64, 64))
    model = Limited(lambda t: 2.0 * t + 1.0, (1120, 1680))
    x = np.random.default_rng(2).random((1, 3, height, width), dtype=np.float32)
    y = edge_tiling.run_tiled(model, x, spec)
    assert len(model.seen) == tiles == edge_tiling.count_tiles(height, width, spec)
    assert np.allclose(y, 2.0 * x + 1.0, atol=1e-5)  # the blend weights sum to one everywhere


def test_small_frames_are_padded_up_to_the_profile_minimum_and_cropped_back():
    spec = edge_tiling.plan((1120, 1680), 64, 16, 4, min_hw=(64, 64))
    model = Limited(lambda t: t, (1120, 1680))
    x = np.random.default_rng(3).random((1, 3, 21, 30), dtype=np.float32)
    assert np.array_equal(edge_tiling.run_tiled(model, x, spec), x) and model.seen == [(64, 64)]


@pytest.mark.parametrize("tile,overlap,margin,match", [
    ((128, 128), 32, 16, "leaves no blend band"),
    ((96, 96), 64, 8, "at least twice the overlap"),
    ((96, 96), 32, 8, None),
])
def test_bad_tilings_are_refused(tile, overlap, margin, match):
    if match is None:
        assert edge_tiling.plan(tile, overlap, margin, 4).tile_hw == (96, 96)
        return
    with pytest.raises(ValueError, match=match):
        edge_tiling.plan(tile, overlap, margin, 4)
