"""Input pipeline speed: decoding an image (PIL and a float resize, as vislib read images before; PIL and a uint8
resize; `read_image` and `to_input` as now), and explain and evaluate jobs' wall time against the larger of their
decode time and their compute time, reading each batch when asked or reading the next one ahead.

Run: python benchmarks/pipeline.py [--images 320] [--batch-size 32] [--repeats 8] [--threads 1 2]
Writes benchmarks/results/pipeline.md; a `## Notes` section at its end is kept.

The images are generated ImageNet-sized JPEGs (500x375, quality 90): crops of scikit-image's photos, flipped and
tinted. A job's decode time is reading all its batches one after the other (`load_batch`: decode, resize,
normalise, ground truth); its compute time is the same job on batches decoded beforehand; its wall time is the job
as it runs, with `read_ahead` 0 (each batch read when the loop asks for it) or 1 (the next batch read by a
background thread meanwhile). Every figure is the best of `--repeats` rounds, the variants alternating within a
round, so load from other processes on a shared machine hits them alike.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timing import best_seconds, device_name

from vislib import models
from vislib.data import dataset as dataset_module
from vislib.data.cocoformat import CocoWriter
from vislib.data.dataset import Batch, CocoFormatDataset, input_geometry, read_image, to_input
from vislib.io import write_text
from vislib.pipeline import evaluate_shard, explain_shard
from vislib.preprocessing import IMAGENET, Preprocessing

RESULTS = Path(__file__).parent / "results" / "pipeline.md"
NOTES_HEADING = "## Notes"  # a hand-written section at the end of the results file, kept when it is rewritten
WIDTH, HEIGHT = 500, 375
CLASSES = [f"class_{i}" for i in range(6)]
# (label, model, layer, method) of the explain jobs (--explain-models): on CPU the demo net's compute is about its
# decode time, the case where reading ahead has the most to hide; resnet50 at 224 px is a preset's job, on a GPU.
# The evaluate job's compute is a few times its decode time.
EXPLAIN_JOBS = {"demonet": ("demonet, 64 px, gradcam", "demonet", "features.14", "gradcam"),
                "resnet50": ("resnet50, 224 px, gradcam", "resnet50", "layer4", "gradcam")}
DEVICE = torch.device("cpu")  # --device: where the jobs' models run (decoding is always on the CPU)
WALLS = ("wall before", "wall, read each", "wall, read ahead")
EVALUATE_METRICS = {"pointing_game": {}, "energy_pointing_game": {}, "maxboxacc": {"thresholds": 20},
                    "average_drop": {}}


def previous_read_image(path) -> np.ndarray:
    """vislib's decoding before: PIL for every format."""
    with Image.open(path) as img:
        return np.array(img.convert("RGB"))


def previous_to_input(pixels: np.ndarray, size: int, resize: str = "stretch") -> torch.Tensor:
    """vislib's resize before: float conversion first, then a float bilinear antialiased resize."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float()[None] / 255.0
    geometry = input_geometry(x.shape[-1], x.shape[-2], size, resize)
    if x.shape[-2:] != (geometry.height, geometry.width):
        x = F.interpolate(x, size=(geometry.height, geometry.width), mode="bilinear", antialias=True,
                          align_corners=False)
    x = x[..., geometry.top:geometry.top + size, geometry.left:geometry.left + size]
    return x[0].clamp(0, 1)


def previous_load_batch(self: CocoFormatDataset, image_ids: list[int], preprocessing: Preprocessing,
                        with_masks: bool = True, decoders=None, pin_memory: bool = False) -> Batch:
    """vislib's `load_batch` before: PIL, the float resize of each image, then the batch stacked and normalised, on
    the calling thread (`decoders` and `pin_memory` are not used)."""
    tensors, samples, failures = [], [], {}
    for image_id in image_ids:
        try:
            pixels = previous_read_image(self.record(image_id).path)
        except OSError as exc:
            failures[image_id] = str(exc)
            continue
        tensors.append(previous_to_input(pixels, preprocessing.input_size, self.resize))
        samples.append(self.sample(image_id, preprocessing.input_size, with_masks))
    labels = torch.tensor([s.label for s in samples], dtype=torch.long)
    return Batch(preprocessing.normalize(torch.stack(tensors)), labels, samples, failures)


@contextmanager
def replaced(owner, name: str, replacement):
    """`owner.name` is `replacement` inside the block."""
    saved = getattr(owner, name)
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        setattr(owner, name, saved)


def previous_decoding():
    """Jobs read their batches as vislib did before (`previous_load_batch`)."""
    return replaced(CocoFormatDataset, "load_batch", previous_load_batch)


def pil_decoding():
    """Today's `load_batch` with PIL's decoder for JPEGs (as vislib decoded them before)."""
    return replaced(dataset_module, "read_image", previous_read_image)


def photos() -> list[np.ndarray]:
    import skimage.data

    return [skimage.data.chelsea(), skimage.data.coffee(), skimage.data.astronaut()]


def write_dataset(root: Path, count: int) -> CocoFormatDataset:
    """`count` ImageNet-sized JPEGs, each a crop of a photo (flipped, tinted), labelled with one box."""
    rng = np.random.default_rng(0)
    sources = [Image.fromarray(p) for p in photos()]
    folder = root / "images" / "val"
    folder.mkdir(parents=True)
    writer = CocoWriter(root, "val", CLASSES)
    for image_id in range(1, count + 1):
        source = sources[image_id % len(sources)]
        scale = rng.uniform(0.6, 1.0)
        w = scale * min(source.width, source.height * WIDTH / HEIGHT)
        h = w * HEIGHT / WIDTH
        x, y = rng.uniform(0, source.width - w), rng.uniform(0, source.height - h)
        image = source.resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC, box=(x, y, x + w, y + h))
        pixels = np.asarray(image, np.float32) * rng.uniform(0.8, 1.2, 3)
        if rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{image_id:06d}.jpg", quality=90)
        label = image_id % len(CLASSES)
        box = [rng.uniform(0, WIDTH / 2), rng.uniform(0, HEIGHT / 2), rng.uniform(60, WIDTH / 2),
               rng.uniform(60, HEIGHT / 2)]
        writer.add_image(image_id, f"{image_id:06d}.jpg", WIDTH, HEIGHT, label,
                         [{"category": CLASSES[label], "bbox": box}])
    writer.write(CLASSES)
    return CocoFormatDataset("generated", root, "val")


class Preloaded(CocoFormatDataset):
    """A dataset whose batches were decoded beforehand: a job on it takes its compute time alone."""

    def __init__(self, dataset: CocoFormatDataset, ready: dict[tuple[int, ...], Batch]) -> None:
        self.__dict__.update(dataset.__dict__)
        self.ready = ready

    def load_batch(self, image_ids: list[int], preprocessing: Preprocessing, with_masks: bool = True,
                   decoders=None, pin_memory: bool = False) -> Batch:
        return self.ready[tuple(image_ids)]


def decode_rows(dataset: CocoFormatDataset, count: int, batch_size: int, repeats: int,
                thread_counts: list[int]) -> list[str]:
    """Milliseconds per image of reading batches: before, with PIL's decoder, and now (one thread), and now with
    each of `thread_counts` decode threads, per resize protocol."""
    torch.set_num_threads(1)
    ids = dataset.image_ids()[:count]
    rows = []
    for resize in ("stretch", "crop"):
        dataset.resize = resize

        def read_all(threads: int = 1):
            return list(dataset.batches(ids, batch_size, IMAGENET, read_ahead=0, decode_threads=threads))

        def read_all_before():
            with previous_decoding():
                return read_all()

        def read_all_pil():
            with pil_decoding():
                return read_all()

        threaded = {f"now {n}": partial(read_all, n) for n in thread_counts if n > 1}
        best = best_seconds({"before": read_all_before, "pil": read_all_pil, "now": read_all, **threaded}, repeats)
        before, pil, now, *more = (1000 * best[k] / len(ids) for k in ("before", "pil", "now", *threaded))
        threaded_cells = "".join(f" {ms:.2f} |" for ms in more)
        rows.append(f"| {resize} | {before:.2f} | {pil:.2f} | {now:.2f} |{threaded_cells} {before / now:.1f}x |")
    dataset.resize = "stretch"
    return rows


def difference_rows(dataset: CocoFormatDataset, count: int) -> list[str]:
    """Max and mean absolute difference (in levels of 255) of the model input, before against now."""
    images = [(name, pixels) for name, pixels in zip(("chelsea", "coffee", "astronaut"), photos(), strict=True)]
    generated = [previous_read_image(dataset.record(i).path) for i in dataset.image_ids()[:count]]
    rows = []
    for resize in ("stretch", "crop", "squash_crop"):
        for name, group in [*((n, [p]) for n, p in images), (f"{count} generated JPEGs", generated)]:
            difference = torch.cat([(to_input(p, 224, resize) - previous_to_input(p, 224, resize)).abs().flatten()
                                    for p in group]) * 255
            rows.append(f"| {resize} | {name} | {difference.max().item():.3f} | {difference.mean().item():.3f} |")
    return rows


def decoded_equal(dataset: CocoFormatDataset, count: int) -> int:
    """How many of the first `count` images `read_image` decodes to exactly PIL's pixels."""
    paths = [dataset.record(i).path for i in dataset.image_ids()[:count]]
    return sum(np.array_equal(read_image(p), previous_read_image(p)) for p in paths)


def job_row(label: str, threads: int, runs: dict[str, object], repeats: int) -> str:
    """One job's decode, compute and wall times (s), each wall time also over the larger of decode and compute."""
    best = best_seconds(runs, repeats, DEVICE)
    bound = max(best["decode"], best["compute"])
    walls = " | ".join(f"{best[key]:.2f} ({best[key] / bound:.2f}x)" for key in WALLS)
    return f"| {label} | {threads} | {best['decode']:.2f} | {best['compute']:.2f} | {walls} |"


def batch_runs(dataset: CocoFormatDataset, ids: list[int], batch_size: int, preprocessing: Preprocessing,
               threads: int) -> tuple[dict[str, object], Preloaded]:
    """A job's decode time with `threads` decode threads and the dataset with its batches decoded."""
    def read_all():
        return list(dataset.batches(ids, batch_size, preprocessing, read_ahead=0, decode_threads=threads))

    slices = [tuple(ids[s:s + batch_size]) for s in range(0, len(ids), batch_size)]
    preloaded = Preloaded(dataset, dict(zip(slices, read_all(), strict=True)))
    return {"decode": read_all}, preloaded


def job_runs(job, dataset: CocoFormatDataset, preloaded: Preloaded) -> dict[str, object]:
    """A job's compute time and its wall time before, reading each batch when asked, and reading ahead."""
    def wall_before():
        with previous_decoding():
            return job(dataset=dataset, read_ahead=0, decode_threads=1)

    job(dataset=preloaded, read_ahead=0)  # warm-up
    return {"compute": lambda: job(dataset=preloaded, read_ahead=0), "wall before": wall_before,
            "wall, read each": lambda: job(dataset=dataset, read_ahead=0),
            "wall, read ahead": lambda: job(dataset=dataset, read_ahead=1)}


def load_net(arch: str) -> torch.nn.Module:
    return models.load(arch, "random", DEVICE, num_classes=len(CLASSES) if arch == "demonet" else None)


def explain_runs(dataset: CocoFormatDataset, ids: list[int], batch_size: int, arch: str, layer: str,
                 method: str, threads: int) -> dict[str, object]:
    net = load_net(arch)
    decode, preloaded = batch_runs(dataset, ids, batch_size, models.preprocessing_of(net), threads)
    job = partial(explain_shard, net, layer, method, {}, image_ids=ids, batch_size=batch_size, decode_threads=threads)
    return {**decode, **job_runs(job, dataset, preloaded)}


def evaluate_runs(dataset: CocoFormatDataset, ids: list[int], batch_size: int, threads: int) -> dict[str, object]:
    net = load_net("demonet")
    decode, preloaded = batch_runs(dataset, ids, batch_size, models.preprocessing_of(net), threads)
    shard = explain_shard(net, "features.14", "gradcam", {}, preloaded, ids, batch_size=batch_size)
    job = partial(evaluate_shard, shard, model=net, metric_specs=EVALUATE_METRICS, labels={"experiment": "bench"},
                  batch_size=batch_size, decode_threads=threads)
    return {**decode, **job_runs(job, dataset, preloaded)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=320, help="images per job")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--decode-images", type=int, default=128, help="images per round of the decode timing")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="the jobs' threads (torch's and the decoders')")
    parser.add_argument("--explain-models", nargs="+", default=["demonet"], choices=sorted(EXPLAIN_JOBS))
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where the jobs' models run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    load_at_start = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as tmp:
        dataset = write_dataset(Path(tmp), args.images)
        ids = dataset.image_ids()
        decode = decode_rows(dataset, args.decode_images, args.batch_size, args.repeats + 1, args.threads)
        differences = difference_rows(dataset, args.images)
        equal = decoded_equal(dataset, args.images)
        jobs = []
        for threads in args.threads:
            torch.set_num_threads(threads)
            for label, arch, layer, method in (EXPLAIN_JOBS[name] for name in args.explain_models):
                jobs.append(job_row(f"explain: {label}", threads,
                                    explain_runs(dataset, ids, args.batch_size, arch, layer, method, threads),
                                    args.repeats))
            jobs.append(job_row(f"evaluate: demonet, 64 px, {', '.join(EVALUATE_METRICS)}", threads,
                                evaluate_runs(dataset, ids, args.batch_size, threads), args.repeats))

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, jobs on {device_name(DEVICE)}"
    if os.nice(0):
        machine += f", run at niceness {os.nice(0)} (ahead of the machine's other work)"
    lines = [
        "# Input pipeline speed",
        "",
        f"`{' '.join(['python benchmarks/pipeline.py', *sys.argv[1:]])}`: {machine}; torch {torch.__version__}; "
        f"1-min load average {load_at_start:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end (a machine shared with other work: best of {args.repeats} alternating "
        "rounds). Reading ahead can only hide decoding on a core the model leaves free: with another process busy "
        "on one of the two cores, it cannot.",
        "",
        f"Images: {args.images} generated ImageNet-sized JPEGs ({WIDTH}x{HEIGHT}, quality 90; crops of "
        "scikit-image's chelsea, coffee and astronaut, flipped and tinted).",
        "",
        "## Decoding",
        "",
        "`load_batch` in batches of the jobs' size, ImageNet normalisation, 224 px input, ms per image: decode, "
        "resize, float conversion, normalisation and the ground truth. Before: PIL's decode and RGB conversion, "
        "then each image converted to float and resized in float (bilinear, antialiased), then stacked and "
        "normalised. PIL decode: today's `load_batch` with PIL's decoder. Now: libjpeg-turbo through simplejpeg "
        "straight into an array (PIL's pixels), the resize on the uint8 image (torch's uint8 kernel, as "
        "torchvision's `resize`), then one float conversion and an in-place normalisation of the whole batch. "
        "One thread, except the columns \"now, N threads\": `decode_threads=N`, the images of each batch decoded by "
        f"N threads (wall time per image). {args.decode_images} images a round, best of {args.repeats + 1} rounds; "
        "speed-up: before over now, one thread.",
        "",
        "| resize | before ms/image | PIL decode ms/image | now ms/image | "
        + "".join(f"now, {n} threads ms/image | " for n in args.threads if n > 1) + "speed-up |",
        "|---|---:|---:|---:|" + "---:|" * sum(n > 1 for n in args.threads) + "---:|",
        *decode,
        "",
        "## Pixels: now against before",
        "",
        f"Decoding: `read_image` gives PIL's pixels exactly on {equal} of the {args.images} generated JPEGs.",
        "",
        "Absolute difference of the model input (before normalisation), in levels of 1/255: the uint8 resize "
        "rounds every pixel to a level, the float resize does not.",
        "",
        "| resize | images | max | mean |",
        "|---|---|---:|---:|",
        *differences,
        "",
        "## Jobs: wall time against the larger of decode and compute",
        "",
        f"`explain_shard` / `evaluate_shard` on {args.images} images in batches of {args.batch_size}, random weights, "
        f"models on the {DEVICE.type.upper()}. Decode: `load_batch` over every batch of the job in turn (its "
        "threads decoding). Compute: the job on batches decoded "
        "beforehand. Wall: the job as it runs, (before) with the previous decoding and each batch read when it is "
        "due, as vislib ran before; (read each) with the new decoding and `read_ahead=0`; (read ahead) with "
        "`read_ahead=1`, the default: a background thread reads the next batch while the model works. In brackets: "
        "the wall time over max(decode, compute). threads: `torch.set_num_threads` of the process and the job's "
        "`decode_threads`, as the workflow gives its explain and evaluate jobs (config `job_threads`, default 1); "
        "decode is timed with them too; the read-ahead thread is one more thread beside them.",
        "",
        "| job | threads | decode s | compute s | wall before s | wall, read each s | wall, read ahead s |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *jobs,
        "",
    ]
    text = "\n".join(lines)
    previous = args.out.read_text() if args.out.exists() else ""
    notes = previous[previous.index(NOTES_HEADING):] if NOTES_HEADING in previous else ""
    write_text(args.out, text + ("\n" + notes if notes else ""))
    print(text)


if __name__ == "__main__":
    main()
