"""Loading a model file: the model comes back with exactly the saved weights and behaviour, without drawing
initial weights it would overwrite (pipeline_src/model_io.py, initial_weights_not_drawn)."""
import pytest
import torch
from torch import nn

from pipeline_src.model_io import INIT_FUNCTIONS, initial_weights_not_drawn, load_model, model_record, save_model_file
from pipeline_src.models import build_model

# kpac: a shared kernel drawn by hand; adnet: Xavier; multianet: VGG16 with non-persistent mean/std buffers,
# which no file holds and which must keep their values
MODELS = ["kpac", "adnet", "multianet"]


@pytest.mark.parametrize("name", MODELS)
def test_a_loaded_model_has_the_saved_weights_and_outputs_and_draws_no_random_numbers(name, tmp_path):
    torch.manual_seed(1)
    model = build_model(name).eval()
    path = tmp_path / "final.pt"
    save_model_file(path, model_record(model, name, {}))
    x = torch.rand(1, 3 * len(model.input_views), 40, 56)

    rng = torch.get_rng_state()
    loaded, record = load_model(path)
    assert torch.equal(torch.get_rng_state(), rng)  # nothing was drawn
    assert record["model"]["name"] == name and not loaded.training
    for (key, saved), (key2, got) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert key == key2 and torch.equal(saved, got), key
    for (key, saved), (_, got) in zip(model.named_buffers(), loaded.named_buffers()):
        assert torch.equal(saved, got), key  # the non-persistent ones too
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_init_functions_are_restored_after_the_build_and_after_an_error():
    originals = {f: getattr(nn.init, f) for f in INIT_FUNCTIONS}
    with initial_weights_not_drawn():
        w = torch.full((4, 4), 7.0)
        assert nn.init.normal_(w) is w and torch.equal(w, torch.full((4, 4), 7.0))
    with pytest.raises(RuntimeError, match="boom"), initial_weights_not_drawn():
        raise RuntimeError("boom")
    assert {f: getattr(nn.init, f) for f in INIT_FUNCTIONS} == originals
    w = torch.zeros(64)
    nn.init.normal_(w)
    assert w.std() > 0.5  # drawing works again
