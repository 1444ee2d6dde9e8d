"""Figure grids: rows are images, columns are methods, heatmaps overlaid with ground-truth boxes."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from vislib.io import atomic_path  # noqa: E402


def overlay_grid(path: str | os.PathLike, images: np.ndarray, maps: Mapping[str, np.ndarray],
                 boxes: Sequence[np.ndarray], row_titles: Sequence[str], title: str = "",
                 cell_inches: float = 1.8) -> None:
    """Save a grid: column 0 the image, then one column per method with its map (in [0,1]) overlaid.

    images: float [N,H,W,3] in [0,1]; maps: name -> [N,H,W]; boxes: per image [K,4] xyxy to outline.
    """
    n_rows, n_cols = len(images), 1 + len(maps)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell_inches * n_cols, cell_inches * n_rows + 0.4),
                             squeeze=False)
    for r in range(n_rows):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.imshow(images[r])
            if c > 0:
                ax.imshow(list(maps.values())[c - 1][r], cmap="jet", alpha=0.5, vmin=0, vmax=1)
            for x0, y0, x1, y1 in boxes[r]:
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="white", lw=1.2))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("image" if c == 0 else list(maps)[c - 1], fontsize=8)
            if c == 0:
                ax.set_ylabel(row_titles[r], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
