"""Expected compute time of each paper preset, extrapolated from per-image costs measured on this machine.

No data, weights or network are needed: every model of a preset is built with its architecture at random
weights (a forward or backward pass costs the same whatever the weights), images are synthetic shapes at the
model's input size, and each cost is measured with vislib's own functions on a small sample, then multiplied
by the preset's counts:
- attribution: `pipeline.explain_shard` and `pipeline.evaluate_shard` with the preset's method and metric
  parameters, per image. Exact Score-CAM (`top_channels: 0`) costs one forward pass per channel: it is timed
  with `--scorecam-channels` channels and scaled to the layer's channel count. L2-CAF is timed with its stop
  threshold at 0, so every image runs all `max_iters` iterations (an upper bound: the paper's threshold stops
  many images earlier);
- LaViSE: one backbone pass per training image (the feature cache), one explainer step per training object
  and epoch (with the preset's optimizer), one more backbone pass per training image and epoch with `augment`
  (the original's COCO augmentation recomputes the features every epoch), and one backbone pass per reference
  image (the reference cache: the explained images, or with `reference: all` the whole dataset; the filter
  analysis reads the cache otherwise);
- feature visualisation: each method timed at two small iteration counts and extrapolated linearly to the
  preset's, with `--featvis-units` units scaled to the preset's unit count (class-agnostic clustering runs
  over `--featvis-image-set` random images instead of the preset's image set: one forward pass per image,
  small next to the optimisation).
Data download, extraction and preparation are not included (network and disk bound).

Run: python benchmarks/preset_cost.py [--threads 2] [--images 4]
Writes benchmarks/results/preset_cost.md.
"""

from __future__ import annotations

import argparse
import functools
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from timing import best_seconds

from vislib import featvis, models, pipeline
from vislib.data.dataset import CocoFormatDataset
from vislib.data.synthetic import ShapesConfig, generate_shapes
from vislib.featvis.engine import probe_layer
from vislib.io import write_text
from vislib.lavise.model import Explainer
from vislib.lavise.settings import lavise_settings
from vislib.lavise.train import csmr_loss, make_optimizer
from vislib.methods.hooks import capture_layer
from vislib.params import defaults as declared_defaults

REPO = Path(__file__).resolve().parent.parent
PRESETS = REPO / "config" / "presets"
RESULTS = Path(__file__).parent / "results" / "preset_cost.md"
IMAGENET_VAL = 50_000
# Training-set sizes of the LaViSE presets' datasets (public statistics of the datasets).
LAVISE_TRAIN = {
    "coco": {"images": 118_287, "objects": 860_001, "words": 80, "all_images": 123_287,
             "source": "COCO 2017 train: 118,287 images, 860,001 instance annotations",
             "all_source": "`reference: all`: COCO 2017 train + val, 123,287 images"},
    "vg": {"images": 97_000, "objects": 3_400_000, "words": 1_600, "all_images": 108_077,
           "source": "Visual Genome: 108,077 images and 3.8 M objects, 90% in the train split",
           "all_source": "`reference: all`: all of Visual Genome, 108,077 images"},
}


def seconds(run: Callable[[], Any], repeats: int = 2) -> tuple[float, Any]:
    """Best wall time of `repeats` calls after one warm-up call (first calls allocate and convert layouts),
    and the warm-up call's result."""
    result = run()
    return best_seconds({"run": run}, repeats)["run"], result


def backbone_pass(net: torch.nn.Module, layer: str, x: torch.Tensor) -> None:
    with torch.no_grad(), capture_layer(net, layer):
        net(x)


def explainer_step(explainer: Explainer, optimizer: torch.optim.Optimizer, items: torch.Tensor,
                   targets: torch.Tensor, concepts: torch.Tensor) -> None:
    loss = csmr_loss(explainer(items), targets, concepts)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def featvis_run(net: torch.nn.Module, layer: str | None, name: str, params: dict[str, Any], iterations: int,
                units: int, images: torch.Tensor, source: str) -> None:
    method = featvis.get(name, **with_iterations(params, declared_defaults(featvis.FEATVIS[name].Params), iterations))
    kwargs = {"images": images} if source in ("images", "clusters") else {}
    if source != "images":
        kwargs["units"] = list(range(units))
    method.generate(net, layer, **kwargs)


def hms(total: float) -> str:
    """A duration for people: '3 d 4 h', '5 h 12 min', '4 min 10 s', '12.3 s'."""
    if total >= 86_400:
        return f"{int(total // 86_400)} d {int(total % 86_400 // 3600)} h"
    if total >= 3600:
        return f"{int(total // 3600)} h {int(total % 3600 // 60)} min"
    if total >= 60:
        return f"{int(total // 60)} min {int(total % 60)} s"
    return f"{total:.1f} s"


def shapes_at(size: int, n: int, root: Path) -> CocoFormatDataset:
    """A synthetic dataset of `n` val images at `size` px (boxes included, so every metric has ground truth)."""
    folder = root / f"shapes_{size}"
    if not folder.exists():
        generate_shapes(folder, ShapesConfig(n_train=0, n_val=n, image_size=size, seed=0))
    return CocoFormatDataset("shapes", folder, "val")


@functools.cache
def random_net(arch: str, num_classes: int | None) -> torch.nn.Module:
    """A model of `arch` at random weights, built once per run (a pass costs the same as with trained ones)."""
    return models.load(arch, "random", "cpu", num_classes=num_classes)


def layer_channels(net: torch.nn.Module, layer: str, size: int) -> int:
    return probe_layer(net, layer, torch.zeros(1, 3, size, size))[0][1]


def experiment_images(preset: dict, experiment: dict) -> int:
    dataset = preset["datasets"][experiment["dataset"]]
    if dataset["kind"] == "imagenet_val":
        return min(dataset.get("limit") or IMAGENET_VAL, IMAGENET_VAL)
    if not dataset.get("limit"):
        raise SystemExit(f"dataset {experiment['dataset']!r} has no limit; add its size to this script")
    return int(dataset["limit"])


def attribution_rows(preset: dict, experiment: dict, n_images: int, args, root: Path) -> list[dict]:
    """Per (model, layer, method): measured explain and evaluate s/image and the preset's total."""
    rows = []
    metric_specs = {m: preset["metrics"].get(m) or {} for m in experiment["metrics"]}
    for model_name, layers in experiment["models"].items():
        spec = preset["models"][model_name]
        net = random_net(spec["arch"], spec.get("num_classes"))
        size = net.vislib_preprocessing.input_size
        dataset = shapes_at(size, args.images, root)
        ids = dataset.image_ids()[:args.images]
        for layer in layers:
            channels = layer_channels(net, layer, size)
            for method in experiment["methods"]:
                params = dict(preset["methods"].get(method) or {})
                scale, note = 1.0, ""
                if method == "scorecam" and not params.get("top_channels"):
                    params["top_channels"] = args.scorecam_channels
                    scale = channels / args.scorecam_channels
                    note = f"timed at {args.scorecam_channels} of {channels} channels, scaled"
                if method.startswith("l2caf"):
                    params["stop_threshold"] = 0.0
                    note = "all iterations (no early stop)"
                explain_s, shard = seconds(functools.partial(
                    pipeline.explain_shard, net, layer, method, params, dataset, ids, "predicted",
                    batch_size=len(ids), top_k=experiment.get("top_k", 1)), args.repeats)
                evaluate_s, _ = seconds(functools.partial(
                    pipeline.evaluate_shard, shard, dataset, net, metric_specs, {}), args.repeats)
                explain_s, evaluate_s = explain_s / len(ids) * scale, evaluate_s / len(ids)
                rows.append({"model": model_name, "layer": layer, "method": method, "explain": explain_s,
                             "evaluate": evaluate_s, "total": n_images * (explain_s + evaluate_s), "note": note})
                print(rows[-1], flush=True)
    return rows


def lavise_rows(preset: dict, experiment: dict, n_images: int, args) -> list[dict]:
    """Feature cache, explainer training and filter analysis of each LaViSE model/layer."""
    block, rows = lavise_settings(preset["lavise"]), []
    dataset_kind = preset["datasets"][experiment["dataset"]]["kind"]
    counts = LAVISE_TRAIN[dataset_kind]
    for model_name, layers in experiment["lavise"]["models"].items():
        spec = preset["models"][model_name]
        net = random_net(spec["arch"], spec.get("num_classes"))
        size = net.vislib_preprocessing.input_size
        x = torch.rand(args.lavise_batch, 3, size, size)
        for layer in layers:
            channels = layer_channels(net, layer, size)
            forward_s = seconds(functools.partial(backbone_pass, net, layer, x), args.repeats)[0] / len(x)
            explainer = Explainer(channels, block["embedding_dim"])
            optimizer = make_optimizer(block["optimizer"], explainer.parameters(), block["lr"])
            items = torch.rand(block["batch_size"], channels)
            targets = torch.rand(block["batch_size"], counts["words"]) < 3 / counts["words"]
            concepts = torch.rand(counts["words"], block["embedding_dim"])
            item_s = seconds(functools.partial(explainer_step, explainer, optimizer, items, targets, concepts),
                             args.repeats)[0] / block["batch_size"]
            training = f"training ({block['epochs']} epochs, {block['optimizer']})"
            parts = {
                "feature cache": (counts["images"] * forward_s, counts["source"]),
                training: (counts["objects"] * block["epochs"] * item_s, counts["source"]),
            }
            if block["augment"]:
                parts[f"augmented backbone passes ({block['epochs']} epochs)"] = (
                    counts["images"] * block["epochs"] * forward_s, counts["source"] + ", every epoch")
            if block["reference"] == "all":
                parts["reference cache"] = (counts["all_images"] * forward_s, counts["all_source"])
            else:
                parts["filter analysis"] = (n_images * forward_s, f"{n_images} images")
            for part, (total, basis) in parts.items():
                rows.append({"model": model_name, "layer": layer, "part": part, "total": total, "basis": basis})
                print(rows[-1], flush=True)
    return rows


def with_iterations(params: dict[str, Any], defaults: dict[str, Any], n: int) -> dict[str, Any]:
    """`params` with every iteration count (top level, or per octave) set to `n`."""
    out = dict(params)
    if "iterations" in defaults:
        out["iterations"] = n
    if isinstance(defaults.get("octaves"), list):
        out["octaves"] = [{**o, "iterations": n} for o in params.get("octaves", defaults["octaves"])]
    return out


def preset_iterations(params: dict[str, Any], defaults: dict[str, Any]) -> float:
    """The iterations per octave the preset asks for (the mean over octaves where they differ)."""
    if "iterations" in defaults:
        return params.get("iterations", defaults["iterations"])
    octaves = params.get("octaves", defaults["octaves"])
    return sum(o.get("iterations", defaults["octaves"][0]["iterations"]) for o in octaves) / len(octaves)


def featvis_rows(preset: dict, experiment: dict, args) -> list[dict]:
    """Each featvis method per model/layer: cost at 2 and 4 iterations, extrapolated to the preset's."""
    block, rows = experiment["featvis"], []
    for model_name, layers in block["models"].items():
        spec = preset["models"][model_name]
        net = random_net(spec["arch"], spec.get("num_classes"))
        size = net.vislib_preprocessing.input_size
        for layer in layers:
            for label in block["methods"]:
                params = dict(preset["featvis"].get(label) or {})
                name = params.pop("method", label)
                method_class = featvis.FEATVIS[name]
                source = method_class.unit_source
                total_units = {"channels": block.get("channels", 8), "classes": len(block.get("classes", [])),
                               "images": block.get("images", 4),
                               "clusters": params.get("num_clusters",
                                                      declared_defaults(method_class.Params).get("num_clusters"))
                               }[source]
                units = min(args.featvis_units, total_units)
                images = torch.rand(units if source == "images" else args.featvis_image_set, 3, size, size)
                target_layer = None if source == "classes" else layer
                low, high = (seconds(functools.partial(featvis_run, net, target_layer, name, params, n, units, images,
                                                       source), 1)[0] for n in (2, 4))
                per_iteration = (high - low) / 2
                target = preset_iterations(params, declared_defaults(method_class.Params))
                cost = (low + per_iteration * (target - 2)) * total_units / units
                rows.append({"model": model_name, "layer": layer, "method": label, "units": total_units,
                             "iterations": target, "total": cost})
                print(rows[-1], flush=True)
    return rows


# Per part of a preset: the table's header and separator lines and the cells of one row.
TABLES: dict[str, tuple[str, str, Callable[[dict], list[str]]]] = {
    "attribution": ("| model | layer | method | explain s/img | evaluate s/img | total | note |",
                    "|---|---|---|---:|---:|---:|---|",
                    lambda r: [r["model"], r["layer"], r["method"], f"{r['explain']:.3f}", f"{r['evaluate']:.3f}",
                               hms(r["total"]), r["note"]]),
    "lavise": ("| model | layer | LaViSE part | total | basis |", "|---|---|---|---:|---|",
               lambda r: [r["model"], r["layer"], r["part"], hms(r["total"]), r["basis"]]),
    "featvis": ("| model | layer | featvis method | units | iterations per octave | total |",
                "|---|---|---|---:|---:|---:|",
                lambda r: [r["model"], r["layer"], r["method"], str(r["units"]), f"{r['iterations']:g}",
                           hms(r["total"])]),
}


def markdown(results: dict[str, dict], args) -> str:
    lines = ["# Expected compute time of the paper presets", "",
             f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, CPU, torch "
             f"{torch.__version__}. Per-image costs measured with vislib's own functions on {args.images} "
             f"synthetic images at each model's input size (random weights), best of {args.repeats} timed "
             "call(s) after a warm-up call, then multiplied by the preset's counts; how each part is measured "
             "is in the docstring of `benchmarks/preset_cost.py`. Data download and preparation are not "
             "included. The script runs on the CPU: these are CPU times.", ""]
    for preset, result in results.items():
        total = sum(r["total"] for part in result["parts"].values() for r in part)
        lines += [f"## `{preset}.yaml`: {hms(total)} of compute here", "",
                  f"{result['images']:,} images per model and method.", ""]
        for part, rows in result["parts"].items():
            header, separator, cells = TABLES[part]
            lines += [header, separator, *("| " + " | ".join(cells(r)) + " |" for r in rows), ""]
    lines += ["Reproduce: `python benchmarks/preset_cost.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out", "presets")) + "`", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="*", default=["l2caf_imagenet", "cams_imagenet", "featvis_imagenet",
                                                         "lavise_coco", "lavise_vg"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=4, help="images per timed call")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls after the warm-up call")
    parser.add_argument("--scorecam-channels", type=int, default=32)
    parser.add_argument("--lavise-batch", type=int, default=16)
    parser.add_argument("--featvis-units", type=int, default=2)
    parser.add_argument("--featvis-image-set", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for preset_name in args.presets:
            preset = yaml.safe_load((PRESETS / f"{preset_name}.yaml").read_text())
            for experiment in preset["experiments"].values():
                n_images = experiment_images(preset, experiment)
                parts = {"attribution": attribution_rows(preset, experiment, n_images, args, Path(tmp))}
                if experiment.get("lavise"):
                    parts["lavise"] = lavise_rows(preset, experiment, n_images, args)
                if experiment.get("featvis"):
                    parts["featvis"] = featvis_rows(preset, experiment, args)
                results[preset_name] = {"images": n_images, "parts": parts}
    write_text(args.out, markdown(results, args))


if __name__ == "__main__":
    main()
