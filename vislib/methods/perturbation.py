"""The perturbation family: black-box maps from the target score of perturbed copies of each image.

Occlusion slides a window of baseline pixels over the image, RISE multiplies it by random smooth masks, LIME and
KernelSHAP switch superpixels on and off and fit a weighted linear model to the scores. Each method needs only
forward passes (no gradients, no layer): one of the unperturbed batch, which gives the predicted classes and the
unperturbed scores, then the perturbed copies of every image of the batch, `batch_size` per pass. Randomness
comes from `seed` (RISE: the same masks for every image; LIME and KernelSHAP: with each image's content), so an
image gets the same map whatever batch it is in. Maps are at input resolution.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from vislib.errors import ConfigError
from vislib.methods.base import Attribution, AttributionMethod, choose_targets, fast_layout, register
from vislib.methods.hooks import frozen_model
from vislib.methods.l2caf import _row_seed
from vislib.params import param
from vislib.preprocessing import Preprocessing

SCORES = ("logit", "probability")
SEGMENTATIONS = ("slic", "grid")
LIME_DISTANCES = ("pixels", "superpixels")
# captum's KernelShap weight for the all-on and all-off coalitions, whose Shapley kernel weight is infinite.
ANCHOR_WEIGHT = 1e6
# torch.nn.functional.cosine_similarity's eps, which captum's Lime kernel goes through.
COSINE_EPS = 1e-8

_SCORE_HELP = "the explained score: the target's logit or its softmax probability"
_BATCH_HELP = "perturbed images per forward pass (memory grows with it; the maps do not change)"
_BASELINE_HELP = "value hidden pixels are set to, in the model's input space (0: the mean colour of normalised inputs)"


def target_scores(logits: torch.Tensor, targets: torch.Tensor, score: str) -> torch.Tensor:
    """The explained score [B] of each row: the target's logit or its softmax probability."""
    logits = logits.float()
    if score == "probability":
        logits = logits.softmax(1)
    return logits.gather(1, targets[:, None])[:, 0]


CopyMaker = Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]
"""copies(start, stop): the perturbed copies [stop-start,3,H,W] numbered start..stop-1 and their target classes."""


def perturbed_scores(model: nn.Module, count: int, batch_size: int, copies: CopyMaker, score: str) -> torch.Tensor:
    """Target scores [count] of `count` perturbed copies, made and scored `batch_size` at a time."""
    scores = []
    for start in range(0, count, batch_size):
        inputs, targets = copies(start, min(start + batch_size, count))
        scores.append(target_scores(model(fast_layout(inputs)), targets, score))
    return torch.cat(scores)


class PerturbationMethod(AttributionMethod):
    """A forward-only method: maps at input resolution from the scores of perturbed copies of the images."""

    uses_layer = False

    def _explain(self, model, layer, images, targets) -> Attribution:
        with frozen_model(model, keep_inplace=True), torch.no_grad():
            logits = model(fast_layout(images))
            targets = choose_targets(logits, targets)
            scores = target_scores(logits, targets, self.params["score"])
            maps = self.perturbation_maps(model, images, targets, scores)
        return Attribution(maps.float(), targets, logits.argmax(1))

    @abstractmethod
    def perturbation_maps(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                          scores: torch.Tensor) -> torch.Tensor:
        """Maps [N,H,W] of the images [N,3,H,W], given the explained classes and their unperturbed scores [N]."""


def window_positions(size: int, window: int, stride: int) -> torch.Tensor:
    """Which pixels [count,size] of an axis each window position covers: starts 0, stride, 2 stride, ... up to
    the first window that reaches the far edge, cut there (the positions of captum's Occlusion)."""
    count = math.ceil((size - window) / stride) + 1
    starts = torch.arange(count)[:, None] * stride
    pixels = torch.arange(size)[None]
    return (pixels >= starts) & (pixels < starts + window)


@register
class Occlusion(PerturbationMethod):
    """Occlusion (Zeiler & Fergus 2014): the drop of the target score when a square window of the image is set
    to a baseline, averaged over the window positions that cover each pixel (captum's Occlusion)."""

    name = "occlusion"
    signed_maps = True

    @dataclass(frozen=True)
    class Params:
        window: int = param(32, "side of the square window in pixels", minimum=1)
        stride: int = param(16, "step between window positions in pixels, at most `window` (forward passes per "
                            "image: 1 + n_rows * n_cols, n = ceil((side - window) / stride) + 1; 170 at 224 px with "
                            "the defaults)", minimum=1)
        baseline: float = param(0.0, _BASELINE_HELP)
        score: str = param("logit", _SCORE_HELP, choices=SCORES)
        batch_size: int = param(64, _BATCH_HELP, minimum=1)

    def validate(self) -> None:
        if self.params["stride"] > self.params["window"]:
            raise ConfigError(f"method 'occlusion': stride {self.params['stride']} is larger than window "
                              f"{self.params['window']}, which leaves pixels no window covers; use a stride of at "
                              "most the window")

    def perturbation_maps(self, model, images, targets, scores) -> torch.Tensor:
        n, _, height, width = images.shape
        window, stride = self.params["window"], self.params["stride"]
        if window > min(height, width):
            raise ConfigError(f"method 'occlusion': window {window} px is larger than the {height}x{width} images; "
                              f"use a window of at most {min(height, width)}")
        rows = window_positions(height, window, stride).to(images)
        cols = window_positions(width, window, stride).to(images)
        per_image = len(rows) * len(cols)
        baseline = self.params["baseline"]

        def copies(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
            index = torch.arange(start, stop, device=images.device)
            image, position = index // per_image, index % per_image
            hidden = (rows[position // len(cols)][:, None, :, None] * cols[position % len(cols)][:, None, None, :])
            # captum's arithmetic, so that both score the same copies bit for bit.
            return images[image] * (1 - hidden) + baseline * hidden, targets[image]

        occluded = perturbed_scores(model, n * per_image, self.params["batch_size"], copies, self.params["score"])
        drops = (scores[:, None] - occluded.view(n, per_image)).view(n, len(rows), len(cols))
        # Added one window at a time in captum's order (rows fastest), so the sums round exactly as captum's do;
        # that costs one slice addition per window, nothing next to the window's forward passes.
        total = torch.zeros(n, height, width, device=images.device)
        for col in range(len(cols)):
            for row in range(len(rows)):
                top, left = row * stride, col * stride
                total[:, top:top + window, left:left + window] += drops[:, row, col, None, None]
        return total / (rows.sum(0)[:, None] * cols.sum(0)[None, :])


class RiseDraw(NamedTuple):
    """The random part of RISE's masks: binary grids [K,s,s] and the crop offsets [K] of each upsampled grid."""

    grids: torch.Tensor
    shift_rows: torch.Tensor
    shift_cols: torch.Tensor


def _mirror(index: torch.Tensor, size: int) -> torch.Tensor:
    """Indices outside 0..size-1 reflected about the edge samples (numpy's 'reflect', scipy.ndimage's 'mirror')."""
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * (size - 1)
    index = index.remainder(period)
    return torch.where(index >= size, period - index, index)


def _upsampling_weights(cells: int, size: int, cell: int, shifts: torch.Tensor) -> torch.Tensor:
    """Bilinear weights [K,size,cells]: row i of mask k reads row shifts[k] + i of the grid upsampled to
    (cells + 1) * cell pixels (half-pixel centres, mirrored edges: skimage's resize(order=1, mode='reflect'))."""
    upsampled = (cells + 1) * cell
    pixel = shifts[:, None].double() + torch.arange(size, dtype=torch.float64)[None]
    coordinate = (pixel + 0.5) * cells / upsampled - 0.5
    lower = coordinate.floor()
    fraction = coordinate - lower
    weights = torch.zeros(len(shifts), size, cells, dtype=torch.float64)
    weights.scatter_add_(2, _mirror(lower.long(), cells)[..., None], (1 - fraction)[..., None])
    weights.scatter_add_(2, _mirror(lower.long() + 1, cells)[..., None], fraction[..., None])
    return weights


@register
class RISE(PerturbationMethod):
    """RISE (Petsiuk et al. 2018): the mean of random smooth masks weighted by the target score of the image
    multiplied by each, divided by the probability that a mask cell is on."""

    name = "rise"

    @dataclass(frozen=True)
    class Params:
        masks: int = param(500, "random masks (forward passes per image: masks + 1; the paper used 4000-8000)",
                            minimum=1)
        cells: int = param(7, "side of each mask's random binary grid, in cells", minimum=1)
        p: float = param(0.5, "probability that a grid cell is on", exclusive_minimum=0, maximum=1)
        score: str = param("probability", _SCORE_HELP + " (the paper: probability)", choices=SCORES)
        seed: int = param(0, "seed of the masks, the same for every image")
        batch_size: int = param(64, _BATCH_HELP, minimum=1)

    def maps_are_signed(self) -> bool:
        """Probabilities and masks are non-negative; logits carry a sign."""
        return self.params["score"] == "logit"

    def draw(self, height: int, width: int) -> RiseDraw:
        """The grids and crop offsets of every mask for images of this size, from `seed` alone."""
        cells = self.params["cells"]
        generator = torch.Generator().manual_seed(self.params["seed"])
        count = self.params["masks"]
        grids = torch.rand(count, cells, cells, generator=generator, dtype=torch.float64) < self.params["p"]
        shift_rows = torch.randint(math.ceil(height / cells), (count,), generator=generator)
        shift_cols = torch.randint(math.ceil(width / cells), (count,), generator=generator)
        return RiseDraw(grids.double(), shift_rows, shift_cols)

    def render(self, draw: RiseDraw, height: int, width: int) -> torch.Tensor:
        """Masks [K,H,W] in [0,1]: each grid upsampled bilinearly to (cells + 1) cells of ceil(side / cells)
        pixels and cropped at its offsets (the authors' generate_masks)."""
        cells = self.params["cells"]
        rows = _upsampling_weights(cells, height, math.ceil(height / cells), draw.shift_rows)
        cols = _upsampling_weights(cells, width, math.ceil(width / cells), draw.shift_cols)
        return rows @ draw.grids @ cols.transpose(1, 2)

    def perturbation_maps(self, model, images, targets, scores) -> torch.Tensor:
        n, _, height, width = images.shape
        draw = self.draw(height, width)
        per_pass = max(1, self.params["batch_size"] // n)
        total = torch.zeros(n, height, width, device=images.device)
        for start in range(0, self.params["masks"], per_pass):
            chunk = RiseDraw(*(part[start:start + per_pass] for part in draw))
            masks = self.render(chunk, height, width).to(images)
            masked = (masks[:, None, None] * images[None]).flatten(0, 1)
            logits = model(fast_layout(masked))
            masked_scores = target_scores(logits, targets.repeat(len(masks)), self.params["score"])
            total += torch.einsum("kn,khw->nhw", masked_scores.view(len(masks), n), masks.float())
        return total / (self.params["masks"] * self.params["p"])


class Superpixels(NamedTuple):
    """Each image's superpixel of every pixel [N,H,W] (0..count-1) and each image's superpixel count [N]."""

    segments: torch.Tensor
    counts: torch.Tensor


def _pixels01(model: nn.Module, images: torch.Tensor) -> np.ndarray:
    """The images as [N,H,W,3] float64 in [0,1], for SLIC's colour distances: un-normalised with the model's
    preprocessing where it carries one, else min-max scaled per image."""
    preprocessing = getattr(model, "vislib_preprocessing", None)
    if isinstance(preprocessing, Preprocessing):
        pixels = preprocessing.denormalize(images.detach().float()).clamp(0, 1)
    else:
        pixels = images.detach().float()
        low = pixels.amin(dim=(1, 2, 3), keepdim=True)
        pixels = (pixels - low) / (pixels.amax(dim=(1, 2, 3), keepdim=True) - low).clamp_min(1e-12)
    return pixels.permute(0, 2, 3, 1).double().cpu().numpy()


class SurrogateMethod(PerturbationMethod):
    """LIME and KernelSHAP: superpixels switched on (the image) or off (the baseline) in random coalitions, and a
    weighted linear fit of the target score on the on/off vectors; a superpixel's map value is its coefficient."""

    signed_maps = True
    # How many leading coalitions of `coalitions` are the whole image, scored by the unperturbed pass.
    whole_image_first = 0

    @abstractmethod
    def coalitions(self, generator: torch.Generator, features: int) -> torch.Tensor:
        """On/off vectors [samples, features] (bool) of one image."""

    @abstractmethod
    def sample_weights(self, images: torch.Tensor, superpixels: Superpixels, on: torch.Tensor) -> torch.Tensor:
        """Regression weight [N,S] of each coalition `on` [N,S,M]."""

    @property
    def ridge(self) -> float:
        """The ridge penalty of the fit (0: least squares)."""
        return 0.0

    def superpixels(self, model: nn.Module, images: torch.Tensor) -> Superpixels:
        """The interpretable features of each image: SLIC superpixels or a regular grid."""
        n, _, height, width = images.shape
        count = self.params["superpixels"]
        if self.params["segments"] == "grid":
            side = max(1, round(math.sqrt(count)))
            rows = torch.arange(height, device=images.device) * side // height
            cols = torch.arange(width, device=images.device) * side // width
            grid = rows[:, None] * side + cols[None]
            return Superpixels(grid.expand(n, height, width), torch.full((n,), side * side, device=images.device))
        # Imported here: scikit-image's segmentation takes about a second to import and only these methods use it.
        from skimage.segmentation import slic

        segments = []
        for pixels in _pixels01(model, images):
            labels = slic(pixels, n_segments=count, compactness=self.params["compactness"], start_label=0,
                          channel_axis=-1)
            # SLIC's labels can skip numbers; features must be 0..count-1.
            segments.append(np.unique(labels, return_inverse=True)[1].reshape(labels.shape))
        stacked = torch.as_tensor(np.stack(segments), dtype=torch.long, device=images.device)
        return Superpixels(stacked, stacked.flatten(1).amax(1) + 1)

    def draw(self, images: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Every image's coalitions [N,S,max count] (bool; False beyond an image's own count), seeded by `seed`
        and the image's content, so an image gets the same coalitions in any batch."""
        pixels = images.detach().float().cpu().numpy()
        width = int(counts.max())
        rows = []
        for i, features in enumerate(counts.tolist()):
            generator = torch.Generator().manual_seed(_row_seed(self.params["seed"], pixels[i].tobytes(), None))
            on = self.coalitions(generator, features)
            rows.append(torch.nn.functional.pad(on, (0, width - features)))
        return torch.stack(rows).to(images.device)

    def perturbation_maps(self, model, images, targets, scores) -> torch.Tensor:
        superpixels = self.superpixels(model, images)
        on = self.draw(images, superpixels.counts)
        n, samples = on.shape[:2]
        scored = samples - self.whole_image_first
        flat_segments = superpixels.segments.flatten(1)
        baseline = self.params["baseline"]

        def copies(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
            index = torch.arange(start, stop, device=images.device)
            image, sample = index // scored, index % scored + self.whole_image_first
            shown = on[image, sample].gather(1, flat_segments[image]).view(len(index), 1, *images.shape[2:])
            # captum's Lime arithmetic, so that both score the same copies bit for bit.
            kept = shown.to(images.dtype)
            return kept * images[image] + (1 - kept) * baseline, targets[image]

        perturbed = perturbed_scores(model, n * scored, self.params["batch_size"], copies, self.params["score"])
        outputs = torch.cat([scores[:, None].expand(n, self.whole_image_first), perturbed.view(n, scored)], 1)
        weights = self.sample_weights(images, superpixels, on)
        coefficients = weighted_linear_fit(on.double(), outputs.double(), weights.double(), self.ridge)
        return coefficients.float().gather(1, flat_segments).view_as(superpixels.segments)


def weighted_linear_fit(features: torch.Tensor, outputs: torch.Tensor, weights: torch.Tensor,
                        ridge: float) -> torch.Tensor:
    """Coefficients [N,M] of the fits outputs[n] ~ b_n + features[n] @ c_n minimising
    sum_s weights[n,s] (outputs[n,s] - b_n - features[n,s] @ c_n)^2 + ridge |c_n|^2, batched over n.

    scikit-learn's Ridge / LinearRegression with sample weights (what captum's Lime and KernelShap fit): the
    intercept is unpenalised, which centring by the weighted means gives. The normal equations are solved
    through a pseudo-inverse, so a feature that never varies (padding beyond an image's own superpixels, or
    too few samples) gets the minimum-norm solution, 0 for padding, as scikit-learn's least squares does.
    """
    total = weights.sum(1, keepdim=True)
    feature_mean = (weights[..., None] * features).sum(1) / total
    output_mean = (weights * outputs).sum(1, keepdim=True) / total
    centred = features - feature_mean[:, None]
    weighted = weights[..., None] * centred
    gram = weighted.transpose(1, 2) @ centred
    gram = gram + ridge * torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    moments = weighted.transpose(1, 2) @ (outputs - output_mean)[..., None]
    return (torch.linalg.pinv(gram, hermitian=True) @ moments)[..., 0]


@dataclass(frozen=True)
class SurrogateParams:
    """What LIME and KernelSHAP share."""

    samples: int = param(300, "random coalitions per image (forward passes per image: samples + 1 for lime, "
                              "samples for kernel_shap, whose all-on coalition is the unperturbed pass)", minimum=3)
    segments: str = param("slic", "interpretable features: SLIC superpixels (follow the image's edges, as the "
                          "papers' superpixels) or a regular grid (the same for every image)", choices=SEGMENTATIONS)
    superpixels: int = param(50, "superpixel count: SLIC's target n_segments, or the k x k grid nearest to it",
                             minimum=2)
    compactness: float = param(10.0, "SLIC's compactness (higher: squarer superpixels)", exclusive_minimum=0)
    baseline: float = param(0.0, _BASELINE_HELP)
    score: str = param("logit", _SCORE_HELP, choices=SCORES)
    seed: int = param(0, "seed of the coalitions (with each image's content)")
    batch_size: int = param(64, _BATCH_HELP, minimum=1)


@register
class Lime(SurrogateMethod):
    """LIME (Ribeiro et al. 2016): a ridge fit of the target score on superpixel on/off vectors drawn uniformly
    (each superpixel on with probability 1/2), weighted by an exponential kernel on the cosine distance to the
    image (captum's Lime)."""

    name = "lime"

    @dataclass(frozen=True)
    class Params(SurrogateParams):
        kernel_width: float = param(1.0, "width w of the kernel exp(-d^2 / (2 w^2)) (captum: 1; lime_image: 0.25 "
                                    "with distance: superpixels)", exclusive_minimum=0)
        distance: str = param("pixels", "cosine distance between the images in input space (captum) or between "
                              "the on/off vector and all-on (lime_image)", choices=LIME_DISTANCES)
        ridge: float = param(1.0, "ridge penalty on the coefficients (lime_image: 1; 0: weighted least squares)",
                             minimum=0)

    @property
    def ridge(self) -> float:
        return float(self.params["ridge"])

    def coalitions(self, generator: torch.Generator, features: int) -> torch.Tensor:
        return torch.rand(self.params["samples"], features, generator=generator) < 0.5

    def sample_weights(self, images, superpixels, on) -> torch.Tensor:
        shown = on.double()
        if self.params["distance"] == "superpixels":
            # Cosine similarity of the on/off vector with all-on: |on| / sqrt(|on| count).
            dot = shown.sum(2)
            norms = dot * superpixels.counts[:, None].double()
        else:
            # The dot product and norms of the perturbed images, from per-superpixel sums of the image.
            n = len(images)
            flat = images.detach().double().flatten(2)
            segments = superpixels.segments.flatten(1)[:, None].expand_as(flat)
            sums = torch.zeros(n, 3, on.shape[2], dtype=torch.float64, device=images.device)
            squares = sums.scatter_add(2, segments, flat * flat).sum(1)
            values = sums.scatter_add(2, segments, flat).sum(1)
            areas = sums.scatter_add(2, segments, torch.ones_like(flat)).sum(1)
            baseline = self.params["baseline"]
            hidden = 1 - shown
            dot = shown @ squares[..., None] + baseline * (hidden @ values[..., None])
            perturbed_norm = shown @ squares[..., None] + baseline**2 * (hidden @ areas[..., None])
            dot, norms = dot[..., 0], perturbed_norm[..., 0] * squares.sum(1, keepdim=True)
        distance = 1 - dot / norms.clamp_min(COSINE_EPS**2).sqrt()
        return torch.exp(-distance**2 / (2 * self.params["kernel_width"] ** 2))


@register
class KernelShap(SurrogateMethod):
    """KernelSHAP (Lundberg & Lee 2017): Shapley values of the superpixels as the least-squares fit with the
    Shapley kernel, coalitions drawn in proportion to it (so all weigh 1), the all-on and all-off coalitions
    weighted 1e6 (captum's KernelShap)."""

    name = "kernel_shap"
    whole_image_first = 1
    Params = SurrogateParams

    def coalitions(self, generator: torch.Generator, features: int) -> torch.Tensor:
        """All on, all off, then sizes k in 1..M-1 drawn with probability proportional to (M-1) / (k (M-k)),
        the Shapley kernel summed over the C(M,k) coalitions of size k, and a uniform coalition of each size."""
        random = self.params["samples"] - 2
        if features < 2:
            sizes = torch.zeros(random, dtype=torch.long)
        else:
            size = torch.arange(1, features, dtype=torch.float64)
            sizes = torch.multinomial((features - 1) / (size * (features - size)), random, replacement=True,
                                      generator=generator) + 1
        ranks = torch.rand(random, features, generator=generator).argsort(1).argsort(1)
        return torch.cat([torch.ones(1, features, dtype=torch.bool), torch.zeros(1, features, dtype=torch.bool),
                          ranks < sizes[:, None]])

    def sample_weights(self, images, superpixels, on) -> torch.Tensor:
        size = on.sum(2)
        anchor = (size == 0) | (size == superpixels.counts[:, None])
        return torch.where(anchor, ANCHOR_WEIGHT, 1.0).double()
