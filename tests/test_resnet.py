"""ResNets: the feature-tap interface (stage names, one-pass features, upto, classifier on "pooled"), sizes, errors."""
import pytest
import torch

from kdteach.models import (
    CifarResNet,
    TorchvisionResNet,
    resnet18,
    resnet_cifar,
    resnet_student,
    resnet_teacher,
    stage_feature_vectors,
)


def test_cifar_stage_shapes_and_forward_is_the_head_on_pooled():
    torch.manual_seed(0)
    model = resnet_cifar(14, 8, num_classes=3, in_channels=1).eval()
    x = torch.randn(2, 1, 16, 16)
    taps = model.features(x)
    assert tuple(taps) == model.stage_names == ("stem", "layer1", "layer2", "layer3", "pooled")
    assert taps["stem"].shape == (2, 8, 16, 16) and taps["layer1"].shape == (2, 8, 16, 16)
    assert taps["layer2"].shape == (2, 16, 8, 8) and taps["layer3"].shape == (2, 32, 4, 4)
    assert taps["pooled"].shape == (2, model.feature_dim) == (2, 32)
    torch.testing.assert_close(taps["pooled"], taps["layer3"].mean(dim=(2, 3)))
    torch.testing.assert_close(model(x), model.classifier(taps["pooled"]))
    assert isinstance(model.classifier, torch.nn.Linear) and model.classifier.out_features == 3
    assert len(model.layer1) == 2  # depth 14 = 6 * 2 + 2: two blocks per stage


def test_upto_stops_early():
    model = resnet_cifar(8, 4, num_classes=2)
    calls = []
    model.layer2.register_forward_hook(lambda *_: calls.append("layer2"))
    taps = model.features(torch.randn(1, 3, 8, 8), upto="layer1")
    assert tuple(taps) == ("stem", "layer1") and calls == []
    with pytest.raises(ValueError, match="upto"):
        model.features(torch.randn(1, 3, 8, 8), upto="layer4")


def test_presets_student_smaller_than_teacher():
    student, teacher = resnet_student(2), resnet_teacher(2)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert isinstance(student, CifarResNet) and count(student) * 10 < count(teacher)


@pytest.mark.parametrize("kwargs, argument", [({"depth": 10}, "depth"), ({"width": 0}, "width"), ({"num_classes": 0}, "num_classes")])
def test_bad_configuration_names_the_argument(kwargs, argument):
    settings = {"depth": 8, "width": 4, "num_classes": 2, **kwargs}
    with pytest.raises(ValueError, match=argument):
        resnet_cifar(**settings)


def test_torchvision_adapter_has_the_same_interface_and_downloads_nothing():
    torch.manual_seed(0)
    model = resnet18(num_classes=2).eval()  # weights=None: random initialisation, no download
    assert isinstance(model, TorchvisionResNet) and model.feature_dim == 512
    x = torch.randn(1, 3, 64, 64)  # any size works; 224 is what it is meant for
    taps = model.features(x)
    assert tuple(taps) == model.stage_names == ("stem", "layer1", "layer2", "layer3", "layer4", "pooled")
    assert taps["stem"].shape == (1, 64, 16, 16) and taps["layer4"].shape == (1, 512, 2, 2)
    torch.testing.assert_close(model(x), model.classifier(taps["pooled"]))
    with pytest.raises(ValueError, match="arch"):
        TorchvisionResNet("resnet34", 2)


def test_stage_feature_vectors_pool_maps_and_keep_vectors():
    features = {"a": torch.arange(8.0).reshape(1, 2, 2, 2), "b": torch.ones(1, 5)}
    vectors = stage_feature_vectors(features)
    assert vectors["a"].tolist() == [[1.5, 5.5]] and vectors["b"].shape == (1, 5)
