"""Class-agnostic feature visualisation (Stergiou): cluster an image set, then synthesise one image per cluster.

Port of `vis.py` of Class-Agnostic-Feature-Visualisation with its defects fixed: RGB throughout,
the images closest to each cluster centre (not the farthest), one channel set per cluster (not
every image against every set), per-image penalties counted once, a persistent optimiser, window
crops pasted back where they were taken, and torchvision/skimage in place of imgaug.
`recipe: original` restores the original's values and its term balance, optimiser and 8-bit images
(the first three fixes stay).

On request it keeps what the original's pictures need: the image set's 2-D embedding with the cluster centres
(its t-SNE scatter; `embedding`) and thumbnails of each cluster's images (`scatter`, drawn by
`vislib.figures.cluster_scatter`), and snapshots of the images during the optimisation (`snapshot_every`; the
original saved every 200th step).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from vislib.errors import ConfigError, DataError
from vislib.featvis.base import (
    RECIPE_HELP,
    RECIPES,
    FeatVisMethod,
    FeatVisResult,
    check_images,
    check_units,
    register,
)
from vislib.featvis.engine import (
    check_finite,
    condition_gradient,
    gaussian_blur,
    gradient_of,
    quantize,
    resize,
    run,
    tap_layers,
)
from vislib.featvis.fold import fold_batch_norms
from vislib.losses import general_robust_loss
from vislib.methods.hooks import frozen_model
from vislib.models.registry import preprocessing_of, resolve_layer
from vislib.params import param
from vislib.runlog import Progress

# One octave of the original's defaults; mask sigmas are fractions of the image side (420/512, 340/512).
OCTAVE_DEFAULTS: dict[str, float | int] = {
    "iterations": 200, "scale": 1.2,
    "start_lr": 0.01, "end_lr": 0.002,
    "start_mask_sigma": 0.82, "end_mask_sigma": 0.66,
    "start_sigma": 0.9, "end_sigma": 0.2,
    "start_denoise_weight": 2.0, "end_denoise_weight": 8.0,
    "start_lambda": 1e-4, "end_lambda": 5e-4,
    "window": 0.4, "window_step": 40, "brightness_step": 50,
}
ORIGINAL_OCTAVE: dict[str, float | int] = {
    "iterations": 2001, "scale": 1.2,
    "start_lr": 0.5, "end_lr": 0.08,
    "start_mask_sigma": 420 / 512, "end_mask_sigma": 340 / 512,
    "start_sigma": 0.9, "end_sigma": 0.2,
    "start_denoise_weight": 2.0, "end_denoise_weight": 8.0,
    "start_lambda": 1e-4, "end_lambda": 5e-4,
    "window": 0.4, "window_step": 400, "brightness_step": 50,
}
"""The octave of vis.py's `__main__` (mask sigmas 420 and 340 px as fractions of its 512 px side)."""
ORIGINAL: dict[str, Any] = {
    "num_clusters": 10, "top_channels": 50, "images_per_cluster": 10, "penalty_layer": "auto", "image_size": 512,
    "tsne": True, "embedding": "tsne", "blur_every": 10, "momentum": 0.9, "robust_alpha": 1.0, "robust_scale": 1.0,
    "decorrelate": False, "grad_pyramid": 0, "term_balance": "original", "space": "normalized",
    "fresh_optimizer": True, "projection": "uint8", "octaves": [dict(ORIGINAL_OCTAVE)],
}
"""vis.py's values; its file:line per value is in tests/featvis/test_recipes.py."""
PENALTY_AUTO = "auto"
"""penalty_layer value: the last convolution that runs before the target layer's output."""
TERM_BALANCES = ("per_cluster", "original")
EMBEDDINGS = ("pca", "tsne")
THUMBNAIL_SIDE = 32
"""Side in pixels of the image-set thumbnails `scatter: true` keeps."""
_INT_KEYS = ("iterations", "window_step", "brightness_step")
_FEATURE_BATCH = 16


@dataclass(frozen=True)
class Octave:
    """One `generate` cycle of the original: schedules run linearly from start to end over `iterations`."""

    iterations: int
    scale: float
    start_lr: float
    end_lr: float
    start_mask_sigma: float
    end_mask_sigma: float
    start_sigma: float
    end_sigma: float
    start_denoise_weight: float
    end_denoise_weight: float
    start_lambda: float
    end_lambda: float
    window: float
    window_step: int
    brightness_step: int

    def at(self, key: str, step: int) -> float:
        """Value of schedule `key` (e.g. 'lr') at 0-based `step` of this octave."""
        start, end = getattr(self, f"start_{key}"), getattr(self, f"end_{key}")
        return start + (end - start) * step / max(1, self.iterations - 1)


def parse_octave(spec: Any, index: int, defaults: dict[str, float | int] | None = None) -> Octave:
    """An Octave from a config dict (missing keys take `defaults`, OCTAVE_DEFAULTS if None); ConfigError on bad
    keys or values."""
    defaults = OCTAVE_DEFAULTS if defaults is None else defaults
    if not isinstance(spec, dict):
        raise ConfigError(f"class_agnostic octave {index} must be a mapping of schedule values, got {spec!r}")
    unknown = sorted(set(spec) - set(OCTAVE_DEFAULTS))
    if unknown:
        raise ConfigError(f"class_agnostic octave {index} has no key {unknown[0]!r}; valid: {sorted(OCTAVE_DEFAULTS)}")
    values = {**defaults, **spec}
    for key, value in values.items():
        kind = int if key in _INT_KEYS else (int, float)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ConfigError(f"class_agnostic octave {index}: {key} must be a number, got {value!r}")
    positive = ("iterations", "window_step", "brightness_step", "start_lr", "end_lr",
                "start_mask_sigma", "end_mask_sigma")
    for key in positive:
        if values[key] <= 0:
            raise ConfigError(f"class_agnostic octave {index}: {key} must be > 0, got {values[key]}")
    for key in ("start_sigma", "end_sigma", "start_lambda", "end_lambda", "window"):
        if values[key] < 0:
            raise ConfigError(f"class_agnostic octave {index}: {key} must be >= 0, got {values[key]}")
    if values["start_denoise_weight"] <= 0 or values["end_denoise_weight"] <= 0:
        raise ConfigError(f"class_agnostic octave {index}: denoise weights must be > 0")
    if values["scale"] < 1:
        raise ConfigError(f"class_agnostic octave {index}: scale must be >= 1, got {values['scale']}")
    # Any: the keys and kinds were checked above, which a str-keyed dict cannot tell mypy per field.
    fields: dict[str, Any] = {k: (int(v) if k in _INT_KEYS else float(v)) for k, v in values.items()}
    return Octave(**fields)


def gaussian_centre_mask(size: int, sigma: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """[size,size] mask, 1 at the centre and exp(-18.02 ((r-1)/sigma)^2) around it, min-max normalised."""
    coords = torch.arange(size, device=device, dtype=torch.float32) - size // 2
    radius = torch.sqrt(coords[:, None] ** 2 + coords[None, :] ** 2)
    # The original writes the Gaussian as eps ** (0.5 ((r-1)/sigma)^2) with float64 eps: rate 18.02.
    rate = -0.5 * math.log(np.finfo(np.float64).eps)
    mask = torch.exp(-rate * ((radius - 1) / sigma) ** 2)
    span = mask.max() - mask.min()
    return (mask - mask.min()) / span if span > 0 else torch.ones_like(mask)


def tv_denoise(images: torch.Tensor, weight: float) -> torch.Tensor:
    """Split-Bregman TV denoising of a [N,3,H,W] batch in [0,1] (smaller weight: stronger smoothing)."""
    # skimage.restoration pulls in scipy.stats (about a second); only class_agnostic jobs need it.
    from skimage.restoration import denoise_tv_bregman

    arrays = images.detach().permute(0, 2, 3, 1).cpu().double().numpy()
    denoised = np.stack([denoise_tv_bregman(a, weight=weight, max_num_iter=100, eps=1e-3, channel_axis=-1)
                         for a in arrays])
    return torch.from_numpy(denoised).permute(0, 3, 1, 2).to(images)


def set_dots(pooled: torch.Tensor, target: torch.Tensor, channel_sets: torch.Tensor) -> torch.Tensor:
    """[B,K]: sum over cluster k's channel set (row k of `channel_sets` [K,n]) of pooled[b, j] * target[b, j]."""
    return (pooled[:, channel_sets] * target[:, channel_sets]).sum(-1)


def combine_terms(dots: torch.Tensor, own: torch.Tensor, l1: torch.Tensor, distance: torch.Tensor,
                  l1_lambda: float, balance: str) -> torch.Tensor:
    """Per-image loss [B] of cluster images from their terms.

    `dots` [B,K]: image b's pooled activation a_b dotted with its own cluster's target T_b over cluster k's
    channel set S_k, for every one of the K clusters; `own` [B]: image b's cluster; `l1` [B]: the L1 norm of
    image b's penalty-layer input; `distance` [B]: mean_c rho(a_bc - T_bc).

    per_cluster: -dots[b, own_b] + lambda l1_b + distance_b, each image against its own channel set, each term
    once. original: the sum vis.py minimises, split by image. Its dot term is a [B,K] matrix (every image
    against every set), to which it adds the batch's scalar L1 penalty and the batch-mean distance before
    summing, so both scalars are counted B*K times; its batch holds all K clusters (B = K), so image b's share
    is -sum_k dots[b,k] + K^2 lambda l1_b + K distance_b (K from `dots`, so a shard of clusters weighs its
    images as the full batch does).
    """
    if balance == "per_cluster":
        return -dots.gather(1, own[:, None])[:, 0] + l1_lambda * l1 + distance
    k = dots.shape[1]
    return -dots.sum(1) + k * k * l1_lambda * l1 + k * distance


def last_conv_before(model: nn.Module, layer: str, sample: torch.Tensor) -> str:
    """Name of the last convolution that runs before `layer`'s last output in a forward pass of `sample`.

    For vis.py's target `7.2.relu` of ResNet-152 (the block's output: the block calls its ReLU three times)
    that is `7.2.conv3`, its penalty layer. ConfigError when no convolution runs before the layer.
    """
    order: list[str] = []
    handles = [module.register_forward_hook(lambda *_, name=name: order.append(name))
               for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    target = resolve_layer(model, layer)
    handles.append(target.register_forward_hook(lambda *_: order.append("\0target")))
    try:
        with frozen_model(model), torch.no_grad():
            model(sample)
    finally:
        for handle in handles:
            handle.remove()
    last = len(order) - 1 - order[::-1].index("\0target") if "\0target" in order else -1
    convs = [name for name in order[:max(last, 0)] if name != "\0target"]
    if not convs:
        raise ConfigError(f"featvis 'class_agnostic': penalty_layer 'auto' found no convolution that runs before "
                          f"layer {layer!r}; name a penalty_layer, or '' for none")
    return convs[-1]


def cluster_image_set(pooled: torch.Tensor, num_clusters: int, images_per_cluster: int, seed: int,
                      tsne: bool, embedding: str = "pca") -> dict[str, torch.Tensor]:
    """KMeans over a PCA (up to 50 components), optionally then t-SNE (2-D), embedding of pooled features [M,C].

    Per cluster: its own members closest to its centre (up to `images_per_cluster`, -1 padded) and their
    weights softmax(1/d); every image's cluster label; the 2-D `embedding` of the set (`pca`: the first two
    principal components; `tsne`: the t-SNE the clustering used, or one of the PCA space, seeded alike; a set of
    at most 2 images has no t-SNE and keeps its PCA) and each cluster's centre in it (the mean of its images).
    Deterministic for a seed.
    """
    # sklearn takes seconds to import; importing it here spares every other featvis job that cost.
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    k = num_clusters
    features = pooled.double().cpu().numpy()
    count = features.shape[0]
    components = min(50, count, features.shape[1])
    principal = PCA(n_components=components, svd_solver="full").fit_transform(features) if count > 1 else features
    space = principal
    if (tsne or embedding == "tsne") and count > 2:
        from sklearn.manifold import TSNE  # slow to import and run: only when asked for

        # sklearn's default perplexity 30 (vis.py's), capped at (M - 1) / 3 as bhtsne requires: beyond that every
        # point is every other's neighbour and the embedding loses the clusters of a small set.
        perplexity = min(30.0, max(1.0, (count - 1) / 3))
        embedded = TSNE(n_components=2, perplexity=perplexity, random_state=seed).fit_transform(principal)
        space = embedded if tsne else principal
        flat = embedded if embedding == "tsne" else principal
    else:
        flat = principal
    kmeans = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(space)
    distances = torch.from_numpy(kmeans.transform(space)).T  # [K,M]
    labels = torch.from_numpy(kmeans.labels_).long()
    # Each cluster is described by its own members closest to its centre, weighted softmax(1/d);
    # slots beyond a small cluster's size hold -1 with weight 0.
    own = labels[None, :] == torch.arange(k)[:, None]
    m = min(images_per_cluster, count)
    closest = distances.masked_fill(~own, math.inf).topk(m, dim=1, largest=False)
    valid = torch.isfinite(closest.values)
    logits = torch.where(valid, 1.0 / closest.values.clamp_min(1e-6), -math.inf)
    weights = torch.softmax(logits, dim=1).float()
    members = torch.where(valid, closest.indices, -1)
    plane = torch.zeros(count, 2, dtype=torch.float64)
    plane[:, : min(2, flat.shape[1])] = torch.from_numpy(np.ascontiguousarray(flat[:, :2]))
    # Every cluster has a member (KMeans keeps no cluster empty), so each centre is a mean of at least one point.
    centres = (own.double() @ plane) / own.sum(1, keepdim=True).clamp_min(1)
    return {"members": members, "weights": weights, "labels": labels,
            "embedding": plane.float(), "centres": centres.float()}


@register
class ClassAgnostic(FeatVisMethod):
    """Class-agnostic feature visualisation: per cluster of an image set, match its weighted mean
    pooled activation (robust distance) and its top channels (dot product), L1-penalise a layer."""

    name = "class_agnostic"
    unit_source = "clusters"
    recipes = {"original": ORIGINAL}

    @dataclass(frozen=True)
    class Params:
        recipe: str = param("regularized", RECIPE_HELP, choices=RECIPES)
        num_clusters: int = param(4, "clusters of the image set, one image each", minimum=1)
        top_channels: int = param(50, "a cluster's strongest channels, matched by dot product", minimum=1)
        images_per_cluster: int = param(10, "images nearest each cluster centre that define it", minimum=1)
        penalty_layer: str = param("", "layer whose input is L1-penalised ('' : none; 'auto': the last "
                                       "convolution before the target layer)")
        image_size: int = param(0, "image side in pixels (0: the model's input size)", minimum=0)
        tsne: bool = param(False, "cluster a t-SNE embedding (the original) instead of the pooled features")
        embedding: str = param("pca", "2-D embedding of the image set kept for the cluster scatter: the first two "
                                      "principal components, or t-SNE (the original's scatter)", choices=EMBEDDINGS)
        scatter: bool = param(False, f"keep {THUMBNAIL_SIDE}-px thumbnails of each cluster's images for the cluster "
                                     "scatter (the workflow then draws scatter.png)")
        snapshot_every: int = param(0, "keep the images every this many steps in extras['snapshots'] (0: off)",
                                    minimum=0)
        seed: int = param(0, "seed of clustering, start noise and jitter")
        blur_every: int = param(10, "Gaussian blur every this many steps", minimum=1)
        momentum: float = param(0.9, "SGD momentum", minimum=0, exclusive_maximum=1)
        robust_alpha: float = param(1.0, "shape alpha of Barron's robust distance")
        robust_scale: float = param(1.0, "scale c of Barron's robust distance", exclusive_minimum=0)
        decorrelate: bool = param(True, "precondition the gradient with the ImageNet colour covariance")
        grad_pyramid: int = param(4, "levels of the Laplacian-pyramid gradient normalisation (0: off)", minimum=0)
        term_balance: str = param("per_cluster", "each image against its own channel set, each term once; or "
                                                 "vis.py's sum (terms counted per image and cluster)",
                                  choices=TERM_BALANCES)
        space: str = param("pixels", "take the steps on the [0,1] pixels, or on the normalised image (vis.py)",
                           choices=("pixels", "normalized"))
        fresh_optimizer: bool = param(False, "a new SGD every step, as vis.py (momentum never builds up: each "
                                             "step is (1 + momentum) lr g)")
        projection: str = param("clamp", "after each step clamp pixels to [0,1], or also round them to 8 bits "
                                         "(vis.py's uint8 images)", choices=("clamp", "uint8"))
        octaves: list[dict[str, float]] = param([dict(OCTAVE_DEFAULTS)], "schedule per octave (keys: see docs; "
                                                "missing keys: the recipe's octave)")

    def validate(self) -> None:
        if not self.params["octaves"]:
            raise ConfigError(f"featvis {self.name!r}: octaves must list at least one octave")
        defaults = ORIGINAL_OCTAVE if self.params["recipe"] == "original" else OCTAVE_DEFAULTS
        self.octaves = [parse_octave(spec, i, defaults) for i, spec in enumerate(self.params["octaves"])]

    def generate(self, model: nn.Module, layer: str | None, units: Sequence[int] | torch.Tensor | None = None,
                 images: torch.Tensor | None = None) -> FeatVisResult:
        """One image per cluster of `images` (RGB [M,3,H,W] in [0,1]); `units` picks clusters (None: all)."""
        if layer is None:
            raise ConfigError(f"featvis {self.name!r} needs a target layer name, e.g. model.vislib_default_layer")
        resolve_layer(model, layer)
        penalty = self.params["penalty_layer"]
        if penalty and penalty != PENALTY_AUTO:
            resolve_layer(model, penalty)
        device = next(model.parameters()).device
        side = self.params["image_size"] or preprocessing_of(model).input_size
        images = resize(check_images(images, self.name).to(device), (side, side)).clamp(0, 1)
        if penalty == PENALTY_AUTO:
            penalty = last_conv_before(model, layer, preprocessing_of(model).normalize(images[:1]))
        k = self.params["num_clusters"]
        if images.shape[0] < k:
            raise DataError(
                f"featvis {self.name!r}: {images.shape[0]} images cannot form {k} clusters; "
                f"give at least {k} images or lower num_clusters"
            )
        pooled = self._pooled_features(model, layer, images)
        if self.params["top_channels"] > pooled.shape[1]:
            raise ConfigError(
                f"featvis {self.name!r}: top_channels={self.params['top_channels']} but layer {layer!r} has "
                f"{pooled.shape[1]} channels; use at most {pooled.shape[1]}"
            )
        clusters = cluster_image_set(pooled, k, self.params["images_per_cluster"], self.params["seed"],
                                     self.params["tsne"], self.params["embedding"])
        chosen = check_units(units, k, "cluster", self.name) if units is not None else torch.arange(k)
        # Every cluster's target and channel set (the original balance scores each image against all sets).
        w, index = clusters["weights"].to(device), clusters["members"].clamp_min(0).to(device)  # padding: weight 0
        targets = (w[:, :, None] * pooled[index]).sum(1)
        channel_sets = targets.topk(self.params["top_channels"], dim=1).indices
        members, weights = clusters["members"][chosen], clusters["weights"][chosen]
        own = chosen.to(device)
        start = (w[own][:, :, None, None, None] * images[index[own]]).sum(1).clamp(0, 1)
        target, channels = targets[own], channel_sets[own]
        result, curve, scores, snapshots = self._synthesise(model, layer, penalty, start, target, channel_sets, own)
        labels = [f"{layer} cluster {c}" for c in chosen.tolist()]
        extras = {
            "channels": channels.cpu(), "target": target.float().cpu(), "members": members,
            "weights": weights, "cluster_of_image": clusters["labels"],
            "embedding": clusters["embedding"], "cluster_centres": clusters["centres"],
            "start_images": start.float().cpu(), "score_start": scores[0], "score_end": scores[1],
        }
        if self.params["scatter"]:
            # Every cluster's images, not only this shard's: the scatter shows the whole image set.
            extras["scatter_members"] = clusters["members"]
            thumbnails = to_bytes(resize(images, (THUMBNAIL_SIDE, THUMBNAIL_SIDE))).cpu()
            extras["thumbnails"] = torch.where((clusters["members"] >= 0)[:, :, None, None, None],
                                               thumbnails[clusters["members"].clamp_min(0)], 0)
        if snapshots is not None:
            extras["snapshots"], extras["snapshot_steps"] = snapshots
        return FeatVisResult(self.name, layer, result.cpu(), chosen, labels, curve.cpu(), extras)

    def _pooled_features(self, model: nn.Module, layer: str, images: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled `layer` output [M,C] of every image."""
        normalize = preprocessing_of(model).normalize
        pooled = []
        with frozen_model(model), tap_layers(model, outputs=[layer]) as taps, torch.no_grad():
            for chunk in images.split(_FEATURE_BATCH):
                run(model, normalize(chunk), taps)
                pooled.append(self._pool(taps.output(layer), layer))
        return torch.cat(pooled).float()

    def _pool(self, activation: torch.Tensor, layer: str) -> torch.Tensor:
        if activation.ndim == 2:
            return activation
        if activation.ndim < 2:
            raise ConfigError(f"featvis {self.name!r}: layer {layer!r} outputs shape "
                              f"{tuple(activation.shape)}; pick a layer with channels")
        return activation.flatten(2).mean(2)

    def _synthesise(self, model: nn.Module, layer: str, penalty: str, start: torch.Tensor, target: torch.Tensor,
                    channel_sets: torch.Tensor, own: torch.Tensor,
                    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor],
                               tuple[torch.Tensor, torch.Tensor] | None]:
        """Run the octaves on the batch of cluster images (image b of cluster own_b, target row b, all K channel
        sets [K,n]); images, loss curve [T,B], each image's dot score on its own set at the start and end, and
        with `snapshot_every` k the 8-bit images [B,S,3,H,W] after steps k, 2k, ... (all octaves) and those steps."""
        preprocessing = preprocessing_of(model)
        normalize = preprocessing.normalize
        model = fold_batch_norms(model, normalize(start[:1]), outputs=[layer], inputs=[penalty] if penalty else [])
        side = start.shape[-1]
        generator = torch.Generator().manual_seed(self.params["seed"])
        alpha, scale = self.params["robust_alpha"], self.params["robust_scale"]
        blur_every, balance, momentum = self.params["blur_every"], self.params["term_balance"], self.params["momentum"]
        normalized_space = self.params["space"] == "normalized"
        eight_bit = self.params["projection"] == "uint8"

        def to_space(pixels: torch.Tensor) -> torch.Tensor:
            return normalize(pixels) if normalized_space else pixels

        def to_pixels(tensor: torch.Tensor) -> torch.Tensor:
            return preprocessing.denormalize(tensor) if normalized_space else tensor

        def project(pixels: torch.Tensor) -> torch.Tensor:
            return quantize(pixels) if eight_bit else pixels.clamp(0, 1)

        def losses(normalised: torch.Tensor, taps, l1_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
            run(model, normalised, taps)
            pooled = self._pool(taps.output(layer), layer)
            dots = set_dots(pooled, target, channel_sets)  # [B,K]
            distance = general_robust_loss(pooled - target, alpha, scale).mean(1)
            l1 = taps.input(penalty).abs().flatten(1).sum(1) if penalty else torch.zeros_like(distance)
            loss = combine_terms(dots, own, l1, distance, l1_lambda, balance)
            return loss, dots.gather(1, own[:, None])[:, 0]

        curve = []
        every = self.params["snapshot_every"]
        snapshots: list[torch.Tensor] = []
        window = project(start)
        step = 0
        with frozen_model(model), tap_layers(model, outputs=[layer], inputs=[penalty] if penalty else []) as taps:
            with torch.no_grad():
                score_start = losses(normalize(window), taps, 0.0)[1].float().cpu()
            progress = Progress(sum(o.iterations for o in self.octaves), "class_agnostic", unit="steps")
            for octave in self.octaves:
                canvas_side = max(side, round(side * octave.scale))
                canvas = resize_bicubic(window, canvas_side)
                offset = self._offset(canvas_side - side, octave.window, generator)
                optimised, optimizer = None, None
                for i in range(octave.iterations):
                    progress.update()
                    step += 1
                    recrop = optimised is not None and step % octave.window_step == 0
                    if recrop:
                        offset = self._offset(canvas_side - side, octave.window, generator)
                        window = canvas[..., offset[0]:offset[0] + side, offset[1]:offset[1] + side].clone()
                    if optimised is None or optimizer is None or recrop or self.params["fresh_optimizer"]:
                        optimised = to_space(window).detach().clone().requires_grad_(True)
                        optimizer = torch.optim.SGD([optimised], lr=octave.start_lr, momentum=momentum,
                                                    nesterov=momentum > 0)
                    mask = gaussian_centre_mask(side, octave.at("mask_sigma", i) * side, optimised.device)
                    with torch.no_grad():
                        pixels = to_pixels(optimised)
                        if step % blur_every == 0:
                            pixels = mask * gaussian_blur(pixels, octave.at("sigma", i)) + (1 - mask) * pixels
                        if step % octave.brightness_step == 0:
                            pixels = (pixels + 5 / 255).clamp(0, 1)
                        if step % blur_every == 0 or step % octave.brightness_step == 0:
                            optimised.copy_(to_space(project(pixels)))
                    for group in optimizer.param_groups:
                        group["lr"] = octave.at("lr", i)
                    with torch.enable_grad():
                        loss, _ = losses(optimised if normalized_space else normalize(optimised), taps,
                                         octave.at("lambda", i))
                        optimizer.zero_grad(set_to_none=True)
                        loss.sum().backward()
                    optimised.grad = condition_gradient(gradient_of(optimised), self.params["decorrelate"],
                                                        self.params["grad_pyramid"])
                    optimised.grad.mul_(mask)  # only the centre of the window moves
                    optimizer.step()
                    with torch.no_grad():
                        pixels = project(to_pixels(optimised))
                        if step % blur_every == 0:
                            denoised = tv_denoise(pixels, octave.at("denoise_weight", i))
                            pixels = project(mask * denoised + (1 - mask) * pixels)
                        optimised.copy_(to_space(pixels))
                        canvas[..., offset[0]:offset[0] + side, offset[1]:offset[1] + side] = pixels
                        window = pixels
                    curve.append(loss.detach().float())
                    if every and step % every == 0:
                        snapshots.append(to_bytes(window).cpu())
            with torch.no_grad():
                score_end = losses(normalize(window), taps, 0.0)[1].float().cpu()
        kept = None
        if snapshots:
            kept = torch.stack(snapshots, 1), torch.arange(every, step + 1, every)
        return window.float(), check_finite(torch.stack(curve)), (score_start, score_end), kept

    @staticmethod
    def _offset(span: int, spread: float, generator: torch.Generator) -> tuple[int, int]:
        """Window offset (y, x) drawn from N(span/2, span*spread) and clipped to the canvas; shared by the batch."""
        if span <= 0:
            return 0, 0
        draws = span / 2 + span * spread * torch.randn(2, generator=generator, dtype=torch.float64)
        y, x = draws.clamp(0, span).round().long().tolist()
        return y, x


def to_bytes(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [0,1] as the 8-bit values a picture of them holds (uint8, rounded)."""
    return (pixels.clamp(0, 1) * 255).round().to(torch.uint8)


def resize_bicubic(images: torch.Tensor, side: int) -> torch.Tensor:
    """Bicubic zoom of a [N,3,H,W] batch to side x side, clipped to [0,1] (scipy.ndimage.zoom's role)."""
    if images.shape[-1] == side and images.shape[-2] == side:
        return images.clone()
    zoomed = torch.nn.functional.interpolate(images, size=(side, side), mode="bicubic", align_corners=False)
    return zoomed.clamp(0, 1)
