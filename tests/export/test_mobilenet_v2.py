import pytest
import torch

from ftlct.export.mobilenet_v2 import (
    MobileNetV2,
    WeightsError,
    backbone_from_state,
    backbone_state,
    imagenet_mobilenet_v2,
    load_into,
    load_state_dict_file,
)


def test_state_dict_keys_match_torchvision_layout(imagenet_weights):
    torchvision_state = torch.load(imagenet_weights, map_location="cpu", weights_only=True)
    ours = MobileNetV2().state_dict()
    assert list(ours) == list(torchvision_state)
    assert all(ours[k].shape == torchvision_state[k].shape for k in ours)


def test_imagenet_weights_classify_in_eval_mode(imagenet_weights):
    model = imagenet_mobilenet_v2(imagenet_weights)
    assert not model.training
    with torch.no_grad():
        logits = model(torch.zeros(1, 3, 224, 224))
    assert logits.shape == (1, 1000)


def test_missing_weights_file_is_one_line(tmp_path):
    with pytest.raises(WeightsError, match="not found") as info:
        load_state_dict_file(tmp_path / "absent.pth", None)
    assert "\n" not in str(info.value)


def test_wrong_hash_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(MobileNetV2().state_dict(), path)
    with pytest.raises(WeightsError, match="sha256"):
        imagenet_mobilenet_v2(path)


def test_not_a_state_dict_is_refused(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(WeightsError, match="not a torch state dict"):
        load_state_dict_file(path, None)


def test_state_dict_that_does_not_fit_names_the_keys(tmp_path):
    state = MobileNetV2(num_classes=10).state_dict()
    del state["features.0.0.weight"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError) as info:
        load_into(MobileNetV2(), state)
    message = str(info.value)
    assert "1 missing (e.g. features.0.0.weight)" in message
    assert "1 unexpected (e.g. extra.weight)" in message
    assert "2 of wrong shape (e.g. classifier.1.bias: (10,) vs (1000,))" in message
    assert "\n" not in message


def test_backbone_round_trips_through_its_state():
    torch.manual_seed(0)
    model = MobileNetV2().eval()
    rebuilt = backbone_from_state(backbone_state(model))
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(model.embed(x), rebuilt(x))
