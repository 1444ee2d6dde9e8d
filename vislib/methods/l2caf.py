"""L2-CAF (Taha et al., ECCV 2020, arXiv 2007.09748): a unit-norm spatial filter optimised per image.

One filter f [h,w], shared by all channels, multiplies the output A of the chosen layer (a vision transformer's
patch tokens, its prefix tokens untouched: `vislib.models.layout`). The free
variable is v and the forward pass uses f = v / ||v|| (or a softmax or Gaussian mask). The
class-oblivious variant keeps the filtered logits close to the unfiltered ones; the class-specific
variant raises the target logit and lowers all others. Both run a whole batch at once: every image
has its own filter, optimiser state, step counter and stopping rule, and a converged image is
frozen while the others go on.

The network before the layer runs once per batch, in the forward pass that also gives the logits
(and the predicted classes). Where `torch.fx` can trace the model, each iteration runs only the tail after
the layer (`vislib.methods.split`). A tail made only of
affine ops (pooling, flatten, linear: the last layer of ResNet, GoogLeNet and the demo net) is
replaced by its exact per-position logit columns. Where tracing fails, a forward hook multiplies
the layer output by the filter and the whole net runs every iteration.

`explain_classes` explains several classes of each image in one call (the original scripts loop over an image's
top classes, rerunning everything): the net before the layer still runs once per image, and the tail is fed each
image's cached values once per class, so the (image, class) filters are optimised together. `record_every` keeps
the normalised filter every few steps (the original's convergence GIF; `vislib.figures.convergence_gif`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from vislib.errors import ConfigError, VislibError
from vislib.methods import split
from vislib.methods.base import (
    Attribution,
    AttributionMethod,
    choose_targets,
    register,
)
from vislib.methods.cam import layer_or_default
from vislib.methods.hooks import frozen_model
from vislib.models.layout import ChannelsFirst
from vislib.params import param

log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "sgd")
INITS = ("randn", "ones")
FINALIZERS = ("l2", "softmax", "gauss")
FINALS = ("abs", "clamp")

# The original's first reference loss (int16 max): the check at iteration 0 never stops a row.
_FIRST_REFERENCE = 32767.0
# tf.train.AdamOptimizer defaults, which the TF original uses.
_ADAM_BETA1, _ADAM_BETA2, _ADAM_EPS = 0.9, 0.999, 1e-8
# The PyTorch port's SGD schedule decays to this floor; the TF original's Adam decays to 0.
_SGD_END_LR = 1e-5

StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]
"""on_step(iteration, masks [n,h,w] of the rows still optimised, their row indices [n])."""


class _Tail(Protocol):
    """The network after the filtered layer, run on the rows selected last."""

    path: str

    def select(self, rows: torch.Tensor) -> None:
        """Restrict later calls to batch rows `rows`."""

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        """Logits [n,K] with the layer output multiplied by `masks` [n,1,h,w]."""

    def attached(self) -> contextlib.AbstractContextManager:
        """Context in which calls work (and after which nothing is left on the model)."""


class _AffineTail:
    """A tail that is affine in its input, as a bias plus one logit column per filter position.

    logits(f) = tail(0) + sum_p f_p (tail(A e_p) - tail(0)) exactly. The columns are computed on first use (the
    class-oblivious objective and the Gaussian finalizer use them): where the tail starts with a global average
    pooling, from one pass of the rest of the tail over the N*P position vectors (resnet18 `layer4`, 16 images: 4 ms
    where 49 tail passes took 25 ms, a tenth of the method's time); otherwise one tail pass per position. A fixed
    combination of them, all the class-specific objective needs, takes one backward pass (`projected`).
    """

    path = "fx-affine"

    def __init__(self, tail: split.GraphTail, activation: torch.Tensor) -> None:
        n, _, h, w = activation.shape
        self._tail, self._grid = tail, (h, w)
        self._activation = activation
        self._every_image = torch.arange(n, device=activation.device)
        with torch.no_grad():
            self._bias_all = tail(activation.new_zeros(n, 1, h, w))
        self._columns_all: torch.Tensor | None = None
        self._rows = self._every_image

    @property
    def bias(self) -> torch.Tensor:
        """The selected rows' logits with every mask 0 [n,K]."""
        return self._bias_all[self._rows]

    @property
    def columns(self) -> torch.Tensor:
        """The selected rows' logit columns [n,P,K]."""
        if self._columns_all is None:
            self._columns_all = self._logit_columns()
        return self._columns_all[self._rows]

    def _logit_columns(self) -> torch.Tensor:
        """Every image's columns [N,P,K]: one pass of the tail after its global average pooling, or one tail pass
        per position."""
        n, (h, w) = len(self._every_image), self._grid
        pooled_rest = _after_global_pooling(self._tail.module) if isinstance(self._tail.layout, ChannelsFirst) else None
        if pooled_rest is not None:
            # Pooling a grid masked to position p alone gives that position's vector over the grid's size.
            vectors = self._activation.flatten(2).transpose(1, 2).reshape(n * h * w, -1, 1, 1) / (h * w)
            with torch.no_grad():
                return pooled_rest(vectors).view(n, h * w, -1) - self._bias_all[:, None]
        self._tail.select(self._every_image)
        with torch.no_grad():
            masks = self._bias_all.new_zeros(n, 1, h * w)
            columns = []
            for p in range(h * w):
                masks.zero_()
                masks[:, :, p] = 1
                columns.append(self._tail(masks.view(n, 1, h, w)) - self._bias_all)
        return torch.stack(columns, 1)

    def projected(self, goal: torch.Tensor) -> torch.Tensor:
        """columns @ goal [n,P] for the selected rows and their `goal` [n,K], without forming the columns: the
        gradient of goal . logits with respect to the mask, the same at every mask since the tail is affine, from
        one forward and backward pass of the tail."""
        h, w = self._grid
        self._tail.select(self._rows)
        with torch.enable_grad():
            masks = goal.new_ones(len(self._rows), 1, h, w).requires_grad_(True)
            (gradient,) = torch.autograd.grad((self._tail(masks) * goal).sum(), masks)
        return gradient.flatten(1)

    def select(self, rows: torch.Tensor) -> None:
        self._rows = rows

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        return self.bias + torch.bmm(masks.flatten(1)[:, None], self.columns)[:, 0]

    def attached(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext(self)


class _AffineGradient:
    """The loss and d loss / d free variables in closed form on an affine tail, for the l2 and softmax finalizers.

    With C the rows' logit columns [n,P,K] (P = h*w positions) and b their logits at mask 0, the loss is quadratic
    in the mask f: offset + f . linear + f . quadratic f / 2, so d loss / d mask is `linear + quadratic @ f`. The
    specific loss (logits . goal) has linear C goal (`_AffineTail.projected`: no columns needed) and no quadratic
    term; the oblivious one (mean squared change of the K logits from `goal`) has linear 2/K C (b - goal) and
    quadratic 2/K C C^T. A step is then a few ops on [n,P] tensors where autograd's graph took ~0.5 ms (resnet18
    layer4, 16 images: a third of the method's time), and the losses of the stopping rule need no tail pass.
    """

    def __init__(self, tail: _AffineTail, goal: torch.Tensor, specific: bool, finalizer: str) -> None:
        self.finalizer = finalizer
        self.quadratic: torch.Tensor | None = None
        if specific:
            self.linear = tail.projected(goal)
            self.offset = (tail.bias * goal).sum(1)
        else:
            columns, change = tail.columns, tail.bias - goal
            scale = 2 / goal.shape[1]
            self.linear = torch.bmm(columns, change[:, :, None])[:, :, 0] * scale
            self.quadratic = torch.bmm(columns, columns.transpose(1, 2)) * scale
            self.offset = change.pow(2).mean(1)

    def keep(self, rows: torch.Tensor) -> None:
        """Keep the terms of rows `rows` (a boolean mask over the current rows) only."""
        self.linear, self.offset = self.linear[rows], self.offset[rows]
        if self.quadratic is not None:
            self.quadratic = self.quadratic[rows]

    def losses(self, masks: torch.Tensor) -> torch.Tensor:
        """Each row's loss at its mask [n,h,w]."""
        flat = masks.flatten(1)
        value = self.offset + (flat * self.linear).sum(1)
        if self.quadratic is not None:
            value = value + 0.5 * (flat * torch.bmm(self.quadratic, flat[:, :, None])[:, :, 0]).sum(1)
        return value

    def __call__(self, params: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """d loss / d params [n,h,w] at `params` and the masks [n,h,w] they give."""
        flat = masks.flatten(1)
        mask_gradient = self.linear
        if self.quadratic is not None:
            mask_gradient = mask_gradient + torch.bmm(self.quadratic, flat[:, :, None])[:, :, 0]
        along = (flat * mask_gradient).sum(1, keepdim=True)
        if self.finalizer == "l2":
            # f = v / |v|: df/dv g = (g - f (f.g)) / |v|.
            grad = (mask_gradient - flat * along) / params.flatten(1).norm(dim=1, keepdim=True)
        else:
            # f = softmax(v): df/dv g = f * (g - f.g).
            grad = flat * (mask_gradient - along)
        return grad.view_as(params)


# Ops that keep a tail affine in its input (modules in eval mode, which frozen_model guarantees).
_AFFINE_MODULES = (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.Flatten, nn.Linear, nn.Dropout, nn.Identity)
_AFFINE_FUNCTIONS = {torch.flatten, torch.nn.functional.adaptive_avg_pool2d, torch.nn.functional.avg_pool2d,
                     torch.nn.functional.linear}
_SHAPE_METHODS = {"view", "reshape", "flatten", "size", "squeeze", "unsqueeze", "contiguous"}
# Finalizers whose gradient `_AffineGradient` writes out; the Gaussian's goes through autograd.
_CLOSED_FORM_FINALIZERS = ("l2", "softmax")
# Above this the per-position logit columns would take more memory than the tail they replace is worth.
_AFFINE_MAX_BYTES = 256 * 2**20


def _after_global_pooling(tail: fx.GraphModule) -> fx.GraphModule | None:
    """The tail after its first op, as a module of that op's output, where the op is a global average pooling of the
    layer output (its only use): ResNets', GoogLeNet's, the demo net's heads. None otherwise."""
    inputs = [node for node in tail.graph.nodes if node.op == "placeholder"]
    if len(inputs) != 1 or len(inputs[0].users) != 1:
        return None
    (pool,) = inputs[0].users
    if pool.op == "call_module":
        module = tail.get_submodule(pool.target)
        is_global = isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1))
    else:
        is_global = (pool.op == "call_function" and pool.target is torch.nn.functional.adaptive_avg_pool2d
                     and pool.args[1:2] in ((1,), ((1, 1),)))
    if not is_global:
        return None
    graph = fx.Graph()
    pooled = graph.placeholder("pooled")
    output = graph.graph_copy(tail.graph, {inputs[0]: pooled, pool: pooled})
    graph.output(output)
    return fx.GraphModule(tail, graph)


def _is_affine(tail: fx.GraphModule) -> bool:
    """Whether every op of the tail is on an allowlist of affine (or shape-only) ops."""
    for node in tail.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        if node.op == "call_module":
            if not isinstance(tail.get_submodule(node.target), _AFFINE_MODULES):
                return False
        elif node.op == "call_function":
            if node.target not in _AFFINE_FUNCTIONS:
                return False
        elif node.op != "call_method" or node.target not in _SHAPE_METHODS:
            return False
    return True


def _prepare(model: nn.Module, layer: str, images: torch.Tensor, method: str,
             needs_columns: bool = True) -> tuple[_Tail, torch.Tensor, torch.Tensor]:
    """The net after `layer` as a tail (its logit columns where the tail is affine, unless the columns a run
    `needs_columns` would pass `_AFFINE_MAX_BYTES`), the activation, the logits."""
    tail, activation, logits = split.cut_after(model, layer, images, method)
    if isinstance(tail, split.GraphTail) and not tail.crossing_all:
        columns_bytes = activation.shape[0] * activation.shape[2] * activation.shape[3] * logits.shape[1] * 4
        if (columns_bytes <= _AFFINE_MAX_BYTES or not needs_columns) and _is_affine(tail.module):
            return _AffineTail(tail, activation), activation, logits
    return tail, activation, logits


def _row_seed(seed: int, image: np.ndarray, target: int | None) -> int:
    """The start's seed of one (image, target) row: a keyed hash of the image's pixels (C order, float32), so a row
    starts the same whatever else is in its batch."""
    content = np.ascontiguousarray(image).data
    digest = hashlib.blake2b(content, digest_size=8, key=str((seed, target)).encode()).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class _L2CAF(AttributionMethod):
    """Shared optimisation of both L2-CAF variants.

    Parameters (defaults follow the TF original's scripts): `lr` and `max_iters` (linear decay to 0
    for adam, to 1e-5 for the port's sgd); `init` randn (TF) or ones (the port; a Gaussian's centre
    starts at 0); `finalizer` l2 (f = v/|v|), softmax over the h*w cells, or gauss (a unit-covariance
    Gaussian with a learned centre, normalised to sum 1, on a grid that maps the layer's extent onto
    -(gauss_size-1)/2..(gauss_size-1)/2, so gauss_size 7 on a 7x7 layer is the original's integer
    grid and other layer sizes keep the same blob size relative to the image); `final` abs (|f|, the
    paper) or clamp (f >= 0, drops cells that argue against the target); stopping every
    `check_every` steps when a row's pre-update loss moved less than `stop_threshold` since its
    last check (0 disables); `seed` with each image's content (and target, for the specific
    variant) seeds its start; `record_every` k > 0 keeps the reported map (`|f|` renormalised, as `maps`) at steps
    0, k, 2k, ... and after the last step in extras['convergence'] [N,F,h,w], F = (max_iters - 1) // k + 2; an
    image that stopped early repeats its final map, so F and every image's frames do not depend on its batch.
    """

    specific: ClassVar[bool] = False

    @dataclass(frozen=True)
    class Params:
        lr: float = param(0.5, "learning rate at the first step (decays linearly)", exclusive_minimum=0)
        max_iters: int = param(1000, "optimisation steps at most", minimum=1)
        optimizer: str = param("adam", "adam (TF original) or sgd (PyTorch port)", choices=OPTIMIZERS)
        init: str = param("randn", "start of the filter: randn (TF) or ones (the port)", choices=INITS)
        finalizer: str = param("l2", "how the filter is normalised", choices=FINALIZERS)
        gauss_size: int = param(7, "grid extent of the gauss finalizer (odd, >= 3)", minimum=3)
        final: str = param("abs", "abs (|f|, the paper) or clamp (f >= 0)", choices=FINALS)
        # The TF fast script's and README's threshold (10e-5); the slow script and the port use 1e-6.
        stop_threshold: float = param(1e-4, "stop a row whose loss moved less than this (0: never)", minimum=0)
        check_every: int = param(50, "steps between convergence checks", minimum=1)
        seed: int = param(0, "seed of the start (with each image's content and target)")
        record_every: int = param(0, "keep the normalised filter every this many steps, and the final one, in "
                                     "extras['convergence'] (0: off)", minimum=0)

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self.on_step: StepCallback | None = None

    def validate(self) -> None:
        if self.params["gauss_size"] % 2 == 0:
            raise ConfigError(
                f"method {self.name!r}: gauss_size must be an odd integer >= 3 (the original's grid "
                f"-3..3 is 7), got {self.params['gauss_size']}"
            )

    def _explain(self, model, layer, images, targets) -> Attribution:
        return self._solve(model, layer, images, targets, 1)

    def explain_classes(self, model: nn.Module, layer: str | None, images: torch.Tensor,
                        targets: torch.Tensor) -> Attribution:
        """Explain T classes of every image in one call: `targets` [N,T] -> maps [N,T,h,w].

        The net before the layer runs once per image; each (image, class) row has its own filter, start,
        optimiser state and stopping rule, so `maps[:, t]` is `explain(images, targets[:, t]).maps` (up to the
        float rounding of a larger batch). The class-oblivious objective ignores the class, so it optimises one
        filter per image and gives it to each of the image's classes. `targets` of the result is [N,T],
        `predicted` [N], and every extra gains the class axis after the image axis.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise VislibError(f"images must be a [N,3,H,W] batch, got shape {tuple(images.shape)}")
        targets = torch.as_tensor(targets, dtype=torch.long, device=images.device)
        n = images.shape[0]
        if targets.ndim != 2 or targets.shape[0] != n or targets.shape[1] == 0:
            raise VislibError(f"explain_classes needs targets of shape [N,T] = [{n},T] with T >= 1 classes per "
                              f"image, got shape {tuple(targets.shape)}; use explain for one class per image")
        classes = targets.shape[1]
        flat = self._solve(model, layer, images, targets.reshape(-1), classes)
        extras = {key: value.reshape(n, classes, *value.shape[1:]) for key, value in flat.extras.items()}
        return Attribution(flat.maps.reshape(n, classes, *flat.maps.shape[1:]), targets, flat.predicted, extras)

    def _solve(self, model: nn.Module, layer: str | None, images: torch.Tensor, targets: torch.Tensor | None,
               classes: int) -> Attribution:
        """Maps of `classes` consecutive target rows per image (`targets` [N*classes]; None: the predicted class)."""
        layer = layer_or_default(model, layer, self.name)
        n = len(images)
        # One row per (image, class) to optimise; the oblivious objective needs one per image.
        per_image = classes if self.specific else 1
        image_rows = torch.arange(n, device=images.device).repeat_interleave(per_image)
        with frozen_model(model, keep_inplace=True):
            # The class-specific objective with a closed-form finalizer reads the columns only through `projected`.
            needs_columns = not self.specific or self.params["finalizer"] not in _CLOSED_FORM_FINALIZERS
            tail, activation, logits = _prepare(model, layer, images, self.name, needs_columns)
            targets = choose_targets(logits, targets)
            with torch.enable_grad(), tail.attached():
                if per_image > 1:
                    tail.select(image_rows)
                h, w = activation.shape[-2:]
                if self.specific:
                    goal = torch.ones(len(targets), logits.shape[1], device=logits.device).scatter_(
                        1, targets[:, None], -1.0)
                else:
                    goal = logits
                grid = self._grid(h, w, images.device)
                init = self._init(images, image_rows, targets if self.specific else None, (h, w))
                params, iterations, frames = self._optimize(tail, goal, init, grid, image_rows)
                masks = self._masks(params, grid)
        # Each optimised row serves `classes // per_image` consecutive target rows.
        spread = torch.arange(len(image_rows), device=images.device).repeat_interleave(classes // per_image)
        extras = {"filter": masks[spread], "iterations": iterations[spread],
                  "fast_path": torch.full((len(targets),), tail.path != "hook", device=images.device)}
        if frames is not None:
            extras["convergence"] = frames[spread]
        return Attribution(self._heatmaps(masks).float()[spread], targets, logits.argmax(1), extras)

    def _init(self, images: torch.Tensor, image_rows: torch.Tensor, targets: torch.Tensor | None,
              hw: tuple[int, int]) -> torch.Tensor:
        """Initial free variables of each row (image `image_rows[r]`, class `targets[r]`; None: classless),
        seeded by content and class so batch composition does not matter."""
        shape = (2,) if self.params["finalizer"] == "gauss" else hw
        rows = len(image_rows)
        if self.params["init"] == "ones":
            # For the Gaussian the free variable is its centre; the original starts it at 0.
            fill = 0.0 if self.params["finalizer"] == "gauss" else 1.0
            return torch.full((rows, *shape), fill, device=images.device)
        pixels = images.detach().float().cpu().numpy()
        classes = [None] * rows if targets is None else targets.tolist()
        keyed = list(zip(image_rows.tolist(), classes, strict=True))
        # hashlib lets go of the GIL on large inputs: the rows hash on the process's torch threads (~0.6 ms per
        # 224 px image each).
        with ThreadPoolExecutor(max_workers=min(len(keyed), torch.get_num_threads())) as pool:
            seeds = list(pool.map(lambda row: _row_seed(self.params["seed"], pixels[row[0]], row[1]), keyed))
        starts = [torch.randn(shape, generator=torch.Generator().manual_seed(seed)) for seed in seeds]
        return torch.stack(starts).to(images.device)

    def _grid(self, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Row and column coordinates of the Gaussian mask: the layer spans -(g-1)/2..(g-1)/2."""
        half = (self.params["gauss_size"] - 1) / 2
        axes = [torch.linspace(-half, half, n, device=device) if n > 1 else torch.zeros(1, device=device)
                for n in (h, w)]
        return axes[0], axes[1]

    def _masks(self, params: torch.Tensor, grid: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The filter [n,h,w] the forward pass uses, from the free variables."""
        finalizer = self.params["finalizer"]
        if finalizer == "l2":
            return params / params.flatten(1).norm(dim=1)[:, None, None]
        if finalizer == "softmax":
            return params.flatten(1).softmax(1).view_as(params)
        ys, xs = grid
        # params[:, 0] is the column offset and params[:, 1] the row offset, as in the original.
        d2 = (ys[None, :, None] - params[:, 1, None, None]) ** 2 + (xs[None, None, :] - params[:, 0, None, None]) ** 2
        # Normalising exp(-d2/2) to sum 1 is a softmax, which stays finite when the centre drifts away.
        return (-0.5 * d2).flatten(1).softmax(1).view(len(params), len(ys), len(xs))

    def _heatmaps(self, masks: torch.Tensor) -> torch.Tensor:
        """The reported maps: |f| (or f clamped at 0) renormalised for l2; the mask itself otherwise."""
        if self.params["finalizer"] != "l2":
            return masks
        heat = masks.abs() if self.params["final"] == "abs" else masks.clamp_min(0)
        return heat / heat.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]

    def _losses(self, logits: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """Per-row loss: signed logit sum (specific) or mean squared change of the logits (oblivious)."""
        if self.specific:
            return (logits * goal).sum(1)
        return (logits - goal).pow(2).mean(1)

    def _optimize(self, tail: _Tail, goal: torch.Tensor, init: torch.Tensor, grid: tuple[torch.Tensor, torch.Tensor],
                  image_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Optimise every row's free variables (row r filters image `image_rows[r]`); return them [R,...], the
        steps each row took [R] and, with `record_every`, each row's convergence frames [R,F,h,w]."""
        p = self.params
        max_iters, check_every, threshold = p["max_iters"], p["check_every"], p["stop_threshold"]
        n = len(init)
        final = init.clone()
        iterations = torch.full((n,), max_iters, dtype=torch.long, device=init.device)
        record = p["record_every"]
        frames: torch.Tensor | None = None
        recorded = torch.zeros(n, dtype=torch.long, device=init.device)
        # State of the rows still optimised; finished rows are dropped, so momentum cannot move them.
        rows = torch.arange(n, device=init.device)
        params, first, second = init.clone(), torch.zeros_like(init), torch.zeros_like(init)
        previous = torch.full((n,), _FIRST_REFERENCE, device=init.device)
        gradient = (_AffineGradient(tail, goal, self.specific, p["finalizer"])
                    if isinstance(tail, _AffineTail) and p["finalizer"] in _CLOSED_FORM_FINALIZERS else None)
        for it in range(max_iters):
            if gradient is not None:
                masks = self._masks(params, grid)
                grad = gradient(params, masks)
            else:
                leaf = params.detach().requires_grad_(True)
                masks = self._masks(leaf, grid)
                losses = self._losses(tail(masks[:, None]), goal)
                # Rows are independent, so the gradient of the sum is each row's own gradient.
                (grad,) = torch.autograd.grad(losses.sum(), leaf)
            if self.on_step is not None:
                self.on_step(it, masks.detach(), rows)
            if record and it % record == 0:
                heat = self._heatmaps(masks.detach())
                if frames is None:
                    frames = heat.new_zeros(n, (max_iters - 1) // record + 2, *heat.shape[1:])
                frames[rows, it // record] = heat
                recorded[rows] += 1
            if it % check_every == 0:
                # The closed form needs no losses between checks.
                losses = (gradient.losses(masks) if gradient is not None else losses).detach()
                done = (losses - previous).abs() < threshold
                previous = losses
                if bool(done.any()):
                    # The original checks the pre-update loss, so a finished row keeps the filter it was checked with.
                    final[rows[done]] = params[done]
                    iterations[rows[done]] = it
                    keep = ~done
                    rows, params, grad, first, second, previous, goal = (
                        t[keep] for t in (rows, params, grad, first, second, previous, goal))
                    if gradient is not None:
                        gradient.keep(keep)
                    if rows.numel() == 0:
                        break
                    tail.select(image_rows[rows])
            # Every row still optimised has taken `it` steps: rows start together and leave when they stop.
            self._step(params, grad, first, second, it)
        final[rows] = params
        if frames is not None:
            # The frames after a row's last snapshot show its final map: the last step's, or the one it stopped at.
            after = torch.arange(frames.shape[1], device=frames.device)[None, :] >= recorded[:, None]
            final_heat = self._heatmaps(self._masks(final, grid))
            frames = torch.where(after[:, :, None, None], final_heat[:, None], frames)
        return final, iterations, frames

    def _step(self, params: torch.Tensor, grad: torch.Tensor, first: torch.Tensor, second: torch.Tensor,
              taken: int) -> None:
        """One Adam (TF form) or SGD step, in place, after `taken` steps of the linearly decaying learning rate.

        The schedule is a Python number (the same for every row), so a step is a handful of fused tensor ops: the
        loop's cost is mostly per-op overhead on these small tensors.
        """
        p = self.params
        end = 0.0 if p["optimizer"] == "adam" else _SGD_END_LR
        lr = (p["lr"] - end) * (1 - taken / p["max_iters"]) + end
        if p["optimizer"] == "sgd":
            params.sub_(grad, alpha=lr)
            return
        first.mul_(_ADAM_BETA1).add_(grad, alpha=1 - _ADAM_BETA1)
        second.mul_(_ADAM_BETA2).addcmul_(grad, grad, value=1 - _ADAM_BETA2)
        count = taken + 1
        lr = lr * math.sqrt(1 - _ADAM_BETA2 ** count) / (1 - _ADAM_BETA1 ** count)
        params.addcdiv_(first, second.sqrt().add_(_ADAM_EPS), value=-lr)


@register
class L2CAFOblivious(_L2CAF):
    """Class-oblivious L2-CAF: the filter that best preserves all logits."""

    name = "l2caf_oblivious"


@register
class L2CAFSpecific(_L2CAF):
    """Class-specific L2-CAF: the filter that raises the target logit and lowers the others."""

    name = "l2caf_specific"
    specific = True
