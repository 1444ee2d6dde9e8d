"""Vision transformers: token and channels-last layers read as [N,C,h,w] maps, their layouts and default layers found
from the model, parity with pytorch-grad-cam's reshape_transform recipe on torchvision's vit_b_16 and swin_t, and
L2-CAF, Score-CAM, gradients, featvis and the config check on a ViT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, LayerCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform

from vislib import featvis, methods, models
from vislib.cli import main
from vislib.config import check_config
from vislib.errors import ConfigError, LayerError
from vislib.methods import split
from vislib.methods.hooks import capture_layer, frozen_model, hook_count
from vislib.models.layout import CHANNELS_FIRST, CHANNELS_LAST, Tokens, layout_of_shape

TIMM_VIT = "timm:vit_tiny_patch16_224"
PEERS = {"gradcam": GradCAM, "gradcampp": GradCAMPlusPlus, "layercam": LayerCAM}


def _channels_last_to_first(tensor: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's swinT recipe for a channels-last [N,H,W,C] map (torchvision's Swin)."""
    return tensor.permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def vit_b_16():
    torch.manual_seed(0)
    net = models.load("vit_b_16", "random")
    # torchvision starts the head at zeros, under which every gradient and every map is 0: a seeded random head.
    torch.nn.init.normal_(net.heads.head.weight, std=0.02)
    return net


@pytest.fixture(scope="module")
def swin_t():
    torch.manual_seed(0)
    return models.load("swin_t", "random")


@pytest.fixture(scope="module")
def vit_tiny():
    pytest.importorskip("timm")
    torch.manual_seed(0)
    return models.load(TIMM_VIT, "random")


def test_token_and_channels_last_outputs_are_viewed_as_channels_first_maps_and_back():
    tokens = torch.randn(2, 2 + 9, 5)
    layout = Tokens(2)
    spatial = layout.to_spatial(tokens)
    assert spatial.shape == (2, 5, 3, 3)
    torch.testing.assert_close(spatial[:, :, 1, 2], tokens[:, 2 + 1 * 3 + 2])  # the grid row by row
    assert torch.equal(layout.from_spatial(spatial, tokens), tokens)
    masks = torch.rand(2, 1, 3, 3)
    masked = layout.masked(tokens, masks)
    assert torch.equal(masked[:, :2], tokens[:, :2])  # prefix tokens untouched
    torch.testing.assert_close(layout.to_spatial(masked), spatial * masks)
    vit_tokens = torch.randn(2, 197, 8)
    assert torch.equal(Tokens(1).to_spatial(vit_tokens), vit_reshape_transform(vit_tokens))

    channels_last = torch.randn(2, 3, 3, 5)
    spatial = CHANNELS_LAST.to_spatial(channels_last)
    torch.testing.assert_close(spatial[:, 4, 1, 2], channels_last[:, 1, 2, 4])
    assert torch.equal(CHANNELS_LAST.from_spatial(spatial, channels_last), channels_last)
    torch.testing.assert_close(CHANNELS_LAST.to_spatial(CHANNELS_LAST.masked(channels_last, masks)), spatial * masks)
    with pytest.raises(LayerError, match="not a square grid"):
        Tokens(1).to_spatial(torch.randn(1, 11, 4))


@pytest.mark.parametrize("shape,declared,layout", [
    ((1, 768, 7, 7), None, CHANNELS_FIRST),
    ((1, 7, 7, 768), None, CHANNELS_LAST),  # torchvision's and timm's Swin stages
    ((1, 197, 192), 1, Tokens(1)),
    ((1, 198, 192), 2, Tokens(2)),  # DeiT distilled: class and distillation tokens
    ((1, 196, 192), 1, Tokens(0)),  # a ViT's patch embedding, before the class token is prepended
    ((1, 49, 768), None, Tokens(0)),  # timm Swin's norm2: [N,h*w,C] without prefix
    ((1, 201, 64), None, Tokens(5)),  # no declared count: what is left below the largest square
    ((1, 20, 8), 4, Tokens(4)),  # a 4x4 grid after 4 tokens, as declared: more than the leftover rule takes
    ((1, 20, 8), None, None),
    ((64, 49, 96), None, None),  # Swin's windows stacked along the batch
    ((1, 3, 197, 64), 1, None),  # a ViT's per-head queries
    ((1, 10), None, None),
])
def test_layout_of_an_output_shape(shape, declared, layout):
    assert layout_of_shape(shape, declared) == layout


@pytest.mark.parametrize("name,prefix", [(TIMM_VIT, 1), ("timm:deit_tiny_distilled_patch16_224", 2)])
def test_timm_vit_and_deit_layers_are_tokens_with_the_models_prefix_count(name, prefix):
    pytest.importorskip("timm")
    net = models.load(name, "random")
    layouts = models.layer_layouts(net)
    assert net.vislib_default_layer == "blocks.11.norm1"
    assert layouts["blocks.11"] == layouts["blocks.11.norm1"] == Tokens(prefix)
    assert layouts["patch_embed.proj"] == CHANNELS_FIRST
    assert "blocks.11.attn.q_norm" not in layouts and "head" not in layouts


def test_torchvision_vit_and_swin_layouts_and_default_layers(vit_b_16, swin_t):
    assert vit_b_16.vislib_default_layer == "encoder.layers.encoder_layer_11.ln_1"
    vit_layouts = models.layer_layouts(vit_b_16)
    assert vit_layouts["encoder.layers.encoder_layer_5"] == Tokens(1) and vit_layouts["conv_proj"] == CHANNELS_FIRST
    swin_layouts = models.layer_layouts(swin_t)
    assert swin_layouts["features.7"] == swin_layouts["norm"] == CHANNELS_LAST
    assert swin_layouts["features.0.0"] == swin_layouts["permute"] == CHANNELS_FIRST
    # The last map before the pool: Swin's final norm, moved channels-first.
    assert swin_t.vislib_default_layer == "permute"


def test_the_default_is_the_last_layer_whose_grid_reaches_the_class_scores(vit_tiny):
    """After the last block's attention only the class token reaches the head: Grad-CAM there is 0 everywhere."""
    x = torch.randn(2, 3, 224, 224)
    after = methods.get("gradcam").explain(vit_tiny, "blocks.11", x).maps
    default = methods.get("gradcam").explain(vit_tiny, None, x).maps
    assert after.shape == default.shape == (2, 14, 14)
    assert (after == 0).all() and (default > 0).any()


def test_vislib_layers_marks_token_layers_spatial_and_the_default(vit_tiny, capsys):
    assert main(["layers", TIMM_VIT]) == 0
    rows = dict(line.split("\t") for line in capsys.readouterr().out.splitlines())
    assert rows["blocks.11.norm1"] == "spatial default (tokens, 1 prefix)"
    assert rows["blocks.3"] == "spatial (tokens, 1 prefix)" and rows["patch_embed.proj"] == "spatial"
    assert rows["head"] == ""


def _peer_maps(net, layer: str, reshape, x: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """pytorch-grad-cam's maps at layer resolution for each of PEERS, from one forward/backward pass of GradCAM."""
    module = models.resolve_layer(net, layer)
    wanted = [ClassifierOutputTarget(int(t)) for t in targets]
    with GradCAM(net, target_layers=[module], reshape_transform=reshape) as cam:
        cam(input_tensor=x, targets=wanted)
        activations = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
    net.zero_grad(set_to_none=True)
    maps = {}
    for name, peer in PEERS.items():
        # Each peer's map is its own get_cam_image of the same activations and gradients.
        with peer(net, target_layers=[module], reshape_transform=reshape) as other:
            native = other.get_cam_image(x, module, wanted, activations, grads, False)
        maps[name] = torch.from_numpy(np.maximum(native, 0))
    return maps


@pytest.mark.parametrize("arch,layer,reshape,grid", [
    ("vit_b_16", "encoder.layers.encoder_layer_11.ln_1", vit_reshape_transform, 14),
    ("swin_t", "features.7.1.norm1", _channels_last_to_first, 7),
])
def test_cam_methods_match_pytorch_grad_cam_with_its_reshape_transform(request, arch, layer, reshape, grid):
    net = request.getfixturevalue(arch)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 224, 224)
    targets = torch.tensor([1, 3])
    theirs = _peer_maps(net, layer, reshape, x, targets)
    for name in PEERS:
        ours = methods.get(name).explain(net, layer, x, targets).maps
        assert ours.shape == theirs[name].shape == (2, grid, grid), name
        assert (ours > 0).any(), name
        torch.testing.assert_close(methods.normalize_maps(ours), methods.normalize_maps(theirs[name]), rtol=0,
                                   atol=1e-4, msg=name)


def test_vanilla_gradient_runs_on_vit_b_16(vit_b_16):
    result = methods.get("vanilla_gradient").explain(vit_b_16, None, torch.randn(1, 3, 224, 224))
    assert result.maps.shape == (1, 224, 224) and torch.isfinite(result.maps).all() and (result.maps > 0).any()


def test_frozen_model_hands_batch_first_attention_its_inputs_token_major(vit_b_16):
    """torch's MultiheadAttention transposes [N,T,E] to [T,N,E]; stored token-major, that view is contiguous, and
    its projections run as one matrix product even with frozen weights."""
    attention = vit_b_16.encoder.layers.encoder_layer_0.self_attention
    x = torch.randn(1, 3, 224, 224)
    before = hook_count(vit_b_16)
    seen = []
    with torch.no_grad():
        reference = vit_b_16(x)
        with frozen_model(vit_b_16):
            handle = attention.register_forward_pre_hook(lambda _module, args: seen.append(args[:3]))
            frozen = vit_b_16(x)
            handle.remove()
    query, key, value = seen[0]
    assert query is key is value and query.transpose(0, 1).is_contiguous()
    torch.testing.assert_close(frozen, reference, rtol=1e-5, atol=1e-5)
    assert hook_count(vit_b_16) == before


def _filter_grid_tokens(masks: torch.Tensor):
    """A forward hook that multiplies a ViT block's patch tokens [N,1+h*w,C] by `masks` [N,1,h,w], written out."""
    def hook(_module, _inputs, output):
        grid = output[:, 1:] * masks.flatten(2).transpose(1, 2)
        return torch.cat((output[:, :1], grid), 1)

    return hook


def test_l2caf_tail_on_a_token_layer_filters_the_patch_tokens_only(vit_tiny):
    torch.manual_seed(0)
    layer = vit_tiny.vislib_default_layer
    x = torch.randn(3, 3, 224, 224)
    with frozen_model(vit_tiny):
        cut = split.graph_split(vit_tiny, layer, x, "l2caf_specific")
        assert not isinstance(cut, str), cut
        tail, activation, logits = cut
        assert tail.path == "fx" and activation.shape == (3, 192, 14, 14)
        masks = torch.randn(3, 1, 14, 14)
        handle = models.resolve_layer(vit_tiny, layer).register_forward_hook(_filter_grid_tokens(masks))
        with torch.no_grad():
            reference = vit_tiny(x)
        handle.remove()
        torch.testing.assert_close(logits, vit_tiny(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(tail(masks), reference, rtol=1e-4, atol=1e-5)
        tail.select(torch.tensor([2, 0]))
        torch.testing.assert_close(tail(masks[[2, 0]]), reference[[2, 0]], rtol=1e-4, atol=1e-5)


def test_l2caf_on_a_vit_gives_grid_maps_the_same_on_the_hook_path(vit_tiny, monkeypatch):
    x = torch.randn(2, 3, 224, 224)
    before = hook_count(vit_tiny)
    method = methods.get("l2caf_oblivious", max_iters=6, check_every=3)
    fast = method.explain(vit_tiny, None, x)
    assert fast.maps.shape == (2, 14, 14) and torch.isfinite(fast.maps).all() and fast.extras["fast_path"].all()
    monkeypatch.setattr(split, "graph_split", lambda *args: "forced for the test")
    slow = method.explain(vit_tiny, None, x)
    assert not slow.extras["fast_path"].any() and hook_count(vit_tiny) == before
    torch.testing.assert_close(slow.maps, fast.maps, rtol=0, atol=1e-4)


def test_score_cam_and_the_shared_capture_read_a_token_layer_as_its_grid(vit_tiny):
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad(), frozen_model(vit_tiny), capture_layer(vit_tiny, "blocks.5") as capture:
        vit_tiny(x)
        embedded = vit_tiny.norm_pre(vit_tiny._pos_embed(vit_tiny.patch_embed(x)))
        tokens = vit_tiny.blocks[:6](embedded)
        spatial = capture.spatial("blocks.5", "lavise")
    expected = tokens[:, 1:].reshape(2, 14, 14, 192).permute(0, 3, 1, 2)
    torch.testing.assert_close(spatial, expected, rtol=1e-5, atol=1e-5)
    maps = methods.get("scorecam", top_channels=4, batch_size=8).explain(vit_tiny, None, x).maps
    assert maps.shape == (2, 14, 14) and torch.isfinite(maps).all()


def test_filter_visualization_raises_a_token_channel(vit_tiny):
    # A ViT takes only its own input size: one octave, no rescaling jitter.
    method = featvis.get("filter_visualization", iterations=6, octaves=1, scale_jitter=0)
    result = method.generate(vit_tiny, vit_tiny.vislib_default_layer, [0, 5])
    assert result.images.shape == (2, 3, 224, 224)
    assert (result.extras["activation_end"] > result.extras["activation_start"]).all()
    with pytest.raises(ConfigError, match="192"):  # channels, not the 197 tokens
        method.generate(vit_tiny, "blocks.11", [192])


def test_the_config_check_accepts_vit_layers(vit_tiny):
    layer = "blocks.11.norm1"
    config = {
        "datasets": {"shapes": {"kind": "shapes", "params": {}}},
        "models": {"vit": {"arch": TIMM_VIT}},
        "methods": {"gradcam": {}, "l2caf_specific": {}},
        "metrics": {"pointing_game": {}},
        "featvis": {"filter_visualization": {"octaves": 1, "scale_jitter": 0}},
        "experiments": {"e": {"dataset": "shapes", "models": {"vit": [layer]}, "methods": ["gradcam", "l2caf_specific"],
                              "metrics": ["pointing_game"],
                              "featvis": {"models": {"vit": [layer]}, "methods": ["filter_visualization"],
                                          "channels": [0, 191]}}},
    }
    check_config(config)
    config["experiments"]["e"]["featvis"]["channels"] = [192]
    with pytest.raises(ConfigError, match="out of range; this has 192 channels"):
        check_config(config)
