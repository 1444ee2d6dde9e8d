"""Claiming a free GPU for this process: one lock file per GPU, held until the process exits."""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from vislib.errors import ConfigError, VislibError

COUNT_ENV = "VISLIB_GPU_COUNT"
LOCK_DIR_ENV = "VISLIB_GPU_LOCK_DIR"
WAIT_ENV = "VISLIB_GPU_WAIT"
POLL_SECONDS = 0.2


class GpuUnavailableError(VislibError):
    """No GPU became free within the waiting time."""


@dataclass
class GpuClaim:
    """A GPU this process holds: its torch index, the key its lock is named after, the open lock file."""

    index: int
    key: str
    handle: IO[str]

    def release(self) -> None:
        """Give the GPU back (the kernel also does this when the process dies)."""
        if not self.handle.closed:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()


_process_claim: GpuClaim | None = None


def visible_gpus() -> list[str]:
    """Keys of the GPUs this process may use, in torch index order."""
    override = os.environ.get(COUNT_ENV)
    if override is not None:
        if not override.isdigit():
            raise ConfigError(f"{COUNT_ENV}={override!r} is not a GPU count; set it to a whole number such as 2")
        return [str(i) for i in range(int(override))]
    import torch

    count = torch.cuda.device_count()
    # The locks must name physical GPUs: two processes with different CUDA_VISIBLE_DEVICES both
    # call their first GPU index 0.
    visible = [k.strip() for k in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if k.strip()]
    return visible[:count] if len(visible) >= count else [str(i) for i in range(count)]


def lock_dir() -> Path:
    """The directory holding one lock file per GPU."""
    configured = os.environ.get(LOCK_DIR_ENV)
    if configured:
        path = Path(configured)
    else:
        path = Path(tempfile.gettempdir()) / f"vislib-gpu-locks-{os.getuid()}"
        # SLURM already gives each job its own GPUs; a job-private dir keeps jobs from seeing each other's locks.
        if os.environ.get("SLURM_JOB_ID"):
            path = path / f"slurm-{os.environ['SLURM_JOB_ID']}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _try_lock(path: Path) -> IO[str] | None:
    handle = open(path, "a+")  # noqa: SIM115 - the handle is the lock and lives as long as the claim
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    # The pid is only for people looking at the lock dir: a dead holder's flock is already gone,
    # so a file left behind by a killed process is simply taken over here.
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def claim_gpu(wait_seconds: float | None = None) -> GpuClaim:
    """Lock a free GPU for the caller, waiting up to `wait_seconds` (env VISLIB_GPU_WAIT, default 0) for one."""
    keys = visible_gpus()
    if not keys:
        raise GpuUnavailableError("no GPU is visible to this process; set device: cpu or run on a GPU node")
    if wait_seconds is None:
        wait_seconds = float(os.environ.get(WAIT_ENV, "0"))
    directory = lock_dir()
    deadline = time.monotonic() + wait_seconds
    while True:
        for index, key in enumerate(keys):
            handle = _try_lock(directory / f"gpu{key}.lock")
            if handle is not None:
                return GpuClaim(index, key, handle)
        if time.monotonic() >= deadline:
            holders = {p.name: p.read_text().strip() for p in sorted(directory.glob("gpu*.lock"))}
            raise GpuUnavailableError(
                f"all {len(keys)} GPU(s) are held by other processes (lock dir {directory}, holders {holders}) "
                f"after waiting {wait_seconds:g} s; run fewer GPU jobs at once (--resources gpu={len(keys)}) "
                f"or set {WAIT_ENV} to wait longer")
        time.sleep(POLL_SECONDS)


def process_gpu() -> GpuClaim:
    """The GPU this process holds, claimed on first use and kept until the process exits."""
    global _process_claim
    if _process_claim is None or _process_claim.handle.closed:
        _process_claim = claim_gpu()
    return _process_claim
