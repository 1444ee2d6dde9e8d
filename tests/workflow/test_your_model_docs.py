"""The commands docs/your-model.md prints run as printed: both examples (dry runs; the images one on a generated
image folder) and `vislib layers`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.workflow_helpers import REPO

EXAMPLE = "config/examples/your_images.yaml"
MODEL_EXAMPLE = "config/examples/your_model.yaml"


def documented_commands(example: str) -> list[str]:
    """The command lines of docs/your-model.md that run `example`, exactly as printed."""
    lines = (REPO / "docs" / "your-model.md").read_text().splitlines()
    return [line.strip() for line in lines if line.startswith("snakemake ") and example in line]


def _workflow_copy(tmp_path: Path) -> None:
    for part in ("Snakefile", "rules", "workflow_scripts", "config", "report", "profiles", "envs"):
        source = REPO / part
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / part)


def test_the_documented_your_model_command_dry_runs(tmp_path: Path) -> None:
    _workflow_copy(tmp_path)
    commands = documented_commands(MODEL_EXAMPLE)
    assert commands == [f"snakemake --configfile {MODEL_EXAMPLE} --cores all"]
    argv = commands[0].split()
    argv[0] = str(Path(sys.executable).with_name("snakemake"))
    proc = subprocess.run([*argv, "-n"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for rule in ("prepare_dataset", "image_list", "aggregate", "figure_grid"):
        assert rule in out, f"{rule} missing from the dry run:\n{out[-3000:]}"


def test_the_documented_vislib_layers_commands_run_as_printed() -> None:
    lines = [line.strip() for line in (REPO / "docs" / "your-model.md").read_text().splitlines()
             if line.startswith("vislib layers")]
    assert len(lines) == 2
    for line in lines:
        argv = line.split()
        argv[0] = str(Path(sys.executable).with_name("vislib"))
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{line}: {proc.stderr[-2000:]}"
        assert "spatial default" in proc.stdout, line


def test_the_documented_your_images_command_dry_runs(tmp_path: Path) -> None:
    _workflow_copy(tmp_path)
    # The folder the example names, with class folders named after ImageNet classes as it asks.
    rng = np.random.default_rng(0)
    for name in ("goldfish", "golden_retriever", "Tabby"):
        (tmp_path / "my_images" / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(
                tmp_path / "my_images" / name / f"{i}.jpg")
    commands = documented_commands(EXAMPLE)
    assert commands == [f"snakemake --configfile {EXAMPLE} --cores all"]
    argv = commands[0].split()
    argv[0] = str(Path(sys.executable).with_name("snakemake"))
    proc = subprocess.run([*argv, "-n"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for rule in ("prepare_dataset", "image_list", "aggregate", "sanity", "perturbation_curves"):
        assert rule in out, f"{rule} missing from the dry run:\n{out[-3000:]}"
    assert "train_model" not in out

    # Without the folder, the config check stops the run naming it.
    shutil.rmtree(tmp_path / "my_images")
    proc = subprocess.run([*argv, "-n"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "datasets.my_images: params.path points at 'my_images', which does not exist" in proc.stdout + proc.stderr
