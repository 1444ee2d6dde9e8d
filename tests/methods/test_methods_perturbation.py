"""The perturbation methods: occlusion equal to captum's, LIME and KernelSHAP equal to captum's fits on the same
superpixels and coalitions, RISE's masks equal to the authors' recipe and its estimator's properties, exact answers
on linear games, forward-pass counts, and maps that do not depend on the batch."""

from __future__ import annotations

import math

import captum.attr as ca
import pytest
import torch
from captum._utils.models.linear_model import SkLearnLinearRegression, SkLearnRidge
from captum.attr._core.lime import get_exp_kernel_similarity_function
from skimage.transform import resize
from torch import nn

from vislib import methods, models
from vislib.data.dataset import CocoFormatDataset
from vislib.errors import ConfigError
from vislib.methods.base import fast_layout


def captum_forward(net: nn.Module):
    """The model as the peer calls it, on the channels-last layout vislib runs on CPU (docs/methods.md)."""
    return lambda x: net(fast_layout(x))


@pytest.fixture(scope="module")
def trained(trained_demonet) -> tuple[nn.Module, torch.Tensor]:
    """The trained demo net and four of its shapes val images (64 px)."""
    net = models.load("demonet", str(trained_demonet.checkpoint))
    val = CocoFormatDataset("shapes", trained_demonet.shapes_root, "val")
    return net, val.load_batch(val.image_ids()[:4], models.preprocessing_of(net)).images


def captum_occlusion(net: nn.Module, images: torch.Tensor, targets: torch.Tensor, window: int, stride: int):
    """captum's Occlusion map [N,H,W], one window per pass: its default, whose sums round as ours do (with several
    windows per pass captum adds their contributions in another order and moves by about 1e-7)."""
    attribution = ca.Occlusion(captum_forward(net)).attribute(
        images, sliding_window_shapes=(3, window, window), strides=(3, stride, stride), baselines=0, target=targets)
    assert torch.equal(attribution[:, 0], attribution[:, 2])  # the window spans the channels
    return attribution[:, 0]


def assert_same_occlusion(ours: torch.Tensor, theirs: torch.Tensor, net: nn.Module, images: torch.Tensor) -> None:
    """Equal up to the rounding of the logits: we score 20 copies per pass, captum one window's copies, and oneDNN's
    convolutions are batch-invariant bit for bit on some CPUs only (elsewhere the drops, differences of two logits,
    moved by up to 1e-7 of the largest logit; a misplaced window moves them by the map's own size)."""
    with torch.no_grad():
        logit_scale = float(net(images).abs().max())
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6 * logit_scale)


@pytest.mark.parametrize("height,width,window,stride", [(48, 48, 16, 8), (40, 46, 16, 12)])
def test_occlusion_equals_captum_on_the_random_demo_net(height, width, window, stride):
    # (40, 46): the last window of each axis passes the edge and is cut there, as captum's is.
    net = models.load("demonet", "random")
    images = torch.randn(3, 3, height, width)
    ours = methods.get("occlusion", window=window, stride=stride, batch_size=20).explain(net, None, images)
    assert_same_occlusion(ours.maps, captum_occlusion(net, images, ours.targets, window, stride), net, images)


def test_occlusion_equals_captum_on_the_trained_demo_net(trained):
    net, images = trained
    ours = methods.get("occlusion", window=16, stride=8).explain(net, None, images)
    assert_same_occlusion(ours.maps, captum_occlusion(net, images, ours.targets, 16, 8), net, images)


def replayed(rows: torch.Tensor):
    """A captum perturb_func (a generator function) that yields our coalitions [S,M] one at a time."""

    def perturb(_inputs, **_kwargs):
        yield from (row[None] for row in rows.long())

    return perturb


def superpixel_similarity(kernel_width: float):
    """lime_image's kernel, written as lime computes it: sqrt(exp(-d^2 / w^2)), d the cosine distance between the
    coalition and all-on (lime_base / lime_image, distance_metric='cosine')."""

    def similarity(_original, _perturbed, coalition, **_kwargs):
        on = coalition.double()
        distance = 1 - on.sum() / (on.norm() * math.sqrt(on.numel())).clamp_min(1e-300)
        return float(torch.sqrt(torch.exp(-distance**2 / kernel_width**2)))

    return similarity


def captum_surrogate(method: methods.AttributionMethod, net: nn.Module, images: torch.Tensor,
                     targets: torch.Tensor) -> torch.Tensor:
    """captum's Lime / KernelShap maps [N,H,W] on our superpixels and coalitions, one image per call (captum
    explains what its forward function returns: the softmax where we explain the probability)."""
    superpixels = method.superpixels(net, images)
    on = method.draw(images, superpixels.counts)
    params = method.params
    forward = captum_forward(net)
    if params["score"] == "probability":
        forward = captum_forward(nn.Sequential(net, nn.Softmax(1)))
    maps = []
    for i, count in enumerate(superpixels.counts.tolist()):
        rows = on[i, :, :count]
        if method.name == "kernel_shap":
            peer = ca.KernelShap(forward)
            peer.perturb_func = replayed(rows)
        else:
            model = SkLearnRidge(alpha=params["ridge"]) if params["ridge"] else SkLearnLinearRegression()
            similarity = (superpixel_similarity(params["kernel_width"]) if params["distance"] == "superpixels"
                          else get_exp_kernel_similarity_function("cosine", params["kernel_width"]))
            peer = ca.Lime(forward, interpretable_model=model, similarity_func=similarity, perturb_func=replayed(rows))
        attribution = peer.attribute(images[i:i + 1], target=int(targets[i]), baselines=params["baseline"],
                                     feature_mask=superpixels.segments[i][None, None], n_samples=len(rows),
                                     perturbations_per_eval=32)
        maps.append(attribution[0, 0])
    return torch.stack(maps)


SURROGATE_CASES = [
    ("lime", {}),
    ("lime", {"distance": "superpixels", "kernel_width": 0.25, "baseline": 0.5}),
    ("lime", {"ridge": 0.0, "score": "probability"}),
    ("kernel_shap", {}),
    ("kernel_shap", {"baseline": -0.5, "segments": "grid"}),
]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name,params", SURROGATE_CASES)
def test_lime_and_kernel_shap_equal_captum_on_the_same_superpixels_and_coalitions(trained, name, params):
    net, images = trained[0], trained[1][:2]
    method = methods.get(name, samples=40, superpixels=16, **params)
    ours = method.explain(net, None, images)
    peer = captum_surrogate(method, net, images, ours.targets)
    # Measured: at most 1.5e-6 of the largest value (captum's scikit-learn fit runs in float32, ours in float64).
    torch.testing.assert_close(ours.maps, peer, rtol=0, atol=1e-5 * float(peer.abs().max()))


def test_rise_masks_are_the_authors_grids_upsampled_by_skimage_and_cropped():
    # The authors' generate_masks: resize(grid, ((s+1) ceil(H/s), (s+1) ceil(W/s)), order=1, mode='reflect',
    # anti_aliasing=False), then a crop at offsets below one cell.
    rise = methods.get("rise", masks=6, cells=5, p=0.4, seed=3)
    height, width = 37, 45
    draw = rise.draw(height, width)
    masks = rise.render(draw, height, width)
    upsampled = (6 * math.ceil(height / 5), 6 * math.ceil(width / 5))
    assert (draw.shift_rows < math.ceil(height / 5)).all() and (draw.shift_cols < math.ceil(width / 5)).all()
    for k in range(6):
        grid = draw.grids[k].numpy().astype("float32")
        big = resize(grid, upsampled, order=1, mode="reflect", anti_aliasing=False)
        top, left = int(draw.shift_rows[k]), int(draw.shift_cols[k])
        expected = torch.from_numpy(big[top:top + height, left:left + width]).double()
        torch.testing.assert_close(masks[k], expected, rtol=0, atol=1e-6)


class RegionMean(nn.Module):
    """Two logits: the mean of the input over rows 8..15 and columns 20..27, and 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x[:, :, 8:16, 20:28].mean((1, 2, 3))
        return torch.stack([score, torch.zeros_like(score)], 1)


def test_rise_is_the_mean_of_score_weighted_masks_and_peaks_where_the_score_looks():
    # The logit: a probability sigmoid(s) varies too little with s for 300 masks to show the region reliably.
    rise = methods.get("rise", masks=300, cells=6, batch_size=100, seed=1, score="logit")
    images = torch.ones(2, 3, 32, 32)
    images[1] *= 2
    result = rise.explain(RegionMean(), None, images, torch.tensor([0, 0]))
    masks = rise.render(rise.draw(32, 32), 32, 32).float()
    scores = torch.einsum("khw,n->kn", masks[:, 8:16, 20:28], images[:, 0, 0, 0]) / 64
    expected = torch.einsum("kn,khw->nhw", scores, masks) / (300 * 0.5)
    torch.testing.assert_close(result.maps, expected, rtol=1e-5, atol=1e-6)
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[8:16, 20:28] = True
    for heatmap in result.maps:
        assert inside.flatten()[heatmap.argmax()]
        assert heatmap[inside].mean() > heatmap[~inside].mean() + 0.05
    # A cell is on with probability p: the masks' mean is p, up to sampling error.
    assert abs(float(masks.mean()) - 0.5) < 0.02


class PixelLinear(nn.Module):
    """Two logits: a fixed weighted sum of the input pixels, and 0."""

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.weights = nn.Parameter(weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (x * self.weights).flatten(1).sum(1)
        return torch.stack([score, torch.zeros_like(score)], 1)


@pytest.mark.parametrize("name", ["lime", "kernel_shap"])
def test_lime_and_kernel_shap_recover_a_linear_game_exactly(name):
    # Hiding superpixel s moves the score by sum_{p in s} a_p (x_p - baseline): the game is linear in the
    # coalition, so its Shapley values and any least-squares fit are those amounts.
    torch.manual_seed(1)
    weights, images = torch.randn(3, 24, 24), torch.randn(2, 3, 24, 24)
    params = {"ridge": 0.0} if name == "lime" else {}
    method = methods.get(name, samples=40, segments="grid", superpixels=9, baseline=0.5, **params)
    maps = method.explain(PixelLinear(weights), None, images, torch.tensor([0, 0])).maps
    cell = torch.arange(24) // 8
    segments = cell[:, None] * 3 + cell[None]
    amounts = torch.zeros(2, 9).index_add_(1, segments.flatten(), (weights * (images - 0.5)).sum(1).flatten(1))
    torch.testing.assert_close(maps, amounts[:, segments], rtol=0, atol=1e-4 * float(amounts.abs().max()))


class RowCounter(nn.Module):
    """A model that counts the images it is given."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.rows = net, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += len(x)
        return self.net(x)


@pytest.mark.parametrize("name,params,per_image", [
    ("occlusion", {"window": 16, "stride": 12}, 1 + 3 * 4),  # rows ceil(24/12)+1, columns ceil(32/12)+1
    ("rise", {"masks": 10}, 11),
    ("lime", {"samples": 10, "segments": "grid"}, 11),
    ("kernel_shap", {"samples": 10, "segments": "grid"}, 10),
])
def test_forward_passes_per_image_are_the_documented_ones(name, params, per_image):
    counter = RowCounter(models.load("demonet", "random"))
    methods.get(name, batch_size=7, **params).explain(counter, None, torch.randn(2, 3, 40, 48))
    assert counter.rows == 2 * per_image


@pytest.mark.parametrize("name,params", [
    ("rise", {"masks": 20}),
    ("lime", {"samples": 12, "superpixels": 9}),
    ("kernel_shap", {"samples": 12, "superpixels": 9}),
])
def test_a_seed_gives_each_image_the_same_map_in_any_batch(shapes_root, name, params):
    # SLIC superpixels of real shapes images (on noise SLIC returns a single superpixel).
    net = models.load("demonet", "random")
    val = CocoFormatDataset("shapes", shapes_root, "val")
    images = val.load_batch(val.image_ids()[:3], models.preprocessing_of(net)).images
    targets = torch.tensor([1, 4, 2])
    method = methods.get(name, batch_size=5, **params)
    batch = method.explain(net, None, images, targets).maps
    reordered = method.explain(net, None, images[[2, 0]], targets[[2, 0]]).maps
    alone = method.explain(net, None, images[1:2], targets[1:2]).maps
    scale = float(batch.abs().max())
    torch.testing.assert_close(reordered, batch[[2, 0]], rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(alone, batch[1:2], rtol=0, atol=1e-5 * scale)
    other_seed = methods.get(name, batch_size=5, seed=1, **params).explain(net, None, images, targets).maps
    assert not torch.allclose(other_seed, batch)


def test_occlusion_refuses_windows_that_leave_pixels_uncovered_or_exceed_the_image():
    with pytest.raises(ConfigError, match="stride 20 is larger than window 16"):
        methods.get("occlusion", window=16, stride=20)
    net = models.load("demonet", "random")
    with pytest.raises(ConfigError, match="window 32 px is larger than the 24x24 images.*at most 24"):
        methods.get("occlusion").explain(net, None, torch.randn(1, 3, 24, 24))


def test_kernel_shap_values_add_up_to_the_score_minus_the_all_hidden_score():
    net = models.load("demonet", "random")
    images = torch.randn(2, 3, 32, 32)
    method = methods.get("kernel_shap", samples=40, segments="grid", superpixels=16, baseline=0.3)
    result = method.explain(net, None, images)
    segments = method.superpixels(net, images).segments.flatten(1)
    values = torch.zeros(2, 16).scatter(1, segments, result.maps.flatten(1))
    with torch.no_grad():
        logits, hidden = net(images), net(torch.full_like(images, 0.3))
    gap = logits.gather(1, result.targets[:, None])[:, 0] - hidden.gather(1, result.targets[:, None])[:, 0]
    # The all-on and all-off coalitions weigh 1e6, not infinity: the sum holds to about 1e-5 of the values.
    torch.testing.assert_close(values.sum(1), gap, rtol=0, atol=1e-3 * float(values.abs().max()))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace's deprecation
def test_occlusion_runs_on_a_torchscript_model():
    net = models.load("demonet", "random")
    images = torch.randn(2, 3, 32, 32)
    traced = torch.jit.trace(net, torch.rand(1, 3, 32, 32))
    method = methods.get("occlusion", window=16, stride=8)
    assert method.runs_on_torchscript()
    assert torch.equal(method.explain(traced, None, images).maps, method.explain(net, None, images).maps)
