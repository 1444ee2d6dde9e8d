"""Training a classifier on a prepared dataset (the demo net on shapes)."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vislib.data.dataset import CocoFormatDataset
from vislib.io import atomic_path
from vislib.methods.base import fast_layout
from vislib.models.registry import preprocessing_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of `train_classifier`."""

    epochs: int = 8
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 5e-4
    seed: int = 0


def _load_all(dataset: CocoFormatDataset, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    batch = dataset.load_batch(dataset.image_ids(), preprocessing_of(model), with_masks=False)
    return batch.images, batch.labels


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy of `model` on a preprocessed set."""
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(fast_layout(images[i:i + batch_size])).argmax(1) == labels[i:i + batch_size]).sum())
                      for i in range(0, len(images), batch_size))
    return correct / max(len(images), 1)


def train_classifier(model: nn.Module, train: CocoFormatDataset, val: CocoFormatDataset,
                     cfg: TrainConfig) -> dict:
    """Train `model` in place with SGD and a cosine schedule; return the per-epoch curve and val accuracy."""
    torch.manual_seed(cfg.seed)
    train_x, train_y = _load_all(train, model)
    val_x, val_y = _load_all(val, model)
    # Weights in the layout `fast_layout` gives the inputs (channels-last on CPU): the demo net trains about
    # 1.5-1.9x faster so; they go back to the default layout at the end.
    if next(model.parameters()).device.type == "cpu":
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay,
                                nesterov=True)
    steps = cfg.epochs * ((len(train_x) + cfg.batch_size - 1) // cfg.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=steps)
    generator = torch.Generator().manual_seed(cfg.seed)
    curve = []
    for epoch in range(cfg.epochs):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        total_loss = 0.0
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            x = train_x[idx]
            # Horizontal flips keep every shape's category, so they are free augmentation.
            flip = torch.rand(len(idx), generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = F.cross_entropy(model(fast_layout(x)), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(idx)
        val_acc = accuracy(model, val_x, val_y)
        curve.append({"epoch": epoch + 1, "train_loss": total_loss / len(train_x), "val_accuracy": val_acc,
                      "seconds": time.perf_counter() - start})
        log.info("epoch %d loss %.4f val_acc %.4f", epoch + 1, curve[-1]["train_loss"], val_acc)
    model.to(memory_format=torch.contiguous_format)
    model.eval()
    return {"curve": curve, "val_accuracy": curve[-1]["val_accuracy"] if curve else accuracy(model, val_x, val_y),
            "train_config": asdict(cfg), "n_train": len(train_x), "n_val": len(val_x)}


def save_checkpoint(path, model: nn.Module, class_names: list[str], arch: str, history: dict) -> None:
    """Write a checkpoint that `vislib.models.load(arch, path)` reads back."""
    with atomic_path(path) as tmp:
        torch.save({"state_dict": model.state_dict(), "class_names": class_names, "arch": arch,
                    "history": history}, tmp)
