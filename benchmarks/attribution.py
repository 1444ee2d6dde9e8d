"""Attribution speed: every vislib method against pytorch-grad-cam and captum, plus Score-CAM top-k.

Run: python benchmarks/attribution.py [--batch 16] [--size 224] [--repeats 3] [--demonet CHECKPOINT] [--device cuda]
Writes benchmarks/results/attribution.md (--out). Same model, input, batch, device and settings for all.
`--vit-only` measures only the vision-transformer rows (vit_b_16) and replaces their section of that file.
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's Score-CAM prints a progress bar per image

import captum.attr as ca  # noqa: E402
import pytorch_grad_cam  # noqa: E402
import torch  # noqa: E402
import torchcam.methods  # noqa: E402
from captum._utils.models.linear_model import SkLearnRidge  # noqa: E402
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, GuidedBackpropReLUModel, LayerCAM, ScoreCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform  # noqa: E402
from timing import best_seconds, device_name, synchronize  # noqa: E402

from vislib import methods, models  # noqa: E402
from vislib.data.dataset import CocoFormatDataset  # noqa: E402
from vislib.data.photos import write_photos  # noqa: E402
from vislib.data.synthetic import ShapesConfig, generate_shapes  # noqa: E402
from vislib.io import write_text  # noqa: E402
from vislib.methods.hooks import frozen_model  # noqa: E402
from vislib.methods.postprocess import normalize_maps  # noqa: E402
from vislib.training import TrainConfig, train_classifier  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "attribution.md"
DEVICE = torch.device("cpu")  # --device: where every model, batch and timing runs
PGC, TORCHCAM, CAPTUM = "pytorch-grad-cam", "torchcam", "captum"
PEERS = (PGC, TORCHCAM, CAPTUM)


class Row(NamedTuple):
    """One method's speed in images/s: vislib's, its share of the method's limit (None: no limit stated), and each
    peer's that implements it, in the default layout and (where measured) given a channels-last model and input."""

    method: str
    vislib: float
    peers: dict[str, tuple[float, float | None]]
    note: str
    share: float | None = None


class Passes(NamedTuple):
    """The passes a method cannot avoid, per image: forwards and forward+backward passes (the limit it runs at, at
    best, is one over their summed times)."""

    forwards: int = 0
    gradients: int = 0

    def limit(self, forward_ips: float, gradient_ips: float) -> float:
        """Images/s of these passes alone, from the speed of one forward and one forward+backward pass."""
        return 1 / (self.forwards / forward_ips + self.gradients / gradient_ips)


class PeerInputs(NamedTuple):
    """What a peer is called with: the model, its `layer4` module, the batch and the few-image batch."""

    net: torch.nn.Module
    layer: torch.nn.Module
    x: torch.Tensor
    xs: torch.Tensor


# The gradient passes of the multi-pass gradient methods see only perturbed copies; the images' own logits come
# from one more forward pass, which the limit counts.
UNPERTURBED = "vislib also runs one forward pass of the images (their predicted classes), which captum skips"
WORKFLOW_DEMONET = Path(__file__).parent.parent / "results" / "models" / "demonet" / "model.pt"


def pgc_cam(cls, net, layer, x, targets, reshape_transform=None, **attrs):
    """A pytorch-grad-cam CAM call through its public API (maps at input size)."""
    wanted = [ClassifierOutputTarget(int(t)) for t in targets]

    def run():
        with cls(net, target_layers=[layer], reshape_transform=reshape_transform) as cam:
            for key, value in attrs.items():
                setattr(cam, key, value)
            return cam(input_tensor=x, targets=wanted)

    return run


def torchcam_cam(cls, net, layer_name, x, targets, **options):
    """A torchcam CAM call through its public API: hook the layer, run the model, the CAM from its scores (maps at
    the layer's resolution, normalised)."""

    def run():
        with cls(net, layer_name, **options) as cam:
            return cam(targets.tolist(), net(x))

    return run


def pgc_guided(net, x, targets):
    """pytorch-grad-cam's guided backprop: one image per call, as its API takes."""
    model = GuidedBackpropReLUModel(net, device=DEVICE)
    return lambda: [model(x[i:i + 1].clone(), int(targets[i])) for i in range(len(x))]


def channels_last_inputs(net: torch.nn.Module, x: torch.Tensor, xs: torch.Tensor) -> PeerInputs:
    """A channels-last copy of the model and of the batches, as a user would hand a peer them (one line each)."""
    net_cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
    return PeerInputs(net_cl, net_cl.layer4, x.contiguous(memory_format=torch.channels_last),
                      xs.contiguous(memory_format=torch.channels_last))


def pass_speeds(net: torch.nn.Module, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Images/s of one channels-last forward pass and of one forward+backward pass to the input (vislib's layout)."""
    channels_last = x.contiguous(memory_format=torch.channels_last)
    seconds = best_seconds({"forward": functools.partial(forward_only, net, channels_last),
                            "gradient": functools.partial(input_gradient, net, channels_last)}, repeats, DEVICE)
    return len(x) / seconds["forward"], len(x) / seconds["gradient"]


def method_rows(net, x, targets, args) -> tuple[float, float, list[Row]]:
    """The pass speeds, and every vislib method's speed and its peers' (both layouts) where they implement it."""
    layer_name = "layer4"
    steps, samples, repeats = args.steps, args.samples, args.repeats
    std = 0.15 * float(x.max() - x.min())
    xs, ts = x[:args.scorecam_batch], targets[:args.scorecam_batch]
    # lime and kernel_shap on a 7x7 grid (SLIC finds one superpixel in noise), handed to captum as its feature mask.
    grid_masks = methods.get("lime", segments="grid", superpixels=49).superpixels(net, xs).segments[:, None]
    # Gradient passes of one batch (16 images by default): on this CPU, 64-image passes ran 9-15% slower per image.
    per_pass = len(x)
    forward_ips, gradient_ips = pass_speeds(net, x, repeats)

    def ours(name, images=x, wanted=targets, **params):
        method = methods.get(name, **params)
        return lambda: method.explain(net, layer_name, images, wanted)

    def gradient_shap_baselines(p):
        return methods.get("gradient_shap", samples=samples).draws(p.net, p.x).baselines

    one_forward, one_gradient = Passes(forwards=1), Passes(gradients=1)
    scored = Passes(forwards=1 + 512)
    specs = [
        ("cam", ours("cam"), lambda p: {}, repeats, "no peer implements plain CAM", one_forward),
        ("gradcam", ours("gradcam"), lambda p: {PGC: pgc_cam(GradCAM, p.net, p.layer, p.x, targets),
                                               CAPTUM: lambda: ca.LayerGradCam(p.net, p.layer).attribute(
                                                   p.x, target=targets)},
         repeats, "", one_forward),
        ("gradcampp", ours("gradcampp"), lambda p: {PGC: pgc_cam(GradCAMPlusPlus, p.net, p.layer, p.x, targets)},
         repeats, "", one_forward),
        ("layercam", ours("layercam"), lambda p: {PGC: pgc_cam(LayerCAM, p.net, p.layer, p.x, targets)}, repeats, "",
         one_forward),
        ("hirescam", ours("hirescam"),
         lambda p: {PGC: pgc_cam(pytorch_grad_cam.HiResCAM, p.net, p.layer, p.x, targets)}, repeats, "",
         one_forward),
        ("xgradcam", ours("xgradcam"),
         lambda p: {PGC: pgc_cam(pytorch_grad_cam.XGradCAM, p.net, p.layer, p.x, targets),
                    TORCHCAM: torchcam_cam(torchcam.methods.XGradCAM, p.net, layer_name, p.x, targets)}, repeats, "",
         one_forward),
        ("gradcam_elementwise", ours("gradcam_elementwise"),
         lambda p: {PGC: pgc_cam(pytorch_grad_cam.GradCAMElementWise, p.net, p.layer, p.x, targets)}, repeats, "",
         one_forward),
        ("eigencam", ours("eigencam"),
         lambda p: {PGC: pgc_cam(pytorch_grad_cam.EigenCAM, p.net, p.layer, p.x, targets)}, repeats,
         "forward pass only", one_forward),
        ("eigengradcam", ours("eigengradcam"),
         lambda p: {PGC: pgc_cam(pytorch_grad_cam.EigenGradCAM, p.net, p.layer, p.x, targets)}, repeats, "",
         one_forward),
        ("smoothgradcampp", ours("smoothgradcampp", samples=4, noise_std=0.3, batch_size=len(x)),
         lambda p: {TORCHCAM: torchcam_cam(torchcam.methods.SmoothGradCAMpp, p.net, layer_name, p.x, targets,
                                           num_samples=4, std=0.3)},
         repeats, "4 noisy copies, noise std 0.3, a batch of noisy images per pass", Passes(forwards=4)),
        # softmax over channels: pytorch-grad-cam's rule, so both compute the same maps.
        ("scorecam (exact)", ours("scorecam", xs, ts, batch_size=32, softmax="channels"),
         lambda p: {PGC: pgc_cam(ScoreCAM, p.net, p.layer, p.xs, ts, batch_size=32)}, 1,
         f"{args.scorecam_batch} images (512 masked forwards each), 32 masked images per pass", scored),
        ("scorecam top_channels=64", ours("scorecam", xs, ts, batch_size=32, top_channels=64, softmax="channels"),
         lambda p: {}, 1, f"{args.scorecam_batch} images, 64 of 512 channels scored; no peer has top-k",
         Passes(forwards=1 + 64)),
        ("ablationcam (exact)", ours("ablationcam", xs, ts, batch_size=32),
         lambda p: {PGC: pgc_cam(pytorch_grad_cam.AblationCAM, p.net, p.layer, p.xs, ts, batch_size=32)}, 1,
         f"{args.scorecam_batch} images, 512 ablated copies each, 32 per pass; vislib runs them through the net "
         "after layer4 (limit: its one forward), pytorch-grad-cam through the whole net", one_forward),
        # torchcam's rule (softmax over channels of the averaged logits) and 2 copies per mask keep the rows short.
        ("sscam (exact)", ours("sscam", xs, ts, batch_size=32, softmax="channels", samples=2, noise_std=2.0),
         lambda p: {TORCHCAM: torchcam_cam(torchcam.methods.SSCAM, p.net, layer_name, p.xs, ts, batch_size=32,
                                           num_samples=2, std=2.0)}, 1,
         f"{args.scorecam_batch} images, 2 noisy copies of each of 512 masks (noise std 2), 32 per pass",
         Passes(forwards=1 + 1024)),
        ("iscam (exact)", ours("iscam", xs, ts, batch_size=32, softmax="channels", steps=2),
         lambda p: {TORCHCAM: torchcam_cam(torchcam.methods.ISCAM, p.net, layer_name, p.xs, ts, batch_size=32,
                                           num_samples=2)}, 1,
         f"{args.scorecam_batch} images, 2 scaled copies of each of 512 masks, 32 per pass",
         Passes(forwards=1 + 1024)),
        ("vanilla_gradient", ours("vanilla_gradient"),
         lambda p: {CAPTUM: lambda: ca.Saliency(p.net).attribute(p.x, target=targets)}, repeats, "", one_gradient),
        ("guided_backprop", ours("guided_backprop"),
         lambda p: {PGC: pgc_guided(p.net, p.x, targets),
                    CAPTUM: lambda: ca.GuidedBackprop(p.net).attribute(p.x, target=targets)},
         repeats, "pytorch-grad-cam: one image per call", one_gradient),
        ("guided_gradcam", ours("guided_gradcam"),
         lambda p: {CAPTUM: lambda: ca.GuidedGradCam(p.net, p.layer).attribute(p.x, target=targets)}, repeats,
         "vislib: one forward pass, a plain backward pass to layer4 and a guided one to the input", one_gradient),
        ("gradient_x_input", ours("gradient_x_input"),
         lambda p: {CAPTUM: lambda: ca.InputXGradient(p.net).attribute(p.x, target=targets)}, repeats, "",
         one_gradient),
        # captum's LRP runs on resnet18 but not correctly (its relevance summed to -9e9 for a logit of 0.64 with
        # random weights: the residual `+=` and the reused ReLUs defeat its hooks): no peer; vgg16, alexnet: methods.md.
        ("lrp", ours("lrp"), lambda p: {}, repeats, "epsilon 0.01, zB first layer, batch norms folded; captum's LRP "
                                                    "is wrong on resnets (skip connections)", one_gradient),
        ("lrp alpha_beta", ours("lrp", rule="alpha_beta"), lambda p: {}, repeats, "alpha 1, beta 0, zB first layer",
         one_gradient),
        ("integrated_gradients", ours("integrated_gradients", steps=steps, batch_size=per_pass),
         lambda p: {CAPTUM: lambda: ca.IntegratedGradients(p.net).attribute(
             p.x, target=targets, n_steps=steps, method="riemann_middle", internal_batch_size=per_pass)},
         max(1, repeats - 1), f"{steps} steps, riemann_middle, {per_pass} images per pass; {UNPERTURBED}",
         Passes(gradients=steps, forwards=1)),
        ("smoothgrad", ours("smoothgrad", samples=samples, batch_size=per_pass),
         lambda p: {CAPTUM: lambda: ca.NoiseTunnel(ca.Saliency(p.net)).attribute(
             p.x, target=targets, nt_type="smoothgrad", nt_samples=samples, stdevs=std,
             nt_samples_batch_size=max(1, per_pass // len(x)))},
         max(1, repeats - 1), f"{samples} samples of vanilla_gradient, {per_pass} images per pass; {UNPERTURBED}",
         Passes(gradients=samples, forwards=1)),
        ("deeplift", ours("deeplift"), lambda p: {}, repeats,
         "zero baseline; captum's DeepLift refuses torchvision's resnet18 (one ReLU module reused per block): "
         "against it on a copy with one ReLU per use, see methods.md", one_gradient),
        ("gradient_shap", ours("gradient_shap", samples=samples, stdev=std, batch_size=per_pass),
         lambda p: {CAPTUM: lambda: ca.GradientShap(p.net).attribute(
             p.x, target=targets, n_samples=samples, stdevs=std, baselines=gradient_shap_baselines(p))},
         max(1, repeats - 1), f"{samples} samples, {samples} uniform baselines, {per_pass} images per pass; "
         f"{UNPERTURBED}", Passes(gradients=samples, forwards=1)),
        ("deconvolution", ours("deconvolution"),
         lambda p: {CAPTUM: lambda: ca.Deconvolution(p.net).attribute(p.x, target=targets)}, repeats, "",
         one_gradient),
        ("positive_saliency", ours("positive_saliency"),
         lambda p: {CAPTUM: lambda: ca.Saliency(p.net).attribute(p.x, target=targets, abs=False).clamp_min(0)},
         repeats, "captum: signed Saliency, its positive part", one_gradient),
        ("layer_guided_backprop", ours("layer_guided_backprop"), lambda p: {}, repeats,
         "layer4, each image's most active channel; the original runs one image per call (not installed)",
         one_gradient),
        ("fullgrad", ours("fullgrad"),
         lambda p: {PGC: pgc_cam(pytorch_grad_cam.FullGrad, p.net, p.layer, p.x, targets)}, repeats,
         "every conv and batch-norm bias", one_gradient),
        ("l2caf_oblivious", ours("l2caf_oblivious"), lambda p: {}, repeats,
         "defaults (max 1000 iterations, stopping rule); no peer: see l2caf.md for the seeds' loops", one_forward),
        ("l2caf_specific", ours("l2caf_specific"), lambda p: {}, repeats, "as l2caf_oblivious", one_forward),
        ("occlusion", ours("occlusion", xs, ts, window=32, stride=16, batch_size=64),
         lambda p: {CAPTUM: lambda: ca.Occlusion(p.net).attribute(
             p.xs, sliding_window_shapes=(3, 32, 32), strides=(3, 16, 16), baselines=0, target=ts,
             perturbations_per_eval=max(1, 64 // len(xs)))},
         1, f"{args.scorecam_batch} images, window 32, stride 16 (170 forwards each), 64 images per pass",
         Passes(forwards=1 + 169)),
        ("rise", ours("rise", xs, ts, masks=500, batch_size=64), lambda p: {}, 1,
         f"{args.scorecam_batch} images, 500 masks (501 forwards each); no peer implements RISE",
         Passes(forwards=501)),
        ("lime", ours("lime", xs, ts, samples=200, segments="grid", superpixels=49, batch_size=64),
         lambda p: {CAPTUM: lambda: ca.Lime(p.net, interpretable_model=SkLearnRidge(alpha=1.0)).attribute(
             p.xs, target=ts, baselines=0, feature_mask=grid_masks, n_samples=200, perturbations_per_eval=64)},
         1, f"{args.scorecam_batch} images, 200 samples (201 forwards each), 7x7 grid superpixels, ridge 1, "
            "64 images per pass", Passes(forwards=201)),
        ("kernel_shap", ours("kernel_shap", xs, ts, samples=200, segments="grid", superpixels=49, batch_size=64),
         lambda p: {CAPTUM: lambda: ca.KernelShap(p.net).attribute(
             p.xs, target=ts, baselines=0, feature_mask=grid_masks, n_samples=200, perturbations_per_eval=64)},
         1, f"{args.scorecam_batch} images, 200 samples (200 forwards each), as lime", Passes(forwards=200)),
    ]
    # models.load gives vislib channels-last weights on CPU; the peers get the default layout and, as a user could
    # hand them, a channels-last model and batch.
    default_net = copy.deepcopy(net).to(memory_format=torch.contiguous_format)
    default = PeerInputs(default_net, default_net.layer4, x, xs)
    channels_last = channels_last_inputs(net, x, xs)
    rows = []
    for name, run_ours, peers_of, rounds, note, passes in specs:
        few_images = ("scorecam", "ablationcam", "sscam", "iscam", "occlusion", "rise", "lime", "kernel_shap")
        count = args.scorecam_batch if name.startswith(few_images) else len(x)
        runs = {"vislib": run_ours}
        for layout, inputs in (("default", default), ("channels_last", channels_last)):
            runs.update({f"{peer} {layout}": run for peer, run in peers_of(inputs).items()})
        seconds = best_seconds(runs, rounds, DEVICE)
        for model in (default_net, channels_last.net):
            model.zero_grad(set_to_none=True)  # the peers leave parameter gradients behind
        peers = {peer: (count / seconds[f"{peer} default"], count / seconds[f"{peer} channels_last"])
                 for peer in peers_of(default)}
        ips = count / seconds["vislib"]
        rows.append(Row(name, ips, peers, note, ips / passes.limit(forward_ips, gradient_ips)))
        print(rows[-1], flush=True)
    return forward_ips, gradient_ips, rows


VIT_SECTION = "## Vision transformer (vit_b_16)"


def vit_rows(args) -> tuple[float, list[Row]]:
    """Forward img/s and the method rows on torchvision's vit_b_16."""
    torch.manual_seed(0)
    net = models.load("vit_b_16", "random", DEVICE)
    # torchvision starts the head at zeros (every gradient 0): a seeded random head, as tests/methods/test_vit.py.
    torch.nn.init.normal_(net.heads.head.weight, std=0.02)
    layer_name = net.vislib_default_layer
    layer = models.resolve_layer(net, layer_name)
    x = torch.randn(args.vit_batch, 3, 224, 224, device=DEVICE)
    with torch.no_grad():
        targets = net(x).argmax(1)
        forward = len(x) / best_seconds({"forward": lambda: net(x)}, args.repeats, DEVICE)["forward"]

    def ours(name):
        method = methods.get(name)
        return lambda: method.explain(net, layer_name, x, targets)

    specs = [
        ("gradcam", ours("gradcam"), {PGC: pgc_cam(GradCAM, net, layer, x, targets, vit_reshape_transform)},
         f"`{layer_name}`; pytorch-grad-cam with its `vit_reshape_transform`"),
        ("vanilla_gradient", ours("vanilla_gradient"), {CAPTUM: lambda: ca.Saliency(net).attribute(x, target=targets)},
         ""),
    ]
    rows = []
    for name, run_ours, peers, note in specs:
        seconds = best_seconds({"vislib": run_ours, **peers}, args.repeats, DEVICE)
        net.zero_grad(set_to_none=True)
        rows.append(Row(name, len(x) / seconds["vislib"], {peer: (len(x) / seconds[peer], None) for peer in peers},
                        note))
        print(rows[-1], flush=True)
    return forward, rows


def vit_section(forward: float, rows, args) -> list[str]:
    """The results section of the vit_b_16 rows."""
    lines = [
        VIT_SECTION,
        "",
        f"torchvision's vit_b_16 (random weights, a seeded random head), 224x224 noise images, batch "
        f"{args.vit_batch}, {device_description()}, torch {torch.__version__}; load average at the end "
        f"{os.getloadavg()[0]:.1f}. Best of {args.repeats} rounds, the implementations alternating within a round; "
        "targets given (the predicted classes). Layer methods read the default layer, the last block's first norm, "
        "whose tokens vislib views as a [N,768,14,14] map (docs/methods.md, Vision transformers). These rows alone: "
        f"`python benchmarks/attribution.py --vit-only --vit-batch {args.vit_batch} --repeats {args.repeats}`.",
        "",
        f"Forward pass only: **{forward:.2f} images/s**.",
        "",
        *TABLE_HEADER,
    ]
    return lines + [table_row(row) for row in rows]


TABLE_HEADER = [
    "| method | vislib img/s | share of the limit | "
    + " | ".join(f"{peer} img/s" for peer in PEERS)
    + " | vislib / fastest peer | settings |",
    "|---|---:|---:|" + "---:|" * len(PEERS) + "---:|---|",
]


def peer_cell(speeds: tuple[float, float | None] | None) -> str:
    """A peer's speed in the default layout, and given a channels-last model and input where measured."""
    if speeds is None:
        return "—"
    default, channels_last = speeds
    return fmt(default) if channels_last is None else f"{fmt(default)} / {fmt(channels_last)}"


def table_row(row: Row) -> str:
    """One row of a speed table, with vislib's speed over the fastest peer's (in either layout)."""
    best_peer = max((speed for speeds in row.peers.values() for speed in speeds if speed is not None), default=None)
    ratio = f"{row.vislib / best_peer:.2f}x" if best_peer else "—"
    peers = " | ".join(peer_cell(row.peers.get(peer)) for peer in PEERS)
    share = "—" if row.share is None else f"{row.share:.2f}"
    return f"| {row.method} | {fmt(row.vislib)} | {share} | {peers} | {ratio} | {row.note} |"


def replace_section(text: str, heading: str, section: list[str]) -> str:
    """`text` with the section under `heading` (up to the next `## ` heading) replaced, or appended if absent."""
    lines = text.rstrip("\n").split("\n")
    if heading not in lines:
        return "\n".join([*lines, "", *section]) + "\n"
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = ["", *lines[end:]] if end < len(lines) else []
    return "\n".join([*lines[:start], *section, *tail]) + "\n"


LAYOUT_CASES = [("demonet", "random", 64, 64), ("resnet18", "random", 224, 16), ("resnet50", "random", 224, 8),
                ("densenet121", "random", 224, 8), ("googlenet", "random", 224, 8), ("vgg16", "random", 224, 4),
                ("alexnet", "random", 224, 16), ("efficientnet_lite0", "IMAGENET", 224, 16)]


def forward_only(net: torch.nn.Module, images: torch.Tensor) -> None:
    """One forward pass without autograd."""
    with torch.no_grad():
        net(images)


def input_gradient(net: torch.nn.Module, images: torch.Tensor) -> None:
    """One forward and backward pass to the input of class 0's score, parameters frozen, the model's in-place ReLUs
    kept (as vislib's gradient methods run)."""
    with frozen_model(net, keep_inplace=True):
        images = images.detach().requires_grad_(True)
        torch.autograd.grad(net(images)[:, 0].sum(), images)


def layout_rows(repeats: int) -> list[tuple[str, int, int, float, float, float, float]]:
    """(model, size, batch, forward img/s NCHW, channels-last, input gradient img/s NCHW, channels-last)."""
    rows = []
    for name, weights, size, batch in LAYOUT_CASES:
        torch.manual_seed(0)
        net = models.load(name, weights, DEVICE)  # channels-last weights on CPU, as methods get them
        default = copy.deepcopy(net).to(memory_format=torch.contiguous_format)
        x = torch.randn(batch, 3, size, size, device=DEVICE)
        channels_last = x.contiguous(memory_format=torch.channels_last)
        runs = {"forward": functools.partial(forward_only, default, x),
                "forward_cl": functools.partial(forward_only, net, channels_last),
                "gradient": functools.partial(input_gradient, default, x),
                "gradient_cl": functools.partial(input_gradient, net, channels_last)}
        seconds = best_seconds(runs, repeats, DEVICE)
        rows.append((name, size, batch, *(batch / seconds[key] for key in runs)))
        print(rows[-1], flush=True)
    return rows


def map_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each pair of maps [N,h,w]."""
    a = normalize_maps(a).flatten(1)
    b = normalize_maps(b).flatten(1)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)


class RecordedScoreCAM(methods.METHODS["scorecam"]):
    """vislib's Score-CAM, keeping the masked scores of its last call [N,k]."""

    def _masked_scores(self, *args) -> torch.Tensor:
        self.last_scores = super()._masked_scores(*args)
        return self.last_scores


def effective_channels(scores: torch.Tensor) -> float:
    """Mean over images of exp(entropy) of the channel weights softmax(scores [N,C]): near C when the
    weights are near uniform, and any choice of channels then gives nearly the exact map."""
    weights = scores.softmax(1)
    return float(torch.exp(-(weights * weights.clamp_min(1e-30).log()).sum(1)).mean())


def timed_maps(method, net, layer: str, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Maps of one call and its wall seconds."""
    synchronize(DEVICE)
    tick = time.perf_counter()
    maps = method.explain(net, layer, x, targets).maps
    synchronize(DEVICE)
    return maps, time.perf_counter() - tick


def scorecam_topk_rows(cases) -> list[tuple]:
    """(model, layer, channels, effective channels, k, speed-up, mean corr, min corr, images) per case and k."""
    rows = []
    for label, net, layer, x in cases:
        with torch.no_grad():
            targets = net(x).argmax(1)
        # The rows in docs/methods.md were measured with the softmax over channels (see effective_channels).
        exact_method = RecordedScoreCAM(batch_size=64, softmax="channels")
        exact, exact_seconds = timed_maps(exact_method, net, layer, x, targets)
        channels = exact_method.last_scores.shape[1]
        for k in (channels // 4, channels // 8, channels // 16):
            maps, seconds = timed_maps(methods.get("scorecam", batch_size=64, top_channels=k, softmax="channels"),
                                       net, layer, x, targets)
            corr = map_correlation(maps, exact)
            rows.append((label, layer, channels, effective_channels(exact_method.last_scores), k,
                         exact_seconds / seconds, float(corr.mean()), float(corr.min()), len(x)))
            print(rows[-1], flush=True)
    return rows


def trained_demonet(checkpoint: str | None, workdir: Path, n_images: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """The demo net (from `checkpoint`, the workflow's, or trained here as the workflow does) and
    preprocessed shapes val images of the workflow's dataset."""
    root = workdir / "shapes"
    generate_shapes(root, ShapesConfig(n_train=2000, n_val=200, image_size=64, seed=0))
    train, val = (CocoFormatDataset("shapes", root, split) for split in ("train", "val"))
    checkpoint = checkpoint or (str(WORKFLOW_DEMONET) if WORKFLOW_DEMONET.exists() else None)
    if checkpoint:
        net = models.load("demonet", checkpoint, DEVICE)
    else:
        net = models.load("demonet", "random", DEVICE, num_classes=len(val.label_names))
        history = train_classifier(net, train, val, TrainConfig(epochs=10))
        print(f"demonet trained: val accuracy {history['val_accuracy']:.3f}", flush=True)
    images = val.load_batch(val.image_ids()[:n_images], models.preprocessing_of(net)).images
    return net, images.to(DEVICE)


def photos(net: torch.nn.Module, workdir: Path) -> torch.Tensor:
    """vislib's photos dataset (scikit-image's sample photographs), preprocessed for `net`."""
    root = workdir / "photos"
    write_photos(root)
    dataset = CocoFormatDataset("photos", root, "val")
    return dataset.load_batch(dataset.image_ids(), models.preprocessing_of(net)).images.to(DEVICE)


def device_description() -> str:
    """Where the benchmark ran, for the results' header."""
    processor = platform.processor() or platform.machine()
    return f"{device_name(DEVICE)} ({torch.get_num_threads()} CPU threads, {processor})"


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (best of); 1 for exact Score-CAM")
    parser.add_argument("--steps", type=int, default=16, help="integrated gradients steps")
    parser.add_argument("--samples", type=int, default=8, help="SmoothGrad samples")
    parser.add_argument("--scorecam-batch", type=int, default=2, help="images for the exact Score-CAM rows")
    parser.add_argument("--demonet", help="demo net checkpoint (default: the workflow's if it exists, "
                                          "else trained here, a few minutes)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--skip-speed", action="store_true", help="only the Score-CAM top-k section")
    parser.add_argument("--vit-only", action="store_true", help="only the vit_b_16 rows, replacing their section "
                                                                "of the results file")
    parser.add_argument("--vit-batch", type=int, default=4, help="batch of the vit_b_16 rows")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: every model, batch and timing")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.vit_only:
        section = vit_section(*vit_rows(args), args)
        write_text(args.out, replace_section(args.out.read_text() if args.out.exists() else "", VIT_SECTION, section))
        print("\n".join(section))
        return

    torch.manual_seed(0)
    net = models.load("resnet18", "random", DEVICE)
    x = torch.randn(args.batch, 3, args.size, args.size, device=DEVICE)
    with torch.no_grad():
        targets = net(x).argmax(1)  # also the warm-up of the allocator and kernels
    ca.Saliency(net).attribute(x, target=targets)  # warm-up of the backward kernels
    net.zero_grad(set_to_none=True)
    rows, forward, gradient = [], 0.0, 0.0
    if not args.skip_speed:
        forward, gradient, rows = method_rows(net, x, targets, args)
    layouts = [] if args.skip_speed else layout_rows(args.repeats)

    with tempfile.TemporaryDirectory() as workdir:
        demo, demo_images = trained_demonet(args.demonet, Path(workdir), args.batch)
        lite = models.load("efficientnet_lite0", "IMAGENET", DEVICE)
        lite_images = photos(lite, Path(workdir))
    topk = scorecam_topk_rows([
        ("demonet (trained, shapes val)", demo, "features.14", demo_images),
        ("demonet (random, shapes val)", models.load("demonet", "random", DEVICE), "features.14", demo_images),
        ("resnet18 (random, noise)", net, "layer4", x[:args.scorecam_batch]),
        ("efficientnet_lite0 (ImageNet, photos)", lite, "head_activation", lite_images),
    ])

    lines = [
        "# Attribution speed",
        "",
        f"`{' '.join(['python benchmarks/attribution.py', *os.sys.argv[1:]])}`: resnet18 (random weights), "
        f"{args.size}x{args.size} noise images, batch {args.batch}, {device_description()}, torch "
        f"{torch.__version__}; load average at the end "
        f"{os.getloadavg()[0]:.1f} (a shared machine). Best of {args.repeats} rounds ({max(1, args.repeats - 1)} for "
        "integrated gradients and SmoothGrad, 1 for Score-CAM) after a warm-up forward and backward; within a "
        "round the implementations run one after the other, so load from other processes hits them alike. "
        "Layer `layer4` for layer methods; targets given (the predicted classes). vislib times the public "
        "`explain`, which also returns the predicted classes; the peers run through their public APIs with "
        "the same settings.",
        "",
    ]
    if rows:
        lines += [
            f"One channels-last forward pass: **{forward:.2f} images/s**; one forward and backward pass to the "
            f"input: **{gradient:.2f} images/s** (vislib's layout, parameters frozen).",
            "",
            "*Share of the limit*: vislib's speed over that of the passes the method cannot avoid, run alone: one "
            "forward pass for the CAMs (their backward pass stops at layer4), L2-CAF and Ablation-CAM (whose "
            "ablated copies run only the layers after layer4); one forward and backward pass for the gradient "
            "methods, P of them for P steps or samples; one forward per masked, perturbed or noisy copy (plus the "
            "unperturbed one where the method needs it) for the perturbation methods. *Peer columns*: the default "
            "layout / given a channels-last model and input (`model.to(memory_format=torch.channels_last)`, one "
            "line for a user); vislib / fastest peer takes the faster of the two.",
            "",
            *TABLE_HEADER,
        ]
        lines += [table_row(row) for row in rows]
        lines += ["", *vit_section(*vit_rows(args), args)]
    if layouts:
        lines += [
            "",
            "## Memory layout",
            "",
            "On CPU, `models.load` gives the convolution weights the channels-last layout and vislib runs every "
            "pass of a method on a channels-last copy of the batch (`vislib.methods.base.fast_layout`): oneDNN's "
            "native layout, faster in both directions for every architecture of the registry (NCHW: default-layout "
            "weights and batch; random noise images; input gradient = forward and backward to the input, "
            "parameters frozen). The table above gives the peers both layouts.",
            "",
            "| model | size | batch | forward NCHW img/s | forward channels-last img/s | gradient NCHW img/s "
            "| gradient channels-last img/s |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [f"| {name} | {size} | {batch} | {fwd:.1f} | {fwd_cl:.1f} ({fwd_cl / fwd:.2f}x) | {grad:.1f} | "
                  f"{grad_cl:.1f} ({grad_cl / grad:.2f}x) |"
                  for name, size, batch, fwd, fwd_cl, grad, grad_cl in layouts]
    lines += [
        "",
        "## Score-CAM: top channels against exact",
        "",
        "`top_channels=k` scores only the k channels with the largest mean absolute activation; the others "
        "get the weight of the lowest-scoring scored channel. Speed-up: wall time of exact Score-CAM over "
        "top-k on the same images (one call each). Correlation: Pearson correlation of the normalised native "
        "maps with the exact ones (mean and minimum over the images). Effective channels: exp(entropy) of "
        "exact Score-CAM's channel weights, averaged over the images; where it is close to the channel "
        "count the weights are nearly uniform and any choice of channels gives nearly the exact map, so "
        "those rows (random weights) do not test the approximation. efficientnet_lite0 uses its default "
        "layer `head_activation`, the head's ReLU6 output: at `_bn1`, before the activation, exact "
        "Score-CAM's map is 0 everywhere on these photos (the near-uniform weighted sum of mostly negative "
        "pre-activations is negative everywhere, and the ReLU clears it).",
        "",
        "| model | layer | images | channels | effective channels | k | speed-up | mean corr | min corr |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, layer, channels, effective, k, speedup, mean_corr, min_corr, n in topk:
        lines.append(f"| {label} | {layer} | {n} | {channels} | {effective:.0f} | {k} | {speedup:.1f}x "
                     f"| {mean_corr:.3f} | {min_corr:.3f} |")
    write_text(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
