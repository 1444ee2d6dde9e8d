"""`vislib ...`: the workflow's steps without Snakemake, and what vislib offers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vislib.errors import VislibError


def _model(args: argparse.Namespace, weights: str):
    """The network the command line names: an architecture, `--factory` or `--torchscript`."""
    import json

    from vislib import models
    from vislib.pipeline import resolve_device

    try:
        factory_args = json.loads(args.factory_args)
    except json.JSONDecodeError as exc:
        raise VislibError(f"--factory-args must be a JSON object, e.g. '{{\"num_classes\": 10}}' ({exc})") from None
    if not (args.model or args.factory or args.torchscript):
        raise VislibError("name the model: an architecture, or --factory, or --torchscript")
    spec = {"arch": args.model, "factory": args.factory, "torchscript": args.torchscript,
            "factory_args": factory_args, "weights": weights, "num_classes": args.num_classes,
            "input_size": args.input_size}
    return models.load_spec({key: value for key, value in spec.items() if value}, resolve_device(args.device))


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--factory", default=None, help="your network: package.module:function or file.py:function")
    parser.add_argument("--factory-args", default="{}", help="keyword arguments of --factory, as JSON")
    parser.add_argument("--torchscript", default=None, help="your network as a TorchScript file")
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--input-size", type=int, default=None, help="side of the square input")
    parser.add_argument("--device", default="cpu")


def _explain(args: argparse.Namespace) -> None:
    import json

    from vislib import models
    from vislib.data import open_dataset
    from vislib.io import save_shard
    from vislib.pipeline import explain_shard, select_images

    params = json.loads(args.params)
    if args.convergence_gif:
        params = _recording(args.method, params)
    classes = _parse_classes(args.classes) if args.classes else None
    net = _model(args, args.weights)
    layer = args.layer or models.default_layer_of(net)
    dataset = open_dataset(args.dataset_kind, args.dataset_kind, args.root, args.split)
    ids = select_images(dataset, args.limit)
    if classes is None:
        shard = explain_shard(net, layer, args.method, params, dataset, ids, args.target, args.batch_size)
    else:
        shard = _explain_classes(net, layer, args.method, params, dataset, ids, classes, args.batch_size)
    save_shard(args.out, shard)
    rows = "images" if classes is None else "(image, class) rows"
    print(f"{args.method} on {len(shard.image_ids)} {rows} of {args.root} at {layer}: "
          f"{shard.seconds:.2f} s -> {args.out}")
    if args.convergence_gif:
        frames = _convergence_gif(args.convergence_gif, net, dataset, shard, params["record_every"], args.gif_tiles)
        print(f"convergence of the first {min(args.gif_tiles, len(shard.image_ids))} rows, {frames} frames -> "
              f"{args.convergence_gif}")


# The step between convergence frames when --convergence-gif is given and --params sets no record_every.
_DEFAULT_RECORD_EVERY = 10


def _recording(method: str, params: dict) -> dict:
    """`params` with `record_every` set (the default when not given); VislibError for a method that records none."""
    import dataclasses

    from vislib.methods import METHODS

    def records(name: str) -> bool:
        return "record_every" in {f.name for f in dataclasses.fields(METHODS[name].Params)}

    if not records(method):
        able = [name for name in METHODS.names() if records(name)]
        raise VislibError(f"--convergence-gif needs a method that records its convergence (record_every): one of "
                          f"{able}; {method!r} has none")
    params = {"record_every": _DEFAULT_RECORD_EVERY, **params}
    if params["record_every"] == 0:
        raise VislibError("--convergence-gif needs record_every > 0 in --params (or leave it out: "
                          f"{_DEFAULT_RECORD_EVERY})")
    return params


def _parse_classes(text: str) -> list[int] | int:
    """--classes as a list of class indices ('3,7,12'), or the count K of 'top:K'."""
    try:
        if text.startswith("top:"):
            count = int(text[len("top:"):])
            if count < 1:
                raise ValueError(text)
            return count
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise VislibError(f"--classes must be class indices such as '3,7,12' or 'top:K' with K >= 1 (each image's "
                          f"K top classes), got {text!r}") from None


def _explain_classes(net, layer: str, method_name: str, params: dict, dataset, ids: list[int],
                     classes: list[int] | int, batch_size: int):
    """A heatmap shard with one row per (image, class): the listed classes of every image, or its top K.

    Methods with `explain_classes` (L2-CAF) explain every class of a batch in one call; any other method explains
    the batch repeated once per class, which gives the same maps, since every method explains each image
    independently of its batch.
    """
    import time

    import numpy as np
    import torch

    from vislib import methods, models
    from vislib.io import HeatmapShard
    from vislib.methods.base import fast_layout

    method = methods.get(method_name, **params)
    device = next(net.parameters()).device
    parts: dict[str, list] = {"maps": [], "image_ids": [], "targets": [], "predicted": []}
    extras: dict[str, list] = {}
    failures: dict[int, str] = {}
    seconds = 0.0
    for batch in dataset.batches(ids, batch_size, models.preprocessing_of(net)):
        failures.update(batch.failures)
        if not batch.samples:
            continue
        images = batch.images.to(device)
        if isinstance(classes, int):
            with torch.no_grad():
                targets = net(fast_layout(images)).topk(classes, dim=1).indices
        else:
            targets = torch.tensor(classes, device=device).expand(len(images), -1)
        n, per_image = targets.shape
        tick = time.perf_counter()
        explain_classes = getattr(method, "explain_classes", None)
        if explain_classes is not None:
            result = explain_classes(net, layer, images, targets)
            predicted = result.predicted.repeat_interleave(per_image)
        else:
            result = method.explain(net, layer, images.repeat_interleave(per_image, 0), targets.reshape(-1))
            predicted = result.predicted
        seconds += time.perf_counter() - tick
        parts["maps"].append(result.maps.reshape(n * per_image, *result.maps.shape[-2:]).float().cpu().numpy())
        parts["image_ids"].append(np.repeat(np.asarray(batch.image_ids, np.int64), per_image))
        parts["targets"].append(targets.reshape(-1).cpu().numpy())
        parts["predicted"].append(predicted.cpu().numpy())
        for key, value in result.extras.items():
            value = torch.as_tensor(value)
            # explain_classes gives extras [n,T,...], the repeated batch [n*T,...]: one row per (image, class).
            lead = 2 if explain_classes is not None else 1
            extras.setdefault(key, []).append(value.reshape(n * per_image, *value.shape[lead:]).cpu().numpy())
    if not parts["maps"]:
        raise VislibError(f"none of the {len(ids)} images of {dataset.root!s} could be decoded")
    return HeatmapShard(maps=np.concatenate(parts["maps"]), image_ids=np.concatenate(parts["image_ids"]),
                        targets=np.concatenate(parts["targets"]), predicted=np.concatenate(parts["predicted"]),
                        seconds=seconds, failed_ids=np.array(sorted(failures), np.int64),
                        failed_reasons=[failures[i] for i in sorted(failures)],
                        extras={key: np.concatenate(value) for key, value in extras.items()})


def _convergence_gif(path: str, net, dataset, shard, record_every: int, tiles: int) -> int:
    """Draw the first `tiles` rows' extras['convergence'] over their images; the number of GIF frames."""
    from vislib import models
    from vislib.figures import convergence_gif

    rows = min(tiles, len(shard.image_ids))
    wanted = [int(i) for i in dict.fromkeys(shard.image_ids[:rows].tolist())]
    preprocessing = models.preprocessing_of(net)
    batch = dataset.load_batch(wanted, preprocessing, with_masks=False)
    pixels = preprocessing.denormalize(batch.images).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    position = {image_id: k for k, image_id in enumerate(batch.image_ids)}
    images = pixels[[position[int(i)] for i in shard.image_ids[:rows]]]
    captions = [f"{int(i)}: class {int(t)}" for i, t in zip(shard.image_ids[:rows], shard.targets[:rows],
                                                             strict=True)]
    return convergence_gif(path, shard.extras["convergence"][:rows], images, record_every, captions)


def _summarize(args: argparse.Namespace) -> None:
    import pandas as pd

    from vislib.aggregate import summary_markdown

    path = Path(args.experiment_dir) / "summary.parquet"
    if not path.exists():
        raise VislibError(f"{str(path)!r} does not exist; run the workflow for this experiment first")
    print(summary_markdown(pd.read_parquet(path), Path(args.experiment_dir).name), end="")


def _layers(args: argparse.Namespace) -> None:
    from vislib import models

    net = _model(args, args.weights)
    layouts = models.layer_layouts(net)
    default = models.default_layer_of(net)
    for name in models.layer_names(net):
        marks = [mark for mark, on in (("spatial", name in layouts), ("default", name == default)) if on]
        # Tokens and channels-last maps say so: methods read them as [N,C,h,w] (docs/methods.md).
        layout = layouts[name].describe() if name in layouts else ""
        print(f"{name}\t{' '.join(marks)}{f' ({layout})' if layout else ''}")


def _list(args: argparse.Namespace) -> None:
    from vislib import catalog

    kinds = catalog.KINDS if args.kind == "all" else (args.kind,)
    if args.markdown:
        print(catalog.as_markdown(kinds), end="")
        return
    for kind in kinds:
        if len(kinds) > 1:
            print(f"# {catalog.TITLES[kind]}")
        print(catalog.as_text(kind), end="")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `vislib` command."""
    parser = argparse.ArgumentParser(prog="vislib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    explain = sub.add_parser("explain", help="run one attribution method over a prepared dataset split")
    explain.add_argument("--model", default=None, help="architecture: a registered name, any torchvision "
                                                       "classification model or timm:<name>")
    explain.add_argument("--weights", default="random", help="'random', a pretrained name or a checkpoint path")
    _add_model_arguments(explain)
    explain.add_argument("--layer", default=None, help="dotted layer name (default: the model's last conv)")
    explain.add_argument("--method", required=True)
    explain.add_argument("--params", default="{}", help="method parameters as JSON")
    explain.add_argument("--dataset-kind", required=True)
    explain.add_argument("--root", required=True, help="dataset directory (as prepared by the workflow)")
    explain.add_argument("--split", default="val")
    explain.add_argument("--limit", type=int, default=None)
    explain.add_argument("--target", default="label", choices=["label", "predicted"])
    explain.add_argument("--classes", default=None, help="explain these classes of every image instead of --target: "
                                                         "'3,7,12', or 'top:K' for each image's K top classes; the "
                                                         "shard holds one row per (image, class)")
    explain.add_argument("--convergence-gif", default=None, metavar="PATH",
                         help="also write the optimisation's convergence as an animated GIF (methods with "
                              f"record_every: l2caf_*; record_every {_DEFAULT_RECORD_EVERY} unless --params sets it)")
    explain.add_argument("--gif-tiles", type=int, default=16, help="(image, class) rows drawn in that GIF")
    explain.add_argument("--batch-size", type=int, default=32)
    explain.add_argument("--out", required=True, help="heatmap shard to write (.npz)")
    explain.set_defaults(func=_explain)

    summarize = sub.add_parser("summarize", help="print the summary table of results/<experiment>")
    summarize.add_argument("experiment_dir")
    summarize.set_defaults(func=_summarize)

    layers = sub.add_parser("layers", help="list the layer names of a model: which have a spatial output, which is "
                                           "the default")
    layers.add_argument("model", nargs="?", default=None, help="architecture (or use --factory / --torchscript)")
    layers.add_argument("--weights", default="random", help="'random', a pretrained name or a checkpoint path")
    _add_model_arguments(layers)
    layers.set_defaults(func=_layers)

    listing = sub.add_parser("list", help="list the registered methods, metrics, featvis methods, models or dataset "
                                          "kinds with their parameters")
    listing.add_argument("kind", choices=["methods", "metrics", "featvis", "models", "datasets", "all"])
    listing.add_argument("--markdown", action="store_true", help="as the Markdown of docs/parameters.md")
    listing.set_defaults(func=_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors print one line, not a traceback."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except VislibError as exc:
        print(f"vislib: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
