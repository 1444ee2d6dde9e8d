"""Every paper preset builds its DAG without data; a missing ImageNet archive fails with one clear message."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from tests.workflow_helpers import REPO, snakemake

PRESETS = sorted((REPO / "config" / "presets").glob("*.yaml"))


def test_presets_exist() -> None:
    assert {p.stem for p in PRESETS} >= {"l2caf_imagenet", "cams_imagenet", "lavise_vg", "lavise_coco",
                                         "featvis_imagenet"}


def test_missing_imagenet_archive_message(tmp_path: Path) -> None:
    config = yaml.safe_load((REPO / "config" / "presets" / "l2caf_imagenet.yaml").read_text())
    proc = snakemake(tmp_path, config, "resources/datasets/imagenet_val/prepared.json", check=False)
    assert proc.returncode != 0
    log = (tmp_path / "logs" / "prepare_dataset" / "imagenet_val.log").read_text()
    assert "params.archive points at 'resources/imagenet/ILSVRC2012_img_val.tar', which does not exist" in log
    assert "image-net.org" in log
    assert not (tmp_path / "resources" / "datasets" / "imagenet_val" / "prepared.json").exists()


def documented_preset_commands() -> list[str]:
    """The preset command lines of docs/presets.md, exactly as printed (comments dropped)."""
    lines = (REPO / "docs" / "presets.md").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines
            if line.startswith("snakemake ") and "config/presets/<preset>.yaml" in line]


def test_the_documented_preset_commands_run_only_what_the_preset_names(tmp_path: Path) -> None:
    """Run each documented command, as printed (dry run) in a copy of the workflow: the experiment command for
    every preset, the weights command for l2caf_imagenet; a preset replaces the embedded default config instead of
    being merged into it."""
    for part in ("Snakefile", "rules", "workflow_scripts", "config", "report", "profiles", "envs"):
        source = REPO / part
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / part)
    commands = documented_preset_commands()
    assert len(commands) == 2

    def dry_run(job: tuple[str, Path]) -> tuple[str, Path, str]:
        command, preset = job
        argv = command.replace("<preset>", preset.stem).split()
        argv[0] = str(Path(sys.executable).with_name("snakemake"))
        proc = subprocess.run([*argv, "-n"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{command} ({preset.stem}) failed:\n{proc.stderr[-3000:]}"
        return command, preset, proc.stdout + proc.stderr

    # The experiment command for every preset (each builds its own DAG); the weights command, the same config
    # check and a one-rule DAG, for the preset whose weight files the assertions below name.
    jobs = [(command, preset) for command in commands for preset in PRESETS
            if command.startswith("snakemake --configfile") or preset.stem == "l2caf_imagenet"]
    outputs: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        for command, preset, out in pool.map(dry_run, jobs):
            config = yaml.safe_load(preset.read_text())
            datasets = set(re.findall(r"dataset=([\w.-]+)", out))
            assert datasets <= set(config["datasets"]), f"{preset.stem}: {command} schedules {datasets}"
            experiments = set(re.findall(r"experiment=([\w.-]+)", out))
            assert experiments <= set(config["experiments"]), f"{preset.stem}: {command} schedules {experiments}"
            if not any("train" in spec for spec in config["models"].values()):
                assert "train_model" not in out, f"{preset.stem}: {command} trains the demo net"
            if command.startswith("snakemake --configfile"):
                outputs[preset.stem] = out
            elif preset.stem == "l2caf_imagenet":
                for name in ("resnet50-0676ba61.pth", "googlenet-1378be20.pth", "densenet169-b2777c0a.pth"):
                    assert f"resources/weights/hub/checkpoints/{name}" in out, out[-2000:]
    # What each preset's run builds before its data exists (the image list then fixes the shard count).
    for stem, out in outputs.items():
        assert "prepare_dataset" in out and "aggregate" in out, f"{stem}: {out[-2000:]}"
    assert "featvis_grid" in outputs["featvis_imagenet"]
    for lavise in ("lavise_coco", "lavise_vg"):
        assert all(rule in outputs[lavise] for rule in ("glove", "lavise_features", "lavise_train", "lavise_recall"))
    assert "lavise_vg_concepts" in outputs["lavise_vg"]
