"""Cost of class-agnostic feature visualisation with `recipe: original` (2001 steps at 512 px, 10 clusters).

Times the parts a run is made of on one device and adds them up to a whole run: one step (forward and
backward of the batch of cluster images through the model, the SGD step, the centre mask), the extra work of
every 10th step (blur, and TV-Bregman denoising of each image on the CPU, which skimage does), and the
clustering of the image set (its forward passes, PCA, t-SNE, KMeans). Then runs `generate` end to end for a
few steps to check the sum. Random weights (the cost does not depend on them). Writes a markdown report
(default benchmarks/results/class_agnostic_cost.md).

Run: python benchmarks/class_agnostic_cost.py [--arch resnet152] [--size 512] [--steps 10] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from timing import seconds

from vislib import featvis, models
from vislib.featvis.class_agnostic import (
    ORIGINAL,
    ORIGINAL_OCTAVE,
    cluster_image_set,
    gaussian_centre_mask,
    tv_denoise,
)
from vislib.featvis.engine import gaussian_blur
from vislib.featvis.units import random_crops
from vislib.io import write_text
from vislib.methods.base import fast_layout
from vislib.methods.hooks import frozen_model


def photos(side: int) -> torch.Tensor:
    """scikit-image's colour sample photos, centre-cropped and resized to side x side, RGB in [0,1]."""
    from skimage import data

    out = []
    for name in ("chelsea", "coffee", "rocket", "astronaut"):
        image = torch.from_numpy(np.ascontiguousarray(getattr(data, name)())).permute(2, 0, 1).float() / 255
        h, w = image.shape[-2:]
        s = min(h, w)
        crop = image[None, :, (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        out.append(torch.nn.functional.interpolate(crop, size=(side, side), mode="bilinear", antialias=True))
    return torch.cat(out)


def main() -> None:
    """Time the parts of an original-recipe class-agnostic run and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet152", help="any vislib model name (vis.py: ResNet-152)")
    parser.add_argument("--layer", default="layer4.2.relu", help="target layer (vis.py: '7.2.relu' = layer4.2.relu)")
    parser.add_argument("--size", type=int, default=ORIGINAL["image_size"])
    parser.add_argument("--clusters", type=int, default=ORIGINAL["num_clusters"])
    parser.add_argument("--image-set", type=int, default=40, help="images clustered (crops of 4 photos)")
    parser.add_argument("--steps", type=int, default=10, help="steps of the end-to-end check (10: one denoise)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before each timing")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default="benchmarks/results/class_agnostic_cost.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = models.load(args.arch, device=device)
    side, k = args.size, args.clusters
    image_set = random_crops(photos(side), max(1, args.image_set // 4), seed=0).to(device)
    batch = image_set[:k].clone()
    normalize = models.preprocessing_of(model).normalize

    # One step's model work: forward and backward of the K cluster images (what dominates every step).
    def model_step() -> None:
        x = normalize(batch).requires_grad_(True)
        model(fast_layout(x)).sum().backward()  # the layout vislib's forward passes use

    def best(run) -> float:
        for _ in range(args.warmup):  # imports, allocator, kernels (oneDNN's first few calls are slow)
            run()
        return min(seconds(run, device) for _ in range(2))

    with frozen_model(model):  # as generate runs it: no weight gradients
        step = best(model_step)
    mask = best(lambda: gaussian_centre_mask(side, 0.8 * side, device))
    blur = best(lambda: gaussian_blur(batch, 0.9))
    denoise = best(lambda: tv_denoise(batch, 2.0))
    iterations = ORIGINAL_OCTAVE["iterations"]
    every = ORIGINAL["blur_every"]
    method = featvis.get("class_agnostic", recipe="original", image_size=side, num_clusters=k,
                         octaves=[{"iterations": args.steps}])
    # Clustering: the forward passes over the image set, then PCA, t-SNE and KMeans.
    clustering = seconds(lambda: cluster_image_set(method._pooled_features(model, args.layer, image_set), k,
                                                   method.params["images_per_cluster"], 0, True), device)
    tick = time.perf_counter()
    result = method.generate(model, args.layer, None, image_set)
    end_to_end = time.perf_counter() - tick
    parts = clustering + args.steps * (step + mask) + (args.steps // every) * (blur + denoise)
    total = iterations * (step + mask) + (iterations // every) * (blur + denoise)
    hours = (total + clustering) / 3600
    lines = [
        "# Class-agnostic feature visualisation, `recipe: original`: cost of a run",
        "",
        f"Model {args.arch} (random weights), target `{args.layer}`, penalty `auto` "
        f"(the last convolution before it), {k} clusters at {side} px, image set of {len(image_set)} crops.",
        f"Device: {args.device} ({platform.machine()}, {os.cpu_count()} CPUs, torch threads {args.threads}), "
        f"torch {torch.__version__}.",
        "",
        "| part | seconds |",
        "|---|---:|",
        f"| one step: forward + backward of the {k} images | {step:.2f} |",
        f"| centre mask (built every step) | {mask:.3f} |",
        f"| blur of the {k} images (every {every} steps) | {blur:.3f} |",
        f"| TV-Bregman denoising of the {k} images, skimage on the CPU (every {every} steps) | {denoise:.2f} |",
        f"| clustering: forward passes over the {len(image_set)} images, PCA, t-SNE, KMeans | {clustering:.1f} |",
        f"| end to end, {args.steps} steps (clustering included) | {end_to_end:.1f} |",
        f"| the same from the parts above | {parts:.1f} |",
        f"| **{iterations} steps (the recipe), from the parts** | **{total:.0f}** ({total / 3600:.1f} h) |",
        "",
        f"Estimated whole run: {hours:.1f} h ({iterations} x (step + mask) + {iterations // every} x "
        f"(blur + denoise) + clustering); the denoising alone is {iterations // every * denoise / 60:.0f} min "
        f"of CPU time on any device. Loss after {args.steps} steps, per cluster (random weights: meaningless "
        f"values): {', '.join(f'{v:.3g}' for v in result.loss_curve[-1].tolist())}.",
        "",
        "Reproduce: `python benchmarks/class_agnostic_cost.py` (defaults: resnet152, 512 px, 10 clusters; "
        "`--device cuda` on a GPU).",
    ]
    write_text(Path(args.out), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
