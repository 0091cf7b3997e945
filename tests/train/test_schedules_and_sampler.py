
import pytest

from pipeline_src.train.sampler import batches_per_epoch, epoch_batches
from pipeline_src.train.schedules import build_schedule


def test_constant():
    f = build_schedule({"name": "constant"}, 100, 10)
    assert [f(s) for s in (0, 50, 99)] == [1.0, 1.0, 1.0]


def test_step_halving_every_n_epochs_converts_epochs_to_steps():
    # ATTSF: halve every 20 epochs; 7 steps per epoch -> period 140 steps
    f = build_schedule({"name": "step", "every_epochs": 20, "gamma": 0.5}, 10_000, 7)
    assert f(0) == 1.0 and f(139) == 1.0 and f(140) == 0.5 and f(280) == 0.25


def test_poly_matches_tf_polynomial_decay_power_0_3():
    # ADNet: lr(step) = lr0 * (1 - step/max_steps) ** 0.3, ending at 0
    f = build_schedule({"name": "poly", "power": 0.3}, 1000, 10)
    for s in (0, 1, 250, 500, 999, 1000):
        assert f(s) == pytest.approx((1 - s / 1000) ** 0.3)
    assert f(2000) == 0.0  # clamped past the end


@pytest.mark.parametrize("spec", [{"name": "step"}, {"name": "step", "every_epochs": 2, "every_steps": 3},
                                  {"name": "poly", "powr": 2}])
def test_bad_schedule_arguments_are_named(spec):
    with pytest.raises(ValueError, match=spec["name"]):
        build_schedule(spec, 100, 10)


def test_unknown_schedule_lists_known_names():
    with pytest.raises(KeyError, match="constant"):
        build_schedule({"name": "cosine-ish"}, 100, 10)


def test_epoch_order_depends_only_on_seed_and_epoch_and_resumes_mid_epoch():
    full = list(epoch_batches(50, 4, seed=3, epoch=2))
    resumed = list(epoch_batches(50, 4, seed=3, epoch=2, start_batch=5))
    assert resumed == full[5:]
    assert full != list(epoch_batches(50, 4, seed=3, epoch=3))
    flat = [i for _, b in full for i in b]
    assert len(flat) == len(set(flat)) == 12 * 4  # no repeats, the tail that cannot fill a batch is dropped


def test_ranks_split_one_permutation_without_overlap():
    r0 = [i for _, b in epoch_batches(40, 4, seed=0, epoch=0, rank=0, world_size=2) for i in b]
    r1 = [i for _, b in epoch_batches(40, 4, seed=0, epoch=0, rank=1, world_size=2) for i in b]
    assert len(r0) == len(r1) == 20 and not set(r0) & set(r1)


def test_too_few_patches_for_a_batch_is_an_error_that_says_what_to_change():
    with pytest.raises(ValueError, match="batch_size"):
        batches_per_epoch(3, 4)


@pytest.mark.parametrize("sampling, augment", [
    ("windows", {"hflip": True, "vflip": True, "rot90": True}),          # ATTSF
    ("whole_images", {}),                                                  # KPAC
    ("whole_images", {"hflip": True, "scale": [0.75, 1.25], "rotate_degrees": 10.0}),   # MultiANet
])
def test_batches_resumed_mid_run_equal_the_uninterrupted_ones(defocus_data, sampling, augment):
    """What the runner feeds (its sampler, set_epoch and loader) is a pure function of (seed, epoch, index): a
    fresh training set started at (epoch 1, batch 1), in worker processes, gives the same tensors."""
    import torch

    from pipeline_src.models import build_model
    from pipeline_src.train import batches as batch_io

    torch.set_num_threads(1)
    model = build_model("kpac", levels=2)
    phase = {"name": "t", "sampling": sampling, "crop": 24, "augment": augment, "batch_size": 2}

    def run(start_epoch: int, start_batch: int, workers: int) -> list:
        data = batch_io.training_set(defocus_data["patches"], phase, model, seed=11)
        out = []
        for epoch in range(start_epoch, 3):
            data.set_epoch(epoch)
            order = [b for _, b in epoch_batches(len(data), 2, 11, epoch, start_batch if epoch == start_epoch else 0)]
            out += [torch.cat([batch["c"], batch["target"]], 1) for batch in batch_io.loader(data, order, workers)]
        return out

    straight = run(0, 0, 0)
    per_epoch = batches_per_epoch(len(batch_io.training_set(defocus_data["patches"], phase, model, seed=11)), 2)
    resumed = run(1, 1, 2)
    assert len(resumed) == len(straight) - per_epoch - 1
    for a, b in zip(straight[per_epoch + 1:], resumed):
        assert torch.equal(a, b)
    assert not torch.equal(straight[0], straight[per_epoch])   # epochs differ


def test_validation_windows_can_be_read_at_the_phase_bit_depth(defocus_data):
    import torch

    from pipeline_src.models import build_model
    from pipeline_src.train import batches as batch_io

    model = build_model("kpac", levels=2)
    full = batch_io.validation_batches(defocus_data["patches"], model, 2)
    eight = batch_io.validation_batches(defocus_data["patches"], model, 2, bit_depth=8)
    assert len(full) == len(eight) == 2
    for a, b in zip(full, eight):
        assert a["c"].shape == b["c"].shape and not torch.equal(a["c"], b["c"])
        # 8-bit levels: round(65535 x / 257) / 255
        torch.testing.assert_close(b["c"], torch.round(a["c"] * 65535 / 257) / 255, rtol=0, atol=1e-6)
