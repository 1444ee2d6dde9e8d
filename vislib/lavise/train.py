"""Training the explainer on cached features: CSMR loss, Adam, a checkpoint every epoch, exact resume."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from vislib.errors import ConfigError, VislibError
from vislib.io import atomic_path
from vislib.lavise.embeddings import WordEmbeddings, load_glove
from vislib.lavise.features import AugmentedItemReader, FeatureCache, ItemReader
from vislib.lavise.model import Explainer
from vislib.runlog import Progress

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "vislib-lavise-explainer-1"

OPTIMIZERS = ("adam", "dadapt_adam")
"""`lavise.optimizer`: `adam` (the paper's; torch.optim.Adam at `lr`) or `dadapt_adam` (the reproduction's
learning-rate-free DAdaptAdam, from the optional package `dadaptation`; `lr` is then its multiplier of the
adapted step, 1.0 in the reproduction)."""

DADAPTATION_PIN = "dadaptation==1.5"
"""The release whose DAdaptAdam is the file the reproduction vendors (dadapt_adam.py): same update, same defaults
(later releases change the algorithm, e.g. 3.x adds bias-correction options and a different d estimate)."""


def make_optimizer(name: str, parameters, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The optimizer `name` (OPTIMIZERS) over `parameters`."""
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    if name == "dadapt_adam":
        try:
            from dadaptation import DAdaptAdam
        except ImportError:
            raise ConfigError("lavise optimizer 'dadapt_adam' needs the optional package dadaptation: "
                              f"pip install 'vislib[dadapt]' (or pip install {DADAPTATION_PIN})") from None
        return DAdaptAdam(parameters, lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"lavise optimizer {name!r} is not known; use one of {list(OPTIMIZERS)}")


def set_bn_eval(model: nn.Module) -> None:
    """Put every BatchNorm layer of `model` in eval mode (the original's `set_bn_eval`, applied to the whole
    model, explainer included): they normalise with their running statistics and never update them."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def csmr_loss(pred: torch.Tensor, targets: torch.Tensor, concepts: torch.Tensor,
              margin: float = 1.0) -> torch.Tensor:
    """Cosine similarity margin ranking loss (paper Eq. 1), averaged over the batch.

    Per row: sum over non-target concepts c of max(0, margin - mean cos(pred, positives) + cos(pred, c));
    rows without a positive concept contribute 0.
    """
    cos = F.normalize(pred, dim=1) @ F.normalize(concepts, dim=1).T
    t = targets.to(cos.dtype)
    n_pos = t.sum(1)
    # Clamping the divisor instead of dividing by zero keeps NaN out of the gradient as well.
    pos = (cos * t).sum(1) / n_pos.clamp_min(1.0)
    row = (torch.clamp(margin - pos[:, None] + cos, min=0.0) * (1.0 - t)).sum(1)
    return (row * (n_pos > 0)).mean()


def topk_accuracy(pred: torch.Tensor, targets: torch.Tensor, concepts: torch.Tensor,
                  ks: tuple[int, ...]) -> dict[int, float]:
    """Fraction of items whose k nearest concepts (cosine) include a positive one, per k."""
    cos = F.normalize(pred, dim=1) @ F.normalize(concepts, dim=1).T
    order = cos.argsort(dim=1, descending=True)
    hit = targets.gather(1, order)
    return {k: float(hit[:, :k].any(1).float().mean()) if len(hit) else float("nan") for k in ks}


@dataclass(frozen=True)
class TrainSettings:
    """Everything but the epoch count that fixes a training curve; resume requires the same settings."""

    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    margin: float = 1.0
    dropout: float = 0.1
    val_fraction: float = 0.1
    seen_fraction: float = 1.0
    seed: int = 0
    bn_eval: bool = False  # the original keeps the explainer's BatchNorm layers in eval mode
    optimizer: str = "adam"
    augment: bool = False  # random crop + flip of every training image, every epoch (the backbone runs again)

    def validate(self) -> None:
        """Reject values that cannot train."""
        if self.batch_size < 2:
            raise ConfigError(f"lavise batch_size {self.batch_size} must be at least 2 (BatchNorm needs it)")
        if self.lr <= 0:
            raise ConfigError(f"lavise lr {self.lr} must be positive")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"lavise val_fraction {self.val_fraction} must be in [0, 1)")
        if not 0 < self.seen_fraction <= 1:
            raise ConfigError(f"lavise seen_fraction {self.seen_fraction} must be in (0, 1]")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lavise dropout {self.dropout} must be in [0, 1)")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"lavise optimizer {self.optimizer!r} is not known; use one of {list(OPTIMIZERS)}")


def _split(cache: FeatureCache, settings: TrainSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image-level train/val split (no image in both) and the seen concept columns."""
    images = np.sort(cache.image_index())
    rng = np.random.default_rng([settings.seed, 0])
    n_val = int(round(settings.val_fraction * len(images)))
    if settings.val_fraction > 0 and len(images) >= 2:
        n_val = min(max(n_val, 1), len(images) - 1)
    perm = rng.permutation(images)
    n_concepts = len(cache.vocabulary)
    n_seen = max(1, int(round(settings.seen_fraction * n_concepts)))
    seen = np.sort(np.random.default_rng([settings.seed, 1]).permutation(n_concepts)[:n_seen])
    return np.sort(perm[n_val:]), np.sort(perm[:n_val]), seen


def _evaluate(model: Explainer, reader: ItemReader, concepts: torch.Tensor, margin: float,
              ks: tuple[int, ...], device: torch.device) -> dict[str, float]:
    model.eval()
    preds, targets = [], []
    with torch.no_grad():
        for x, t in reader.batches(4096, shuffle=False):
            preds.append(model(x.to(device)))
            targets.append(t.to(device))
    if not preds:
        return {}
    pred, target = torch.cat(preds), torch.cat(targets)
    out = {"val_loss": float(csmr_loss(pred, target, concepts, margin))}
    out.update({f"val_top{k}": v for k, v in topk_accuracy(pred, target, concepts, ks).items()})
    return out


def _save(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: str | os.PathLike) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise VislibError(f"explainer checkpoint {str(path)!r} does not exist; run train_explainer") from None
    except Exception as exc:  # torch raises many types for a corrupt file
        raise VislibError(f"explainer checkpoint {str(path)!r} cannot be read ({exc}); delete it and "
                          "train again") from exc
    if state.get("format") != CHECKPOINT_FORMAT:
        raise VislibError(f"{str(path)!r} is not a LaViSE explainer checkpoint of this vislib; train again")
    return state


def train_explainer(feature_dir: str | os.PathLike, embeddings: WordEmbeddings | str | os.PathLike,
                    out_ckpt: str | os.PathLike, epochs: int, batch_size: int = 256, lr: float = 1e-3,
                    weight_decay: float = 0.0, margin: float = 1.0, dropout: float = 0.1,
                    val_fraction: float = 0.1, seen_fraction: float = 1.0, seed: int = 0,
                    bn_eval: bool = False, optimizer: str = "adam", augment: bool = False,
                    backbone: nn.Module | None = None, image_batch: int = 64,
                    topk: tuple[int, ...] = (1, 5, 10, 20), device: str | torch.device = "cpu",
                    log_path: str | os.PathLike | None = None, memory_mb: float = 2048.0,
                    resume: bool = True) -> pd.DataFrame:
    """Train an explainer on a feature cache for `epochs` epochs; return the per-epoch loss log.

    The checkpoint is rewritten after every epoch; with `resume`, an existing checkpoint of the same
    settings continues the same curve (model, optimizer and RNG states are restored).

    `bn_eval` keeps the explainer's BatchNorm layers in eval mode while training (the original's quirk).
    `optimizer` is one of OPTIMIZERS. With `augment`, training items come from randomly cropped and flipped
    images through `backbone` (the model the cache was made with; `image_batch` images per pass) every epoch
    instead of from the cached features; validation still reads the cache.
    """
    settings = TrainSettings(batch_size, lr, weight_decay, margin, dropout, val_fraction, seen_fraction, seed,
                             bn_eval, optimizer, augment)
    settings.validate()
    if epochs < 1:
        raise ConfigError(f"lavise epochs {epochs} must be at least 1")
    if augment and backbone is None:
        raise ConfigError("lavise augment re-runs the backbone on augmented images every epoch: pass the model "
                          "the feature cache was made with")
    cache = FeatureCache(feature_dir)
    if isinstance(embeddings, str | os.PathLike):
        embeddings = load_glove(embeddings, keep=cache.vocabulary)
    device = torch.device(device)
    train_images, val_images, seen = _split(cache, settings)
    concepts = embeddings.vectors_of(cache.vocabulary)[torch.from_numpy(seen)].to(device)
    ks = tuple(k for k in topk if k <= len(seen)) or (1,)
    train_reader: ItemReader | AugmentedItemReader
    if augment:
        assert backbone is not None  # checked above
        train_reader = AugmentedItemReader(cache, backbone, train_images, seen, device, image_batch)
    else:
        train_reader = ItemReader(cache, train_images, seen, memory_mb)
    val_reader = ItemReader(cache, val_images, seen, memory_mb) if len(val_images) else None
    generator = torch.Generator().manual_seed(seed)
    header = {
        "format": CHECKPOINT_FORMAT, "settings": asdict(settings), "model": cache.meta["model"],
        "layer": cache.meta["layer"], "vocabulary": cache.vocabulary, "seen": seen.tolist(),
        "in_features": cache.in_features, "embedding_dim": embeddings.dim,
        "pool_size": list(cache.pool_size), "val_images": val_images.tolist(),
        "resize": cache.resize, "masks": cache.mask_mode,
    }
    out_ckpt = Path(out_ckpt)
    history: list[dict] = []
    best: dict[str, Any] = {"epoch": 0, "val_loss": float("inf"), "state_dict": None}
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = Explainer(cache.in_features, embeddings.dim, dropout).to(device)
        opt = make_optimizer(optimizer, model.parameters(), lr, weight_decay)
        if resume and out_ckpt.exists():
            state = _load_checkpoint(out_ckpt)
            # Keys added since a checkpoint was written take their defaults, which are what it trained with.
            stored = {k: state.get(k, {"resize": "stretch", "masks": "coverage"}.get(k)) for k in header}
            stored["settings"] = {**asdict(TrainSettings()), **(stored["settings"] or {})}
            if stored != header:
                changed = sorted(k for k in header if stored[k] != header[k] and k != "settings")
                changed += sorted(k for k in header["settings"]
                                  if (stored["settings"] or {}).get(k) != header["settings"][k])
                raise ConfigError(f"checkpoint {str(out_ckpt)!r} was trained with other {changed}; delete it "
                                  "to start over or use the settings it was trained with")
            model.load_state_dict(state["state_dict"])
            opt.load_state_dict(state["optimizer"])
            generator.set_state(state["rng"]["shuffle"])
            torch.set_rng_state(state["rng"]["torch"])
            if devices and state["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(state["rng"]["cuda"], device)
            history = list(state["log"])
            best = dict(state["best"])
        progress = Progress(epochs - len(history), "LaViSE training", unit="epochs")
        for epoch in range(len(history) + 1, epochs + 1):
            start = time.perf_counter()
            model.train()
            if bn_eval:
                set_bn_eval(model)
            total, count = 0.0, 0
            for x, t in train_reader.batches(batch_size, generator):
                if len(x) < 2:
                    continue  # BatchNorm cannot normalise a single item
                loss = csmr_loss(model(x.to(device)), t.to(device), concepts, margin)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(x)
                count += len(x)
            if count == 0:
                raise VislibError(f"feature cache {str(feature_dir)!r} has no training items with a seen "
                                  "concept; use more images or a larger seen_fraction")
            entry = {"epoch": epoch, "train_loss": total / count, "train_items": count}
            failed = getattr(train_reader, "failed", {})
            if failed:
                first = next(iter(failed.items()))
                log.warning("lavise epoch %d: %d training images skipped (undecodable or not of the annotated "
                            "size), e.g. image %d: %s", epoch, len(failed), *first)
            if val_reader is not None:
                entry.update(_evaluate(model, val_reader, concepts, margin, ks, device))
            entry["seconds"] = time.perf_counter() - start
            history.append(entry)
            score = entry.get("val_loss", entry["train_loss"])
            if score <= best["val_loss"] or best["state_dict"] is None:
                best = {"epoch": epoch, "val_loss": score,
                        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
            log.info("lavise epoch %d: %s", epoch, entry)
            rng = {"shuffle": generator.get_state(), "torch": torch.get_rng_state(),
                   "cuda": torch.cuda.get_rng_state(device) if devices else None}
            _save(out_ckpt, {**header, "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                             "optimizer": opt.state_dict(), "rng": rng, "log": history, "best": best})
            if log_path is not None:
                with atomic_path(log_path) as tmp:
                    pd.DataFrame(history).to_csv(tmp, index=False)
            progress.update()
    return pd.DataFrame(history)


@dataclass
class ExplainerInfo:
    """What a checkpoint says about the explainer it holds."""

    model: str
    layer: str
    vocabulary: list[str]
    seen: list[int]  # columns of `vocabulary` the explainer was trained on
    in_features: int
    embedding_dim: int
    pool_size: tuple[int, int]
    epoch: int
    log: list[dict]

    @property
    def unseen_words(self) -> list[str]:
        """Concepts held out of training (zero-shot)."""
        seen = set(self.seen)
        return [w for i, w in enumerate(self.vocabulary) if i not in seen]


def load_explainer(path: str | os.PathLike, which: str = "best",
                   device: str | torch.device = "cpu") -> tuple[Explainer, ExplainerInfo]:
    """The explainer of a checkpoint ('best' validation epoch or 'last'), in eval mode."""
    if which not in ("best", "last"):
        raise ConfigError(f"explainer checkpoint choice {which!r} is not valid; use 'best' or 'last'")
    state = _load_checkpoint(path)
    model = Explainer(state["in_features"], state["embedding_dim"], state["settings"]["dropout"])
    chosen = state["best"] if which == "best" else {"state_dict": state["state_dict"], "epoch": len(state["log"])}
    model.load_state_dict(chosen["state_dict"])
    info = ExplainerInfo(state["model"], state["layer"], list(state["vocabulary"]), list(state["seen"]),
                         state["in_features"], state["embedding_dim"], tuple(state["pool_size"]),
                         int(chosen["epoch"]), list(state["log"]))
    return model.eval().to(device), info
