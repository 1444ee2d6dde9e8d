"""LaViSE settings: the top-level `lavise:` block with its defaults, checks, and the keys each rule depends on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vislib.errors import ConfigError
from vislib.lavise.infer import INPUT_METHODS
from vislib.lavise.train import TrainSettings
from vislib.registry import unknown_name_message

SEEDED = "seeded"
"""`embeddings` value that asks for a seeded random table over the dataset's concept words."""

SETTING_DEFAULTS: dict[str, Any] = {
    "embeddings": SEEDED, "embedding_dim": 50, "embedding_seed": 0,
    "train_split": "train", "train_images": None, "feature_batch_size": 64,
    "epochs": 10, "batch_size": 256, "lr": 1e-3, "weight_decay": 0.0, "margin": 1.0, "dropout": 0.1,
    "val_fraction": 0.1, "seen_fraction": 1.0, "seed": 0,
    "input_method": "projection", "filters": 32, "filters_per_group": 16, "p": 25, "top_words": 20,
    "words_per_image": 5, "words_per_filter": 10, "quantile": 0.995, "iou_threshold": 0.04,
    "recall_k": [5, 10, 20], "baseline_draws": 200, "figure_images": 5,
}
"""Defaults of the top-level `lavise:` block (the paper's values where it has them)."""

TRAIN_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "margin", "dropout", "val_fraction", "seen_fraction",
              "seed")
FEATURE_KEYS = ("train_split", "train_images", "feature_batch_size")
INFER_KEYS = ("input_method", "p", "top_words", "words_per_image", "words_per_filter", "quantile", "iou_threshold",
              "figure_images")
RECALL_KEYS = ("recall_k", "baseline_draws", "seed")
BASELINES = ("random", "prior")


def lavise_settings(block: dict[str, Any] | None) -> dict[str, Any]:
    """The `lavise:` block with defaults for every key it leaves out."""
    return {**SETTING_DEFAULTS, **(block or {})}


def subset(settings: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """Only `keys` of the settings: what one rule's outputs depend on."""
    return {key: settings[key] for key in keys}


def check_settings(settings: dict[str, Any]) -> None:
    """Reject settings no LaViSE run can use; messages name the `lavise.` key and what is valid."""
    if settings["input_method"] not in INPUT_METHODS:
        raise ConfigError("lavise.input_method: " + unknown_name_message(
            "LaViSE input method", settings["input_method"], list(INPUT_METHODS)))
    try:
        TrainSettings(**{k: settings[k] for k in TRAIN_KEYS if k != "epochs"}).validate()
    except ConfigError as exc:
        raise ConfigError(f"lavise: {exc}") from None
    if not 0 < settings["quantile"] < 1:
        raise ConfigError(f"lavise.quantile: {settings['quantile']} must be in (0, 1) (0.995 in the paper)")
    top = settings["top_words"]
    if settings["words_per_image"] > top:
        raise ConfigError(f"lavise.words_per_image: {settings['words_per_image']} exceeds lavise.top_words ({top}), "
                          "the words ranked per image; lower it or raise top_words")
    too_large = [k for k in settings["recall_k"] if k > top]
    if too_large:
        raise ConfigError(f"lavise.recall_k: {too_large} exceed lavise.top_words ({top}), the words ranked per "
                          f"image; use k <= {top} or raise top_words")
    embeddings = settings["embeddings"]
    if embeddings != SEEDED and not str(embeddings).strip():
        raise ConfigError(f"lavise.embeddings: give {SEEDED!r} or the path of a GloVe-format word file")


def filter_list(settings: dict[str, Any]) -> list[int]:
    """The filters to name: a count n means filters 0..n-1, a list those filters."""
    value = settings["filters"]
    return list(range(value)) if isinstance(value, int) else [int(u) for u in value]


def filter_groups(settings: dict[str, Any]) -> list[list[int]]:
    """The filters split into groups of `filters_per_group`: one inference job and one figure each."""
    filters, size = filter_list(settings), settings["filters_per_group"]
    return [filters[i:i + size] for i in range(0, len(filters), size)]


def group_count(settings: dict[str, Any]) -> int:
    """How many filter groups the settings make."""
    return max(1, len(filter_groups(settings)))
