"""Parity with Quantus (0.6) for the metrics both libraries define: the same inputs through vislib and Quantus.

Agreeing exactly (up to float32 forward-pass rounding where a model runs):
- pointing game, tolerance 0, against `quantus.PointingGame` with the target boxes rasterised as its mask;
- the Spearman correlation of the sanity check (`spearman_rows`) against Quantus's `correlation_spearman`, and
  the per-layer scores of `quantus.MPRT` against `spearman_rows` of vislib's Grad-CAM maps of the same models;
- the deletion curve and AUC against `quantus.PixelFlipping`, and against `quantus.RegionPerturbation` with
  patch size 1, or with patch size p on maps constant over p x p patches.

Comparable only in outcome: vislib's own randomisation cascade against Quantus's (different layers, different
random weights; see `test_fully_randomised_models_decorrelate_grad_cam_in_both`).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from vislib import methods, metrics, models
from vislib.data.dataset import Sample
from vislib.metrics.pointing import box_masks
from vislib.metrics.sanity import randomization_curve, spearman_rows

quantus = pytest.importorskip("quantus", reason="Quantus (test extra) is not installed")
from quantus.functions.similarity_func import correlation_spearman  # noqa: E402

# Quantus options shared by every metric here: vislib's maps go in as they are. Quantus's defaults would scale
# them by their maximum (`normalise_by_max`; moves neither a maximum nor a rank of a non-negative map) and, for
# MPRT, take their absolute value.
RAW = {"abs": False, "normalise": False, "disable_warnings": True}


def _samples(boxes: list[np.ndarray], labels: list[np.ndarray]) -> list[Sample]:
    return [Sample(i, int(lab[0]) if len(lab) else 0, np.asarray(b, np.float32).reshape(-1, 4),
                   np.asarray(lab, np.int64), None, [[] for _ in lab])
            for i, (b, lab) in enumerate(zip(boxes, labels, strict=True))]


def _vislib_pointing(maps: torch.Tensor, samples: list[Sample], targets: torch.Tensor) -> np.ndarray:
    n, h, w = maps.shape
    batch = metrics.MetricInput(maps, torch.zeros(n, 3, h, w), targets, samples, model=None)
    return metrics.get("pointing_game", tolerance=0)(batch).values


def _quantus_pointing(maps: torch.Tensor, masks: np.ndarray) -> np.ndarray:
    n, h, w = maps.shape
    game = quantus.PointingGame(**RAW)
    hits = game(model=None, x_batch=np.zeros((n, 3, h, w), np.float32), y_batch=np.zeros(n, np.int64),
                a_batch=maps.numpy()[:, None], s_batch=masks[:, None].astype(np.float32))
    return np.asarray(hits, float)


def _slice_mask(boxes: np.ndarray, size: int) -> np.ndarray:
    """Integer xyxy boxes as the usual array slices [y0:y1, x0:x1]: pixels x0..x1-1, y0..y1-1."""
    mask = np.zeros((size, size), bool)
    for x0, y0, x1, y1 in np.asarray(boxes, int):
        mask[y0:y1, x0:x1] = True
    return mask


def _peaks(positions: list[tuple[int, int]], size: int) -> torch.Tensor:
    """Random maps in [0, 0.5) with one maximum of 1 at each (row, column)."""
    maps = torch.rand(len(positions), size, size) * 0.5
    for i, (r, c) in enumerate(positions):
        maps[i, r, c] = 1.0
    return maps


# --- Pointing game -------------------------------------------------------------------------------------------
# vislib: the point of the map's argmax (first in row-major order) is the centre of its pixel, (c + 0.5, r + 0.5),
# and hits if it lies in a target box (closed, edges included), or within `tolerance` px of one.
# Quantus: a hit if any pixel holding the map's maximum lies in the binary mask `s_batch`; it has no boxes and no
# tolerance. With tolerance 0 and the mask of the pixels whose centres lie in a target box, the two agree.
# An integer box [x0, y0, x1, y1] covers the centres of pixels x0..x1-1 (and rows y0..y1-1), the pixels of the
# slice [y0:y1, x0:x1]; a box edge can only pass through a pixel centre at a half-integer coordinate.


def test_pointing_game_agrees_inside_outside_and_on_box_edges():
    size, box = 32, np.array([[8, 8, 16, 16]])
    cases = {  # (row, column) of the maximum: vislib's expected answer
        (12, 12): 1.0, (2, 25): 0.0,  # well inside, far outside
        (8, 8): 1.0, (15, 15): 1.0,  # first and last pixel of the box (corners)
        (12, 15): 1.0, (12, 16): 0.0,  # last column inside, first column right of the box
        (7, 12): 0.0, (16, 12): 0.0,  # the row just above, and just below
        (12, 7): 0.0,  # the column just left
    }
    maps = _peaks(list(cases), size)
    n = len(cases)
    samples = _samples([box] * n, [np.array([1])] * n)
    expected = np.array(list(cases.values()))
    ours = _vislib_pointing(maps, samples, torch.ones(n, dtype=torch.long))
    theirs = _quantus_pointing(maps, np.stack([_slice_mask(box, size)] * n))
    np.testing.assert_array_equal(ours, expected)
    np.testing.assert_array_equal(theirs, expected)


def test_pointing_game_agrees_when_a_box_edge_passes_through_pixel_centres():
    # Edges at x, y = 8.5 and 15.5 run through the centres of pixels 8 and 15: vislib's closed box counts those
    # pixels in, and so does Quantus given vislib's pixel-centre mask (`box_masks`). A mask rasterised otherwise
    # (truncating to [8:15]) would leave row and column 15 out, and Quantus would then call (15, 15) a miss.
    size, box = 32, np.array([[8.5, 8.5, 15.5, 15.5]])
    cases = {(8, 8): 1.0, (15, 15): 1.0, (12, 15): 1.0, (7, 12): 0.0, (12, 16): 0.0, (16, 16): 0.0}
    maps = _peaks(list(cases), size)
    n = len(cases)
    samples = _samples([box] * n, [np.array([4])] * n)
    mask = box_masks(box, size, size)
    assert mask.sum() == 8 * 8 and mask[8, 8] and mask[15, 15] and not mask[16, 16]
    ours = _vislib_pointing(maps, samples, torch.full((n,), 4))
    theirs = _quantus_pointing(maps, np.stack([mask] * n))
    np.testing.assert_array_equal(ours, list(cases.values()))
    np.testing.assert_array_equal(theirs, ours)


def test_pointing_game_agrees_image_by_image_on_random_maps_and_boxes():
    rng = np.random.default_rng(7)
    size, n = 32, 96
    boxes, labels, masks, targets = [], [], [], []
    for _ in range(n):
        k = int(rng.integers(1, 4))
        xy0 = rng.integers(0, size - 4, (k, 2))
        xy1 = np.minimum(xy0 + rng.integers(2, 18, (k, 2)), size)
        b = np.concatenate([xy0, xy1], 1)
        lab = rng.integers(0, 3, k)
        target = int(lab[rng.integers(k)])  # at least one box of the target class; the others must be ignored
        boxes.append(b), labels.append(lab), targets.append(target)
        masks.append(_slice_mask(b[lab == target], size))
    # Smooth-ish maps whose maximum often lands in a box, so both answers occur; no ties (continuous values).
    maps = torch.rand(n, size, size) + torch.as_tensor(np.stack(masks), dtype=torch.float32) * 0.003
    ours = _vislib_pointing(maps, _samples(boxes, labels), torch.tensor(targets))
    theirs = _quantus_pointing(maps, np.stack(masks))
    assert 0.2 < ours.mean() < 0.9
    np.testing.assert_array_equal(ours, theirs)


def test_pointing_game_where_the_definitions_differ():
    # Documented differences (Quantus 0.6.0), asserted so a change on either side is noticed:
    # 1. Ties: vislib takes the first argmax in row-major order; Quantus hits if any tied maximum is in the mask.
    # 2. No object of the target class: vislib answers NaN with a reason; Quantus sets NaN into a boolean array,
    #    which stores True, so it reports a hit.
    # 3. Tolerance: vislib's default is 15 px at 224 px (scaled); Quantus has none (only tolerance 0 compares).
    size, box = 32, np.array([[8, 8, 16, 16]])
    maps = torch.zeros(2, size, size)
    maps[:, 0, 0] = maps[:, 12, 12] = 1.0  # two maxima: (0, 0) outside comes first, (12, 12) inside
    samples = _samples([box, box], [np.array([1]), np.array([2])])
    targets = torch.tensor([1, 1])  # the second image has no box of class 1
    ours = _vislib_pointing(maps, samples, targets)
    theirs = _quantus_pointing(maps, np.stack([_slice_mask(box, size), np.zeros((size, size), bool)]))
    assert ours[0] == 0.0 and theirs[0] == 1.0
    assert np.isnan(ours[1]) and theirs[1] == 1.0
    near = _peaks([(12, 17)], size)  # centre 1.5 px right of the box: a hit only with a tolerance (2.1 px here)
    sample, target = _samples([box], [np.array([1])]), torch.ones(1, dtype=torch.long)
    batch = metrics.MetricInput(near, torch.zeros(1, 3, size, size), target, sample)
    assert metrics.get("pointing_game")(batch).values[0] == 1.0
    assert _vislib_pointing(near, sample, target)[0] == 0.0
    assert _quantus_pointing(near, box_masks(box, size, size)[None])[0] == 0.0


# --- Model-parameter randomisation (Adebayo et al. 2018) -----------------------------------------------------
# What differs between vislib's `randomization_curve` and `quantus.MPRT(layer_order="top_down")`:
# - Layers: Quantus randomises every module with `reset_parameters`, BatchNorm included, one cascade step per
#   module; vislib only the modules with a weight of 2 or more dimensions (convolutions, linear layers), in
#   `n_steps` steps spread over them. Resetting a BatchNorm of a freshly initialised model changes nothing, so
#   on the random demo net Quantus's BatchNorm steps repeat the score of the step before.
# - Random weights: Quantus calls torch.manual_seed(seed + 1) before every layer's reset (and leaves the global
#   generator there); vislib seeds once with `seed` and restores the global generator. The randomised models,
#   hence the correlations, are not the same; only the statistic on the same pair of models is.
# - Maps: Quantus needs maps at input resolution; vislib correlates the method's native maps. The explain
#   function below repeats each cell of vislib's map f x f times (nearest upsampling by an integer factor), which
#   leaves the Spearman correlation unchanged: average ranks of the repeated values are an affine function of the
#   original average ranks, and Pearson's correlation of equally repeated values is that of the values.
# - Quantus's defaults take |map| and scale by the maximum: rank-preserving for Grad-CAM's non-negative maps, so
#   its default score equals vislib's `spearman_abs` and `spearman` alike; `RAW` turns both off here.

LAYER = "features.14"


def _gradcam_native(model: torch.nn.Module, images, targets) -> np.ndarray:
    maps = methods.get("gradcam").explain(model, LAYER, torch.as_tensor(images), torch.as_tensor(targets)).maps
    return maps.detach().double().cpu().numpy()


def _gradcam_for_quantus(model, inputs, targets, **_) -> np.ndarray:
    """vislib's Grad-CAM as a Quantus `explain_func`: [N,1,H,W] at input size by nearest upsampling."""
    maps = _gradcam_native(model, inputs, targets)
    factor = inputs.shape[-1] // maps.shape[-1]
    return maps.repeat(factor, 1).repeat(factor, 2)[:, None]


@pytest.fixture(scope="module")
def mprt_run():
    torch.manual_seed(0)
    net = models.load("demonet", "random", num_classes=6)
    images = models.preprocessing_of(net).normalize(torch.rand(6, 3, 64, 64))
    with torch.no_grad():
        targets = net(images).argmax(1)  # the predicted class: its Grad-CAM map is rarely all zero
    metric = quantus.MPRT(layer_order="top_down", seed=42, **RAW)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # all-zero maps of some randomised models: NaN, with numpy warnings
        scores = metric(model=net, x_batch=images.numpy(), y_batch=targets.numpy(), a_batch=None,
                        explain_func=_gradcam_for_quantus, device="cpu")
    torch.manual_seed(0)
    return net, images, targets, scores


def _spearman(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")
        return spearman_rows(a, b), correlation_spearman(a, b, batched=True)


def test_spearman_rows_equals_quantus_correlation_spearman():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(8, 200))
    b = a + rng.normal(scale=1.5, size=a.shape)
    a[:4] = np.round(a[:4], 1)  # ties: both use average ranks
    b[2:6] = np.maximum(np.round(b[2:6], 1), 0)  # many tied zeros, as in ReLU'd maps
    b[6] = -a[6]
    b[7] = 5.0  # constant: undefined in both
    ours, theirs = _spearman(a, b)
    assert np.isnan(ours[7]) and np.isnan(theirs[7])
    assert ours[6] == pytest.approx(-1.0)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9, equal_nan=True)
    one_ours, one_theirs = _spearman(a[:1], b[:1])  # one pair: scipy returns a scalar, Quantus an array of one
    np.testing.assert_allclose(one_ours, one_theirs, rtol=0, atol=1e-9)


def test_nearest_upsampling_keeps_the_spearman_correlation():
    rng = np.random.default_rng(4)
    a = np.maximum(rng.normal(size=(5, 8, 8)), 0)  # with ties
    b = np.maximum(rng.normal(size=(5, 8, 8)), 0)
    up = lambda m: m.repeat(8, 1).repeat(8, 2).reshape(len(m), -1)  # noqa: E731
    np.testing.assert_allclose(spearman_rows(up(a), up(b)), spearman_rows(a.reshape(5, -1), b.reshape(5, -1)),
                               rtol=0, atol=1e-12)


def test_mprt_scores_equal_vislib_spearman_on_the_same_randomised_models(mprt_run):
    net, images, targets, scores = mprt_run
    original = _gradcam_native(net, images, targets).reshape(len(images), -1)
    assert (original.max(1) > 0).all()
    np.testing.assert_allclose(scores["original"], 1.0, atol=1e-12)
    # Quantus's cascade again (deterministic: reseeded before every layer), with vislib's statistic on each step.
    cascade = quantus.PyTorchModel(net, channel_first=True).get_random_layer_generator(order="top_down", seed=42)
    names = []
    for name, randomised in cascade:
        maps = _gradcam_native(randomised, images, targets).reshape(len(images), -1)
        ours, _ = _spearman(original, maps)
        np.testing.assert_allclose(scores[name], ours, rtol=0, atol=1e-9, equal_nan=True, err_msg=name)
        names.append(name)
    assert names == [k for k in scores if k != "original"] and names[0] == "fc" and names[-1] == "features.0"
    assert np.isfinite(np.array([scores[k] for k in names])).mean() > 0.7


def test_fully_randomised_models_decorrelate_grad_cam_in_both(mprt_run):
    # Different randomised models (see above), so only the outcome compares: Grad-CAM of the fully randomised
    # model is far from the original one in both (here about +0.33 with Quantus's cascade and -0.48 with
    # vislib's, per image between 0.23 and 0.44, and -0.58 and -0.39: the sign is not what the check is about).
    net, images, targets, scores = mprt_run
    curve = randomization_curve(net, LAYER, "gradcam", {}, images, targets, list(range(len(images))),
                                n_steps=5, seed=0)
    spearman = curve[curve.statistic == "spearman"]
    first = spearman[spearman.step == 0]["value"].to_numpy()
    last = spearman[spearman.step == spearman.step.max()]["value"].to_numpy()
    np.testing.assert_allclose(first, 1.0, atol=1e-12)
    quantus_last = np.array(scores["features.0"])
    for values in (last, quantus_last):
        assert np.isfinite(values).sum() >= 4
        assert np.nanmean(values) < 0.5 and np.nanmax(values) < 0.7


# --- Deletion / region perturbation --------------------------------------------------------------------------
# vislib's deletion curve: softmax probability of the target as the round(f * H * W) most salient pixels (all
# channels, stable descending order) become the baseline, f = 0, step, ..., 1; AUC = trapezoid over f.
# Quantus: `PixelFlipping` removes `features_in_step` features per step; `RegionPerturbation` removes
# patch_size x patch_size patches (all channels) in order of their summed attribution and reports the drop
# y(x) - y(x_perturbed). Made comparable with: softmax=True; perturb_baseline=0.0, a constant that is vislib's
# "zero" baseline (zero in the model's input space); maps without ties. What still differs:
# - Baselines: Quantus's "black" is the image's minimum, not 0; its "mean" is the mean over all channels of the
#   already perturbed image, recomputed at every step (vislib: per-channel mean of the original image); vislib's
#   "blur" has no Quantus counterpart.
# - Ties: vislib sorts stably (the lower flat index first); Quantus uses np.argsort's unstable default, so tied
#   pixels (e.g. upsampled Grad-CAM cells) may be removed in another order.
# - PixelFlipping's features are channel values, a [N,H,W] map broadcast over the channels: a step of k pixels is
#   features_in_step = 3k, yet Quantus checks that features_in_step divides H * W (not 3 * H * W), so 3k must
#   divide H * W: 24 px and 12 steps here.
# - Quantus's curves leave out the unperturbed point; its AUC (`calculate_auc`: np.trapz, dx=1) does too and
#   does not scale by the step. np.trapz is gone in NumPy 2.4, so Quantus 0.6.0's AUC helpers
#   (`return_auc_per_sample=True`, `get_auc_score`) raise AttributeError here; the curves are compared instead.


def _deletion(net, images, targets, maps, step) -> tuple[np.ndarray, np.ndarray]:
    n = len(images)
    samples = _samples([np.zeros((0, 4))] * n, [np.zeros(0)] * n)
    batch = metrics.MetricInput(maps, images, targets, samples, net)
    metric = metrics.get("deletion_auc", step=step, baseline="zero")
    return metric.curves(batch).double().cpu().numpy(), metric(batch).values


def _inputs(size: int, n: int = 4):
    net = models.load("demonet", "random", num_classes=6)
    images = models.preprocessing_of(net).normalize(torch.rand(n, 3, size, size))
    return net, images, torch.arange(n) % 6


def test_deletion_curve_and_auc_equal_quantus_pixel_flipping():
    size, steps = 24, 12
    net, images, targets = _inputs(size)
    maps = torch.rand(len(images), size, size)
    curve, auc = _deletion(net, images, targets, maps, 1 / steps)
    flipping = quantus.PixelFlipping(features_in_step=3 * size * size // steps, perturb_baseline=0.0, **RAW)
    theirs = np.asarray(flipping(model=net, x_batch=images.numpy(), y_batch=targets.numpy(),
                                 a_batch=maps.numpy()[:, None], softmax=True, device="cpu"))
    assert theirs.shape == (len(images), steps)
    np.testing.assert_allclose(curve[:, 1:], theirs, rtol=0, atol=1e-6)
    # The unperturbed point from Quantus's model wrapper, then vislib's AUC from Quantus's curve; and how it
    # relates to Quantus's own AUC (trapezoid with dx=1 over the perturbed points only).
    start = quantus.PyTorchModel(net, softmax=True).predict(images.numpy())[np.arange(len(images)), targets]
    np.testing.assert_allclose(curve[:, 0], start, rtol=0, atol=1e-6)
    full = np.concatenate([start[:, None], theirs], 1)
    np.testing.assert_allclose(auc, np.trapezoid(full, np.linspace(0, 1, steps + 1), axis=1), rtol=0, atol=1e-6)
    quantus_auc = np.trapezoid(theirs, dx=1, axis=1)
    np.testing.assert_allclose(auc, (quantus_auc + (start + theirs[:, 0]) / 2) / steps, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("size", "patch", "regions"), [(16, 1, 48), (32, 4, 64)])
def test_deletion_curve_equals_quantus_region_perturbation(size, patch, regions):
    # Patch size 1: one pixel per step, vislib with step 1 / (H * W). Patch size p: a map constant over p x p
    # patches (distinct values), so vislib's stable order removes one whole patch per p * p pixels, the patch
    # Quantus removes at that step (same order of patch sums); vislib's step is then p * p / (H * W).
    net, images, targets = _inputs(size)
    cells = torch.rand(len(images), size // patch, size // patch)
    maps = cells.repeat_interleave(patch, 1).repeat_interleave(patch, 2)
    curve, _ = _deletion(net, images, targets, maps, patch * patch / size ** 2)
    perturbation = quantus.RegionPerturbation(patch_size=patch, order="morf", regions_evaluation=regions,
                                              perturb_baseline=0.0, **RAW)
    drops = np.asarray(perturbation(model=net, x_batch=images.numpy(), y_batch=targets.numpy(),
                                    a_batch=maps.numpy()[:, None], softmax=True, device="cpu"))
    assert drops.shape == (len(images), regions)
    np.testing.assert_allclose(curve[:, :1] - drops, curve[:, 1:regions + 1], rtol=0, atol=1e-6)
