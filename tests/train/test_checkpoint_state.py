import random

import numpy as np
import torch

from pipeline_src.train.checkpoint import load_training_state, save_training_state, set_rng_state


def test_training_state_round_trip_restores_rng_and_optimizer(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(4, 3)).sum().backward()
    opt.step()
    random.seed(5); np.random.seed(6); torch.manual_seed(7)
    path = tmp_path / "last.pt"
    save_training_state(path, model=model, optimizer=opt, scaler=None, step=12, epoch=1, batch_in_epoch=3,
                        identity={"seed": 0}, mlflow_run_id=None)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))

    state = load_training_state(path)  # weights_only=True inside
    set_rng_state(state["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (12, 1, 3)
    opt2 = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt2.load_state_dict(state["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert not list(tmp_path.glob(".*tmp")), "the atomic write left a temp file behind"


def test_a_file_that_is_not_a_training_state_is_refused(tmp_path):
    import pytest

    path = tmp_path / "x.pt"
    torch.save({"hello": 1}, path)
    with pytest.raises(ValueError, match="not a training state"):
        load_training_state(path)
