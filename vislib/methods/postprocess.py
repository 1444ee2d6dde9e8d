"""The one place where maps are upsampled to image size and normalised, for scoring and for display."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map of [N,h,w] to [0,1]; a constant map becomes all zeros."""
    flat = maps.reshape(maps.shape[0], -1).float()
    low = flat.min(1, keepdim=True).values
    span = flat.max(1, keepdim=True).values - low
    scaled = torch.where(span > 0, (flat - low) / span.clamp_min(1e-12), torch.zeros_like(flat))
    return scaled.reshape(maps.shape)


def map_quantiles(maps: torch.Tensor, q: float) -> torch.Tensor:
    """The `q`-quantile [N,1] of each map of [N,...], interpolated linearly between order statistics
    (numpy.percentile's default, `q` in [0,1]).

    One batched `topk` of the values above the quantile: unlike torch.quantile it sorts only those
    (3x faster for q = 0.99 on 64 maps of 224x224) and has no limit on the number of elements.
    """
    flat = maps.reshape(maps.shape[0], -1)
    n = flat.shape[1]
    position = q * (n - 1)
    low = math.floor(position)
    top = flat.topk(n - low, dim=1, sorted=True).values  # descending: the last one is order statistic `low`
    below = top[:, -1:]
    if low + 1 >= n:
        return below
    return below + (position - low) * (top[:, -2:-1] - below)


def upsample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling (half-pixel centres, as cv2 INTER_LINEAR) of [N,h,w] maps to `size`."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps.float()
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def to_image_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Native-resolution maps -> [N,H,W] in [0,1] at image size (normalise, then upsample)."""
    return upsample_maps(normalize_maps(maps), size)


DISPLAY_PERCENTILE = 99.5
"""Maps are clipped at this percentile for display, so a few extreme pixels do not wash the rest out."""


def to_display_maps(maps: torch.Tensor, size: tuple[int, int], signed: bool,
                    percentile: float = DISPLAY_PERCENTILE) -> torch.Tensor:
    """Native-resolution maps -> [N,H,W] at image size for pictures (captum's visualisation conventions).

    Signed maps (`signed`) are divided by the `percentile` of their absolute values and clipped to [-1, 1], so 0
    stays 0 (for a diverging colormap centred there); unsigned maps are min-max normalised with the maximum
    replaced by their `percentile`, clipped to [0, 1].
    """
    up = upsample_maps(maps, size)
    flat = up.reshape(up.shape[0], -1)
    q = percentile / 100
    if signed:
        scale = torch.quantile(flat.abs(), q, dim=1, keepdim=True).clamp_min(1e-12)
        return (flat / scale).clamp(-1, 1).reshape(up.shape)
    low = flat.amin(1, keepdim=True)
    span = (torch.quantile(flat, q, dim=1, keepdim=True) - low).clamp_min(1e-12)
    return ((flat - low) / span).clamp(0, 1).reshape(up.shape)
