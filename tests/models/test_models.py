"""Model registry: loading, carried preprocessing, layer lookup and its error text, checkpoints."""

from __future__ import annotations

import pytest
import torch

from vislib import models
from vislib.errors import ConfigError, LayerError, MissingWeightsError, UnknownNameError
from vislib.training import save_checkpoint


def test_every_registered_model_builds_with_random_weights_and_carries_preprocessing():
    for name in ["demonet", "resnet18", "alexnet", "efficientnet_lite0"]:
        net = models.load(name, "random")
        assert not net.training
        prep = models.preprocessing_of(net)
        x = torch.rand(1, 3, prep.input_size, prep.input_size)
        assert torch.allclose(prep.denormalize(prep.normalize(x)), x, atol=1e-6)
        models.resolve_layer(net, net.vislib_default_layer)
        assert net.vislib_default_layer in models.spatial_layer_names(net)


def test_efficientnet_lite0_uses_half_mean_and_std_and_imagenet_names():
    net = models.load("efficientnet_lite0", "IMAGENET")
    prep = models.preprocessing_of(net)
    assert prep.mean == (0.5, 0.5, 0.5) and prep.std == (0.5, 0.5, 0.5) and prep.input_size == 224
    assert len(net.vislib_class_names) == 1000 and net.vislib_class_names[967] == "espresso"


def test_resolve_layer_error_lists_nearest_names():
    net = models.load("resnet18", "random")
    assert models.resolve_layer(net, "layer4.1.conv2") is net.layer4[1].conv2
    with pytest.raises(LayerError) as info:
        models.resolve_layer(net, "layer4.1.conv3")
    message = str(info.value)
    assert "'layer4.1.conv3'" in message and "Did you mean 'layer4.1.conv2'" in message


def test_unknown_model_and_weights_name_the_valid_choices():
    with pytest.raises(UnknownNameError, match="resnet50"):
        models.load("resnet5O")
    with pytest.raises(ConfigError, match="IMAGENET1K_V1"):
        models.load("resnet18", "IMAGENET_V9")


def test_pretrained_weights_missing_offline_name_url_and_file(monkeypatch, tmp_path):
    monkeypatch.setenv("VISLIB_WEIGHTS", str(tmp_path / "vislib"))
    # torch.hub.set_dir elsewhere pins the hub dir for the process, so patch the lookup, not TORCH_HOME.
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch_hub"))
    with pytest.raises(MissingWeightsError) as info:
        models.load("resnet18", "IMAGENET1K_V1")
    assert "https://download.pytorch.org/models/resnet18" in str(info.value)
    assert str(tmp_path) in str(info.value)


def test_checkpoint_round_trip_keeps_weights_and_class_names(tmp_path):
    net = models.load("demonet", "random", num_classes=4)
    path = tmp_path / "model.pt"
    save_checkpoint(path, net, ["a", "b", "c", "d"], "demonet", {})
    back = models.load("demonet", str(path))
    assert back.vislib_class_names == ["a", "b", "c", "d"]
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(net(x), back(x))
    with pytest.raises(MissingWeightsError, match="does not exist"):
        models.load("demonet", str(tmp_path / "missing.pt"))


def test_bundled_imagenet_class_names_are_torchvisions():
    from torchvision.models import ResNet50_Weights

    assert models.imagenet_class_names() == list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


@pytest.mark.parametrize("spec", [
    {"arch": "resnet18"}, {"arch": "googlenet"}, {"arch": "densenet121", "layer": "features.denseblock3"},
    {"arch": "efficientnet_lite0"}, {"arch": "demonet", "num_classes": 3}, {"arch": "vit_b_16"},
    {"arch": "regnet_y_400mf", "layer": "trunk_output"},
], ids=lambda spec: spec["arch"])
def test_a_meta_build_has_the_cpu_builds_structure_without_its_weights(spec):
    """The config check builds models on the meta device: the same layers, layouts, default layer and output
    shapes as on the CPU, with no weight held (a model whose default layer needs a gradient probe, or whose
    constructor reads tensor values, is built on the CPU)."""
    meta, cpu = (models.load_spec({"name": "m", **spec}, device=device) for device in ("meta", "cpu"))
    on_meta = all(p.is_meta for p in meta.parameters())
    assert on_meta == (spec["arch"] not in ("vit_b_16", "regnet_y_400mf"))
    assert all(not p.is_meta for p in cpu.parameters())
    assert models.layer_names(meta) == models.layer_names(cpu)
    assert models.layer_layouts(meta) == models.layer_layouts(cpu)
    assert meta.vislib_default_layer == cpu.vislib_default_layer
    assert meta.vislib_class_names == cpu.vislib_class_names
    size = models.preprocessing_of(cpu).input_size
    with torch.no_grad():
        shapes = [net(models.probe_image(size, models.model_device(net))).shape for net in (meta, cpu)]
    assert shapes[0] == shapes[1]
