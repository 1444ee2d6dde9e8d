"""GPU claims by lock file: concurrent claims get different GPUs, a full box fails clearly, stale locks are
taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from vislib import devices
from vislib.errors import ConfigError


@pytest.fixture
def two_gpus(tmp_path, monkeypatch):
    """A fake two-GPU box with its own lock dir."""
    monkeypatch.setenv(devices.COUNT_ENV, "2")
    monkeypatch.setenv(devices.LOCK_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(devices.WAIT_ENV, raising=False)
    monkeypatch.setattr(devices, "_process_claim", None)
    return tmp_path


CLAIM_AND_SLEEP = textwrap.dedent("""
    import sys, time
    from vislib import devices
    claim = devices.process_gpu()
    print(claim.index, flush=True)
    time.sleep(float(sys.argv[1]))
""")


def _claiming_process(seconds: float) -> tuple[subprocess.Popen, int]:
    """A child process that claims a GPU, reports its index, then sleeps holding it."""
    proc = subprocess.Popen([sys.executable, "-c", CLAIM_AND_SLEEP, str(seconds)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    line = proc.stdout.readline()
    assert line.strip(), proc.stderr.read()
    return proc, int(line)


def test_concurrent_processes_get_different_gpus_and_a_third_fails_clearly(two_gpus):
    first, a = _claiming_process(30)
    second, b = _claiming_process(30)
    try:
        assert {a, b} == {0, 1}
        with pytest.raises(devices.GpuUnavailableError, match="all 2 GPU\\(s\\) are held"):
            devices.claim_gpu(wait_seconds=0.3)
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait()


def test_a_waiting_claim_gets_the_gpu_when_it_is_released(two_gpus):
    held = [devices.claim_gpu(), devices.claim_gpu()]
    assert sorted(c.index for c in held) == [0, 1]
    proc = subprocess.Popen([sys.executable, "-c", CLAIM_AND_SLEEP, "0"], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, devices.WAIT_ENV: "20"})
    time.sleep(0.5)
    assert proc.poll() is None, "the third claim should wait while both GPUs are held"
    held[1].release()
    out, _ = proc.communicate(timeout=20)
    assert int(out) == held[1].index
    held[0].release()


def test_stale_lock_from_a_killed_process_is_taken_over(monkeypatch, two_gpus):
    monkeypatch.setenv(devices.COUNT_ENV, "1")
    proc, index = _claiming_process(60)
    dead_pid = proc.pid
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lock = two_gpus / "gpu0.lock"
    assert index == 0 and lock.read_text().strip() == str(dead_pid)
    claim = devices.claim_gpu()
    assert claim.index == 0 and lock.read_text().strip() == str(os.getpid())
    claim.release()


def test_process_claim_is_held_for_the_process_lifetime(two_gpus):
    assert devices.process_gpu() is devices.process_gpu()
    other = devices.claim_gpu()
    assert other.index != devices.process_gpu().index
    other.release()
    devices.process_gpu().release()


def test_cuda_visible_devices_names_the_locks(monkeypatch, two_gpus):
    monkeypatch.delenv(devices.COUNT_ENV)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    claim = devices.claim_gpu()
    assert (claim.index, claim.key) == (0, "3") and (two_gpus / "gpu3.lock").exists()
    claim.release()


def test_bad_count_override_and_no_gpu_are_clear_errors(monkeypatch, two_gpus):
    monkeypatch.setenv(devices.COUNT_ENV, "two")
    with pytest.raises(ConfigError, match="VISLIB_GPU_COUNT"):
        devices.claim_gpu()
    monkeypatch.setenv(devices.COUNT_ENV, "0")
    with pytest.raises(devices.GpuUnavailableError, match="device: cpu"):
        devices.claim_gpu()
