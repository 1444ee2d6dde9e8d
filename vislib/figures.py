"""Figures: overlay grids (rows images, columns methods), metric bar charts with CIs, sanity curves,
feature-visualization grids."""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from vislib.io import FeatVisShard, atomic_path  # noqa: E402


def save_figure(fig, path: str | os.PathLike, title: str = "", title_size: int = 9, dpi: int = 100,
                rect: tuple[float, float, float, float] | None = None) -> None:
    """Title, lay out and write `fig` as PNG atomically (an interrupted run never leaves half a file), then
    free it. `rect`: the part of the figure tight_layout may fill (room for a legend outside it)."""
    if title:
        fig.suptitle(title, fontsize=title_size)
    fig.tight_layout(rect=rect)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)


def training_curve(path: str | os.PathLike, history: dict) -> None:
    """Save a classifier's training curve: train loss and val accuracy per epoch."""
    epochs = [c["epoch"] for c in history["curve"]]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(epochs, [c["train_loss"] for c in history["curve"]], label="train loss")
    ax.set_xlabel("epoch")
    ax2 = ax.twinx()
    ax2.plot(epochs, [c["val_accuracy"] for c in history["curve"]], color="C1", label="val accuracy")
    ax2.set_ylim(0, 1)
    fig.legend(loc="center right")
    save_figure(fig, path)


def overlay_grid(path: str | os.PathLike, images: np.ndarray, maps: Mapping[str, np.ndarray],
                 boxes: Sequence[np.ndarray], row_titles: Sequence[str], title: str = "",
                 cell_inches: float = 1.8, signed: Collection[str] = ()) -> None:
    """Save a grid: column 0 the image, then one column per method with its map overlaid.

    images: float [N,H,W,3] in [0,1]; maps: name -> [N,H,W] display maps (`to_display_maps`): in [0,1], drawn with
    `jet`, or for the names in `signed` in [-1,1], drawn with a diverging colormap centred at 0 (red for the class,
    blue against it); boxes: per image [K,4] xyxy to outline.
    """
    n_rows, n_cols = len(images), 1 + len(maps)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell_inches * n_cols, cell_inches * n_rows + 0.4),
                             squeeze=False)
    for r in range(n_rows):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.imshow(images[r])
            if c > 0:
                name = list(maps)[c - 1]
                if name in signed:
                    ax.imshow(maps[name][r], cmap="RdBu_r", alpha=0.6, vmin=-1, vmax=1)
                else:
                    ax.imshow(maps[name][r], cmap="jet", alpha=0.5, vmin=0, vmax=1)
            for x0, y0, x1, y1 in boxes[r]:
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="white", lw=1.2))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("image" if c == 0 else list(maps)[c - 1], fontsize=8)
            if c == 0:
                ax.set_ylabel(row_titles[r], fontsize=7)
    save_figure(fig, path, title, dpi=110)


def convergence_gif(path: str | os.PathLike, frames: np.ndarray, images: np.ndarray | None = None,
                    record_every: int = 1, captions: Sequence[str] = (), columns: int = 4, cell: int = 128,
                    frame_ms: int = 200, last_ms: int = 1500) -> int:
    """Save an attribution's convergence as an animated GIF; return the number of frames written.

    frames: [R,F,h,w] maps per row (L2-CAF's extras['convergence']: steps 0, k, 2k, ... then the final map);
    images: [R,H,W,3] in [0,1] under them, or None. GIF frame f tiles the R rows (`columns` per line, `cell` px
    each) with map f min-max normalised and drawn with `jet` over the image at half opacity (as `overlay_grid`),
    headed by its step (f * `record_every`; the last frame: "final"), which also keeps consecutive frames
    distinct, so no GIF writer merges them. Each row's `captions` entry is written under its tile.
    """
    from PIL import Image, ImageDraw

    rows, count = frames.shape[:2]
    n_cols = max(1, min(columns, rows))
    n_lines = -(-rows // n_cols)
    header, footer = 14, 12 if len(captions) else 0
    height = cell + footer
    palette = matplotlib.colormaps["jet"]
    bases = np.full((rows, cell, cell, 3), 0.5)
    if images is not None:
        bases = np.stack([np.asarray(Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).resize(
            (cell, cell), Image.Resampling.BILINEAR), float) / 255 for image in images])
    pictures = []
    for f in range(count):
        canvas = Image.new("RGB", (n_cols * cell, header + n_lines * height), "white")
        draw = ImageDraw.Draw(canvas)
        draw.text((2, 1), "final" if f == count - 1 else f"step {f * record_every}", fill="black")
        for r in range(rows):
            heat = frames[r, f].astype(np.float32)
            span = float(heat.max() - heat.min())
            heat = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
            # Bilinear upsampling of the map to the tile, as the maps are upsampled for every other picture.
            heat = np.asarray(Image.fromarray(heat).resize((cell, cell), Image.Resampling.BILINEAR))
            tile = 0.5 * bases[r] + 0.5 * palette(np.clip(heat, 0, 1))[..., :3]
            line, col = divmod(r, n_cols)
            canvas.paste(Image.fromarray((tile * 255).round().astype(np.uint8)),
                         (col * cell, header + line * height))
            if r < len(captions):
                draw.text((col * cell + 2, header + line * height + cell), captions[r][:24], fill="black")
        # Quantised here with the fast octree: PIL's default median cut for GIFs takes ~1 s per frame.
        pictures.append(canvas.quantize(256, method=Image.Quantize.FASTOCTREE))
    durations = [frame_ms] * (count - 1) + [last_ms]
    with atomic_path(path) as tmp:
        pictures[0].save(tmp, format="GIF", save_all=True, append_images=pictures[1:], duration=durations, loop=0)
    return count


def metric_bars(path: str | os.PathLike, summary: pd.DataFrame, title: str = "") -> None:
    """Save one bar chart per metric: the mean of each method per model/layer with its 95% CI."""
    metric_names = sorted(summary["metric"].unique())
    groups = summary[["model", "layer"]].drop_duplicates().itertuples(index=False)
    groups = [f"{g.model}/{g.layer}" for g in groups]
    method_names = sorted(summary["method"].unique())
    n_cols = min(3, max(1, len(metric_names)))
    n_rows = max(1, -(-len(metric_names) // n_cols))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.2 * n_cols, 2.8 * n_rows + 0.6), squeeze=False)
    width = 0.8 / max(1, len(method_names))
    for ax, metric in zip(axes.flat, metric_names, strict=False):
        part = summary[summary["metric"] == metric]
        for k, method in enumerate(method_names):
            rows = part[part["method"] == method].assign(group=lambda f: f["model"] + "/" + f["layer"])
            rows = rows.set_index("group").reindex(groups)
            means = rows["mean"].to_numpy(float)
            errors = np.abs(np.stack([means - rows["ci_low"].to_numpy(float),
                                      rows["ci_high"].to_numpy(float) - means]))
            ax.bar(np.arange(len(groups)) + (k - (len(method_names) - 1) / 2) * width, means, width,
                   yerr=np.nan_to_num(errors), capsize=2, label=method, color=f"C{k % 10}")
        ax.set_title(metric, fontsize=9)
        ax.set_xticks(np.arange(len(groups)))
        ax.set_xticklabels(groups, fontsize=7, rotation=15)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(metric_names):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=7)
    save_figure(fig, path, title, title_size=10, rect=(0, 0.06, 1, 1))


def comparison_matrices(path: str | os.PathLike, comparisons: pd.DataFrame, title: str = "") -> None:
    """Save per metric (and dataset/model/layer) the method x method matrix of paired mean differences.

    A cell is its row's method minus its column's, over the images both score; blue where the row's method is
    better in the metric's direction, red where worse; * marks a difference significant after Holm.
    """
    families = sorted(comparisons.groupby(["metric", "dataset", "model", "layer"]).groups) if len(comparisons) else []
    if not families:
        fig, ax = plt.subplots(figsize=(4, 1.5))
        ax.text(0.5, 0.5, "no two methods scored on the same images", ha="center", va="center", fontsize=9)
        ax.axis("off")
        save_figure(fig, path, title, title_size=10)
        return
    n_cols = min(3, len(families))
    n_rows = -(-len(families) // n_cols)
    size = max(3.2, 0.55 * comparisons[["method_a", "method_b"]].stack().nunique() + 1.6)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(size * n_cols, size * n_rows + 0.4), squeeze=False)
    for ax, (metric, dataset, model, layer) in zip(axes.flat, families, strict=False):
        part = comparisons[(comparisons["metric"] == metric) & (comparisons["dataset"] == dataset)
                           & (comparisons["model"] == model) & (comparisons["layer"] == layer)]
        names = sorted(set(part["method_a"]) | set(part["method_b"]))
        index = {name: k for k, name in enumerate(names)}
        difference = np.full((len(names), len(names)), np.nan)
        marked = np.zeros(difference.shape, bool)
        for row in part.itertuples(index=False):
            a, b = index[row.method_a], index[row.method_b]
            difference[a, b], difference[b, a] = row.mean_difference, -row.mean_difference
            marked[a, b] = marked[b, a] = bool(row.significant)
        direction = part["higher_is_better"].iloc[0]
        sign = -1.0 if direction is not None and not pd.isna(direction) and not direction else 1.0
        advantage = sign * difference
        limit = float(np.nanmax(np.abs(advantage))) if np.isfinite(advantage).any() else 1.0
        ax.imshow(np.ma.masked_invalid(advantage), cmap="RdBu", vmin=-(limit or 1.0), vmax=limit or 1.0)
        for (i, j), value in np.ndenumerate(difference):
            if np.isfinite(value):
                colour = "white" if abs(advantage[i, j]) > 0.6 * (limit or 1.0) else "black"
                ax.text(j, i, f"{value:+.2f}{'*' if marked[i, j] else ''}", ha="center", va="center", fontsize=7,
                        color=colour)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, fontsize=7, rotation=30, ha="right")
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names, fontsize=7)
        ax.set_xlabel("minus column", fontsize=7)
        ax.set_ylabel("row", fontsize=7)
        arrow = "" if direction is None or pd.isna(direction) else (" ↑" if direction else " ↓")
        ax.set_title(f"{metric}{arrow}\n{dataset}/{model}/{layer}", fontsize=8)
    for ax in list(axes.flat)[len(families):]:
        ax.axis("off")
    save_figure(fig, path, title, title_size=10)


def sanity_curves(path: str | os.PathLike, curves: pd.DataFrame, title: str = "") -> None:
    """Save the randomization curves: mean Spearman correlation per method over cascade steps.

    One panel per model/layer; solid lines are |map| correlations, dashed ones the signed maps.
    """
    panels = sorted(curves.groupby(["model", "layer"]).groups)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for ax, (model, layer) in zip(axes[0], panels, strict=True):
        part = curves[(curves["model"] == model) & (curves["layer"] == layer)]
        labels = part.groupby("step")["randomized_to"].first()
        for k, method in enumerate(sorted(part["method"].unique())):
            for statistic, style in (("spearman_abs", "-"), ("spearman", "--")):
                line = part[(part["method"] == method) & (part["statistic"] == statistic)]
                means = line.groupby("step")["value"].mean()
                ax.plot(means.index, means.to_numpy(), style, marker="o", ms=3, color=f"C{k % 10}",
                        label=method if statistic == "spearman_abs" else None)
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_ylim(-0.5, 1.05)
        ax.set_xticks(labels.index)
        ax.set_xticklabels([name or "original" for name in labels], rotation=60, fontsize=6, ha="right")
        ax.set_ylabel("Spearman rank correlation", fontsize=8)
        ax.set_title(f"{model} / {layer}", fontsize=9)
        ax.legend(fontsize=7)
    save_figure(fig, path, title, title_size=10)


def featvis_grid(path: str | os.PathLike, shards: Sequence[FeatVisShard], title: str = "", columns: int = 8,
                 cell_inches: float = 1.5) -> int:
    """Save the synthesised images of a method's shards in a grid, under the start images where the
    method has them and the snapshots taken during the optimisation where it kept them (class-agnostic's
    `snapshot_every`), with every image's loss curve in a panel below; return the number of image tiles."""
    images = np.concatenate([s.images for s in shards]).transpose(0, 2, 3, 1).clip(0, 1)
    labels = [label for s in shards for label in s.labels]
    starts = None
    if all("start_images" in s.extras for s in shards):
        starts = np.concatenate([s.extras["start_images"] for s in shards]).transpose(0, 2, 3, 1).clip(0, 1)
    snapshots, snapshot_steps = None, np.zeros(0, np.int64)
    if all("snapshots" in s.extras for s in shards):
        snapshots = np.concatenate([s.extras["snapshots"] for s in shards]).transpose(0, 1, 3, 4, 2) / 255
        snapshot_steps = shards[0].extras["snapshot_steps"]
    curves = np.concatenate([s.loss_curve for s in shards], axis=1)
    n_cols = max(1, min(columns, len(images)))
    blocks = -(-len(images) // n_cols)
    per_block = (starts is not None) + len(snapshot_steps) + 1
    n_rows = blocks * per_block
    fig = plt.figure(figsize=(cell_inches * n_cols, cell_inches * n_rows + 1.8 + 0.4))
    grid = fig.add_gridspec(n_rows + 1, n_cols, height_ratios=[1.0] * n_rows + [1.8 / cell_inches])
    tiles = 0
    for i, image in enumerate(images):
        block, col = divmod(i, n_cols)
        rows = [(starts[i], "start")] if starts is not None else []
        if snapshots is not None:
            rows += [(snapshots[i, k], f"step {step}") for k, step in enumerate(snapshot_steps.tolist())]
        rows.append((image, labels[i]))
        tiles += len(rows)
        for offset, (pixels, caption) in enumerate(rows):
            ax = fig.add_subplot(grid[block * per_block + offset, col])
            ax.imshow(pixels, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(caption[:28], fontsize=6)
    curve_ax = fig.add_subplot(grid[n_rows, :])
    steps = np.arange(1, len(curves) + 1)
    for k in range(curves.shape[1]):
        curve_ax.plot(steps, curves[:, k], lw=0.7, alpha=0.6, color=f"C{k % 10}")
    curve_ax.set_xlabel("iteration (all octaves)", fontsize=7)
    curve_ax.set_ylabel("loss", fontsize=7)
    curve_ax.tick_params(labelsize=6)
    save_figure(fig, path, title)
    return tiles


def cluster_scatter(path: str | os.PathLike, embedding: np.ndarray, labels: np.ndarray, centres: np.ndarray,
                    members: np.ndarray | None = None, thumbnails: np.ndarray | None = None,
                    visualisations: Mapping[int, np.ndarray] | None = None, title: str = "",
                    thumbnail_inches: float = 0.35) -> tuple[int, int]:
    """Save the 2-D embedding of a clustered image set (class-agnostic feature visualisation) with thumbnails;
    return the dots (images and centres) and the thumbnails drawn.

    embedding [M,2] and labels [M]: every image of the set, a dot coloured by its cluster; centres [K,2]: black
    dots. members [K,m] (-1 padded) with thumbnails [K,m,h,w,3] in [0,1]: each cluster's defining images,
    drawn at their points framed in the cluster's colour; visualisations {cluster: [H,W,3]}: the cluster's
    synthesised image, twice as large with a black frame, pointing at its centre from beside it, away from the
    middle of the set, so it hides few of the cluster's own thumbnails (vis.py drew the image closest to each
    centre on the centre itself).
    """
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    clusters = len(centres)
    colours = matplotlib.colormaps["tab10" if clusters <= 10 else "tab20"]
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.scatter(embedding[:, 0], embedding[:, 1], c=[colours(int(k) % colours.N) for k in labels], s=18,
               edgecolors="black", linewidths=0.3, zorder=2)
    ax.scatter(centres[:, 0], centres[:, 1], c="black", s=60, alpha=0.75, zorder=3)
    drawn = 0
    dpi = fig.dpi

    def place(image: np.ndarray, at: np.ndarray, inches: float, colour, width: float,
              shift: tuple[float, float] = (0.0, 0.0)) -> None:
        # OffsetImage's zoom is in screen pixels per image pixel: the thumbnail is `inches` wide whatever its size.
        box = OffsetImage(np.clip(image, 0, 1), zoom=inches * dpi / image.shape[1])
        ax.add_artist(AnnotationBbox(box, (float(at[0]), float(at[1])), xybox=shift, boxcoords="offset points",
                                     frameon=True, pad=0.1, zorder=5 if any(shift) else 4,
                                     bboxprops={"edgecolor": colour, "linewidth": width},
                                     arrowprops={"arrowstyle": "-", "color": "black"} if any(shift) else None))

    if members is not None and thumbnails is not None:
        for k in range(clusters):
            for slot, index in enumerate(members[k].tolist()):
                if index >= 0:
                    place(thumbnails[k, slot], embedding[index], thumbnail_inches, colours(k % colours.N), 1.0)
                    drawn += 1
    middle = embedding.mean(0)
    spread = np.ptp(embedding, axis=0).clip(1e-12)
    for k, image in sorted((visualisations or {}).items()):
        # One and a half thumbnail widths from the centre (in points), away from the middle of the set.
        away = (centres[k] - middle) / spread
        norm = float(np.hypot(*away))
        direction = away / norm if norm > 1e-6 else np.array([0.0, 1.0])
        shift = 1.5 * 2 * thumbnail_inches * 72 * direction
        place(image, centres[k], 2 * thumbnail_inches, "black", 1.5, (float(shift[0]), float(shift[1])))
        drawn += 1
    # Room at the edges for the thumbnails, which the axis limits do not count.
    ax.margins(0.3)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{len(embedding)} images, {clusters} clusters", fontsize=8)
    save_figure(fig, path, title)
    return len(embedding) + clusters, drawn


def perturbation_curves(path: str | os.PathLike, rows: pd.DataFrame, title: str = "") -> None:
    """Save mean deletion/insertion curves per method with a 95% band: a row of panels per metric, a column per
    dataset/model/layer. `rows`: metric-table rows with `perturbation_step` and the `perturbation_curve` list."""
    metric_names = sorted(rows["metric"].unique())
    groups = sorted(rows.groupby(["dataset", "model", "layer"]).groups)
    method_names = sorted(rows["method"].unique())
    size = (4.0 * len(groups), 2.8 * len(metric_names) + 0.6)
    fig, axes = plt.subplots(len(metric_names), len(groups), figsize=size, squeeze=False)
    for r, metric in enumerate(metric_names):
        for c, group in enumerate(groups):
            ax = axes[r, c]
            in_group = (rows["dataset"] == group[0]) & (rows["model"] == group[1]) & (rows["layer"] == group[2])
            part = rows[(rows["metric"] == metric) & in_group]
            for k, method in enumerate(method_names):
                curves = part.loc[part["method"] == method, "perturbation_curve"]
                if curves.empty:
                    continue
                stacked = np.stack([np.asarray(v, float) for v in curves])
                step = float(part.loc[part["method"] == method, "perturbation_step"].iloc[0])
                fractions = np.minimum(np.arange(stacked.shape[1]) * step, 1.0)
                mean = np.nanmean(stacked, 0)
                half = 1.96 * np.nanstd(stacked, 0, ddof=1) / np.sqrt(len(stacked)) if len(stacked) > 1 else 0 * mean
                ax.plot(fractions, mean, color=f"C{k % 10}", lw=1.2, label=method)
                ax.fill_between(fractions, mean - half, mean + half, color=f"C{k % 10}", alpha=0.2, lw=0)
            ax.set_title(f"{metric}: {'/'.join(group[1:])}", fontsize=8)
            ax.set_xlabel("fraction of pixels moved", fontsize=7)
            ax.set_ylabel("probability of the class", fontsize=7)
            ax.tick_params(labelsize=7)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, max(1, len(labels))), fontsize=7)
    save_figure(fig, path, title, title_size=10, rect=(0, 0.07, 1, 1))


def sanity_strip(path: str | os.PathLike, strips: Sequence[tuple[str, np.ndarray, np.ndarray, Sequence[str], bool]],
                 title: str = "", cell_inches: float = 1.5) -> None:
    """Save a strip of maps along the randomization cascade: a row per (label, image [H,W,3], display maps
    [S,H,W], step names, signed), a column per step, from the trained model to every layer randomized."""
    n_cols = max(len(strip[2]) for strip in strips)
    fig, axes = plt.subplots(len(strips), n_cols, figsize=(cell_inches * n_cols, cell_inches * len(strips) + 0.5),
                             squeeze=False)
    for r, (label, image, maps, steps, signed) in enumerate(strips):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(maps):
                ax.axis("off")
                continue
            ax.imshow(image)
            if signed:
                ax.imshow(maps[c], cmap="RdBu_r", alpha=0.6, vmin=-1, vmax=1)
            else:
                ax.imshow(maps[c], cmap="jet", alpha=0.5, vmin=0, vmax=1)
            ax.set_title(steps[c] or "trained", fontsize=6)
            if c == 0:
                ax.set_ylabel(label, fontsize=6)
    save_figure(fig, path, title, title_size=9)
