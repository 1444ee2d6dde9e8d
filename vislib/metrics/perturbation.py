"""Faithfulness by perturbation: deletion/insertion AUC (Petsiuk et al. 2018), average drop and
increase in confidence (Chattopadhay et al. 2018)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vislib.methods.base import PRECISIONS, forward_scores
from vislib.metrics.base import Metric, MetricInput, MetricResult, register
from vislib.params import param, with_defaults

BASELINES = ("zero", "blur", "mean")
CURVE_COLUMN = "perturbation_curve"
"""The list column of deletion/insertion rows: target probability at fractions 0, step, 2 step, ..., 1 moved."""
NO_MODEL = "needs the model"


def _model_of(batch: MetricInput) -> torch.nn.Module:
    """The batch's model; the metrics here answer NO_MODEL before they need it."""
    if batch.model is None:
        raise ValueError(f"this metric {NO_MODEL}, and the batch has none")
    return batch.model


def baseline_images(images: torch.Tensor, kind: str) -> torch.Tensor:
    """What removed pixels become: zeros of the model input, a blurred copy, or the per-image channel mean."""
    if kind == "zero":
        return torch.zeros_like(images)
    if kind == "mean":
        return images.mean((2, 3), keepdim=True).expand_as(images).contiguous()
    # RISE blurs with sigma 5 px at 224 px; scaled so the blur removes the same share of detail at any size.
    sigma = 5.0 * images.shape[-1] / 224
    return gaussian_blur(images, 2 * math.ceil(2 * sigma) + 1, sigma)


def gaussian_blur(images: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Blur a [N,C,H,W] float batch with a square Gaussian kernel, reflecting at the borders."""
    # The same arithmetic as torchvision.transforms.functional.gaussian_blur (tested equal), without
    # importing torchvision, which costs every evaluate job seconds of start-up.
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, steps=kernel_size, dtype=images.dtype, device=images.device)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    kernel1d = pdf / pdf.sum()
    kernel = torch.mm(kernel1d[:, None], kernel1d[None, :])
    kernel = kernel.expand(images.shape[-3], 1, kernel_size, kernel_size)
    pad = kernel_size // 2
    return F.conv2d(F.pad(images, [pad, pad, pad, pad], mode="reflect"), kernel, groups=images.shape[-3])


def _probability_of(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Softmax probability of each row's target; NaN for a target the model has no output for."""
    valid = (targets >= 0) & (targets < logits.shape[1])
    probs = logits.softmax(1).gather(1, targets.clamp(0, logits.shape[1] - 1)[:, None])[:, 0]
    return torch.where(valid, probs, torch.full_like(probs, float("nan")))


def target_probability(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor,
                       max_batch: int, precision: str = "float32") -> torch.Tensor:
    """Softmax probability of each image's target class, in forwards of at most `max_batch` images run in
    `precision` (`forward_scores`)."""
    out = []
    with torch.no_grad():
        for start in range(0, len(images), max_batch):
            logits = forward_scores(model, images[start:start + max_batch], precision)
            out.append(_probability_of(logits, targets[start:start + max_batch]))
    return torch.cat(out)


def _target_reasons(values: np.ndarray) -> list[str]:
    return ["target class is not an output of the model" if np.isnan(v) else "" for v in values]


@dataclass(frozen=True)
class BatchParams:
    """Parameters of the metrics that run the model on perturbed images."""

    max_batch: int = param(64, "perturbed images per forward pass", minimum=1)
    precision: str = param("float32", "number format of the forward passes: float32, or bfloat16 under autocast "
                           "(faster on GPUs with bfloat16 tensor cores; docs/methods.md gives the difference it "
                           "makes)", choices=PRECISIONS)


@dataclass(frozen=True)
class CurveParams(BatchParams):
    """Parameters of the deletion and insertion curves."""

    step: float = param(0.05, "fraction of the pixels moved per step", exclusive_minimum=0, maximum=1)
    baseline: str = param("zero", "what moved pixels become (insertion starts from it)", choices=BASELINES)


class _Curve(Metric):
    """Probability of the target class while pixels are moved between image and baseline in map order."""

    insert: bool = False
    curve_column = CURVE_COLUMN

    def settings(self, image_size: int) -> dict:
        return {"perturbation_step": float(self.params["step"]), "perturbation_baseline": self.params["baseline"],
                "forward_precision": self.params["precision"]}

    def fractions(self) -> np.ndarray:
        """Share of pixels moved at each point of the curve, 0 to 1."""
        steps = math.ceil(1.0 / float(self.params["step"]))
        return np.minimum(np.arange(steps + 1) * float(self.params["step"]), 1.0)

    def curves(self, batch: MetricInput) -> torch.Tensor:
        """Target probability [N,K+1] at each fraction, every perturbed copy in chunks of `max_batch`."""
        images, maps = batch.images, torch.nan_to_num(batch.maps.float(), nan=0.0)
        n, _, height, width = images.shape
        fractions = torch.as_tensor(self.fractions(), device=images.device)
        counts = torch.round(fractions * height * width).long()
        # Rank 0 is the most important pixel; moving the k most important pixels is `rank < k`.
        order = maps.reshape(n, -1).argsort(dim=1, descending=True, stable=True)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(height * width, device=images.device).expand(n, -1))
        rank = rank.reshape(n, 1, height, width)
        baseline = baseline_images(images, self.params["baseline"])
        start_from, move_to = (baseline, images) if self.insert else (images, baseline)
        pairs = torch.cartesian_prod(torch.arange(n, device=images.device),
                                     torch.arange(len(counts), device=images.device))
        probs = []
        max_batch = int(self.params["max_batch"])
        model = _model_of(batch)
        with torch.no_grad():
            for start in range(0, len(pairs), max_batch):
                image_index, step_index = pairs[start:start + max_batch].unbind(1)
                moved = rank[image_index] < counts[step_index].view(-1, 1, 1, 1)
                perturbed = torch.where(moved, move_to[image_index], start_from[image_index])
                logits = forward_scores(model, perturbed, self.params["precision"])
                probs.append(_probability_of(logits, batch.targets[image_index]))
        return torch.cat(probs).reshape(n, len(counts))

    def compute(self, batch: MetricInput) -> MetricResult:
        n = len(batch.samples)
        if batch.model is None:
            return MetricResult(np.full(n, np.nan), [NO_MODEL] * n)
        curve = self.curves(batch).double().cpu().numpy()
        values = np.trapezoid(curve, self.fractions(), axis=1)
        return MetricResult(values, _target_reasons(values), {CURVE_COLUMN: curve})


@register
class DeletionAUC(_Curve):
    """Area under the target probability as the most salient pixels are removed first (lower is better)."""

    name = "deletion_auc"
    higher_is_better = False
    Params = CurveParams


@register
class InsertionAUC(_Curve):
    """Area under the target probability as the most salient pixels are inserted first (higher is better)."""

    name = "insertion_auc"
    Params = with_defaults(CurveParams, baseline="blur")
    insert = True


class _Confidence(Metric):
    """Target probability on the image and on the image multiplied by its map (in pixel space)."""

    Params = BatchParams

    def settings(self, image_size: int) -> dict:
        return {"forward_precision": self.params["precision"]}

    def probabilities(self, batch: MetricInput) -> tuple[np.ndarray, np.ndarray]:
        """(original, explanation-only) target probabilities, computed once per batch for both metrics."""
        key = ("confidence", int(self.params["max_batch"]), self.params["precision"])
        if key not in batch.shared:
            batch.shared[key] = self._probabilities(batch)
        return batch.shared[key]

    def _probabilities(self, batch: MetricInput) -> tuple[np.ndarray, np.ndarray]:
        model, images = _model_of(batch), batch.images
        maps = torch.nan_to_num(batch.maps.float(), nan=0.0)[:, None]
        preprocessing = getattr(model, "vislib_preprocessing", None)
        if preprocessing is None:
            masked = images * maps
        else:
            masked = preprocessing.normalize(preprocessing.denormalize(images) * maps)
        both = target_probability(model, torch.cat([images, masked]), torch.cat([batch.targets] * 2),
                                  int(self.params["max_batch"]), self.params["precision"]).double().cpu().numpy()
        return both[:len(images)], both[len(images):]


@register
class AverageDrop(_Confidence):
    """Relative drop of the target probability when only the explanation is shown: max(0, Y - O) / Y."""

    name = "average_drop"
    higher_is_better = False

    def compute(self, batch: MetricInput) -> MetricResult:
        n = len(batch.samples)
        if batch.model is None:
            return MetricResult(np.full(n, np.nan), [NO_MODEL] * n)
        original, explained = self.probabilities(batch)
        values = np.maximum(0.0, original - explained) / np.maximum(original, 1e-12)
        return MetricResult(values, _target_reasons(values))


@register
class IncreaseInConfidence(_Confidence):
    """1 where the target probability rises when only the explanation is shown, else 0."""

    name = "increase_in_confidence"
    binary = True

    def compute(self, batch: MetricInput) -> MetricResult:
        n = len(batch.samples)
        if batch.model is None:
            return MetricResult(np.full(n, np.nan), [NO_MODEL] * n)
        original, explained = self.probabilities(batch)
        values = np.where(np.isnan(original), np.nan, (explained > original).astype(float))
        return MetricResult(values, _target_reasons(values))
