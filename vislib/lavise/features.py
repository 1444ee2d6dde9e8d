"""Backbone activations of one layer, computed once per image and cached in float16 shards with item masks."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vislib.data.dataset import RESIZE_PROTOCOLS, read_image, to_input
from vislib.errors import ConfigError, DataError, ImageDecodeError
from vislib.io import atomic_path, write_json
from vislib.lavise.targets import ConceptTargets
from vislib.methods.hooks import capture_layer, frozen_model
from vislib.models.registry import preprocessing_of

log = logging.getLogger(__name__)

CACHE_FORMAT = 1

MASK_MODES = ("coverage", "nearest")
"""How an object's region becomes a mask on the layer's h x w grid (`lavise.masks`):

- `coverage` (vislib's): the fraction of each cell the region covers, from the region at input resolution; an
  object smaller than a cell keeps a small weight instead of vanishing. Recall compares the region at input
  resolution.
- `nearest` (the original's and the reproduction's): the input-resolution region resized to h x w with nearest
  neighbour (PIL's NEAREST, which samples each cell's centre pixel: torch's `nearest-exact`), so a mask is 0/1
  and an object that misses every cell centre vanishes. Recall upsamples that h x w mask back to the input
  with nearest neighbour (the reproduction's `calculate_recall`).
"""


@dataclass
class FeatureShard:
    """Activations of a run of images and the concept items on them."""

    features: torch.Tensor  # float16 [n,d,h,w]
    image_index: np.ndarray  # int64 [n] positions in the targets' image list
    item_row: np.ndarray  # int64 [m] row of `features` each item lies on
    item_masks: torch.Tensor  # float16 [m,h,w] fraction of each cell the item's region covers
    item_targets: torch.Tensor  # bool [m,C] multi-hot over the vocabulary


def default_pool_size(model: nn.Module) -> tuple[int, int]:
    """Output size of the model's own adaptive average pool (the explainer keeps it), else 1x1."""
    pool = getattr(model, "avgpool", None)
    if isinstance(pool, nn.AdaptiveAvgPool2d):
        size = pool.output_size
        if isinstance(size, int):
            return (size, size)
        if size is not None:
            height, width = size
            if isinstance(height, int) and isinstance(width, int):
                return (height, width)
    return (1, 1)


def pool_features(features: torch.Tensor, pool_size: tuple[int, int]) -> torch.Tensor:
    """Average-pool [N,d,h,w] maps to `pool_size` and flatten: the explainer's input [N, d*ph*pw]."""
    if tuple(pool_size) == (1, 1):
        return features.mean(dim=(2, 3))
    return F.adaptive_avg_pool2d(features, pool_size).flatten(1)


def check_mask_mode(mode: str) -> None:
    """Reject a mask mode that is not one of MASK_MODES."""
    if mode not in MASK_MODES:
        raise ConfigError(f"lavise mask mode {mode!r} is not known; use one of {list(MASK_MODES)}")


def grid_masks(masks: torch.Tensor, grid: tuple[int, int], mode: str = "coverage") -> torch.Tensor:
    """[K,S,S] region masks at input resolution -> float [K,h,w] masks on the layer's grid (see MASK_MODES)."""
    check_mask_mode(mode)
    x = masks.float()[None]
    if mode == "coverage":
        return F.adaptive_avg_pool2d(x, grid)[0]
    # PIL's NEAREST (the original's transforms.Resize) samples the source pixel under each output cell's centre.
    return F.interpolate(x, size=grid, mode="nearest-exact")[0]


def recall_masks(masks: np.ndarray, grid: tuple[int, int], mode: str = "coverage") -> np.ndarray:
    """The region masks [K,S,S] recall compares with a filter's region: as they are (`coverage`), or their h x w
    `nearest` masks upsampled back to S x S with nearest neighbour, as the reproduction scores recall."""
    check_mask_mode(mode)
    if mode == "coverage" or not len(masks):
        return masks
    size = masks.shape[-2:]
    small = grid_masks(torch.from_numpy(masks), grid, "nearest")
    return F.interpolate(small[None], size=tuple(size), mode="nearest")[0].numpy() > 0.5


def _load_images(targets: ConceptTargets, indices: range, size: int,
                 resize: str = "stretch") -> tuple[list[torch.Tensor], list[int], dict[int, str]]:
    tensors, kept, failed = [], [], {}
    for i in indices:
        img = targets.images[i]
        try:
            tensors.append(to_input(read_image(img.path), size, resize))
            kept.append(i)
        except ImageDecodeError as exc:
            failed[img.image_id] = str(exc)
    return tensors, kept, failed


class _ShardEntry(TypedDict):
    """One shard's line in meta.json."""

    file: str
    images: int
    items: int


def cache_features(model: nn.Module, layer: str, targets: ConceptTargets, out_dir: str | os.PathLike,
                   batch_size: int = 64, shard_size: int = 1024, pool_size: tuple[int, int] | None = None,
                   device: str | torch.device = "cpu", resize: str = "stretch",
                   mask_mode: str = "coverage") -> FeatureCache:
    """Run the backbone once over every image of `targets`; write float16 shards, masks and meta.json.

    Images become model inputs by resize protocol `resize` (`stretch`, or `crop` = Resize(256) + CenterCrop(224)
    scaled to the input size); object regions take the same geometry, then become grid masks by `mask_mode`
    (MASK_MODES). An object the crop cuts off entirely is no item (counted in meta.json as `outside_crop`).
    """
    if resize not in RESIZE_PROTOCOLS:
        raise ConfigError(f"lavise resize protocol {resize!r} is not known; use one of {list(RESIZE_PROTOCOLS)}")
    check_mask_mode(mask_mode)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)
    prep = preprocessing_of(model)
    size = prep.input_size
    pool_size = pool_size or default_pool_size(model)
    model = model.to(device)
    start = time.perf_counter()
    shards: list[_ShardEntry] = []
    failed: dict[int, str] = {}
    shape: tuple[int, int, int] | None = None
    outside_crop = 0
    with frozen_model(model, keep_inplace=True), capture_layer(model, layer) as capture, torch.no_grad():
        for shard_start in range(0, len(targets.images), shard_size):
            rows: list[torch.Tensor] = []
            image_index: list[int] = []
            item_row, item_masks, item_targets = [], [], []
            shard_end = min(shard_start + shard_size, len(targets.images))
            for b in range(shard_start, shard_end, batch_size):
                tensors, kept, bad = _load_images(targets, range(b, min(b + batch_size, shard_end)), size, resize)
                failed.update(bad)
                if not tensors:
                    continue
                model(prep.normalize(torch.stack(tensors)).to(device))
                act = capture.spatial(layer, "lavise").float().cpu()
                channels, height, width = act.shape[1:]
                shape = (channels, height, width)
                for j, i in enumerate(kept):
                    masks = targets.masks(i, size, resize)
                    # Under `stretch` every object stays (as before); a crop can cut an object off entirely.
                    inside = masks.any(axis=(1, 2)) if resize != "stretch" else np.ones(len(masks), bool)
                    outside_crop += int((~inside).sum())
                    if inside.any():
                        item_masks.append(grid_masks(torch.from_numpy(masks[inside]), (height, width), mask_mode))
                        item_targets.append(torch.from_numpy(targets.target_matrix(i)[inside]))
                        item_row += [len(image_index) + j] * int(inside.sum())
                image_index += kept
                rows.append(act.half())
            if not rows or shape is None:  # `shape` is set with the first non-empty batch, as `rows` is
                continue
            name = f"shard_{len(shards):05d}.npz"
            with atomic_path(out / name) as tmp, open(tmp, "wb") as handle:
                np.savez(
                    handle,
                    features=torch.cat(rows).numpy(),
                    image_index=np.asarray(image_index, np.int64),
                    item_row=np.asarray(item_row, np.int64),
                    item_masks=(torch.cat(item_masks) if item_masks else torch.zeros(0, *shape[1:])).half().numpy(),
                    item_targets=(torch.cat(item_targets) if item_targets
                                  else torch.zeros(0, len(targets.vocabulary), dtype=torch.bool)).numpy(),
                )
            shards.append({"file": name, "images": len(image_index), "items": len(item_row)})
            log.info("cached %s: %d images, %d items", name, len(image_index), len(item_row))
    if shape is None:
        raise DataError(f"no image of {targets.source} could be decoded ({len(failed)} failed); "
                        "check the image files")
    targets.save(out / "targets.json")
    meta = {
        "format": CACHE_FORMAT, "model": getattr(model, "vislib_name", type(model).__name__), "layer": layer,
        "channels": shape[0], "height": shape[1], "width": shape[2], "input_size": size,
        "resize": resize, "masks": mask_mode, "outside_crop": outside_crop, "pool_size": list(pool_size),
        "vocabulary": targets.vocabulary, "source": targets.source,
        "images": sum(s["images"] for s in shards), "items": sum(s["items"] for s in shards),
        "shards": shards, "failed": failed, "seconds": time.perf_counter() - start,
    }
    # meta.json is written last: its presence marks a complete cache.
    write_json(out / "meta.json", meta)
    return FeatureCache(out)


class FeatureCache:
    """Reader of a directory written by `cache_features`."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        meta_path = self.directory / "meta.json"
        if not meta_path.is_file():
            raise DataError(f"feature cache {str(self.directory)!r} is missing or incomplete (no meta.json); "
                            "run cache_features for it")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != CACHE_FORMAT:
            raise DataError(f"feature cache {str(self.directory)!r} has format {self.meta.get('format')}, "
                            f"this vislib reads {CACHE_FORMAT}; delete it and cache again")
        self._targets: ConceptTargets | None = None

    @property
    def vocabulary(self) -> list[str]:
        """Concept words, in the column order of the item targets."""
        return self.meta["vocabulary"]

    @property
    def pool_size(self) -> tuple[int, int]:
        """Pooled grid the explainer sees."""
        return tuple(self.meta["pool_size"])

    @property
    def resize(self) -> str:
        """Resize protocol the images were read with (caches written before it was recorded: `stretch`)."""
        return self.meta.get("resize", "stretch")

    @property
    def mask_mode(self) -> str:
        """How object regions became grid masks (MASK_MODES; older caches: `coverage`)."""
        return self.meta.get("masks", "coverage")

    @property
    def in_features(self) -> int:
        """Length of the explainer's input vector."""
        return self.meta["channels"] * self.pool_size[0] * self.pool_size[1]

    @property
    def n_shards(self) -> int:
        """Number of shard files."""
        return len(self.meta["shards"])

    def targets(self) -> ConceptTargets:
        """The concept targets the cache was built from."""
        if self._targets is None:
            self._targets = ConceptTargets.load(self.directory / "targets.json")
        return self._targets

    def _read(self, index: int, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
        path = self.directory / self.meta["shards"][index]["file"]
        try:
            # An .npz member is read only when asked for, so small reads skip the features.
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in keys}
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(f"feature shard {str(path)!r} is unreadable ({exc}); delete the cache "
                            "directory and cache again") from exc

    def shard(self, index: int) -> FeatureShard:
        """Load shard `index`."""
        d = self._read(index, ("features", "image_index", "item_row", "item_masks", "item_targets"))
        return FeatureShard(torch.from_numpy(d["features"]), d["image_index"], d["item_row"],
                            torch.from_numpy(d["item_masks"]), torch.from_numpy(d["item_targets"]))

    def __iter__(self) -> Iterator[FeatureShard]:
        for i in range(self.n_shards):
            yield self.shard(i)

    def image_index(self) -> np.ndarray:
        """Target-list positions of all cached images, in cache order."""
        return np.concatenate([self._read(i, ("image_index",))["image_index"] for i in range(self.n_shards)])

    def pooled_items(self, shard: FeatureShard, chunk: int = 1024) -> torch.Tensor:
        """Explainer inputs avgpool(F * M) of every item of a shard, float32 [m, in_features]."""
        out = []
        for s in range(0, len(shard.item_row), chunk):
            rows = torch.from_numpy(shard.item_row[s:s + chunk])
            masked = shard.features[rows].float() * shard.item_masks[s:s + chunk, None].float()
            out.append(pool_features(masked, self.pool_size))
        return torch.cat(out) if out else torch.zeros(0, self.in_features)


class ItemReader:
    """Shuffled batches of (explainer input, multi-hot target) from a cache, for training.

    Pooled inputs are kept in memory up to `memory_mb`, so later epochs read no shard at all.
    """

    def __init__(self, cache: FeatureCache, images: np.ndarray | None = None, concepts: np.ndarray | None = None,
                 memory_mb: float = 2048.0) -> None:
        self.cache = cache
        self.images = None if images is None else np.asarray(images, dtype=np.int64)
        self.concepts = None if concepts is None else torch.as_tensor(concepts, dtype=torch.long)
        self.memory_bytes = memory_mb * 2 ** 20
        self._kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._used = 0

    def _items(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index in self._kept:
            return self._kept[index]
        shard = self.cache.shard(index)
        x = self.cache.pooled_items(shard)
        t = shard.item_targets
        keep = torch.ones(len(t), dtype=torch.bool)
        if self.images is not None:
            image_of_item = shard.image_index[shard.item_row]
            keep &= torch.from_numpy(np.isin(image_of_item, self.images))
        if self.concepts is not None:
            t = t[:, self.concepts]
            # Items left with no concept give the loss nothing to pull towards.
            keep &= t.any(1)
        x, t = x[keep], t[keep]
        size = x.numel() * x.element_size() + t.numel()
        if self._used + size <= self.memory_bytes:
            self._kept[index] = (x, t)
            self._used += size
        return x, t

    def batches(self, batch_size: int, generator: torch.Generator | None = None,
                shuffle: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of batches; shard order and items within shards are shuffled with `generator`."""
        order = (torch.randperm(self.cache.n_shards, generator=generator).tolist() if shuffle
                 else list(range(self.cache.n_shards)))
        yield from rebatch((self._items(index) for index in order), batch_size, generator, shuffle)


def rebatch(chunks: Iterable[tuple[torch.Tensor, torch.Tensor]], batch_size: int,
            generator: torch.Generator | None, shuffle: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of `batch_size` (x, t) items from chunks of any size, each chunk shuffled with `generator`; the
    items left over from a chunk go first into the next batch, the last batch may be short."""
    carry: tuple[torch.Tensor, torch.Tensor] | None = None
    for x, t in chunks:
        if not len(x):
            continue
        if shuffle:
            perm = torch.randperm(len(x), generator=generator)
            x, t = x[perm], t[perm]
        if carry is not None:
            x, t = torch.cat([carry[0], x]), torch.cat([carry[1], t])
        full = len(x) // batch_size * batch_size
        for start in range(0, full, batch_size):
            yield x[start:start + batch_size], t[start:start + batch_size]
        carry = (x[full:], t[full:]) if full < len(x) else None
    if carry is not None:
        yield carry


def augmentation(size: int):  # -> torchvision.transforms.v2.Compose (torchvision is imported only when asked)
    """The original's COCO training augmentation in `torchvision.transforms.v2`: RandomResizedCrop(size) (scale
    0.08-1, ratio 3/4-4/3, bilinear with antialias) then RandomHorizontalFlip(0.5). Given a `tv_tensors.Mask`
    with the image, the masks get the same crop and flip (nearest neighbour), so they move with the pixels;
    the original crops the image at random but centre-crops its masks, which then no longer cover their objects.
    Draws come from torch's global generator."""
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()])


def augment_image(pixels: np.ndarray, masks: np.ndarray, transform) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [H,W,3] pixels and bool [K,H,W] object masks through one draw of `transform`: float [3,S,S] in [0,1]
    and bool [K,S,S]."""
    from torchvision import tv_tensors

    image = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1))
    mask = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(masks, dtype=np.uint8)))
    out_image, out_mask = transform(image, mask)
    return out_image.float().div(255.0), out_mask.bool()


class AugmentedItemReader:
    """Batches of (explainer input, multi-hot target) for training with augmentation (`lavise.augment`): every
    epoch each training image is read, cropped and flipped at random with its object masks (`augmentation`),
    and the backbone runs on it again, as the original trains on COCO. Only the cache's targets and geometry
    are used, not its features; the cost is one backbone pass per training image and epoch.

    Objects the random crop cuts off entirely are no item in that epoch. Masks become grid masks by the cache's
    mask mode.
    """

    def __init__(self, cache: FeatureCache, model: nn.Module, images: np.ndarray | None = None,
                 concepts: np.ndarray | None = None, device: str | torch.device = "cpu",
                 image_batch: int = 64) -> None:
        self.cache = cache
        self.targets = cache.targets()
        self.model = model.to(device)
        self.device = torch.device(device)
        self.layer = cache.meta["layer"]
        self.grid = (int(cache.meta["height"]), int(cache.meta["width"]))
        self.prep = preprocessing_of(model)
        if self.prep.input_size != cache.meta["input_size"]:
            raise ConfigError(f"the model's input size {self.prep.input_size} is not the feature cache's "
                              f"{cache.meta['input_size']}; train with the model the cache was made with")
        self.transform = augmentation(self.prep.input_size)
        positions = cache.image_index() if images is None else np.asarray(images, dtype=np.int64)
        self.images = np.array([int(i) for i in positions if self.targets.images[int(i)].objects], dtype=np.int64)
        self.concepts = None if concepts is None else torch.as_tensor(concepts, dtype=torch.long)
        self.image_batch = image_batch
        self.failed: dict[int, str] = {}

    def _read(self, position: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        img = self.targets.images[position]
        try:
            pixels = read_image(img.path)
        except ImageDecodeError as exc:
            self.failed[img.image_id] = str(exc)
            return None
        if pixels.shape[:2] != (img.height, img.width):
            self.failed[img.image_id] = (f"decoded size {pixels.shape[1]}x{pixels.shape[0]} is not the annotated "
                                         f"{img.width}x{img.height}")
            return None
        image, regions = augment_image(pixels, self.targets.full_masks(position), self.transform)
        targets = torch.from_numpy(self.targets.target_matrix(position))
        if self.concepts is not None:
            targets = targets[:, self.concepts]
        keep = regions.flatten(1).any(1) & targets.any(1)
        return image, regions[keep], targets[keep]

    def _items(self, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        read = [r for r in (self._read(int(i)) for i in positions) if r is not None]
        if not read:
            return torch.zeros(0, self.cache.in_features), torch.zeros(0, 0, dtype=torch.bool)
        images = self.prep.normalize(torch.stack([r[0] for r in read])).to(self.device)
        with (frozen_model(self.model, keep_inplace=True), capture_layer(self.model, self.layer) as capture,
              torch.no_grad()):
            self.model(images)
            act = capture.spatial(self.layer, "lavise").float()
        counts = torch.tensor([len(r[1]) for r in read])
        if not int(counts.sum()):
            return torch.zeros(0, self.cache.in_features), torch.zeros(0, 0, dtype=torch.bool)
        # Every region of the chunk at once: each masks its own image's activation.
        owner = torch.repeat_interleave(torch.arange(len(read)), counts).to(self.device)
        masks = grid_masks(torch.cat([r[1] for r in read]).to(self.device), self.grid, self.cache.mask_mode)
        items = pool_features(act[owner] * masks[:, None], self.cache.pool_size).cpu()
        return items, torch.cat([r[2] for r in read])

    def batches(self, batch_size: int, generator: torch.Generator | None = None,
                shuffle: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of batches over freshly augmented images; image order and items are shuffled with
        `generator`, the crops and flips drawn from torch's global generator."""
        order = (self.images[torch.randperm(len(self.images), generator=generator).numpy()] if shuffle
                 else self.images)
        chunks = (self._items(order[s:s + self.image_batch]) for s in range(0, len(order), self.image_batch))
        yield from rebatch(chunks, batch_size, generator, shuffle)
