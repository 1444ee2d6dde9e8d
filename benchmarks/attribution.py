"""Attribution speed: every vislib method against pytorch-grad-cam and captum, plus Score-CAM top-k.

Run: python benchmarks/attribution.py [--batch 16] [--size 224] [--repeats 1]
Writes benchmarks/results/attribution.md. Same model, input, batch, device and settings for all.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's Score-CAM prints a progress bar per image

import captum.attr as ca  # noqa: E402
import torch  # noqa: E402
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, GuidedBackpropReLUModel, LayerCAM, ScoreCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

from vislib import methods, models  # noqa: E402
from vislib.data.dataset import CocoFormatDataset  # noqa: E402
from vislib.data.synthetic import ShapesConfig, generate_shapes  # noqa: E402
from vislib.io import write_text  # noqa: E402
from vislib.methods.hooks import capture_layer  # noqa: E402
from vislib.methods.postprocess import normalize_maps  # noqa: E402
from vislib.training import TrainConfig, train_classifier  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "attribution.md"


def images_per_second(run: Callable[[], object], n_images: int, repeats: int) -> float:
    """Best images/s over `repeats` timed calls."""
    best = float("inf")
    for _ in range(repeats):
        tick = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - tick)
    return n_images / best


def pgc_cam(cls, net, layer, x, targets, **attrs):
    """A pytorch-grad-cam CAM call through its public API (maps at input size)."""
    wanted = [ClassifierOutputTarget(int(t)) for t in targets]

    def run():
        with cls(net, target_layers=[layer]) as cam:
            for key, value in attrs.items():
                setattr(cam, key, value)
            return cam(input_tensor=x, targets=wanted)

    return run


def pgc_guided(net, x, targets):
    """pytorch-grad-cam's guided backprop: one image per call, as its API takes."""
    model = GuidedBackpropReLUModel(net, device="cpu")
    return lambda: [model(x[i:i + 1].clone(), int(targets[i])) for i in range(len(x))]


def method_rows(net, x, targets, steps: int, samples: int, repeats: int,
                scorecam_batch: int) -> list[tuple[str, float, float, float | None, float | None, str]]:
    """(method, vislib, vislib's own pass, pytorch-grad-cam, captum, note) in images/s for every method."""
    layer_name = "layer4"
    layer = models.resolve_layer(net, layer_name)
    n = len(x)
    std = 0.15 * float(x.max() - x.min())

    def ours(name, images=x, wanted=targets, **params):
        method = methods.get(name, **params)
        # The public call, and the method's own pass alone: explain() adds a no-grad forward
        # for the predicted class and the target check.
        return (lambda: method.explain(net, layer_name, images, wanted),
                lambda: method._explain(net, layer_name, images, wanted))

    xs, ts = x[:scorecam_batch], targets[:scorecam_batch]
    specs = [
        ("cam", ours("cam"), None, None, "no peer implements plain CAM"),
        ("gradcam", ours("gradcam"), pgc_cam(GradCAM, net, layer, x, targets),
         lambda: ca.LayerGradCam(net, layer).attribute(x, target=targets), ""),
        ("gradcampp", ours("gradcampp"), pgc_cam(GradCAMPlusPlus, net, layer, x, targets), None, ""),
        ("layercam", ours("layercam"), pgc_cam(LayerCAM, net, layer, x, targets), None, ""),
        ("scorecam", ours("scorecam", xs, ts, batch_size=32), pgc_cam(ScoreCAM, net, layer, xs, ts, batch_size=32),
         None, f"exact, batch {scorecam_batch}, masked forwards in batches of 32"),
        ("scorecam top 64", ours("scorecam", xs, ts, batch_size=32, top_channels=64), None, None,
         f"top_channels=64 of 512, batch {scorecam_batch}"),
        ("vanilla_gradient", ours("vanilla_gradient"), None,
         lambda: ca.Saliency(net).attribute(x, target=targets), ""),
        ("guided_backprop", ours("guided_backprop"), pgc_guided(net, x, targets),
         lambda: ca.GuidedBackprop(net).attribute(x, target=targets), "pytorch-grad-cam: one image per call"),
        ("guided_gradcam", ours("guided_gradcam"), None,
         lambda: ca.GuidedGradCam(net, layer).attribute(x, target=targets), ""),
        ("gradient_x_input", ours("gradient_x_input"), None,
         lambda: ca.InputXGradient(net).attribute(x, target=targets), ""),
        ("integrated_gradients", ours("integrated_gradients", steps=steps, batch_size=64), None,
         lambda: ca.IntegratedGradients(net).attribute(x, target=targets, n_steps=steps, method="riemann_middle",
                                                       internal_batch_size=64), f"{steps} steps, 64 per pass"),
        ("smoothgrad", ours("smoothgrad", samples=samples, batch_size=64), None,
         lambda: ca.NoiseTunnel(ca.Saliency(net)).attribute(x, target=targets, nt_type="smoothgrad",
                                                            nt_samples=samples, stdevs=std,
                                                            nt_samples_batch_size=max(1, 64 // n)),
         f"{samples} samples of vanilla_gradient, 64 images per pass"),
    ]
    rows = []
    for name, (run_ours, run_pass), run_pgc, run_captum, note in specs:
        count = scorecam_batch if name.startswith("scorecam") else n
        speeds = [images_per_second(r, count, repeats) if r else None
                  for r in (run_ours, run_pass, run_pgc, run_captum)]
        net.zero_grad(set_to_none=True)  # the peers leave parameter gradients behind
        rows.append((name, *speeds, note))
        print(name, speeds, flush=True)
    return rows


def map_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each pair of maps [N,h,w]."""
    a = normalize_maps(a).flatten(1)
    b = normalize_maps(b).flatten(1)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)


def explain_timed(method, net, layer: str, x: torch.Tensor, targets: torch.Tensor,
                  repeats: int) -> tuple[torch.Tensor, float]:
    """Maps of one call and the images/s of the timed ones."""
    run = functools.partial(method.explain, net, layer, x, targets)
    return run().maps, images_per_second(run, len(x), repeats)


def scorecam_topk_rows(cases, repeats: int) -> list[tuple[str, str, int, int, float, float, float]]:
    """(model, layer, channels, k, speed-up over exact, mean correlation, min correlation) per k."""
    rows = []
    for label, net, layer, x in cases:
        with torch.no_grad():
            targets = net(x).argmax(1)
        exact, exact_speed = explain_timed(methods.get("scorecam", batch_size=64), net, layer, x, targets, repeats)
        with torch.no_grad(), capture_layer(net, layer) as capture:
            net(x[:1])
        channels = capture.activation.shape[1]
        for k in (channels // 4, channels // 8, channels // 16):
            method = methods.get("scorecam", batch_size=64, top_channels=k)
            maps, speed = explain_timed(method, net, layer, x, targets, repeats)
            corr = map_correlation(maps, exact)
            rows.append((label, layer, channels, k, speed / exact_speed, float(corr.mean()), float(corr.min())))
            print(rows[-1], flush=True)
    return rows


def photos(size: int) -> torch.Tensor:
    """Sample photographs of scikit-image in [0,1] at `size`."""
    from skimage import data as skdata

    pictures = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()]
    return torch.stack([torch.nn.functional.interpolate(torch.from_numpy(p).permute(2, 0, 1)[None].float() / 255,
                                                        size=(size, size), mode="bilinear", antialias=True)[0]
                        for p in pictures]).clamp(0, 1)


def trained_demonet(checkpoint: str | None, workdir: Path, n_images: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """The demo net (from `checkpoint`, or trained here on fresh shapes) and preprocessed shapes val images."""
    root = workdir / "shapes"
    generate_shapes(root, ShapesConfig(n_train=2000, n_val=200, image_size=64, seed=0))
    train, val = (CocoFormatDataset("shapes", root, split) for split in ("train", "val"))
    if checkpoint:
        net = models.load("demonet", checkpoint)
    else:
        net = models.load("demonet", "random", num_classes=len(val.label_names))
        history = train_classifier(net, train, val, TrainConfig(epochs=10))
        print(f"demonet trained: val accuracy {history['val_accuracy']:.3f}", flush=True)
    images = val.load_batch(val.image_ids()[:n_images], models.preprocessing_of(net)).images
    return net, images


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--steps", type=int, default=16, help="integrated gradients steps")
    parser.add_argument("--samples", type=int, default=8, help="SmoothGrad samples")
    parser.add_argument("--scorecam-batch", type=int, default=2, help="images for the exact Score-CAM rows")
    parser.add_argument("--demonet", help="demo net checkpoint (default: train one here, about a minute)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    net = models.load("resnet18", "random")
    x = torch.randn(args.batch, 3, args.size, args.size)
    with torch.no_grad():
        targets = net(x).argmax(1)  # also the warm-up of the allocator and kernels
        forward = images_per_second(lambda: net(x), len(x), args.repeats)
    ca.Saliency(net).attribute(x, target=targets)  # warm-up of the backward kernels
    rows = method_rows(net, x, targets, args.steps, args.samples, args.repeats, args.scorecam_batch)

    with tempfile.TemporaryDirectory() as workdir:
        demo, demo_images = trained_demonet(args.demonet, Path(workdir), args.batch)
    lite = models.load("efficientnet_lite0", "IMAGENET")
    topk = scorecam_topk_rows([
        ("demonet (trained, shapes val)", demo, "features.14", demo_images),
        ("demonet (random, shapes val)", models.load("demonet", "random"), "features.14", demo_images),
        ("resnet18 (random)", net, "layer4", x[:args.scorecam_batch]),
        ("efficientnet_lite0 (ImageNet, photos)", lite, "_swish",
         models.preprocessing_of(lite).normalize(photos(224))[:args.scorecam_batch]),
    ], args.repeats)

    lines = [
        "# Attribution speed",
        "",
        f"resnet18 (random weights), {args.size}x{args.size}, batch {args.batch}, CPU "
        f"({torch.get_num_threads()} threads, {platform.processor() or platform.machine()}), "
        f"torch {torch.__version__}; best of {args.repeats} timed call(s), after a warm-up forward and backward. "
        "Layer `layer4` for layer methods. vislib times the public `explain` (it includes the "
        "forward pass that finds the predicted class) and, separately, the method's own pass (`_explain`, "
        "targets given). Peers through their public APIs with the same settings.",
        "",
        f"Forward pass only (the limit to compare with): **{forward:.2f} images/s**.",
        "",
        "| method | vislib explain img/s | vislib method pass img/s | pytorch-grad-cam img/s | captum img/s "
        "| explain / faster peer | method pass / faster peer | note |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, ours, own_pass, pgc, cap, note in rows:
        best_peer = max((p for p in (pgc, cap) if p is not None), default=None)
        ratios = [f"{v / best_peer:.2f}x" if best_peer else "—" for v in (ours, own_pass)]
        lines.append(f"| {name} | {fmt(ours)} | {fmt(own_pass)} | {fmt(pgc)} | {fmt(cap)} | {ratios[0]} "
                     f"| {ratios[1]} | {note} |")
    lines += [
        "",
        "## Score-CAM: top channels against exact",
        "",
        "`top_channels=k` scores only the k channels with the largest mean activation; the others get the "
        "mean weight of the scored ones. Speed-up over "
        "exact Score-CAM on the same images; Pearson correlation of the normalised native maps with "
        "the exact ones (mean and minimum over the images).",
        "",
        "| model | layer | channels | k | speed-up | mean corr | min corr |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, layer, channels, k, speedup, mean_corr, min_corr in topk:
        lines.append(f"| {label} | {layer} | {channels} | {k} | {speedup:.1f}x | {mean_corr:.3f} | {min_corr:.3f} |")
    write_text(RESULTS, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
