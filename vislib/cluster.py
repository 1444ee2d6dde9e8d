"""Cluster runs: which resource names a profile may set, and why SLURM killed a job (read from its log)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from vislib.errors import ConfigError

SNAKEMAKE_RESOURCES = frozenset({
    "_cores", "_nodes", "_job_count", "threads", "mem", "mem_mb", "mem_mib", "disk", "disk_mb", "disk_mib",
    "tmpdir", "runtime",
})
"""Resources Snakemake itself defines or fills in."""

WORKFLOW_RESOURCES = frozenset({"gpu"})
"""Resources the rules declare beyond Snakemake's own."""

SLURM_RESOURCES = frozenset({
    "slurm_partition", "slurm_account", "slurm_extra", "slurm_cluster", "clusters", "constraint", "qos",
    "cpus_per_task", "cpus_per_gpu", "mem_mb_per_cpu", "nodes", "tasks", "tasks_per_node", "tasks_per_gpu",
    "gres", "gpu_model", "mpi",
})
"""Resources snakemake-executor-plugin-slurm turns into sbatch options."""

KNOWN_RESOURCES = SNAKEMAKE_RESOURCES | WORKFLOW_RESOURCES | SLURM_RESOURCES


def check_resource_names(where: Mapping[str, Iterable[str]]) -> None:
    """Raise ConfigError for a resource name nobody reads; `where` maps a setting name to its resource names."""
    problems = []
    for setting, names in where.items():
        unknown = sorted(set(names) - KNOWN_RESOURCES)
        if unknown:
            problems.append(f"{', '.join(unknown)} (in {setting})")
    if problems:
        valid = ", ".join(sorted(n for n in KNOWN_RESOURCES if not n.startswith("_")))
        # Snakemake passes an unknown name through and the executor ignores it, so a typo such as
        # mem_gb or gpus would silently give jobs the default memory or no GPU limit at all.
        raise ConfigError(f"unknown resource name(s): {'; '.join(problems)}. Nothing reads them, so they would "
                          f"be ignored; valid resources are: {valid}")


@dataclass(frozen=True)
class SlurmAttempt:
    """One SLURM submission of a job: which job, what it asked for, and what SLURM killed it for (if it did)."""

    job: str  # the job's log directory under the SLURM log dir: rule_<rule>/<wildcards> or group_<group>/...
    rule: str
    outputs: tuple[str, ...]
    mem_mb: int | None
    runtime: int | None
    killed_for: str | None  # "memory", "time" or None


MEMORY_KILL = re.compile(r"exceeded (job )?memory limit|oom[-_ ]kill", re.IGNORECASE)
TIME_KILL = re.compile(r"CANCELLED AT \S+ DUE TO TIME LIMIT")
RULE_LINE = re.compile(r"^(?:local)?rule (\w+):", re.MULTILINE)
OUTPUT_LINE = re.compile(r"^\s+output: (.*)$", re.MULTILINE)
RESOURCES_LINE = re.compile(r"^\s+resources: (.*)$", re.MULTILINE)


def slurm_attempt(log: Path, logdir: Path) -> SlurmAttempt:
    """Read one SLURM log of snakemake-executor-plugin-slurm (`logdir`/rule_<rule>/<wildcards>/<jobid>.log)."""
    text = log.read_text(errors="replace")
    job = log.parent.relative_to(logdir).as_posix()
    killed_for = "memory" if MEMORY_KILL.search(text) else "time" if TIME_KILL.search(text) else None
    # A job killed while Snakemake was still starting inside it has logged no rule yet: take it from the path.
    rule = RULE_LINE.search(text)
    outputs = OUTPUT_LINE.search(text)
    resources = RESOURCES_LINE.search(text)
    values = dict(re.findall(r"(\w+)=([^,\s]+)", resources.group(1))) if resources else {}
    return SlurmAttempt(job, rule.group(1) if rule else job.split("/")[0].split("_", 1)[-1],
                        tuple(outputs.group(1).split(", ")) if outputs else (),
                        _int_or_none(values.get("mem_mb")), _int_or_none(values.get("runtime")), killed_for)


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def kill_summary(attempts: Iterable[SlurmAttempt],
                 output_exists: Callable[[str], bool] = os.path.exists) -> list[str]:
    """One line per job SLURM killed that never finished (attempts come first to last): attempts and the fix."""
    by_job: dict[str, list[SlurmAttempt]] = {}
    for attempt in attempts:
        by_job.setdefault(attempt.job, []).append(attempt)
    lines = []
    for job, tries in by_job.items():
        last = tries[-1]
        outputs = next((t.outputs for t in reversed(tries) if t.outputs), ())
        # The plugin deletes a successful attempt's log, so a job whose outputs exist was killed but then made it.
        if last.killed_for is None or (outputs and all(output_exists(o) for o in outputs)):
            continue
        if last.killed_for == "memory":
            what, asked, fix = "its memory", f"mem_mb={last.mem_mb}", f"--set-resources {last.rule}:mem_mb=<MB>"
        else:
            what, asked = "its time limit", f"runtime={last.runtime} min"
            fix = f"--set-resources {last.rule}:runtime=<minutes>"
        killed = sum(t.killed_for is not None for t in tries)
        lines.append(f"{job}: SLURM killed {killed} attempt(s) for exceeding {what} (last request "
                     f"{asked}); give it more with {fix}")
    return lines
