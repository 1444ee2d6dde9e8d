"""Jobs of rules/models.smk: train a model on a dataset's train split."""

from __future__ import annotations

import logging
from typing import Any

import torch

from vislib import models
from vislib.data import DatasetRef
from vislib.io import write_json
from vislib.pipeline import resolve_device
from vislib.training import TrainConfig, save_checkpoint, train_classifier

log = logging.getLogger(__name__)


def train_model(*, arch: str, train: dict[str, Any], dataset: DatasetRef, device: str, checkpoint: str,
                history_path: str, curve_path: str) -> dict:
    """Train `arch` on the dataset's train split (val split for accuracy); write checkpoint, history and curve."""
    torch.manual_seed(train.get("seed", 0))
    train_set, val_set = dataset.open("train"), dataset.open("val")
    model = models.load(arch, "random", resolve_device(device), num_classes=len(train_set.label_names))
    cfg = TrainConfig(**{k: v for k, v in train.items() if k != "dataset"})
    history = train_classifier(model, train_set, val_set, cfg)
    save_checkpoint(checkpoint, model, train_set.label_names, arch, history)
    write_json(history_path, history)
    # Imported here: matplotlib costs a second at start-up.
    from vislib.figures import training_curve

    training_curve(curve_path, history)
    log.info("val accuracy %.4f", history["val_accuracy"])
    return history
