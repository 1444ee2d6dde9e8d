"""Resume after SIGKILL: the rerun completes, keeps finished shards, and ends with the tables of an
uninterrupted run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from tests.workflow_helpers import REPO, snakemake, tiny_config
from vislib.io import load_shard

pytestmark = pytest.mark.workflow

TIMING_COLUMNS = ["seconds_per_image"]
# Every run here builds the table: what the kill can corrupt and the resume must finish are the shards and the
# table; the figures drawn from them would only add jobs.
TABLE = "results/tiny/metrics.parquet"


def _config(shard_size: int) -> dict:
    """The tiny demo with its untrained model only and 4 images, so a run is a handful of short jobs."""
    config = tiny_config()
    del config["models"]["demonet"], config["experiments"]["tiny"]["models"]["demonet"]
    config["datasets"]["shapes"]["limit"] = 4
    config["shard_size"] = shard_size
    config["batch_size"] = shard_size
    return config


def _table(workdir) -> pd.DataFrame:
    frame = pq.read_table(workdir / "results" / "tiny" / "metrics.parquet").to_pandas()
    key = ["model", "layer", "method", "image_id", "metric"]
    return frame.drop(columns=TIMING_COLUMNS).sort_values(key).reset_index(drop=True)


def _assert_same_tables(a, b) -> None:
    assert list(a.columns) == list(b.columns)
    for column in a.columns:
        if a[column].dtype.kind == "f":
            np.testing.assert_allclose(a[column], b[column], rtol=1e-5, atol=1e-6, equal_nan=True)
        else:
            assert a[column].tolist() == b[column].tolist(), column


def _metric_shards(workdir) -> list:
    return sorted((workdir / "results" / "tiny" / "metrics").rglob("shard_*.parquet"))


def test_sigkill_mid_run_then_rerun(tmp_path):
    reference = tmp_path / "reference"
    reference.mkdir()
    snakemake(reference, _config(shard_size=2), TABLE)

    # The killed run is in per-image mode (shard size 1): its tables must equal the sharded reference's.
    # It starts from the reference's prepared dataset, so the kill lands among explain/evaluate jobs.
    workdir = tmp_path / "killed"
    for prepared in ("resources", "results/image_lists"):
        shutil.copytree(reference / prepared, workdir / prepared)
    config = _config(shard_size=1)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), "--cores", "2", TABLE]
    # Own process group, so SIGKILL takes snakemake and every job it started, as a node failure would.
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not _metric_shards(workdir) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = _metric_shards(workdir)
    assert 1 <= len(finished) < 4, "the kill should land after the first metric shard and before the last"
    assert not (workdir / "results" / "tiny" / "metrics.parquet").exists()
    # Outputs are written under a temporary name and renamed, so whatever exists is whole.
    for path in (workdir / "results").rglob("*"):
        if path.suffix == ".npz":
            load_shard(path)
        elif path.suffix == ".parquet":
            pq.read_table(path)
    mtimes = {p: p.stat().st_mtime_ns for p in finished}

    # SIGKILL leaves Snakemake's directory lock behind; --unlock is the documented first step of a resume.
    snakemake(workdir, config, "--unlock")
    snakemake(workdir, config, TABLE)
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items()), "finished shards were redone"
    assert len(_metric_shards(workdir)) == 4
    _assert_same_tables(_table(workdir), _table(reference))
    dry = snakemake(workdir, config, "-n", TABLE)
    assert "Nothing to be done" in dry.stdout + dry.stderr
