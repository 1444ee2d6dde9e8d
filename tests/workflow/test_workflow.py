"""The Snakefile end to end on the tiny config: outputs, schema, provenance, reruns, bad config."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.workflow_helpers import snakemake
from tests.workflow_helpers import tiny_config as _tiny_config
from vislib.config import check_config
from vislib.errors import VislibError
from vislib.io import load_shard, read_metadata

pytestmark = pytest.mark.workflow

EXPECTED_COLUMNS = ["experiment", "dataset", "model", "layer", "method", "image_id", "target", "metric", "value"]


def tiny_config() -> dict:
    """The tiny config on 7 images: shards of 5 and 2 per model, so the last one is partial as with any count, and
    each shard is an explain and an evaluate job fewer (each job is seconds of start-up)."""
    config = _tiny_config()
    config["datasets"]["shapes"]["limit"] = 7
    return config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("workflow")
    snakemake(workdir, tiny_config())
    return workdir


def test_outputs_schema_and_provenance(finished_run):
    results = finished_run / "results" / "tiny"
    table = pq.read_table(results / "metrics.parquet")
    for column in EXPECTED_COLUMNS + ["reason", "target_mode", "resize", "pointing_tolerance_px"]:
        assert column in table.column_names
    frame = table.to_pandas()
    # 7 images x 2 metrics x 2 models, one method.
    assert len(frame) == 28
    assert set(frame["model"]) == {"demonet", "demonet_random"}
    defined = frame["value"].notna()
    assert frame.loc[defined, "value"].between(0, 1).all()
    assert (frame.loc[~defined, "reason"] != "").all()
    meta = read_metadata(results / "metrics.parquet")
    for key in ["vislib_version", "git_commit", "config_hash", "torch_version", "torchvision_version", "device"]:
        assert key in meta
    assert (results / "summary.md").read_text().count("| shapes |") == 4
    assert (results / "figures" / "shapes" / "demonet" / "features.14" / "grid.png").stat().st_size > 10_000
    shard = load_shard(results / "heatmaps" / "shapes" / "demonet" / "features.14" / "gradcam" / "shard_1.npz")
    assert shard.maps.dtype == np.float16 and shard.maps.shape == (2, 8, 8) and shard.seconds > 0
    assert (finished_run / "logs" / "train_model" / "demonet.log").read_text().count("val_acc") == 1


def test_complete_run_has_nothing_to_do(finished_run):
    proc = snakemake(finished_run, tiny_config(), "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_report_holds_every_experiments_tables_and_figures(finished_run):
    proc = snakemake(finished_run, tiny_config(), "--report", "report.html")
    out = proc.stdout + proc.stderr
    report = finished_run / "report.html"
    assert report.stat().st_size > 100_000
    for name in ("summary.html", "grid.png", "metrics.png", "comparisons.png"):
        assert f"Adding {name}" in out, out[-2000:]
    # Snakemake's default disk_mb reads input sizes while the report builds its DAG, which warned once per job.
    assert "never awaited" not in out, out[-2000:]


def test_changing_one_models_spec_reruns_only_its_jobs(finished_run, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(finished_run, workdir, symlinks=True)
    config = tiny_config()
    config["models"]["demonet_random"]["num_classes"] = 5
    proc = snakemake(workdir, config, "-n", "--quiet", "rules")
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, re.M))
    assert counts.get("explain") == "2" and counts.get("evaluate") == "2"
    assert "train_model" not in counts and "prepare_dataset" not in counts


def test_changing_one_methods_parameter_reruns_only_its_jobs(finished_run, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(finished_run, workdir, symlinks=True)
    config = tiny_config()
    config["methods"]["scorecam"] = {"top_channels": 8}
    config["experiments"]["tiny"]["methods"].append("scorecam")
    # Score-CAM's shards and the table; the figures, drawn or not, are out of date after the change either way.
    snakemake(workdir, config, "results/tiny/metrics.parquet")
    config["methods"]["scorecam"]["top_channels"] = 16
    proc = snakemake(workdir, config, "-n", "--quiet", "rules")
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, re.M))
    # 2 shards x 2 models of Score-CAM, then what reads them; Grad-CAM's shards and the models stay.
    assert counts.get("explain") == "4" and counts.get("evaluate") == "4", proc.stdout
    assert counts.get("aggregate") == "1" and counts.get("figure_grid") == "2", proc.stdout
    assert "train_model" not in counts and "prepare_dataset" not in counts
    outputs = re.findall(r"^\s+output: (.*)$", snakemake(workdir, config, "-n").stdout, re.M)
    assert outputs and not [out for out in outputs if "/gradcam/" in out]


def test_unknown_names_fail_before_any_job(tmp_path):
    # The config check names the bad name and the valid one (each case in-process: every snakemake start costs
    # seconds); one run through snakemake shows that its message reaches the user and that no job ran.
    for section, key, bad, valid in [("models", "demonet", "demonett", "demonet"),
                                     ("methods", None, "gradcma", "gradcam")]:
        config = tiny_config()
        if section == "models":
            config["models"][key]["arch"] = bad
        else:
            config["methods"] = {bad: {}}
            config["experiments"]["tiny"]["methods"] = [bad]
        with pytest.raises(VislibError, match=rf"{bad}.*{valid}|{valid}.*{bad}"):
            check_config(config)
    config = tiny_config()
    config["experiments"]["tiny"]["models"]["demonet"] = ["features.99"]
    proc = snakemake(tmp_path, config, "-n", check=False)
    assert proc.returncode != 0 and "invalid config" in proc.stderr + proc.stdout
    assert "features.99" in proc.stderr + proc.stdout
    assert not (tmp_path / "results").exists()


def test_undecodable_image_recorded_as_failed_and_run_goes_on(tmp_path):
    config = tiny_config()
    config["experiments"]["tiny"]["models"] = {"demonet_random": ["features.14"]}
    # The trained model is in no experiment here: without it the run skips its training job.
    del config["models"]["demonet"]
    snakemake(tmp_path, config, "results/image_lists/shapes.txt")
    (tmp_path / "resources" / "datasets" / "shapes" / "images" / "val" / "000003.png").write_bytes(b"broken")
    # The table and the figure grid, which read the broken image's shard.
    snakemake(tmp_path, config, "results/tiny/metrics.parquet",
              "results/tiny/figures/shapes/demonet_random/features.14/grid.png")
    frame = pq.read_table(tmp_path / "results" / "tiny" / "metrics.parquet").to_pandas()
    failed = frame[frame["image_id"] == 3]
    assert len(failed) == 2 and failed["value"].isna().all()
    assert failed["reason"].str.contains("cannot be decoded").all()
    assert frame[frame["image_id"] != 3]["value"].notna().all()

