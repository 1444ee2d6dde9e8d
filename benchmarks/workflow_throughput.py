"""Workflow throughput against calling vislib directly: the same images, methods and metrics, images per second.

The workflow side times `snakemake` producing every metric shard of an experiment (dataset already
prepared, so only explain + evaluate jobs run); the direct side loads the model and dataset once and
calls vislib.pipeline.explain_shard + evaluate_shard shard by shard in one process. Writes
benchmarks/results/workflow_throughput.md.

Run: python benchmarks/workflow_throughput.py [--images 200] [--shard-size 40] [--cores 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from vislib import models
from vislib.config import metric_spec
from vislib.data import open_dataset
from vislib.io import write_text
from vislib.pipeline import evaluate_shard, explain_shard, shard_count, shard_ids

REPO = Path(__file__).resolve().parent.parent
METRICS = ["pointing_game", "energy_pointing_game", "loc_error_top1", "maxboxacc", "deletion_auc",
           "insertion_auc", "average_drop"]
METHODS = ["gradcam", "vanilla_gradient"]
LAYER = "features.14"


def bench_config(images: int, shard_size: int) -> dict:
    """The default demo's untrained model, two methods and seven metrics on `images` shapes images."""
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    return {
        "device": "cpu", "seed": 0, "shard_size": shard_size, "batch_size": shard_size,
        "data_root": "resources/datasets",
        "datasets": {"shapes": {"kind": "shapes", "split": "val", "limit": images,
                                "params": {"n_train": 10, "n_val": images, "image_size": 64, "seed": 0}}},
        "models": {"demonet_random": base["models"]["demonet_random"]},
        "methods": {m: {} for m in METHODS},
        "metrics": {m: base["metrics"][m] for m in METRICS},
        "experiments": {"bench": {"dataset": "shapes", "models": {"demonet_random": [LAYER]},
                                  "methods": METHODS, "metrics": METRICS, "figure_images": 4}},
    }


def snakemake(workdir: Path, cores: int, *targets: str) -> float:
    """Run the Snakefile in `workdir` for `targets`; return the wall seconds."""
    cmd = [sys.executable, "-m", "snakemake", *targets, "--snakefile", str(REPO / "Snakefile"), "--directory",
           str(workdir), "--configfile", str(workdir / "config.yaml"), "--cores", str(cores), "--quiet", "all"]
    tick = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - tick


def workflow_seconds(workdir: Path, config: dict, cores: int) -> float:
    """Seconds the workflow takes for every explain + evaluate job of the experiment."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    snakemake(workdir, cores, "results/image_lists/shapes.txt")
    n_shards = shard_count(config["datasets"]["shapes"]["limit"], config["shard_size"])
    targets = [f"results/bench/metrics/shapes/demonet_random/{LAYER}/{m}/shard_{s}.parquet"
               for m in METHODS for s in range(n_shards)]
    return snakemake(workdir, cores, *targets)


def direct_seconds(workdir: Path, config: dict) -> float:
    """Seconds for the same shards through explain_shard + evaluate_shard in one process."""
    tick = time.perf_counter()
    spec = config["models"]["demonet_random"]
    net = models.load(spec["arch"], spec["weights"], num_classes=spec["num_classes"])
    dataset = open_dataset("shapes", "bench", str(workdir / "resources/datasets/shapes"), "val")
    ids = dataset.image_ids()[:config["datasets"]["shapes"]["limit"]]
    specs = {name: params for name, params in (metric_spec(config, m) for m in METRICS)}
    size = config["shard_size"]
    for method in METHODS:
        for shard in range(shard_count(len(ids), size)):
            heatmaps = explain_shard(net, LAYER, method, {}, dataset, shard_ids(ids, size, shard), "label", size)
            evaluate_shard(heatmaps, dataset, net, specs, {"experiment": "bench", "method": method})
    return time.perf_counter() - tick


def main() -> None:
    """Time both sides and write the results table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--shard-size", type=int, default=40, help="the default config's shard_size is 40")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--root", type=Path, default=Path("/tmp/vislib_throughput_bench"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "workflow_throughput.md")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = bench_config(args.images, args.shard_size)
    workdir = args.root / f"n{args.images}_s{args.shard_size}"
    wf = workflow_seconds(workdir, config, args.cores)
    torch.set_num_threads(args.cores)
    direct = direct_seconds(workdir, config)
    n = args.images * len(METHODS)
    n_jobs = 2 * len(METHODS) * shard_count(args.images, args.shard_size)
    lines = [
        "# Workflow throughput vs calling vislib directly", "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"`--cores {args.cores}`, CPU, torch {torch.__version__}, 1-min load average at the end "
        f"{os.getloadavg()[0]:.1f} (other processes slow both sides). Model demonet (random weights, 64 px), "
        f"layer {LAYER}, methods {', '.join(METHODS)}, metrics {', '.join(METRICS)}.", "",
        "| images x methods | shard size | workflow jobs | workflow s | direct s | workflow img/s | direct img/s | ratio |",
        "|---|---|---|---|---|---|---|---|",
        f"| {n} | {args.shard_size} | {n_jobs} | {wf:.1f} | {direct:.1f} | {n / wf:.2f} | {n / direct:.2f} "
        f"| {direct / wf:.2f} |", "",
        "Ratio = workflow throughput / direct throughput. The workflow pays a fixed cost per job (a Python "
        "process importing torch and vislib, loading the model, reading and writing shard files); the shard "
        "size sets how many images share that cost.", "",
        f"Reproduce: `python benchmarks/workflow_throughput.py --images {args.images} "
        f"--shard-size {args.shard_size} --cores {args.cores}`",
    ]
    write_text(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
