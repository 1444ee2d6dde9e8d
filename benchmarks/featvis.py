"""Feature-visualization speed: many units optimised in one batch against one unit at a time, same device.

Both sides run the same `filter_visualization` (same settings, same seed, same images up to float
rounding); the only difference is whether `generate` gets all units at once or one per call, which is
what the seed implementations did (one image per call, hook re-registered each time). Each timing is
the best of `--repeats` runs. Writes a markdown report (default benchmarks/results/featvis.md).

Run: python benchmarks/featvis.py [--device cuda] [--units 8 32] [--sizes 64 32] [--threads 1 2] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import torch
from timing import best_seconds

from vislib import featvis, models
from vislib.featvis.fold import fold_batch_norms
from vislib.io import write_text

LAYER = "features.14"
PARAMS = {"iterations": 16, "octaves": 2, "jitter": 4, "scale_jitter": 0.05}


def main() -> None:
    """Time batched vs one-at-a-time filter visualization on the demo net and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--units", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 32], help="image sides (64: the demo net's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=list(dict.fromkeys([1, os.cpu_count() or 1])),
                        help="torch CPU thread counts to measure with (one table row each)")
    parser.add_argument("--out", default="benchmarks/results/featvis.md")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = models.load("demonet", device=device)
    # generate folds the batch norms into the convolutions on every call (about 25 ms on this net on a
    # CPU): fold once here so the one-at-a-time loop is not charged for it once per unit.
    side = models.preprocessing_of(model).input_size
    model = fold_batch_norms(model, torch.zeros(1, 3, side, side, device=device), outputs=[LAYER])
    steps = PARAMS["iterations"] * PARAMS["octaves"]
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for size in args.sizes:
            method = featvis.get("filter_visualization", **PARAMS, size=size)
            method.generate(model, LAYER, [0])  # warm-up: allocator, kernels
            for count in args.units:
                units = list(range(count))
                best = best_seconds({
                    "batched": lambda units=units, method=method: method.generate(model, LAYER, units),
                    "looped": lambda units=units, method=method: [method.generate(model, LAYER, [u]) for u in units],
                }, args.repeats, device)
                batched, looped = best["batched"], best["looped"]
                rows.append((threads, size, count, batched, looped))
                print(f"{threads} threads, {size}px, {count} units: batched {batched:.2f}s, "
                      f"one at a time {looped:.2f}s, {looped / batched:.1f}x", flush=True)

    lines = [
        "# Feature visualization: batched units vs one unit at a time",
        "",
        f"Model demonet (random weights), layer `{LAYER}`, method `filter_visualization` with "
        f"{PARAMS} ({steps} steps per image), best of {args.repeats} runs.",
        f"Device: {device.type} ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs), "
        f"torch {torch.__version__}. Batch norms folded into the convolutions once beforehand, as `generate`",
        "does on each call, so the one-at-a-time loop is not charged for folding per call.",
        "",
        "| torch threads | image side | units | batched (s) | one at a time (s) | speed-up "
        "| batched ms per unit-step |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for threads, size, count, batched, looped in rows:
        lines.append(f"| {threads} | {size} | {count} | {batched:.2f} | {looped:.2f} | {looped / batched:.1f}x | "
                     f"{1000 * batched / (count * steps):.2f} |")
    lines += [
        "",
        "Goal: >= 4x on the demo net. Reproduce: `python benchmarks/featvis.py` (`--device cuda --threads 1`",
        "on a GPU).",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
