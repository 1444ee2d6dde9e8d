"""Aggregation: per-shard metric tables -> metrics.parquet, summary.parquet, comparisons.parquet and summary.md."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from vislib.errors import DataError
from vislib.io import write_parquet, write_text
from vislib.stats import FAMILY_COLUMNS, bootstrap_interval, compare_methods, mean_interval, rank_methods

GROUP_COLUMNS = ["dataset", "model", "layer", "method", "metric"]
COMPARISONS_SCHEMA = pa.schema(
    [(name, pa.string()) for name in [*FAMILY_COLUMNS, "method_a", "method_b"]]
    + [("higher_is_better", pa.bool_()), ("n", pa.int64())]
    + [(name, pa.float64()) for name in ("mean_a", "mean_b", "mean_difference", "ci_low", "ci_high")]
    + [("interval", pa.string()), ("test", pa.string()), ("p_value", pa.float64()), ("p_holm", pa.float64()),
       ("significant", pa.bool_()), ("better", pa.string())])


def collect(files: Sequence[str | os.PathLike]) -> pa.Table:
    """Read all per-shard metric tables into one table (columns unified across shards)."""
    if not files:
        raise DataError("no metric shards to aggregate; check that the experiment lists methods and metrics")
    schema = pa.unify_schemas([pq.read_schema(f) for f in files])
    table = pads.dataset([str(f) for f in files], schema=schema, format="parquet").to_table()
    return table.replace_schema_metadata(None)


def bootstrap_ci(values: np.ndarray, n_resamples: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Bootstrap confidence interval of the mean, BCa where defined (`vislib.stats.bootstrap_interval`; NaNs
    dropped; NaN if fewer than 2 values)."""
    interval = bootstrap_interval(values, level, n_resamples, seed)
    return interval.low, interval.high


def summarize(table: pa.Table | pd.DataFrame, seed: int = 0,
              higher_is_better: dict[str, bool] | None = None,
              binary: dict[str, bool] | None = None) -> pd.DataFrame:
    """Mean, 95% CI, count and failures per dataset/model/layer/method/metric, and which way each metric
    improves (`higher_is_better`, None where not given).

    The interval (`interval` column) is Wilson's for the metrics `binary` marks as 0/1 and the BCa bootstrap
    (percentile where BCa is undefined) for the others; `none` with fewer values than it needs.
    """
    frame = table.to_pandas() if isinstance(table, pa.Table) else table
    directions, binary = higher_is_better or {}, binary or {}
    rows = []
    for key, group in frame.groupby(GROUP_COLUMNS, sort=True):
        values = group["value"].to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        interval = mean_interval(values, bool(binary.get(key[-1], False)), seed=seed, what="/".join(map(str, key)))
        seconds = group["seconds_per_image"].to_numpy(dtype=float)
        rows.append({**dict(zip(GROUP_COLUMNS, key, strict=True)),
                     "mean": float(finite.mean()) if len(finite) else float("nan"),
                     "higher_is_better": directions.get(key[-1]),
                     "ci_low": interval.low, "ci_high": interval.high, "interval": interval.method,
                     "n": int(len(finite)),
                     "n_undefined": int(len(values) - len(finite)),
                     "seconds_per_image": float(np.nanmean(seconds)) if np.isfinite(seconds).any() else float("nan")})
    return pd.DataFrame(rows, columns=[*GROUP_COLUMNS, "higher_is_better", "mean", "ci_low", "ci_high", "interval",
                                       "n", "n_undefined", "seconds_per_image"])


def summary_markdown(summary: pd.DataFrame, title: str = "") -> str:
    """The summary as a Markdown table: value as mean [CI] (n); arrows say whether higher or lower is better."""
    lines = [f"# {title}", ""] if title else []
    lines += ["| dataset | model | layer | method | metric | mean | 95% CI | interval | n | undefined | s/image |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in summary.itertuples(index=False):
        ci = "–" if np.isnan(row.ci_low) else f"[{row.ci_low:.3f}, {row.ci_high:.3f}]"
        lines.append(f"| {row.dataset} | {row.model} | {row.layer} | {row.method} | {row.metric}{_arrow(row)} | "
                     f"{row.mean:.3f} | {ci} | {getattr(row, 'interval', '')} | {row.n} | {row.n_undefined} | "
                     f"{row.seconds_per_image:.4f} |")
    return "\n".join(lines) + "\n"


def _arrow(row: tuple) -> str:
    better = getattr(row, "higher_is_better", None)
    return "" if better is None or pd.isna(better) else (" ↑" if better else " ↓")


def _text(value: object) -> str:
    """A table cell: the string, or – where it is empty or missing."""
    return value if isinstance(value, str) and value else "–"


def summary_html(summary: pd.DataFrame, title: str = "") -> str:
    """The summary as an HTML page for the report: one row per dataset/model/layer/method/metric, the mean with
    its interval and count; arrows say whether higher or lower is better."""
    import html

    rows = []
    for row in summary.itertuples(index=False):
        better = getattr(row, "higher_is_better", None)
        arrow = "" if better is None or pd.isna(better) else (" &uarr;" if better else " &darr;")
        ci = "&ndash;" if np.isnan(row.ci_low) else f"[{row.ci_low:.3f}, {row.ci_high:.3f}]"
        cells = [html.escape(str(v)) for v in (row.dataset, row.model, row.layer, row.method)]
        cells += [html.escape(str(row.metric)) + arrow, f"{row.mean:.3f}", ci, html.escape(str(row.interval)),
                  str(row.n), str(row.n_undefined), f"{row.seconds_per_image:.4f}"]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    header = "".join(f"<th>{h}</th>" for h in ("dataset", "model", "layer", "method", "metric", "mean", "95% CI",
                                               "interval", "n", "undefined", "s/image"))
    style = ("table{border-collapse:collapse;font:13px sans-serif}td,th{border:1px solid #ccc;padding:2px 6px}"
             "td:nth-child(n+6){text-align:right}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h3>{html.escape(title)}</h3><table><thead><tr>{header}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></body></html>\n")


def comparisons_markdown(comparisons: pd.DataFrame, ranking: pd.DataFrame) -> str:
    """The paired comparisons and the ranking of methods as Markdown tables (a line instead where no family has
    two methods)."""
    lines = ["", "## Paired comparisons", ""]
    if comparisons.empty:
        return "\n".join([*lines, "No two methods were scored on the same images and metric.", ""])
    lines += ["Mean difference a − b over the images both methods score, with its paired bootstrap 95% CI; "
              "p from the exact McNemar test (0/1 metrics) or the Wilcoxon signed-rank test, Holm-corrected within "
              "each dataset/model/layer/metric; * significant at 0.05 after Holm.", "",
              "| dataset | model | layer | metric | a | b | n | mean a | mean b | a − b | 95% CI | test | p | p (Holm) "
              "| better |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in comparisons.itertuples(index=False):
        ci = "–" if np.isnan(row.ci_low) else f"[{row.ci_low:.3f}, {row.ci_high:.3f}]"
        mark = " *" if row.significant else ""
        lines.append(f"| {row.dataset} | {row.model} | {row.layer} | {row.metric}{_arrow(row)} | {row.method_a} | "
                     f"{row.method_b} | {row.n} | {row.mean_a:.3f} | {row.mean_b:.3f} | {row.mean_difference:+.3f} | "
                     f"{ci} | {row.test} | {row.p_value:.3g} | {row.p_holm:.3g}{mark} | {_text(row.better)} |")
    lines += ["", "## Ranking", "",
              "Methods best first by mean; each with the methods it is significantly better than (Holm, 0.05).", "",
              "| dataset | model | layer | metric | rank | method | mean | significantly better than |",
              "|---|---|---|---|---|---|---|---|"]
    for row in ranking.itertuples(index=False):
        lines.append(f"| {row.dataset} | {row.model} | {row.layer} | {row.metric}{_arrow(row)} | {row.rank} | "
                     f"{row.method} | {row.mean:.3f} | {_text(row.better_than)} |")
    return "\n".join(lines) + "\n"


def reduce_over_datasets(table: pa.Table) -> pa.Table:
    """Apply the dataset-level reduction of every registered metric in the table that declares one."""
    from vislib.metrics import METRICS

    for name in sorted(set(table.column("metric").to_pylist())):
        if name in METRICS and METRICS[name].reduces_over_dataset:
            table = METRICS[name].reduce_dataset(table, GROUP_COLUMNS[:-1])
    return table


def write_tables(files: Sequence[str | os.PathLike], metrics_path: str | os.PathLike,
              summary_path: str | os.PathLike, summary_md_path: str | os.PathLike,
              metadata: dict[str, str], title: str = "",
              comparisons_path: str | os.PathLike | None = None,
              summary_html_path: str | os.PathLike | None = None) -> pd.DataFrame:
    """Write metrics.parquet, summary.parquet, comparisons.parquet (where a path is given) and summary.md (the
    summary, then the paired comparisons and the ranking), each atomically, and return the summary."""
    # Imported here: vislib.metrics imports torch (3 s), which the chart jobs importing this module never need.
    from vislib.metrics import METRICS

    table = reduce_over_datasets(collect(files))
    write_parquet(metrics_path, table, metadata)
    names = set(table.column("metric").to_pylist())
    directions = {n: METRICS[n].higher_is_better for n in names if n in METRICS}
    binary = {n: METRICS[n].binary for n in names if n in METRICS}
    summary = summarize(table, higher_is_better=directions, binary=binary)
    write_parquet(summary_path, pa.Table.from_pandas(summary, preserve_index=False), metadata)
    paired = table.select([*FAMILY_COLUMNS, "method", "image_id", "value"]).to_pandas()
    comparisons = compare_methods(paired, binary=binary, higher_is_better=directions)
    if comparisons_path is not None:
        write_parquet(comparisons_path, pa.Table.from_pandas(comparisons, COMPARISONS_SCHEMA, preserve_index=False),
                      metadata)
    write_text(summary_md_path, summary_markdown(summary, title)
               + comparisons_markdown(comparisons, rank_methods(summary, comparisons)))
    if summary_html_path is not None:
        write_text(summary_html_path, summary_html(summary, title))
    return summary
