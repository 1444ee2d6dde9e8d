"""Cluster support: resource names a profile may use, and reading why SLURM killed a job from its log."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.workflow_helpers import REPO, snakemake, tiny_config
from vislib.cluster import KNOWN_RESOURCES, check_resource_names, kill_summary, slurm_attempt
from vislib.errors import ConfigError

# Lines as slurmd 22.05 and Snakemake 9 write them into a job's SLURM log (.snakemake/slurm_logs/...).
JOB_HEADER = """[Mon Nov 23 14:31:49 2026]
rule explain:
    output: results/tiny/heatmaps/shapes/demonet/features.14/gradcam/shard_0.npz
    log: logs/explain/tiny/shapes/demonet/features.14/gradcam/shard_0.log
    jobid: 0
    wildcards: experiment=tiny, dataset=shapes, model=demonet, layer=features.14, method=gradcam, shard=0
    resources: tmpdir=/tmp, mem_mb=6000, mem=6000 MB, mem_mib=5723, runtime=120, cpus_per_task=1
"""
# Log lines as slurmstepd writes them.
MEMORY_KILLED = JOB_HEADER + (
    "slurmstepd-vm: error: StepId=11.0 exceeded memory limit (522600448 > 471859200), being killed\n"
    """slurmstepd-vm: error: Exceeded job memory limit
srun: error: vm: task 0: Killed
""")
TIME_KILLED = JOB_HEADER + """srun: Job step aborted: Waiting up to 32 seconds for job step to finish.
slurmstepd-vm: error: *** STEP 12.0 ON vm CANCELLED AT 2026-11-23T14:35:45 DUE TO TIME LIMIT ***
slurmstepd-vm: error: *** JOB 12 ON vm CANCELLED AT 2026-11-23T14:35:45 DUE TO TIME LIMIT ***
"""
# Killed before Snakemake inside the job logged anything: only the path says which job it was.
KILLED_AT_START = """slurmstepd-vm: error: StepId=9.batch exceeded memory limit (162394112 > 157286400), being killed
slurmstepd-vm: error: *** JOB 9 ON vm CANCELLED AT 2026-11-23T14:31:19 ***
"""
JOB_DIR = "rule_explain/experiment_tiny_dataset_shapes_model_demonet_layer_features.14_method_gradcam_shard_0"


def _log(tmp_path, job_id: int, text: str, job_dir: str = JOB_DIR):
    path = tmp_path / job_dir / f"{job_id}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return slurm_attempt(path, tmp_path)


def test_profiles_use_only_known_resources():
    for profile in ("default", "slurm"):
        settings = yaml.safe_load((REPO / "profiles" / profile / "config.yaml").read_text())
        check_resource_names({
            "resources": settings.get("resources", {}),
            "default-resources": settings.get("default-resources", {}),
            **{f"set-resources of rule {rule}": names for rule, names in settings.get("set-resources", {}).items()},
        })


def test_unknown_resource_names_the_resource_where_and_the_valid_ones():
    with pytest.raises(ConfigError) as caught:
        check_resource_names({"default-resources": ["mem_mb", "mem_gb"], "resources": ["gpus"]})
    message = str(caught.value)
    assert "mem_gb (in default-resources)" in message and "gpus (in resources)" in message
    assert "mem_mb" in message.split("valid resources are:")[1] and "gpu," in message
    assert {"gpu", "mem_mb", "runtime", "cpus_per_task", "slurm_partition", "tmpdir"} <= KNOWN_RESOURCES


def test_slurm_log_says_what_killed_the_job(tmp_path):
    memory = _log(tmp_path, 11, MEMORY_KILLED)
    assert (memory.killed_for, memory.rule, memory.mem_mb, memory.runtime) == ("memory", "explain", 6000, 120)
    assert memory.job == JOB_DIR and memory.outputs[0].endswith("gradcam/shard_0.npz")
    assert _log(tmp_path, 12, TIME_KILLED).killed_for == "time"
    assert _log(tmp_path, 13, JOB_HEADER + "Finished jobid: 0 (Rule: explain)\n").killed_for is None
    early = _log(tmp_path, 9, KILLED_AT_START, "rule_image_list/dataset_shapes")
    assert (early.killed_for, early.rule, early.mem_mb, early.outputs) == ("memory", "image_list", None, ())


def test_summary_names_jobs_that_never_finished_and_the_fix(tmp_path):
    never = [_log(tmp_path, 1, KILLED_AT_START), _log(tmp_path, 2, MEMORY_KILLED)]
    late = [_log(tmp_path, 3, TIME_KILLED, "rule_evaluate/shard_1")]
    lines = kill_summary(never + late, output_exists=lambda path: False)
    assert lines == [
        f"{JOB_DIR}: SLURM killed 2 attempt(s) for exceeding its memory (last request mem_mb=6000); "
        "give it more with --set-resources explain:mem_mb=<MB>",
        "rule_evaluate/shard_1: SLURM killed 1 attempt(s) for exceeding its time limit (last request "
        "runtime=120 min); give it more with --set-resources explain:runtime=<minutes>",
    ]
    # A job whose outputs exist made it on a later attempt (whose log the plugin deleted): no hint for it.
    assert kill_summary(never, output_exists=lambda path: True) == []
    assert kill_summary([_log(tmp_path, 4, JOB_HEADER)], output_exists=lambda path: False) == []


@pytest.mark.workflow
def test_a_profile_with_an_unknown_resource_fails_at_start(tmp_path):
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "config.yaml").write_text(yaml.safe_dump({
        "default-resources": {"mem_mb": 2000, "mem_gb": 4}, "set-resources": {"explain": {"gpus": 1}}}))
    # --workflow-profile none as for a cluster run: the user's profile alone sets the resources.
    proc = snakemake(tmp_path, tiny_config(), "-n", "--profile", str(profile), "--workflow-profile", "none",
                     check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert ("unknown resource name(s): mem_gb (in default-resources); gpus (in set-resources of rule explain)"
            in output), output[-3000:]
    assert "valid resources are:" in output


def test_every_cluster_rule_asks_for_more_memory_and_time_on_each_retry():
    """The SLURM profile's retries only help if a rule's mem_mb and runtime grow with `attempt`."""
    sources = "\n".join(path.read_text() for path in sorted((REPO / "rules").glob("*.smk")))
    local = set(re.findall(r"^localrules:\n((?:    \w+,?\n)+)", sources, re.M)[0].replace(",", "").split())
    rules = re.findall(r"^(?:rule|checkpoint) (\w+):\n((?:    .*\n|\n)+?)(?=^\S|\Z)", sources, re.M)
    assert len(rules) > 15
    fixed = [f"{name}: {line.strip()}" for name, body in rules if name not in local for line in body.splitlines()
             if re.match(r"\s+(mem_mb|runtime)=", line) and "attempt" not in line and "scaled(" not in line]
    assert not fixed, fixed


def test_scaled_resources_grow_with_the_attempt():
    """rules/common/paths.smk's `scaled`, which the rules' mem_mb and runtime use, multiplies by the attempt."""
    namespace = {"DATA": "data"}
    exec((REPO / "rules" / "common" / "paths.smk").read_text(), namespace)
    scaled = namespace["scaled"]
    assert [scaled(3000)(None, attempt) for attempt in (1, 2, 3)] == [3000, 6000, 9000]
    per_job = scaled(lambda wildcards: wildcards["n"] * 10)
    assert per_job({"n": 4}, 2) == 80


def test_every_rule_that_runs_code_has_a_log_and_a_benchmark():
    sources = "\n".join(path.read_text() for path in sorted((REPO / "rules").glob("*.smk")))
    rules = re.findall(r"^(?:rule|checkpoint) (\w+):\n((?:    .*\n|\n)+?)(?=^\S|\Z)", sources, re.M)
    working = [(name, body) for name, body in rules if re.search(r"^    (script|run|shell):", body, re.M)]
    assert len(working) > 15
    missing = [f"{name}: {part}" for name, body in working for part in ("log:", "benchmark:", "resources:")
               if f"\n    {part}" not in f"\n{body}"]
    assert not missing, missing


@pytest.mark.workflow
def test_job_threads_reach_the_slurm_request_of_explain_and_evaluate(tmp_path):
    """The SLURM profile's default `cpus_per_task: 1` must not win over the config's `job_threads`: the jobs run
    that many torch and decoding threads."""
    config = tiny_config()
    config["job_threads"] = 3
    # The image-list checkpoint satisfied by hand (docs/cluster.md, "Large DAGs"), so the dry run plans the shards.
    (tmp_path / "resources/datasets/shapes").mkdir(parents=True)
    (tmp_path / "resources/datasets/shapes/prepared.json").write_text("{}")
    (tmp_path / "results/image_lists").mkdir(parents=True)
    (tmp_path / "results/image_lists/shapes.txt").write_text("\n".join(str(i) for i in range(12)) + "\n")
    proc = snakemake(tmp_path, config, "-n", "--profile", str(REPO / "profiles" / "slurm"), "--workflow-profile",
                     "none", "results/tiny/metrics/shapes/demonet_random/features.10/gradcam/shard_0.parquet")
    jobs = re.findall(r"^ *rule (\w+):\n((?: {8}.*\n)+)", proc.stdout + proc.stderr, re.M)
    requests = {name: re.search(r"cpus_per_task=(\d+)", body).group(1) for name, body in jobs
                if name in ("explain", "evaluate")}
    assert requests == {"explain": "3", "evaluate": "3"}, proc.stdout[-3000:]
