# Cluster support shared by every run: resource names checked at start, SLURM kills explained on failure.
import sys
import time
from pathlib import Path

from vislib.cluster import check_resource_names, kill_summary, slurm_attempt
from vislib.errors import VislibError

RUN_STARTED = time.time()

try:
    check_resource_names({
        "resources": workflow.resource_settings.resources.keys(),
        "default-resources": (workflow.resource_settings.default_resources or {}).keys(),
        **{f"set-resources of rule {rule}": resources.keys()
           for rule, resources in workflow.resource_settings.overwrite_resources.items()},
    })
except VislibError as exc:
    raise WorkflowError(str(exc))


onerror:
    # The SLURM plugin reports a killed job only as FAILED when sacct is unavailable; its SLURM log says
    # whether memory or time ran out, so say that here, with the request of the last attempt.
    logdir = Path(getattr(workflow.executor_settings, "logdir", None) or ".snakemake/slurm_logs")
    logs = sorted((p for p in logdir.rglob("*.log") if p.stat().st_mtime >= RUN_STARTED),
                  key=lambda p: p.stat().st_mtime) if logdir.is_dir() else []
    for line in kill_summary(slurm_attempt(p, logdir) for p in logs):
        print(line, file=sys.stderr)
