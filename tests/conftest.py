"""Shared fixtures: a small generated shapes dataset and seeded models."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from vislib import models
from vislib.data.dataset import CocoFormatDataset
from vislib.data.synthetic import ShapesConfig, generate_shapes
from vislib.training import TrainConfig, save_checkpoint, train_classifier


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    """A tiny shapes dataset (40 train, 16 val, 64 px) written once per test session."""
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, ShapesConfig(n_train=40, n_val=16, image_size=64, seed=3))
    return root


class TrainedDemoNet(NamedTuple):
    """A demo net checkpoint trained on a small shapes set, and that set."""

    checkpoint: Path
    shapes_root: Path
    val_accuracy: float


@pytest.fixture(scope="session")
def trained_demonet(tmp_path_factory) -> TrainedDemoNet:
    """The demo net trained as the train_model rule does, on fewer images and epochs (about 20 s on 2 CPU
    cores; about 0.9 val accuracy), once per test session."""
    root = tmp_path_factory.mktemp("shapes_trained")
    generate_shapes(root, ShapesConfig(n_train=800, n_val=64, image_size=64, seed=1))
    train, val = (CocoFormatDataset("shapes", root, split) for split in ("train", "val"))
    # Seeded as the train_model rule seeds, so the initial weights do not depend on which tests ran before.
    torch.manual_seed(0)
    net = models.load("demonet", "random", num_classes=len(train.label_names))
    history = train_classifier(net, train, val, TrainConfig(epochs=8, batch_size=32, lr=0.1, seed=0))
    checkpoint = root / "demonet.pt"
    save_checkpoint(checkpoint, net, train.label_names, "demonet", history)
    return TrainedDemoNet(checkpoint, root, history["val_accuracy"])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
