"""Aggregation: per-shard metric tables -> metrics.parquet, summary.parquet and summary.md."""

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

GROUP_COLUMNS = ["dataset", "model", "layer", "method", "metric"]


def collect(files: Sequence[str | os.PathLike]) -> pa.Table:
    """Read all per-shard metric tables into one table (columns unified across shards)."""
    if not files:
        raise DataError("no metric shards to aggregate; check that the experiment lists methods and metrics")
    schema = pa.unify_schemas([pq.read_schema(f) for f in files])
    table = pads.dataset([str(f) for f in files], schema=schema, format="parquet").to_table()
    return table.replace_schema_metadata(None)


def bootstrap_ci(values: np.ndarray, n_resamples: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (NaNs dropped; NaN if fewer than 2 values)."""
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_resamples, len(values)))].mean(1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def summarize(table: pa.Table | pd.DataFrame, seed: int = 0,
              higher_is_better: dict[str, bool] | None = None) -> pd.DataFrame:
    """Mean, 95% bootstrap CI, count and failures per dataset/model/layer/method/metric, and which way each
    metric improves (`higher_is_better`, None where not given)."""
    frame = table.to_pandas() if isinstance(table, pa.Table) else table
    directions = higher_is_better or {}
    rows = []
    for key, group in frame.groupby(GROUP_COLUMNS, sort=True):
        values = group["value"].to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        low, high = bootstrap_ci(values, seed=seed)
        seconds = group["seconds_per_image"].to_numpy(dtype=float)
        rows.append({**dict(zip(GROUP_COLUMNS, key, strict=True)),
                     "mean": float(finite.mean()) if len(finite) else float("nan"),
                     "higher_is_better": directions.get(key[-1]),
                     "ci_low": low, "ci_high": high, "n": int(len(finite)),
                     "n_undefined": int(len(values) - len(finite)),
                     "seconds_per_image": float(np.nanmean(seconds)) if np.isfinite(seconds).any() else float("nan")})
    return pd.DataFrame(rows, columns=[*GROUP_COLUMNS, "higher_is_better", "mean", "ci_low", "ci_high", "n",
                                       "n_undefined",
                                       "seconds_per_image"])


def summary_markdown(summary: pd.DataFrame, title: str = "") -> str:
    """The summary as a Markdown table: value as mean [CI] (n); arrows say whether higher or lower is better."""
    lines = [f"# {title}", ""] if title else []
    lines += ["| dataset | model | layer | method | metric | mean | 95% CI | n | undefined | s/image |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for row in summary.itertuples(index=False):
        ci = "–" if np.isnan(row.ci_low) else f"[{row.ci_low:.3f}, {row.ci_high:.3f}]"
        better = getattr(row, "higher_is_better", None)
        arrow = "" if better is None or pd.isna(better) else (" ↑" if better else " ↓")
        lines.append(f"| {row.dataset} | {row.model} | {row.layer} | {row.method} | {row.metric}{arrow} | "
                     f"{row.mean:.3f} | {ci} | {row.n} | {row.n_undefined} | {row.seconds_per_image:.4f} |")
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
              metadata: dict[str, str], title: str = "") -> pd.DataFrame:
    """Write metrics.parquet, summary.parquet and summary.md (each atomically) and return the summary."""
    # Imported here: vislib.metrics imports torch (3 s), which the chart jobs importing this module never need.
    from vislib.metrics import METRICS

    table = reduce_over_datasets(collect(files))
    write_parquet(metrics_path, table, metadata)
    names = set(table.column("metric").to_pylist())
    summary = summarize(table, higher_is_better={n: METRICS[n].higher_is_better for n in names if n in METRICS})
    write_parquet(summary_path, pa.Table.from_pandas(summary, preserve_index=False), metadata)
    write_text(summary_md_path, summary_markdown(summary, title))
    return summary
