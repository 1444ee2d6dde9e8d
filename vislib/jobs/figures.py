"""Chart jobs of rules/sanity.smk: the sanity-check curves and map strip, the metric bars, the paired comparisons and
the deletion/insertion curves. They run no network; only the map strip imports torch (to upsample the maps)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pandas as pd

from vislib.errors import DataError

# The list column of deletion/insertion rows (vislib.metrics.perturbation.CURVE_COLUMN); named here so that chart
# jobs need not import the metrics (and torch).
CURVE_COLUMN = "perturbation_curve"


def sanity_figure(*, tables: Sequence[str | os.PathLike], out: str | os.PathLike, title: str,
                  maps: Sequence[str | os.PathLike] = (), strip_out: str | os.PathLike | None = None) -> pd.DataFrame:
    """Draw the randomization curves of an experiment's sanity tables, and from its `maps` files the strip of one
    image's maps along each cascade (`strip_out`); print and return the per-step means."""
    from vislib.figures import sanity_curves

    if not tables:
        raise DataError("no sanity-check tables to draw; check the experiment's `sanity:` block")
    curves = pd.concat([pd.read_parquet(f) for f in tables], ignore_index=True)
    sanity_curves(out, curves, title)
    if strip_out is not None:
        draw_sanity_strip(maps, strip_out, title)
    means = (curves.groupby(["model", "layer", "method", "statistic", "step", "randomized_to"])["value"]
             .mean().reset_index())
    print(means.to_string(index=False))
    return means


def comparison_figure(*, comparisons: str | os.PathLike, out: str | os.PathLike, title: str) -> None:
    """Draw per metric the method x method matrix of paired mean differences of a comparisons.parquet."""
    from vislib.figures import comparison_matrices

    comparison_matrices(out, pd.read_parquet(comparisons), title)


def metric_bars(*, summary: str | os.PathLike, out: str | os.PathLike, title: str) -> None:
    """Draw the bar chart per metric (means with 95% CIs) of a summary.parquet."""
    from vislib.figures import metric_bars as draw_metric_bars

    draw_metric_bars(out, pd.read_parquet(summary), title)


def perturbation_curves(*, metrics: str | os.PathLike, out: str | os.PathLike, title: str) -> None:
    """Draw the mean deletion/insertion curve of each method with its band, from an experiment's metrics.parquet."""
    import pyarrow.parquet as pq

    from vislib.figures import perturbation_curves as draw_curves

    columns = ["dataset", "model", "layer", "method", "metric", "perturbation_step", CURVE_COLUMN]
    available = set(pq.read_schema(metrics).names)
    if CURVE_COLUMN not in available:
        raise DataError(f"{str(metrics)!r} has no {CURVE_COLUMN!r} column: the experiment scores no deletion or "
                        "insertion curve")
    table = pq.read_table(metrics, columns=columns).to_pandas()
    draw_curves(out, table[table[CURVE_COLUMN].notna()], title)


def draw_sanity_strip(paths: Sequence[str | os.PathLike], out: str | os.PathLike, title: str) -> None:
    """The strip of maps along the cascades of the sanity-check maps files `paths`."""
    import torch

    from vislib.figures import sanity_strip
    from vislib.io import load_sanity_maps
    from vislib.methods.postprocess import to_display_maps

    strips = []
    for path in paths:
        cascade = load_sanity_maps(path)
        size = cascade.image.shape[:2]
        shown = to_display_maps(torch.from_numpy(cascade.maps), (size[0], size[1]), cascade.signed).numpy()
        strips.append((cascade.label, cascade.image, shown, cascade.steps, cascade.signed))
    if not strips:
        raise DataError("no sanity-check maps to draw; check the experiment's `sanity:` block")
    sanity_strip(out, strips, title)
