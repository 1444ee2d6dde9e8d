"""Models by config: any torchvision or timm model by name, a user's factory, checkpoint or TorchScript file, the
default layer found automatically, and the errors a user can cause."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from vislib import methods, models
from vislib.config import check_config
from vislib.errors import ConfigError, LayerError, MissingWeightsError, UnknownNameError, VislibError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_FACTORY = f"{REPO}/config/examples/my_net.py:build"


def _logits(net: nn.Module, size: int = 32) -> torch.Tensor:
    torch.manual_seed(0)
    with torch.no_grad():
        return net(torch.rand(2, 3, size, size))


def test_any_torchvision_classification_model_loads_by_name_with_its_last_spatial_layer_as_default():
    net = models.load("mobilenet_v3_small")
    # The last block that outputs a feature map: the features container (its avgpool output is 1x1).
    assert net.vislib_default_layer == "features"
    assert models.preprocessing_of(net).input_size == 224
    assert len(net.vislib_class_names) == 1000
    maps = methods.get("gradcam").explain(net, None, torch.rand(2, 3, 64, 64)).maps
    assert maps.shape == (2, 2, 2) and torch.isfinite(maps).all()


def test_the_weights_own_input_size_is_used_for_random_weights_too():
    assert models.preprocessing_of(models.load("inception_v3")).input_size == 299


def test_last_spatial_layer_is_the_outermost_block_that_finishes_last():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU()), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 2))
    assert models.last_spatial_layer(net, 16) == "1"
    assert models.last_spatial_layer(nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2)), 4) == ""


def test_a_misspelt_architecture_names_the_closest_and_the_other_ways_to_give_a_model():
    with pytest.raises(UnknownNameError) as info:
        models.load("convnext_tiniy")
    message = str(info.value)
    assert "Did you mean 'convnext_tiny'" in message and "factory" in message and "timm:" in message


def test_timm_models_load_by_name_with_the_preprocessing_of_their_pretrained_config(tmp_path):
    pytest.importorskip("timm")
    net = models.load_spec({"arch": "timm:resnet18", "num_classes": 7})
    assert net.vislib_default_layer == "layer4" and _logits(net).shape == (2, 7)
    vit = models.load("timm:vit_tiny_patch16_224")
    assert models.preprocessing_of(vit).mean == (0.5, 0.5, 0.5)
    path = tmp_path / "timm.pth"
    torch.save(net.state_dict(), path)
    again = models.load_spec({"arch": "timm:resnet18", "num_classes": 7, "weights": str(path)})
    assert torch.equal(_logits(again), _logits(net))
    with pytest.raises(MissingWeightsError, match="Hugging Face cache"):
        models.load_spec({"arch": "timm:resnet18", "weights": "pretrained"})


def test_a_factory_by_file_or_module_builds_the_users_network_with_overrides(tmp_path, monkeypatch):
    net = models.load_spec({"factory": EXAMPLE_FACTORY, "factory_args": {"num_classes": 3}, "input_size": 64,
                            "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "class_names": ["a", "b", "c"]})
    assert net.vislib_class_names == ["a", "b", "c"]
    assert models.preprocessing_of(net) == models.Preprocessing((0.5,) * 3, (0.25,) * 3, 64)
    assert net.vislib_default_layer == "2"
    monkeypatch.syspath_prepend(str(REPO / "config" / "examples"))
    by_module = models.load_spec({"factory": "my_net:build", "layer": "1.2"})
    assert by_module.vislib_default_layer == "1.2" and by_module.vislib_class_names == []


def test_a_checkpoint_loads_whether_plain_wrapped_or_saved_by_data_parallel(tmp_path):
    net = models.load_spec({"factory": EXAMPLE_FACTORY})
    for name, payload in [("plain", net.state_dict()), ("wrapped", {"model": net.state_dict(), "epoch": 3}),
                          ("parallel", nn.DataParallel(net).state_dict())]:
        path = tmp_path / f"{name}.pt"
        torch.save(payload, path)
        again = models.load_spec({"factory": EXAMPLE_FACTORY, "weights": str(path)})
        assert torch.equal(_logits(again), _logits(net)), name


def test_a_checkpoint_that_does_not_fit_names_what_differs(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(models.load_spec({"factory": EXAMPLE_FACTORY, "factory_args": {"num_classes": 4}}).state_dict(), path)
    with pytest.raises(VislibError, match=r"does not fit .*shape mismatches.*num_classes"):
        models.load_spec({"factory": EXAMPLE_FACTORY, "weights": str(path)})
    with pytest.raises(MissingWeightsError, match="does not exist"):
        models.load_spec({"factory": EXAMPLE_FACTORY, "weights": str(tmp_path / "missing.pt")})


@pytest.mark.parametrize("factory, message", [
    ("no_such_package.nets:build", r"module 'no_such_package.nets' cannot be imported \(ModuleNotFoundError"),
    (f"{REPO}/config/examples/my_net.py:buld", "has no function 'buld'; it defines build"),
    ("nets_without_function", "must be 'package.module:function'"),
    ("missing/file.py:build", "does not exist"),
])
def test_factory_errors_name_the_module_and_the_cause(factory, message):
    with pytest.raises(ConfigError, match=message):
        models.load_spec({"factory": factory})


def test_a_factory_file_that_fails_to_import_names_the_exception(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\nraise RuntimeError('no GPU here')\n")
    with pytest.raises(ConfigError, match=r"fails to import \(RuntimeError: no GPU here\)"):
        models.load_spec({"factory": f"{broken}:build"})


def test_class_names_from_a_file_must_match_the_outputs(tmp_path):
    names = tmp_path / "classes.txt"
    names.write_text("cat\ndog\n\n")
    net = models.load_spec({"factory": EXAMPLE_FACTORY, "factory_args": {"num_classes": 2},
                            "class_names": str(names)})
    assert net.vislib_class_names == ["cat", "dog"]
    with pytest.raises(ConfigError, match="2 class names for 10 outputs"):
        models.load_spec({"factory": EXAMPLE_FACTORY, "class_names": str(names)})


def test_a_model_needs_exactly_one_source():
    with pytest.raises(ConfigError, match="exactly one of arch, factory, torchscript; got arch, factory"):
        models.load_spec({"arch": "resnet18", "factory": EXAMPLE_FACTORY})


@pytest.fixture(scope="module")
def torchscript_file(tmp_path_factory):
    net = models.load_spec({"factory": EXAMPLE_FACTORY, "factory_args": {"num_classes": 4}})
    path = tmp_path_factory.mktemp("scripted") / "net.pt"
    torch.jit.save(torch.jit.trace(copy.deepcopy(net), torch.rand(1, 3, 32, 32)), str(path))
    return str(path), net


def test_a_torchscript_file_explains_with_input_gradient_methods(torchscript_file):
    path, eager = torchscript_file
    net = models.load_spec({"torchscript": path, "input_size": 32})
    assert models.is_torchscript(net) and net.vislib_default_layer == ""
    images = torch.rand(2, 3, 32, 32)
    scripted = methods.get("vanilla_gradient").explain(net, None, images, torch.tensor([1, 2])).maps
    reference = methods.get("vanilla_gradient").explain(eager, None, images, torch.tensor([1, 2])).maps
    assert torch.allclose(scripted, reference, atol=1e-5)
    assert not methods.get("guided_backprop").runs_on_torchscript()
    assert not methods.get("smoothgrad", base="guided_backprop").runs_on_torchscript()
    assert methods.get("integrated_gradients").runs_on_torchscript()


def _config(model: dict, methods_used: list[str], layers: list[str]) -> dict:
    return {"datasets": {"shapes": {"kind": "shapes", "params": {}}}, "models": {"mine": model},
            "methods": {name: {} for name in methods_used}, "metrics": {"pointing_game": {}},
            "experiments": {"e": {"dataset": "shapes", "models": {"mine": layers}, "methods": methods_used,
                                  "metrics": ["pointing_game"]}}}


def test_the_config_check_takes_user_models_and_names_what_cannot_work(torchscript_file, tmp_path):
    path, _ = torchscript_file
    check_config(_config({"factory": EXAMPLE_FACTORY}, ["gradcam"], ["2"]))
    check_config(_config({"torchscript": path, "input_size": 32}, ["vanilla_gradient"], ["0"]))
    with pytest.raises(ConfigError, match="experiments.e: method 'gradcam' .* TorchScript model"):
        check_config(_config({"torchscript": path, "input_size": 32}, ["gradcam"], ["0"]))
    with pytest.raises(ConfigError, match=r"models.mine: factory .* cannot be imported"):
        check_config(_config({"factory": "no_such_module:build"}, ["gradcam"], ["2"]))
    bad_checkpoint = tmp_path / "bad.pt"
    torch.save({"unrelated.weight": torch.zeros(1)}, bad_checkpoint)
    with pytest.raises(ConfigError, match="models.mine: checkpoint .* does not fit"):
        check_config(_config({"factory": EXAMPLE_FACTORY, "weights": str(bad_checkpoint)}, ["gradcam"], ["2"]))
    with pytest.raises(ConfigError, match="unknown layer of .*my_net.py:build '22'. Did you mean"):
        check_config(_config({"factory": EXAMPLE_FACTORY}, ["gradcam"], ["22"]))


def test_vislib_layers_lists_a_factory_models_layers_and_marks_the_default():
    result = subprocess.run([sys.executable, "-m", "vislib.cli", "layers", "--factory", EXAMPLE_FACTORY],
                            capture_output=True, text=True, check=True)
    rows = dict(line.split("\t") for line in result.stdout.splitlines())
    assert rows["2"] == "spatial default" and rows["0.0"] == "spatial" and rows["5"] == ""


def test_every_models_snippet_of_docs_your_model_is_a_valid_model_entry():
    import re

    import jsonschema
    import yaml

    text = (REPO / "docs" / "your-model.md").read_text()
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    entry_schema = schema["properties"]["models"]["additionalProperties"]
    snippets = [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", text, re.S)]
    entries = [entry for snippet in snippets if "models" in snippet for entry in snippet["models"].values()]
    assert len(entries) == 4
    for entry in entries:
        jsonschema.validate(entry, entry_schema)
        models.ModelSpec.from_config(entry)


def test_a_layer_method_on_a_layer_without_a_spatial_output_is_refused_at_config_time():
    with pytest.raises(ConfigError, match=r"method 'gradcam' reads a spatial map of layer '5', which outputs shape "
                                          r"\(1, 10\); pick a layer with a spatial output .* default is '2'"):
        check_config(_config({"factory": EXAMPLE_FACTORY}, ["gradcam"], ["5"]))
    check_config(_config({"factory": EXAMPLE_FACTORY}, ["vanilla_gradient"], ["5"]))


def test_timm_pretrained_weights_never_reach_the_network(monkeypatch):
    timm = pytest.importorskip("timm")
    from huggingface_hub import constants

    seen, before = [], constants.HF_HUB_OFFLINE

    def create_model(name, pretrained=False, **kwargs):
        seen.append(constants.HF_HUB_OFFLINE)
        raise OSError("not in the cache")

    monkeypatch.setattr(timm, "create_model", create_model)
    with pytest.raises(MissingWeightsError):
        models.load_spec({"arch": "timm:resnet50.a1_in1k", "weights": "pretrained"})
    assert seen == [True] and constants.HF_HUB_OFFLINE == before


def test_model_entry_mistakes_are_config_errors(tmp_path):
    bad_json = tmp_path / "classes.json"
    bad_json.write_text('{"0": "cat"}')
    with pytest.raises(ConfigError, match="must hold a JSON list"):
        models.load_spec({"factory": EXAMPLE_FACTORY, "class_names": str(bad_json)})
    with pytest.raises(LayerError, match="Did you mean"):
        models.load_spec({"factory": EXAMPLE_FACTORY, "layer": "2.7"})
    config = _config({"arch": "demonet", "train": {"dataset": "shapes"}, "input_size": 96}, ["gradcam"],
                     ["features.14"])
    with pytest.raises(ConfigError, match="input_size cannot be set on a model the workflow trains"):
        check_config(config)
