"""Model-randomization sanity check (Adebayo et al. 2018): cascading randomization from the top layer."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata
from torch import nn

from vislib import methods
from vislib.errors import ConfigError, VislibError
from vislib.runlog import Progress


@dataclass(frozen=True)
class CascadeStep:
    """One point of the cascade: how many weight layers, counted from the output, are randomized."""

    index: int
    n_randomized: int
    last_module: str  # the deepest-from-the-output layer randomized so far ("" for the original model)


def weight_layers(model: nn.Module) -> list[str]:
    """Names of the modules with a learned weight matrix or kernel, from the output back to the input."""
    names = [name for name, module in model.named_modules()
             if isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.ndim >= 2
             and hasattr(module, "reset_parameters")]
    return names[::-1]


def cascade_steps(n_layers: int, n_steps: int) -> list[int]:
    """How many layers are randomized at each step: 0, then `n_steps` counts spread evenly up to all."""
    if n_steps < 1:
        raise ConfigError(f"sanity check: steps must be >= 1, got {n_steps}")
    counts = np.unique(np.round(np.linspace(1, n_layers, min(n_steps, n_layers))).astype(int))
    return [0, *counts.tolist()]


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each row pair of [N,D] arrays (ties get average ranks; NaN if constant)."""
    ra, rb = rankdata(a, axis=1), rankdata(b, axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    denom = np.sqrt((ra ** 2).sum(1) * (rb ** 2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (ra * rb).sum(1) / denom, np.nan)


def randomization_curve(model: nn.Module, layer: str, method_name: str, method_params: dict,
                        images: torch.Tensor, targets: torch.Tensor, image_ids: list[int],
                        n_steps: int = 6, seed: int = 0,
                        on_step: Callable[[CascadeStep, torch.Tensor], None] | None = None) -> pd.DataFrame:
    """Maps of the original model vs cascaded randomized copies: one row per (step, image, statistic).

    The statistics are the Spearman correlation of the maps (`spearman`) and of their absolute values
    (`spearman_abs`); the targets stay fixed so every step explains the same class. `on_step(step, maps)` sees the
    maps [N,h,w] of every step (step 0: no layer randomized), e.g. to draw them.
    """
    method = methods.get(method_name, **method_params)
    original = method.explain(model, layer, images, targets).maps.detach().double().cpu().numpy()
    original = original.reshape(len(images), -1)
    randomized = copy.deepcopy(model)
    modules = dict(randomized.named_modules())
    order = weight_layers(randomized)
    if not order:
        raise VislibError(f"the sanity check randomizes the model's weight layers, and {type(model).__name__} "
                          "exposes none (a TorchScript model hides them): give the Python model")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    rows = []
    done = 0
    try:
        steps = cascade_steps(len(order), n_steps)
        progress = Progress(len(steps), f"sanity {method_name}", unit="cascade steps")
        for index, count in enumerate(steps):
            for name in order[done:count]:
                modules[name].reset_parameters()
            done = count
            step_maps = method.explain(randomized, layer, images, targets).maps.detach()
            maps = step_maps.double().cpu().numpy().reshape(len(images), -1)
            step = CascadeStep(index, count, order[count - 1] if count else "")
            if on_step is not None:
                on_step(step, step_maps)
            for statistic, values in (("spearman", spearman_rows(original, maps)),
                                      ("spearman_abs", spearman_rows(np.abs(original), np.abs(maps)))):
                rows += [{"step": step.index, "n_randomized": step.n_randomized, "randomized_to": step.last_module,
                          "image_id": int(i), "statistic": statistic, "value": float(v)}
                         for i, v in zip(image_ids, values, strict=True)]
            progress.update()
    finally:
        torch.random.set_rng_state(generator_state)
    return pd.DataFrame(rows)
