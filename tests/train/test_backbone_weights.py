"""MultiANet's VGG16 backbone: loaded and hash-checked at the start of a phase, or absent with a tag."""
import pytest
import torch

from pipeline_src.models import build_model
from pipeline_src.train.batches import load_pretrained_backbone

RECIPE = {"model": {"name": "multianet"}, "weights": {"backbone": "vgg16"}}


def test_missing_backbone_weights_warn_and_tag_and_training_goes_on(tmp_path):
    model = build_model("multianet")
    with pytest.warns(RuntimeWarning, match="RANDOM backbone"):
        tags = load_pretrained_backbone(model, RECIPE, tmp_path)
    assert tags == {"weights.backbone.pretrained": "false"} and not model.pretrained


def test_a_backbone_file_with_the_wrong_hash_is_refused_by_name(tmp_path):
    model = build_model("multianet")
    state = {f"features.{k}": v for k, v in model.backbone.state_dict().items()}
    torch.save(state, tmp_path / "vgg16-397923af.pth")
    with pytest.raises(ValueError, match="vgg16-397923af.pth"):
        load_pretrained_backbone(model, RECIPE, tmp_path)


def test_recipes_without_a_backbone_are_untouched(tmp_path):
    assert load_pretrained_backbone(build_model("kpac"), {"model": {"name": "kpac"}}, tmp_path) == {}
