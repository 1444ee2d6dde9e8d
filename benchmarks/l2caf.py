"""L2-CAF speed: the batched method against the per-image loops of the seed implementations, same device,
one run. Writes a markdown report (default benchmarks/results/l2caf.md).

Baselines, re-implemented from the seeds' structure:
- `port loop`: the PyTorch port (ahmdtaha/l2_caf_pytorch): per image, one forward with a hook caches A,
  then SGD with a LambdaLR linear decay over a hand-written tail (avgpool, flatten, fc), a
  `loss.item()` check every 50 steps.
- `slow loop`: the TF original's slow mode: per image, every iteration runs the whole net with the filter
  applied by a hook. It is measured on fewer images and iterations and scaled linearly to the
  shared iteration count (marked `scaled`), since it costs minutes per image on a CPU.
- `port's own code` (with `--port-dir`, a checkout of ahmdtaha/l2_caf_pytorch, which vislib does not ship): its
  `class_specific.main` run unchanged on the checkout's input images, one class each, in this process, with its
  `.cuda()` calls made no-ops, random weights instead of the download, the stopping check never firing and the
  heatmap figure not drawn; the model is built once (its construction is not timed) and each call times the
  port's image loading, forward pass and loop.
Ours runs with the port's settings (sgd, init ones) for a like-for-like comparison and with the
method's defaults (adam, randn), with stopping disabled so every image takes the same steps, and
once with the spec defaults and its stopping rule.

Run: python benchmarks/l2caf.py [--device cuda] [--iters 100 1000] [--threads 1] [--port-dir DIR] [--out PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from timing import seconds
from torch import nn

from vislib import methods, models
from vislib.io import write_text
from vislib.methods.hooks import frozen_model

VS_PORT_CODE = "vs port's code"


@dataclass(frozen=True)
class Case:
    """One benchmarked setting."""

    model: str
    layer: str
    size: int
    batch: int
    slow_images: int
    slow_iters: int


def port_loop(model: nn.Module, layer: str, images: torch.Tensor, targets: torch.Tensor, iters: int) -> None:
    """The port's per-image loop: cached A, SGD on a unit-norm filter over a hand-written tail."""
    tail = nn.Sequential(model.avgpool, nn.Flatten(), model.fc)
    module = models.resolve_layer(model, layer)
    for i in range(len(images)):
        maps: list[torch.Tensor] = []
        handle = module.register_forward_hook(lambda _m, _i, out, maps=maps: maps.append(out.detach()))
        with torch.no_grad():
            nt = model(images[i:i + 1])
        handle.remove()
        activation = maps[-1]
        filt = nn.Parameter(torch.ones(activation.shape[-2:], device=images.device))
        signs = torch.ones_like(nt)
        signs[0, targets[i]] = -1
        optimizer = torch.optim.SGD([filt], lr=0.5)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: ((0.5 - 1e-5) * (1 - min(step, iters) / iters) + 1e-5) / 0.5)
        prev = torch.tensor(32767.0, device=images.device)
        for it in range(iters):
            loss = (tail(activation * F.normalize(filt, dim=[0, 1])) * signs).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            if it % 50 == 0:
                # The port's rule, with a threshold that never fires (stopping disabled for fairness).
                if torch.abs(loss.item() - prev) < -1:
                    break
                prev = loss.detach()


def slow_loop(model: nn.Module, layer: str, images: torch.Tensor, targets: torch.Tensor, iters: int) -> None:
    """The TF original's slow mode per image: the whole net with a hooked filter every iteration."""
    module = models.resolve_layer(model, layer)
    for i in range(len(images)):
        image = images[i:i + 1]
        shapes: list[torch.Size] = []
        handle = module.register_forward_hook(lambda _m, _i, out, shapes=shapes: shapes.append(out.shape))
        with torch.no_grad():
            nt = model(image)
        handle.remove()
        filt = torch.randn(shapes[0][-2:], device=images.device, requires_grad=True)
        signs = torch.ones_like(nt)
        signs[0, targets[i]] = -1
        optimizer = torch.optim.Adam([filt], lr=0.5)
        handle = module.register_forward_hook(lambda _m, _i, out, filt=filt: out * (filt / filt.norm()))
        for _ in range(iters):
            loss = (model(image) * signs).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        handle.remove()


@contextlib.contextmanager
def port_code(port_dir: Path) -> Iterator[object]:
    """The port's `class_specific` module, importable from `port_dir`, runnable on the CPU with random weights.

    The port calls `.cuda()` unconditionally and builds torchvision models with `pretrained=True` (a download, and
    an argument torchvision has since removed): both are patched for the block, and its models are built once, so
    the timing covers what the port does per image.
    """
    saved = (torch.Tensor.cuda, nn.Module.cuda, sys.path[:], os.getcwd())
    modules_before = set(sys.modules)
    # The port's Config.parse configures logging (root level DEBUG, a file handler): restored afterwards.
    root = logging.getLogger()
    logging_before = (root.level, root.handlers[:], logging.getLogger("L2-CAF").handlers[:])
    built: dict[str, tuple] = {}
    try:
        torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
        nn.Module.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
        sys.path.insert(0, str(port_dir))
        os.chdir(port_dir)  # it reads its images from ./input_imgs
        common = importlib.import_module("common")
        common.models = type("RandomModels", (), {
            name: staticmethod(lambda *_, name=name, **__: getattr(torchvision.models, name)(weights=None))
            for name in ("resnet50", "googlenet", "densenet169")})
        load_architecture = common.load_architecture

        def built_once(arch_name: str) -> tuple:
            if arch_name not in built:
                torch.manual_seed(0)
                built[arch_name] = load_architecture(arch_name)
            return built[arch_name]

        common.load_architecture = built_once
        class_specific = importlib.import_module("class_specific")
        class_specific.heatmap_utils = type("NoFigures", (), {"apply_heatmap": staticmethod(lambda *_, **__: None)})
        yield class_specific
    finally:
        torch.Tensor.cuda, nn.Module.cuda = saved[0], saved[1]  # type: ignore[method-assign]
        sys.path[:] = saved[2]
        os.chdir(saved[3])
        for name in set(sys.modules) - modules_before:  # its `common`, `utils`, `configs`, patched
            del sys.modules[name]
        for handler in set(root.handlers) - set(logging_before[1]):
            handler.close()
        root.setLevel(logging_before[0])
        root.handlers[:] = logging_before[1]
        logging.getLogger("L2-CAF").handlers[:] = logging_before[2]


def port_seconds(port_dir: Path, iters: int) -> tuple[float, int]:
    """Wall seconds of the port's own `class_specific.main` over its input images at `iters` iterations (resnet50,
    one class per image, stopping never firing), and the image count."""
    images = sorted(p.name for p in (port_dir / "input_imgs").iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    with tempfile.TemporaryDirectory() as out, port_code(port_dir) as class_specific:
        config = importlib.import_module("configs.base_config").Config()

        def parsed(image: str) -> object:
            cfg = config.parse(["--output_dir", out + "/", "--max_iter", str(iters), "--lr", "0.5",
                                "--input_img", image, "--cls_logits", "1", "--arch", "resnet50"])
            cfg.min_error = -1.0  # the check `|loss - previous| < min_error` never fires: every image runs `iters`
            return cfg

        class_specific.main(parsed(images[0]))  # builds the model (untimed) and warms up
        # Its argument parsing and logging set-up are not part of the method: done before the clock starts.
        configs = [parsed(image) for image in images]
        tick = time.perf_counter()
        for cfg in configs:
            class_specific.main(cfg)
        return time.perf_counter() - tick, len(images)


def port_commit(port_dir: Path) -> str:
    """The checkout's commit, or a note that it is not a git checkout."""
    head = subprocess.run(["git", "-C", str(port_dir), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return head.stdout.strip() if head.returncode == 0 else "(not a git checkout)"


def run_case(case: Case, iters: int, device: torch.device, port_dir: Path | None) -> list[dict]:
    """Time every implementation on one case; rows of the report table."""
    torch.manual_seed(0)
    model = models.load(case.model, "random", device)
    images = torch.randn(case.batch, 3, case.size, case.size, device=device)
    with torch.no_grad():
        targets = model(images).argmax(1)
    ours = {
        "ours, port settings (sgd, ones)": methods.get("l2caf_specific", optimizer="sgd", init="ones",
                                                       max_iters=iters, stop_threshold=0.0),
        "ours, defaults (adam, randn)": methods.get("l2caf_specific", max_iters=iters, stop_threshold=0.0),
        "ours, oblivious (adam, randn)": methods.get("l2caf_oblivious", max_iters=iters, stop_threshold=0.0),
        "ours, spec defaults with stopping (max 1000)": methods.get("l2caf_specific"),
    }
    # Warm-up: first calls pay for allocator growth and kernel selection.
    methods.get("l2caf_specific", max_iters=2).explain(model, case.layer, images[:2], targets[:2])
    with frozen_model(model):
        port_loop(model, case.layer, images[:1], targets[:1], 2)
        port = seconds(lambda: port_loop(model, case.layer, images, targets, iters), device)
        slow = seconds(lambda: slow_loop(model, case.layer, images[:case.slow_images],
                                         targets[:case.slow_images], case.slow_iters), device)
    rows = [{"implementation": "port loop (per image)", "images": case.batch, "iterations": iters,
             "seconds": port},
            {"implementation": "slow loop (per image, whole net)", "images": case.slow_images,
             "iterations": iters, "seconds": slow * iters / case.slow_iters,
             "note": f"measured at {case.slow_iters} iterations, scaled" if case.slow_iters != iters else ""}]
    if port_dir is not None and case.model == "resnet50" and device.type == "cpu":
        took, count = port_seconds(port_dir, iters)
        rows.append({"implementation": "port's own code (class_specific.py)", "images": count, "iterations": iters,
                     "seconds": took, "note": "its input images, one class each; image loading, forward and loop"})
    for label, method in ours.items():
        results: list[methods.Attribution] = []
        took = seconds(lambda m=method, r=results: r.append(m.explain(model, case.layer, images, targets)), device)
        steps = results[0].extras["iterations"].float()
        row = {"implementation": label, "images": case.batch, "seconds": took, "iterations": iters}
        if method.params["stop_threshold"] > 0:
            row.update(iterations=f"{steps.mean():.0f}",
                       note=f"stopping rule; steps per image {steps.min():.0f}-{steps.max():.0f}")
        rows.append(row)
    for row in rows:
        row["s/image"] = row["seconds"] / row["images"]
    for row in rows:
        port_rows = [r for r in rows if r["implementation"].startswith("port's own")]
        for base, name in ((rows[0], "vs port loop"), (rows[1], "vs slow loop"), *((b, VS_PORT_CODE)
                                                                                  for b in port_rows)):
            row[name] = (f"{base['s/image'] / row['s/image']:.1f}x" if row["iterations"] == iters else "n/a")
    return rows


def main() -> None:
    """Run the cases at each iteration count and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iters", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--demonet-batch", type=int, default=32)
    parser.add_argument("--resnet-batch", type=int, default=8)
    parser.add_argument("--slow-images", type=int, default=2)
    parser.add_argument("--slow-iters", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--port-dir", type=Path, help="a checkout of ahmdtaha/l2_caf_pytorch: also time its own "
                                                          "class_specific.py (CPU, resnet50 rows)")
    parser.add_argument("--out", default="benchmarks/results/l2caf.md")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = f"{platform.machine()} CPU, torch threads: {torch.get_num_threads()}"
    options = {k: v for k, v in vars(args).items() if k not in ("out", "port_dir") and v is not None}
    command = "python benchmarks/l2caf.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in options.items())
    lines = [f"# L2-CAF: batched vs the seeds' per-image loops ({device.type}: {hardware})", "",
             f"`{command}`; torch {torch.__version__}; load average at start {os.getloadavg()[0]:.1f}. "
             "Random weights and inputs, class-specific unless stated, target = predicted class, "
             "stopping disabled except where the note says so, TF32 off. Speedups compare s/image at the "
             "same iteration count."
             + (f" The port's code: `--port-dir` a checkout of ahmdtaha/l2_caf_pytorch at {port_commit(args.port_dir)}."
                if args.port_dir else ""), "", *__doc__.split("\n\n")[1:2], ""]
    for iters in args.iters:
        slow = {"slow_images": args.slow_images, "slow_iters": min(args.slow_iters, iters)}
        cases = [Case("demonet", "features.14", 64, args.demonet_batch, **slow),
                 Case("resnet50", "layer4", 224, args.resnet_batch, **slow)]
        for case in cases:
            rows = run_case(case, iters, device, args.port_dir)
            against_code = any(VS_PORT_CODE in r for r in rows)
            lines += [f"## {case.model} `{case.layer}` at {case.size} px, batch {case.batch}, {iters} iterations",
                      "", "| implementation | images | iterations | seconds | s/image | vs port loop | vs slow loop | "
                      + ("vs port's code | " if against_code else "") + "note |",
                      "|:--|--:|--:|--:|--:|--:|--:|" + ("--:|" if against_code else "") + ":--|"]
            lines += [f"| {r['implementation']} | {r['images']} | {r['iterations']} | {r['seconds']:.3f} | "
                      f"{r['s/image']:.4f} | {r['vs port loop']} | {r['vs slow loop']} | "
                      + (f"{r[VS_PORT_CODE]} | " if against_code else "") + f"{r.get('note', '')} |"
                      for r in rows]
            lines.append("")
            print("\n".join(lines[-len(rows) - 4:]), flush=True)
    lines.append(f"Load average at the end: {os.getloadavg()[0]:.1f}.")
    write_text(Path(args.out), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
