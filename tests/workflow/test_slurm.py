"""The tiny demo, and jobs that run out of memory, through a real SLURM (sbatch) with profiles/slurm.

Needs a running cluster: `tests/slurm_cluster.sh start` as root (`.ci/run` does this). Skipped, with
the reason, only where the SLURM client is missing or no node is up.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from tests.workflow_helpers import REPO, snakemake, tiny_config

pytestmark = pytest.mark.workflow

# The plugin checks the queue this many seconds after a submission, then 10 s later than the last time while
# nothing has finished (10 s, then 21 s, 32 s, ...). A workflow job here takes 9-13 s (two Snakefile parses inside
# its sbatch job, then the job): with the profile's 10 s each layer of the DAG waited for the 31 s check; at 14 s the
# first check finds it done.
FAST_STATUS_CHECKS = ("--slurm-init-seconds-before-status-checks", "14")


def _cluster_problem() -> str | None:
    """Why the SLURM test cannot run here, or None."""
    missing = [tool for tool in ("sbatch", "sinfo", "squeue") if shutil.which(tool) is None]
    if missing:
        return (f"SLURM client tools not installed ({', '.join(missing)}); install slurm-client and run "
                "tests/slurm_cluster.sh")
    proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, timeout=30)
    states = proc.stdout.split()
    # A node running jobs (mix, alloc, completing) is up: the other test of this file may hold it right now.
    if proc.returncode != 0 or not {"idle", "mix", "alloc", "comp"} & set(states):
        return (f"no SLURM node up (sinfo: {proc.stdout.strip() or proc.stderr.strip()}); "
                "run tests/slurm_cluster.sh start")
    return None


@pytest.fixture(scope="module")
def cluster():
    problem = _cluster_problem()
    if problem:
        pytest.skip(problem)


@pytest.fixture(scope="module")
def memory_enforced(cluster):
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    if "OverMemoryKill" not in config and "task/cgroup" not in config:
        pytest.skip("this SLURM does not enforce --mem (neither OverMemoryKill nor task/cgroup); "
                    "start it with tests/slurm_cluster.sh")


def _small_demo() -> dict:
    """The tiny demo cut to its untrained model and one 5-image shard: each sbatch job costs a start-up."""
    config = tiny_config()
    del config["models"]["demonet"], config["experiments"]["tiny"]["models"]["demonet"]
    config["datasets"]["shapes"]["limit"] = 5
    return config


def test_tiny_demo_runs_through_sbatch(cluster, tmp_path):
    tick = time.monotonic()
    # The table and the figure grid: four layers of jobs (prepare, image list, the shard, aggregate + grid); the
    # charts drawn from the table would add a fifth layer and nothing SLURM-specific.
    targets = ("results/tiny/metrics.parquet", "results/tiny/figures/shapes/demonet_random/features.10/grid.png")
    proc = snakemake(tmp_path, _small_demo(), "--profile", str(REPO / "profiles" / "slurm"),
                     "--workflow-profile", "none", "--jobs", "4", "--slurm-keep-successful-logs", *FAST_STATUS_CHECKS,
                     *targets)
    seconds = time.monotonic() - tick
    logs = sorted((tmp_path / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert logs, f"no job went through SLURM:\n{(proc.stdout + proc.stderr)[-3000:]}"
    # explain + evaluate of the shard were one submission (profiles/slurm groups them).
    assert "group_shard_evaluate_explain" in {q.name for p in logs for q in p.parents}, [str(p) for p in logs]
    frame = pq.read_table(tmp_path / "results" / "tiny" / "metrics.parquet").to_pandas()
    # 5 images x 2 metrics, one model, one method.
    assert len(frame) == 10 and set(frame["model"]) == {"demonet_random"}
    print(f"tiny demo through SLURM: {seconds:.1f} s, {len(logs)} sbatch jobs")


HOG_MB = 800
# Both rules hold HOG_MB (plus ~170 MB of the Snakemake job step around them) and scale their request with
# the attempt, as the workflow's rules do: 400/800/1200 MB fits on the third attempt, 200/400/600 never does.
HOG_SNAKEFILE = f"""
include: "{REPO / 'rules' / 'cluster.smk'}"

HOLD = "{sys.executable} -c 'import time; block = b\\"1\\" * ({HOG_MB} << 20); time.sleep(5)'"

rule fits_on_third_attempt:
    output: "fits.txt"
    resources:
        mem_mb=lambda wildcards, attempt: 400 * attempt,
        runtime=lambda wildcards, attempt: 5 * attempt,
    shell: HOLD + " && touch {{output}}"

rule never_fits:
    output: "never.txt"
    resources:
        mem_mb=lambda wildcards, attempt: 200 * attempt,
        runtime=lambda wildcards, attempt: 5 * attempt,
    shell: HOLD + " && touch {{output}}"
"""


def test_out_of_memory_is_retried_with_more_then_fails_clearly(memory_enforced, tmp_path):
    (tmp_path / "Snakefile").write_text(HOG_SNAKEFILE)
    tick = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(tmp_path / "Snakefile"), "--directory", str(tmp_path),
         "--profile", str(REPO / "profiles" / "slurm"), "--workflow-profile", "none", "--keep-going",
         # The hogs' attempts end within ~10 s: the checks at 1 s and 12 s catch each (66 s here; 88 s at 14 s).
         "--slurm-init-seconds-before-status-checks", "1", "fits.txt", "never.txt"],
        capture_output=True, text=True, timeout=900)
    seconds = time.monotonic() - tick
    output = proc.stdout + proc.stderr
    logs = tmp_path / ".snakemake" / "slurm_logs"

    def submitted(rule):
        """mem_mb of each submission of `rule`, in order, as Snakemake logged it."""
        return [int(m) for m in re.findall(rf"rule {rule}:\n(?:\s+\w+: .*\n)*?\s+resources: .*?mem_mb=(\d+)", output)]

    def killed(rule):
        """mem_mb of each attempt of `rule` whose SLURM log is left (successful ones are deleted) and was killed."""
        texts = [p.read_text() for p in sorted(logs.glob(f"rule_{rule}/*.log"), key=lambda p: int(p.stem))]
        return [int(re.search(r"mem_mb=(\d+)", t).group(1)) for t in texts if "exceeded memory limit" in t]

    # profiles/slurm's retries: 2 -> up to three submissions, each asking for more.
    assert submitted("fits_on_third_attempt") == [400, 800, 1200], output[-3000:]
    assert killed("fits_on_third_attempt") == [400, 800] and (tmp_path / "fits.txt").exists()
    assert submitted("never_fits") == [200, 400, 600] and killed("never_fits") == [200, 400, 600], output[-3000:]
    assert proc.returncode != 0 and not (tmp_path / "never.txt").exists()
    assert ("rule_never_fits: SLURM killed 3 attempt(s) for exceeding its memory (last request mem_mb=600); "
            "give it more with --set-resources never_fits:mem_mb=<MB>") in proc.stderr, output[-3000:]
    assert "rule_fits_on_third_attempt: SLURM killed" not in proc.stderr
    print(f"out-of-memory retries through SLURM: {seconds:.1f} s")
