"""The synthetic shapes dataset: 1-3 coloured shapes on a textured background, COCO format, seeded."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from vislib.data.cocoformat import CocoWriter
from vislib.errors import ConfigError
from vislib.params import param

CATEGORIES = ["circle", "square", "triangle", "star", "cross", "ring"]
COLOURS = {
    "red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 80, 230),
    "yellow": (235, 210, 40), "magenta": (210, 50, 200), "cyan": (40, 200, 210),
}
TEXTURES = ["solid", "striped", "dotted"]


@dataclass(frozen=True)
class ShapesConfig:
    """Sizes and counts of the generated dataset (the `shapes` kind's parameters)."""

    n_train: int = param(2000, "images in the train split", minimum=1)
    n_val: int = param(200, "images in the val split", minimum=1)
    image_size: int = param(64, "image side in pixels", minimum=32)
    min_objects: int = param(1, "fewest shapes per image", minimum=1, maximum=3)
    max_objects: int = param(3, "most shapes per image", minimum=1, maximum=3)
    seed: int = param(0, "seed of the whole dataset")

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects <= 3:
            raise ConfigError("shapes: need 1 <= min_objects <= max_objects <= 3")
        if self.image_size < 32:
            raise ConfigError(f"shapes: image_size {self.image_size} is too small; use 32 or more")


def _shape_mask(category: str, size: int, cx: float, cy: float, radius: float) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    r = radius
    if category == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif category == "square":
        s = r * 0.85
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=255)
    elif category == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.85), (cx + r, cy + r * 0.85)], fill=255)
    elif category == "star":
        points = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.42
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + rad * math.cos(angle), cy + rad * math.sin(angle)))
        draw.polygon(points, fill=255)
    elif category == "cross":
        t = r * 0.33
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=255)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=255)
    elif category == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        inner = r * 0.55
        draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    return np.asarray(canvas) > 127


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(70, 150, size=3)
    tilt = rng.uniform(-40, 40, size=(2, 3))
    freq = rng.uniform(2, 6)
    waves = 12 * np.sin(2 * math.pi * freq * (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)))
    img = base + xx[..., None] * tilt[0] + yy[..., None] * tilt[1] + waves[..., None]
    img += rng.normal(0, 10, size=(size, size, 3))
    return img


def _texture(texture: str, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    if texture == "striped":
        period = rng.integers(3, 6)
        return ((xx + yy) // period) % 2 == 0
    if texture == "dotted":
        period = rng.integers(3, 5)
        return (xx % period == 0) | (yy % period == 0)
    return np.ones((size, size), bool)


def _place(rng: np.random.Generator, size: int, radius: float, taken: list[tuple[float, float, float]]):
    for _ in range(50):
        cx, cy = rng.uniform(radius + 1, size - radius - 1, size=2)
        if all(math.hypot(cx - x, cy - y) > radius + r + 1 for x, y, r in taken):
            return cx, cy
    return None


def _render(rng: np.random.Generator, cfg: ShapesConfig) -> tuple[np.ndarray, list[dict], int]:
    size = cfg.image_size
    img = _background(rng, size)
    n_objects = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    # The first object is the largest by construction, so the image label is never ambiguous.
    radii = [rng.uniform(0.2, 0.3) * size] + [rng.uniform(0.09, 0.14) * size for _ in range(n_objects - 1)]
    objects: list[dict[str, Any]] = []
    taken: list[tuple[float, float, float]] = []
    for radius in radii:
        spot = _place(rng, size, radius, taken)
        if spot is None:
            continue
        taken.append((*spot, radius))
        category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
        mask = _shape_mask(category, size, spot[0], spot[1], radius)
        paint = mask & _texture(texture, size, rng)
        img[paint] = np.array(COLOURS[colour]) + rng.normal(0, 6, size=(int(paint.sum()), 3))
        ys, xs = np.nonzero(mask)
        bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
        size_word = "large" if radius >= 0.2 * size else "small"
        objects.append({"category": category, "bbox": bbox, "mask": mask,
                        "attributes": [colour, size_word, texture]})
    label = CATEGORIES.index(objects[0]["category"])
    return np.clip(img, 0, 255).astype(np.uint8), objects, label


def generate_shapes(root: str | Path, cfg: ShapesConfig) -> dict[str, int]:
    """Write images/{split}/*.png, annotations/instances_{split}.json and index_{split}.csv under `root`."""
    root = Path(root)
    counts = {}
    for split_index, (split, n) in enumerate((("train", cfg.n_train), ("val", cfg.n_val))):
        rng = np.random.default_rng([cfg.seed, split_index])
        writer = CocoWriter(root, split, CATEGORIES)
        image_dir = root / "images" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image_id = i + 1
            pixels, objects, label = _render(rng, cfg)
            file_name = f"{image_id:06d}.png"
            Image.fromarray(pixels).save(image_dir / file_name)
            writer.add_image(image_id, file_name, cfg.image_size, cfg.image_size, label, objects)
        writer.write(CATEGORIES)
        counts[split] = n
    return counts
