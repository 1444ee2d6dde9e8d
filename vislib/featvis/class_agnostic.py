"""Class-agnostic feature visualisation (Stergiou): cluster an image set, then synthesise one image per cluster.

Port of `vis.py` of Class-Agnostic-Feature-Visualisation with its defects fixed: RGB throughout,
the images closest to each cluster centre (not the farthest), one channel set per cluster (not
every image against every set), per-image penalties counted once, a persistent optimiser, window
crops pasted back where they were taken, and torchvision/skimage in place of imgaug.
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
from vislib.featvis.base import FeatVisMethod, FeatVisResult, check_images, check_units, register
from vislib.featvis.engine import condition_gradient, gaussian_blur, gradient_of, resize, run, tap_layers
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


def parse_octave(spec: Any, index: int) -> Octave:
    """An Octave from a config dict (missing keys take OCTAVE_DEFAULTS); ConfigError on bad keys or values."""
    if not isinstance(spec, dict):
        raise ConfigError(f"class_agnostic octave {index} must be a mapping of schedule values, got {spec!r}")
    unknown = sorted(set(spec) - set(OCTAVE_DEFAULTS))
    if unknown:
        raise ConfigError(f"class_agnostic octave {index} has no key {unknown[0]!r}; valid: {sorted(OCTAVE_DEFAULTS)}")
    values = {**OCTAVE_DEFAULTS, **spec}
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


@register
class ClassAgnostic(FeatVisMethod):
    """Class-agnostic feature visualisation: per cluster of an image set, match its weighted mean
    pooled activation (robust distance) and its top channels (dot product), L1-penalise a layer."""

    name = "class_agnostic"
    unit_source = "clusters"

    @dataclass(frozen=True)
    class Params:
        num_clusters: int = param(4, "clusters of the image set, one image each", minimum=1)
        top_channels: int = param(50, "a cluster's strongest channels, matched by dot product", minimum=1)
        images_per_cluster: int = param(10, "images nearest each cluster centre that define it", minimum=1)
        penalty_layer: str = param("", "layer whose input is L1-penalised ('' : none)")
        image_size: int = param(0, "image side in pixels (0: the model's input size)", minimum=0)
        tsne: bool = param(False, "cluster a t-SNE embedding (the original) instead of the pooled features")
        seed: int = param(0, "seed of clustering, start noise and jitter")
        blur_every: int = param(10, "Gaussian blur every this many steps", minimum=1)
        momentum: float = param(0.9, "SGD momentum", minimum=0, exclusive_maximum=1)
        robust_alpha: float = param(1.0, "shape alpha of Barron's robust distance")
        robust_scale: float = param(1.0, "scale c of Barron's robust distance", exclusive_minimum=0)
        decorrelate: bool = param(True, "precondition the gradient with the ImageNet colour covariance")
        grad_pyramid: int = param(4, "levels of the Laplacian-pyramid gradient normalisation (0: off)", minimum=0)
        octaves: list[dict[str, float]] = param([dict(OCTAVE_DEFAULTS)], "schedule per octave (keys: see docs)")

    def validate(self) -> None:
        if not self.params["octaves"]:
            raise ConfigError(f"featvis {self.name!r}: octaves must list at least one octave")
        self.octaves = [parse_octave(spec, i) for i, spec in enumerate(self.params["octaves"])]

    def generate(self, model: nn.Module, layer: str | None, units: Sequence[int] | torch.Tensor | None = None,
                 images: torch.Tensor | None = None) -> FeatVisResult:
        """One image per cluster of `images` (RGB [M,3,H,W] in [0,1]); `units` picks clusters (None: all)."""
        if layer is None:
            raise ConfigError(f"featvis {self.name!r} needs a target layer name, e.g. model.vislib_default_layer")
        resolve_layer(model, layer)
        penalty = self.params["penalty_layer"]
        if penalty:
            resolve_layer(model, penalty)
        device = next(model.parameters()).device
        side = self.params["image_size"] or preprocessing_of(model).input_size
        images = resize(check_images(images, self.name).to(device), (side, side)).clamp(0, 1)
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
        clusters = self._cluster(pooled)
        chosen = check_units(units, k, "cluster", self.name) if units is not None else torch.arange(k)
        members, weights = clusters["members"][chosen], clusters["weights"][chosen]
        w, index = weights.to(device), members.clamp_min(0).to(device)  # padded slots have weight 0
        target = (w[:, :, None] * pooled[index]).sum(1)
        start = (w[:, :, None, None, None] * images[index]).sum(1).clamp(0, 1)
        channels = target.topk(self.params["top_channels"], dim=1).indices
        result, curve, scores = self._synthesise(model, layer, penalty, start, target, channels)
        labels = [f"{layer} cluster {c}" for c in chosen.tolist()]
        extras = {
            "channels": channels.cpu(), "target": target.float().cpu(), "members": members,
            "weights": weights, "cluster_of_image": clusters["labels"],
            "embedding": clusters["embedding"], "start_images": start.float().cpu(),
            "score_start": scores[0], "score_end": scores[1],
        }
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

    def _cluster(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        """KMeans over a PCA (optionally t-SNE) embedding; per cluster the closest images and softmax(1/d)."""
        # sklearn takes seconds to import; importing it here spares every other featvis job that cost.
        from sklearn.cluster import KMeans
        from sklearn.decomposition import PCA

        seed, k = self.params["seed"], self.params["num_clusters"]
        features = pooled.double().cpu().numpy()
        count = features.shape[0]
        components = min(50, count, features.shape[1])
        space = PCA(n_components=components, svd_solver="full").fit_transform(features) if count > 1 else features
        if self.params["tsne"] and count > 2:
            from sklearn.manifold import TSNE  # slow to import and run: only when asked for

            space = TSNE(n_components=2, perplexity=min(30.0, count - 1.0), random_state=seed).fit_transform(space)
        kmeans = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(space)
        distances = torch.from_numpy(kmeans.transform(space)).T  # [K,M]
        labels = torch.from_numpy(kmeans.labels_).long()
        # Each cluster is described by its own members closest to its centre, weighted softmax(1/d);
        # slots beyond a small cluster's size hold -1 with weight 0.
        own = labels[None, :] == torch.arange(k)[:, None]
        m = min(self.params["images_per_cluster"], count)
        closest = distances.masked_fill(~own, math.inf).topk(m, dim=1, largest=False)
        valid = torch.isfinite(closest.values)
        logits = torch.where(valid, 1.0 / closest.values.clamp_min(1e-6), -math.inf)
        weights = torch.softmax(logits, dim=1).float()
        members = torch.where(valid, closest.indices, -1)
        embedding = np.zeros((count, 2))
        embedding[:, : min(2, space.shape[1])] = space[:, :2]
        return {"members": members, "weights": weights, "labels": labels,
                "embedding": torch.from_numpy(embedding).float()}

    def _synthesise(self, model: nn.Module, layer: str, penalty: str, start: torch.Tensor, target: torch.Tensor,
                    channels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Run the octaves on the batch of cluster images; images, loss curve [T,B], dot scores start/end."""
        normalize = preprocessing_of(model).normalize
        model = fold_batch_norms(model, normalize(start[:1]), outputs=[layer], inputs=[penalty])
        side = start.shape[-1]
        generator = torch.Generator().manual_seed(self.params["seed"])
        target_top = target.gather(1, channels)
        alpha, scale = self.params["robust_alpha"], self.params["robust_scale"]
        blur_every = self.params["blur_every"]

        def losses(window: torch.Tensor, taps, l1_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
            run(model, normalize(window), taps)
            pooled = self._pool(taps.output(layer), layer)
            dot = (pooled.gather(1, channels) * target_top).sum(1)
            loss = -dot + general_robust_loss(pooled - target, alpha, scale).mean(1)
            if penalty:
                loss = loss + l1_lambda * taps.input(penalty).abs().flatten(1).sum(1)
            return loss, dot

        curve = []
        window = start.clone()
        step = 0
        with frozen_model(model), tap_layers(model, outputs=[layer], inputs=[penalty] if penalty else []) as taps:
            with torch.no_grad():
                score_start = losses(window, taps, 0.0)[1].float().cpu()
            progress = Progress(sum(o.iterations for o in self.octaves), "class_agnostic", unit="steps")
            for octave in self.octaves:
                canvas_side = max(side, round(side * octave.scale))
                canvas = resize_bicubic(window, canvas_side)
                offset = self._offset(canvas_side - side, octave.window, generator)
                pixels, optimizer = None, None
                for i in range(octave.iterations):
                    progress.update()
                    step += 1
                    if pixels is None or optimizer is None or step % octave.window_step == 0:
                        if pixels is not None:
                            offset = self._offset(canvas_side - side, octave.window, generator)
                            window = canvas[..., offset[0]:offset[0] + side, offset[1]:offset[1] + side].clone()
                        pixels = window.detach().clone().requires_grad_(True)
                        optimizer = torch.optim.SGD([pixels], lr=octave.start_lr, momentum=self.params["momentum"],
                                                    nesterov=self.params["momentum"] > 0)
                    mask = gaussian_centre_mask(side, octave.at("mask_sigma", i) * side, pixels.device)
                    with torch.no_grad():
                        if step % blur_every == 0:
                            blurred = gaussian_blur(pixels, octave.at("sigma", i))
                            pixels.copy_(mask * blurred + (1 - mask) * pixels)
                        if step % octave.brightness_step == 0:
                            pixels.add_(5 / 255).clamp_(0, 1)
                    for group in optimizer.param_groups:
                        group["lr"] = octave.at("lr", i)
                    with torch.enable_grad():
                        loss, _ = losses(pixels, taps, octave.at("lambda", i))
                        optimizer.zero_grad(set_to_none=True)
                        loss.sum().backward()
                    pixels.grad = condition_gradient(gradient_of(pixels), self.params["decorrelate"],
                                                     self.params["grad_pyramid"])
                    pixels.grad.mul_(mask)  # only the centre of the window moves
                    optimizer.step()
                    with torch.no_grad():
                        pixels.clamp_(0, 1)
                        if step % blur_every == 0:
                            denoised = tv_denoise(pixels, octave.at("denoise_weight", i))
                            pixels.copy_(mask * denoised + (1 - mask) * pixels)
                        canvas[..., offset[0]:offset[0] + side, offset[1]:offset[1] + side] = pixels
                    curve.append(loss.detach().float())
                assert pixels is not None  # parse_octave requires iterations > 0
                window = pixels.detach()
            with torch.no_grad():
                score_end = losses(window, taps, 0.0)[1].float().cpu()
        return window.float(), torch.stack(curve), (score_start, score_end)

    @staticmethod
    def _offset(span: int, spread: float, generator: torch.Generator) -> tuple[int, int]:
        """Window offset (y, x) drawn from N(span/2, span*spread) and clipped to the canvas; shared by the batch."""
        if span <= 0:
            return 0, 0
        draws = span / 2 + span * spread * torch.randn(2, generator=generator, dtype=torch.float64)
        y, x = draws.clamp(0, span).round().long().tolist()
        return y, x


def resize_bicubic(images: torch.Tensor, side: int) -> torch.Tensor:
    """Bicubic zoom of a [N,3,H,W] batch to side x side, clipped to [0,1] (scipy.ndimage.zoom's role)."""
    if images.shape[-1] == side and images.shape[-2] == side:
        return images.clone()
    zoomed = torch.nn.functional.interpolate(images, size=(side, side), mode="bicubic", align_corners=False)
    return zoomed.clamp(0, 1)
