"""LaViSE settings: the top-level `lavise:` block with its defaults, checks, and the keys each rule depends on."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

from vislib.data.dataset import RESIZE_PROTOCOLS
from vislib.errors import ConfigError
from vislib.lavise.features import MASK_MODES
from vislib.lavise.infer import INPUT_METHODS
from vislib.lavise.train import DADAPTATION_PIN, OPTIMIZERS, TrainSettings
from vislib.lavise.vg import COUNT_BY
from vislib.registry import unknown_name_message

SEEDED = "seeded"
"""`embeddings` value that asks for a seeded random table over the dataset's concept words."""

CONCEPTS = ("words", "first_token")
"""`lavise.concepts`: how concept tokens are made. `words`: every word of the category name ("traffic light" ->
traffic, light) plus the object's attribute words where the dataset has them and `attributes` is on. `first_token`
(Visual Genome only, the reproduction's `preprocess_vg.py`): the first word of each synset's lemma
(traffic_light.n.01 -> traffic) from VG's raw objects.json, tokens not in the word table dropped, then tokens
with fewer than `min_token_count` instances (`token_count_by`) dropped; no attributes; one item per box."""

REFERENCES = ("images", "all")
"""`lavise.reference`: the reference images whose top activations name a filter. `images`: the experiment's
image list. `all`: every image of the train split and the experiment's split (COCO train2017 + val2017, all of
Visual Genome), as the reproduction's inference."""

SETTING_DEFAULTS: dict[str, Any] = {
    "embeddings": SEEDED, "embedding_dim": 50, "embedding_seed": 0,
    "train_split": "train", "train_images": None, "feature_batch_size": 64,
    "concepts": "words", "attributes": True, "min_token_count": 100, "token_count_by": "images",
    "resize": "stretch", "masks": "coverage", "reference": "images",
    "epochs": 10, "batch_size": 256, "lr": 1e-3, "weight_decay": 0.0, "margin": 1.0, "dropout": 0.1,
    "val_fraction": 0.1, "seen_fraction": 1.0, "seed": 0,
    "bn_eval": False, "optimizer": "adam", "augment": False,
    "input_method": "projection", "filters": 32, "filters_per_group": 16, "p": 25, "top_words": 20,
    "words_per_image": 5, "words_per_filter": 10, "quantile": 0.995, "iou_threshold": 0.04,
    "recall_k": [5, 10, 20], "baseline_draws": 200, "figure_images": 5,
}
"""Defaults of the top-level `lavise:` block (the paper's values and vislib's fixes; the original's behaviour is
one key away for each switch: docs/lavise.md, "The original's behaviour")."""

TRAIN_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "margin", "dropout", "val_fraction", "seen_fraction",
              "seed", "bn_eval", "optimizer", "augment")
CONCEPT_KEYS = ("min_token_count", "token_count_by")
FEATURE_KEYS = ("train_split", "train_images", "feature_batch_size", "concepts", "attributes", "resize", "masks",
                "reference")
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


def train_job_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """What the training job depends on: TRAIN_KEYS, and with `augment` the images per backbone pass."""
    out = subset(settings, TRAIN_KEYS)
    if settings["augment"]:
        out["feature_batch_size"] = settings["feature_batch_size"]
    return out


def _choice(settings: dict[str, Any], key: str, valid: Sequence[str], what: str) -> None:
    if settings[key] not in valid:
        raise ConfigError(f"lavise.{key}: " + unknown_name_message(what, settings[key], list(valid)))


def check_settings(settings: dict[str, Any]) -> None:
    """Reject settings no LaViSE run can use; messages name the `lavise.` key and what is valid."""
    _choice(settings, "input_method", INPUT_METHODS, "LaViSE input method")
    _choice(settings, "concepts", CONCEPTS, "LaViSE concept mode")
    _choice(settings, "token_count_by", COUNT_BY, "LaViSE token count")
    _choice(settings, "resize", RESIZE_PROTOCOLS, "resize protocol")
    _choice(settings, "masks", MASK_MODES, "LaViSE mask mode")
    _choice(settings, "reference", REFERENCES, "LaViSE reference set")
    _choice(settings, "optimizer", OPTIMIZERS, "LaViSE optimizer")
    if settings["min_token_count"] < 1:
        raise ConfigError(f"lavise.min_token_count: {settings['min_token_count']} must be at least 1 (100 in the "
                          "paper and the reproduction)")
    if settings["optimizer"] == "dadapt_adam" and importlib.util.find_spec("dadaptation") is None:
        raise ConfigError("lavise.optimizer: 'dadapt_adam' needs the optional package dadaptation, which is not "
                          f"installed; pip install 'vislib[dadapt]' (or {DADAPTATION_PIN}), or use 'adam'")
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
