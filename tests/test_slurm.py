"""The tiny demo through a real SLURM (sbatch) with the repository's profiles/slurm.

Needs a running cluster: `tests/slurm_cluster.sh start` as root (`.ci/run` does this). Skipped, with
the reason, only where the SLURM client is missing or no node is up.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import pyarrow.parquet as pq
import pytest

from tests.workflow_helpers import REPO, snakemake, tiny_config

pytestmark = pytest.mark.workflow


def _cluster_problem() -> str | None:
    """Why the SLURM test cannot run here, or None."""
    missing = [tool for tool in ("sbatch", "sinfo", "squeue") if shutil.which(tool) is None]
    if missing:
        return f"SLURM client tools not installed ({', '.join(missing)}); install slurm-client and run tests/slurm_cluster.sh"
    proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, timeout=30)
    states = proc.stdout.split()
    if proc.returncode != 0 or not {"idle", "mix"} & set(states):
        return f"no idle SLURM node (sinfo: {proc.stdout.strip() or proc.stderr.strip()}); run tests/slurm_cluster.sh start"
    return None


@pytest.fixture(scope="module")
def cluster():
    problem = _cluster_problem()
    if problem:
        pytest.skip(problem)


def _small_demo() -> dict:
    """The tiny demo cut to its untrained model and one 5-image shard: each sbatch job costs a start-up."""
    config = tiny_config()
    del config["models"]["demonet"], config["experiments"]["tiny"]["models"]["demonet"]
    config["datasets"]["shapes"]["limit"] = 5
    return config


def test_tiny_demo_runs_through_sbatch(cluster, tmp_path):
    tick = time.monotonic()
    proc = snakemake(tmp_path, _small_demo(), "--profile", str(REPO / "profiles" / "slurm"),
                     "--workflow-profile", "none", "--jobs", "4", "--slurm-keep-successful-logs")
    seconds = time.monotonic() - tick
    logs = sorted((tmp_path / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert logs, f"no job went through SLURM:\n{(proc.stdout + proc.stderr)[-3000:]}"
    # explain + evaluate of the shard were one submission (profiles/slurm groups them).
    assert "group_shard_evaluate_explain" in {q.name for p in logs for q in p.parents}, [str(p) for p in logs]
    frame = pq.read_table(tmp_path / "results" / "tiny" / "metrics.parquet").to_pandas()
    # 5 images x 2 metrics, one model, one method.
    assert len(frame) == 10 and set(frame["model"]) == {"demonet_random"}
    print(f"tiny demo through SLURM: {seconds:.1f} s, {len(logs)} sbatch jobs")
