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

    net = _model(args, args.weights)
    layer = args.layer or models.default_layer_of(net)
    dataset = open_dataset(args.dataset_kind, args.dataset_kind, args.root, args.split)
    ids = select_images(dataset, args.limit)
    shard = explain_shard(net, layer, args.method, json.loads(args.params), dataset, ids, args.target,
                          args.batch_size)
    save_shard(args.out, shard)
    print(f"{args.method} on {len(shard.image_ids)} images of {args.root} at {layer}: "
          f"{shard.seconds:.2f} s -> {args.out}")


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
