"""VGG16/19 features: torchvision's module indices, named taps, and the hash-verifying weight loader."""
import hashlib
import shutil

import pytest
import torch

from pipeline_src.errors import CheckpointError
from pipeline_src.models.vgg import VGGFeatures, layer_names, load_vgg_weights, verify_sha256
from tests.model_checks import count_parameters

torch.set_num_threads(1)

MULTIANET_TAPS = ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3")


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _torchvision_file(tmp_path, arch, seed):
    """A file laid out like torchvision's `vgg*-<hash>.pth`: features.N.* plus classifier keys, hash in the name."""
    torch.manual_seed(seed)
    features = VGGFeatures(arch, taps=("pool5",)).state_dict()
    state = {k: v.clone() for k, v in features.items()}
    state["classifier.0.weight"] = torch.zeros(4, 8)  # stand-ins: the loader must ignore the classifier
    state["classifier.0.bias"] = torch.zeros(4)
    state["classifier.6.weight"] = torch.zeros(2, 4)
    tmp = tmp_path / f"{arch}-unnamed.pth"
    torch.save(state, tmp)
    final = tmp_path / f"{arch}-{_sha256(tmp)[:8]}.pth"
    tmp.rename(final)
    return final, features


@pytest.fixture(scope="module")
def vgg19_file(tmp_path_factory):
    return _torchvision_file(tmp_path_factory.mktemp("vgg19"), "vgg19", seed=7)


def test_tap_indices_are_torchvisions():
    assert layer_names("vgg19")["conv4_4"] == 26
    assert [layer_names("vgg16")[t] for t in MULTIANET_TAPS] == [3, 8, 15, 22, 29]
    assert layer_names("vgg16")["pool5"] == 30 and layer_names("vgg19")["pool5"] == 36


@pytest.mark.parametrize("arch,params", [("vgg16", 14_714_688), ("vgg19", 20_024_384)])
def test_full_feature_stack_has_torchvisions_parameter_count_and_layout(arch, params):
    model = VGGFeatures(arch, taps=("pool5",))
    assert count_parameters(model) == params
    for name, i in layer_names(arch).items():
        kind = torch.nn.MaxPool2d if name.startswith("pool") else torch.nn.ReLU
        assert isinstance(model.features[i], kind)
        if name.startswith("conv"):
            assert isinstance(model.features[i - 1], torch.nn.Conv2d)


def test_model_stops_at_the_deepest_tap_and_returns_taps_after_relu():
    vgg = VGGFeatures("vgg19", taps=("conv4_4",))
    assert len(vgg.features) == 27
    assert count_parameters(vgg) == 10_585_152
    x = torch.randn(1, 3, 24, 24)
    with torch.no_grad():
        out = vgg(x)
        by_hand = vgg.features[:27](x)
    assert list(out) == ["conv4_4"] and out["conv4_4"].shape == (1, 512, 3, 3)
    assert torch.equal(out["conv4_4"], by_hand) and float(out["conv4_4"].min()) >= 0.0


def test_vgg16_taps_have_the_expected_widths_and_strides():
    vgg = VGGFeatures("vgg16", taps=MULTIANET_TAPS)
    with torch.no_grad():
        out = vgg(torch.randn(1, 3, 32, 48))
    shapes = [tuple(t.shape[1:]) for t in out.values()]
    assert shapes == [(64, 32, 48), (128, 16, 24), (256, 8, 12), (512, 4, 6), (512, 2, 3)]


def test_unknown_arch_or_tap_is_refused_with_the_accepted_names():
    with pytest.raises(ValueError, match="vgg11"):
        VGGFeatures("vgg11")
    with pytest.raises(ValueError, match=r"unknown \['conv4_4'\]"):
        VGGFeatures("vgg16", taps=("conv4_4",))  # VGG16 has 3 convs per deep block


def test_torchvision_layout_file_loads_and_returns_its_hash(vgg19_file):
    path, features = vgg19_file
    model = VGGFeatures("vgg19", taps=("conv4_4",))
    assert load_vgg_weights(model, path) == _sha256(path)  # prefix taken from the name
    for k, v in model.state_dict().items():
        assert torch.equal(v, features[k]), k
    other = VGGFeatures("vgg19", taps=("pool5",))
    load_vgg_weights(other, path, expected_sha256=_sha256(path))
    assert all(torch.equal(v, features[k]) for k, v in other.state_dict().items())


def test_wrong_hash_is_refused_naming_the_file(vgg19_file):
    path, _ = vgg19_file
    model = VGGFeatures("vgg19")
    with pytest.raises(ValueError, match=rf"{path.name}.*expected 0{{64}}"):
        load_vgg_weights(model, path, expected_sha256="0" * 64)
    with pytest.raises(ValueError, match=rf"{path.name}.*does not start with deadbeef"):
        load_vgg_weights(model, path, sha256_prefix="deadbeef")


def test_truncated_file_is_refused(vgg19_file, tmp_path):
    path, _ = vgg19_file
    cut = tmp_path / path.name  # same torchvision name, so the name's hash prefix is checked
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"{cut.name}.*does not start with"):
        load_vgg_weights(VGGFeatures("vgg19"), cut)
    # even with its own (matching) hash, a truncated pickle fails to load, and the error names the file
    with pytest.raises(ValueError, match=rf"{cut.name}: cannot be read as a PyTorch state dict"):
        load_vgg_weights(VGGFeatures("vgg19"), cut, expected_sha256=_sha256(cut))


def test_file_without_a_hash_to_check_is_refused(vgg19_file, tmp_path):
    path, _ = vgg19_file
    plain = tmp_path / "vgg19.pth"
    shutil.copyfile(path, plain)
    with pytest.raises(ValueError, match="vgg19.pth: no hash to verify against"):
        load_vgg_weights(VGGFeatures("vgg19"), plain)
    with pytest.raises(CheckpointError, match="fetch vgg19"):
        load_vgg_weights(VGGFeatures("vgg19"), tmp_path / "absent-12345678.pth")


def test_wrong_architecture_and_extra_keys_are_refused(vgg19_file, tmp_path):
    path, features = vgg19_file
    with pytest.raises(ValueError, match=r"not a torchvision vgg16 state dict; missing keys \['features.17.bias'"):
        load_vgg_weights(VGGFeatures("vgg16", taps=("pool5",)), path)  # VGG19's block 3 has 4 convs
    state = dict(features)
    state["features.0.weight"] = torch.zeros(64, 3, 5, 5)
    extra = tmp_path / "vgg19-shape.pth"
    torch.save(state, extra)
    with pytest.raises(ValueError, match=r"shapes differ from vgg19: \['features.0.weight: file \(64, 3, 5, 5\)"):
        load_vgg_weights(VGGFeatures("vgg19"), extra, expected_sha256=_sha256(extra))
    state = dict(features)
    state["features.99.weight"] = torch.zeros(1)
    extra = tmp_path / "vgg19-extra.pth"
    torch.save(state, extra)
    with pytest.raises(ValueError, match=r"unexpected keys \['features.99.weight'\]"):
        load_vgg_weights(VGGFeatures("vgg19"), extra, expected_sha256=_sha256(extra))
    del state["features.99.weight"], state["features.0.bias"]
    torch.save(state, extra)
    with pytest.raises(ValueError, match=r"missing keys \['features.0.bias'\]"):
        load_vgg_weights(VGGFeatures("vgg19"), extra, expected_sha256=_sha256(extra))


def test_verify_sha256_returns_the_full_hash(tmp_path):
    f = tmp_path / "blob-2cf24dba.bin"
    f.write_bytes(b"hello")
    assert verify_sha256(f) == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"


def test_torchvision_vgg16_name_is_checked_against_its_published_full_hash(tmp_path):
    """A file named vgg16-397923af.pth whose content only shares the 8-hex prefix would pass a prefix check."""
    fake = tmp_path / "vgg16-397923af.pth"
    fake.write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="expected 397923af8e79cdbb"):
        verify_sha256(fake)
