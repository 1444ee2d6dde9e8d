"""Workflow throughput against calling vislib directly: the same images, methods and metrics, images per second.

The workflow side times `snakemake` producing every metric shard of an experiment (dataset already
prepared, so only explain + evaluate jobs run, with profiles/default as in any local run); the direct
side loads the model and dataset once and calls vislib.pipeline.explain_shard + evaluate_shard shard by
shard in one process. Both sides run `--repeats` times, alternating, and the fastest run of each counts
(other processes on a shared machine only ever slow a run down). CPU seconds are reported beside wall
seconds because they do not depend on what else the machine runs. Writes
benchmarks/results/workflow_throughput.md; a `## Notes` section at the end of that file is kept.

Run: python benchmarks/workflow_throughput.py [--images 200] [--shard-size 100] [--batch-size 50] [--repeats 3]
        [--device cuda --gpus 1] [--job-threads 1]
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from timing import device_name

from vislib import models
from vislib.config import metric_spec
from vislib.data import open_dataset
from vislib.io import load_shard, write_text
from vislib.pipeline import evaluate_shard, explain_shard, shard_count, shard_ids

REPO = Path(__file__).resolve().parent.parent
DEFAULTS = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
METRICS = ["pointing_game", "energy_pointing_game", "loc_error_top1", "maxboxacc", "deletion_auc",
           "insertion_auc", "average_drop"]
METHODS = ["gradcam", "vanilla_gradient"]
LAYER = "features.14"
NOTES_HEADING = "## Notes"


def bench_config(images: int, shard_size: int, batch_size: int, device: str = "cpu", job_threads: int = 1) -> dict:
    """The default demo's untrained model, two methods and seven metrics on `images` shapes images."""
    return {
        "device": device, "seed": 0, "shard_size": shard_size, "batch_size": batch_size, "job_threads": job_threads,
        "data_root": "resources/datasets",
        "datasets": {"shapes": {"kind": "shapes", "split": "val", "limit": images,
                                "params": {"n_train": 10, "n_val": images, "image_size": 64, "seed": 0}}},
        "models": {"demonet_random": DEFAULTS["models"]["demonet_random"]},
        "methods": {m: {} for m in METHODS},
        "metrics": {m: DEFAULTS["metrics"][m] for m in METRICS},
        "experiments": {"bench": {"dataset": "shapes", "models": {"demonet_random": [LAYER]},
                                  "methods": METHODS, "metrics": METRICS, "figure_images": 4}},
    }


def children_cpu_seconds() -> float:
    """User + system CPU seconds of every finished child process (and theirs) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def snakemake(workdir: Path, cores: int, *targets: str, gpus: int = 0) -> tuple[float, float]:
    """Run the Snakefile in `workdir` for `targets` (with `gpus` GPUs to share out); return (wall, CPU) seconds of
    the whole process tree."""
    cmd = [sys.executable, "-m", "snakemake", *targets, "--snakefile", str(REPO / "Snakefile"), "--directory",
           str(workdir), "--configfile", str(workdir / "config.yaml"), "--cores", str(cores), "--quiet", "all",
           *(["--resources", f"gpu={gpus}"] if gpus else [])]
    cpu, tick = children_cpu_seconds(), time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - tick, children_cpu_seconds() - cpu


def metric_targets(config: dict) -> list[str]:
    """Every metric shard of the bench experiment."""
    n_shards = shard_count(config["datasets"]["shapes"]["limit"], config["shard_size"])
    return [f"results/bench/metrics/shapes/demonet_random/{LAYER}/{m}/shard_{s}.parquet"
            for m in METHODS for s in range(n_shards)]


def workflow_seconds(workdir: Path, config: dict, cores: int, gpus: int) -> tuple[float, float]:
    """(wall, CPU) seconds the workflow takes for every explain + evaluate job of the experiment."""
    for produced in ("results/bench", "benchmarks/runs"):
        shutil.rmtree(workdir / produced, ignore_errors=True)
    return snakemake(workdir, cores, *metric_targets(config), gpus=gpus)


def direct_seconds(workdir: Path, config: dict) -> tuple[float, float]:
    """(wall, CPU) seconds for the same shards through explain_shard + evaluate_shard in one process."""
    cpu, tick = time.process_time(), time.perf_counter()
    spec = config["models"]["demonet_random"]
    net = models.load(spec["arch"], spec["weights"], torch.device(config["device"]), num_classes=spec["num_classes"])
    dataset = open_dataset("shapes", "bench", str(workdir / "resources/datasets/shapes"), "val")
    ids = dataset.image_ids()[:config["datasets"]["shapes"]["limit"]]
    specs = {name: params for name, params in (metric_spec(config, m) for m in METRICS)}
    size = config["shard_size"]
    for method in METHODS:
        for shard in range(shard_count(len(ids), size)):
            heatmaps = explain_shard(net, LAYER, method, {}, dataset, shard_ids(ids, size, shard), "label",
                                     config["batch_size"], decode_threads=config["job_threads"])
            evaluate_shard(heatmaps, dataset, net, specs, {"experiment": "bench", "method": method},
                           decode_threads=config["job_threads"])
    return time.perf_counter() - tick, time.process_time() - cpu


def import_seconds(statement: str, repeats: int = 3) -> tuple[float, float]:
    """Fastest (wall, CPU) seconds of a fresh interpreter running `statement`, as every job's start-up does."""
    runs = []
    for _ in range(repeats):
        cpu, tick = children_cpu_seconds(), time.perf_counter()
        subprocess.run([sys.executable, "-c", statement], check=True)
        runs.append((time.perf_counter() - tick, children_cpu_seconds() - cpu))
    return min(runs)


def job_rows(workdir: Path) -> list[str]:
    """Table rows: mean wall and CPU seconds per job of each rule in the last workflow run (`benchmark:` files)."""
    rows = []
    for rule in ("explain", "evaluate"):
        records = []
        for path in sorted((workdir / "benchmarks" / "runs" / rule).rglob("*.tsv")):
            with path.open() as handle:
                records.extend(csv.DictReader(handle, delimiter="\t"))
        wall = statistics.mean(float(r["s"]) for r in records)
        cpu = statistics.mean(float(r["cpu_time"]) for r in records)
        rows.append(f"| {rule} | {len(records)} | {wall:.2f} | {cpu:.2f} |")
    return rows


def method_seconds(workdir: Path) -> float:
    """Mean seconds the attribution method itself took per explain job (recorded in each heatmap shard)."""
    shards = sorted((workdir / "results" / "bench" / "heatmaps").rglob("*.npz"))
    return statistics.mean(load_shard(p).seconds for p in shards)


def kept_notes(path: Path) -> str:
    """The hand-written `## Notes` section of an existing results file, or nothing."""
    if not path.exists():
        return ""
    text = path.read_text()
    return text[text.index(NOTES_HEADING):] if NOTES_HEADING in text else ""


def main() -> None:
    """Time both sides and write the results table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000,
                        help="two shards per method at the default shard size")
    parser.add_argument("--shard-size", type=int, default=DEFAULTS["shard_size"],
                        help="default: config/config.yaml's shard_size")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"],
                        help="default: config/config.yaml's batch_size")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="the config's device (cpu or cuda)")
    parser.add_argument("--gpus", type=int, default=1, help="--resources gpu=N where --device is cuda")
    parser.add_argument("--job-threads", type=int, default=1, help="the config's job_threads")
    parser.add_argument("--root", type=Path, default=Path("/tmp/vislib_throughput_bench"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "workflow_throughput.md")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = bench_config(args.images, args.shard_size, args.batch_size, args.device, args.job_threads)
    gpus = args.gpus if args.device.startswith("cuda") else 0
    workdir = args.root / f"n{args.images}_s{args.shard_size}_b{args.batch_size}_{args.device}"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    snakemake(workdir, args.cores, "results/image_lists/shapes.txt")
    torch.set_num_threads(args.cores)
    workflow_runs, direct_runs = [], []
    for _ in range(args.repeats):
        workflow_runs.append(workflow_seconds(workdir, config, args.cores, gpus))
        direct_runs.append(direct_seconds(workdir, config))
    (wf, wf_cpu), (direct, direct_cpu) = min(workflow_runs), min(direct_runs)
    torch_start = import_seconds("import torch")
    jobs_start = import_seconds("import vislib.jobs.explain")
    n = args.images * len(METHODS)
    where = device_name(torch.device(args.device)) + (f", `--resources gpu={gpus}`" if gpus else "")
    n_jobs = 2 * len(METHODS) * shard_count(args.images, args.shard_size)
    lines = [
        "# Workflow throughput vs calling vislib directly", "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs shared with other work "
        f"(1-min load average at the end {os.getloadavg()[0]:.1f}), `--cores {args.cores}`, "
        f"{args.cores} torch threads on the direct side, {where}, job_threads "
        f"{args.job_threads}, torch {torch.__version__}. Model demonet "
        f"(random weights, 64 px), layer {LAYER}, methods {', '.join(METHODS)}, metrics {', '.join(METRICS)}; "
        f"shard size {args.shard_size}, batch size {args.batch_size}. Fastest of {args.repeats} runs per side "
        f"(all runs, wall s: workflow {', '.join(f'{w:.1f}' for w, _ in workflow_runs)}; direct "
        f"{', '.join(f'{w:.1f}' for w, _ in direct_runs)}).", "",
        "| images x methods | shard size | batch size | workflow jobs | workflow s | direct s | workflow img/s "
        "| direct img/s | ratio | workflow CPU s | direct CPU s | CPU ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {n} | {args.shard_size} | {args.batch_size} | {n_jobs} | {wf:.1f} | {direct:.1f} | {n / wf:.2f} "
        f"| {n / direct:.2f} | {direct / wf:.2f} | {wf_cpu:.1f} | {direct_cpu:.1f} | {direct_cpu / wf_cpu:.2f} |",
        "",
        "Ratio = workflow throughput / direct throughput (wall clock); CPU ratio = direct CPU seconds / "
        "workflow CPU seconds (Snakemake and every job process included).", "",
        "## Where a job's time goes (last workflow run)", "",
        "| rule | jobs | mean wall s | mean CPU s |", "|---|---|---|---|",
        *job_rows(workdir), "",
        "Both per-job columns come from Snakemake's `benchmark:` files. Snakemake samples a job's CPU time once "
        "a second for 30 s and then every 30 s, so CPU spent after the last sample is missing: read the CPU "
        "column as a lower bound (the workflow CPU seconds above are exact: resource usage of all child "
        "processes).", "",
        f"Per explain job the attribution method itself took {method_seconds(workdir):.2f} s. Start-up of a "
        f"fresh interpreter (fastest of 3): `import torch` {torch_start[0]:.2f} s wall / {torch_start[1]:.2f} s "
        f"CPU, `import vislib.jobs.explain` (torch included) {jobs_start[0]:.2f} s wall / {jobs_start[1]:.2f} s CPU; "
        "every job pays this once.", "",
        f"Reproduce: `{' '.join(['python benchmarks/workflow_throughput.py', *sys.argv[1:]])}`",
    ]
    text = "\n".join(lines) + "\n"
    notes = kept_notes(args.out)
    write_text(args.out, text + ("\n" + notes if notes else ""))
    print(text)


if __name__ == "__main__":
    main()
