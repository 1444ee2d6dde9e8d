"""Jobs of rules/lavise.smk: the seeded word table, feature caches, training with resume, naming filter groups
and recall@k against baselines."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from vislib.data import DatasetRef
from vislib.data.vg import objects_json
from vislib.io import provenance, read_image_list, write_json, write_parquet, write_text
from vislib.lavise.embeddings import DISTRACTORS, WordEmbeddings, load_glove, seeded_embeddings, write_glove
from vislib.lavise.features import cache_features
from vislib.lavise.infer import FilterAnalysis, analyze_filters, explain_filters, filter_figure, recall_at_k
from vislib.lavise.settings import BASELINES, TRAIN_KEYS, subset
from vislib.lavise.targets import ConceptTargets, coco_targets, concept_words, merge_targets
from vislib.lavise.train import train_explainer
from vislib.lavise.vg import preprocess_vg, vg_split_targets
from vislib.pipeline import load_model, resolve_device

log = logging.getLogger(__name__)


def lavise_embeddings(*, root: str | os.PathLike, splits: Sequence[str], dim: int, seed: int,
                      out: str | os.PathLike) -> WordEmbeddings:
    """A GloVe-format table of seeded random vectors over the dataset's concept words (from its annotations)
    plus distractor words that are no concept of it, so a ranking has wrong answers to avoid."""
    concepts = concept_words(root, splits)
    table = seeded_embeddings(concepts + [w for w in DISTRACTORS if w not in concepts], dim, seed)
    write_glove(out, table)
    log.info("seeded table: %d concept words + %d distractors, D=%d", len(concepts), len(table) - len(concepts), dim)
    return table


def _only(targets: ConceptTargets, image_ids: Sequence[int] | None, limit: int | None) -> ConceptTargets:
    images = targets.images
    if image_ids is not None:
        keep = set(int(i) for i in image_ids)
        images = [img for img in images if img.image_id in keep]
    if limit:
        images = images[:limit]
    return dataclasses.replace(targets, images=images)


def lavise_vg_concepts(*, root: str | os.PathLike, embeddings: str, settings: dict[str, Any],
                       out: str | os.PathLike, stats_out: str | os.PathLike) -> dict:
    """`concepts: first_token`: VG's raw objects.json as the reproduction preprocesses it (first word of every
    synset's lemma, tokens not in the word table dropped, tokens under `min_token_count` `token_count_by` dropped,
    boxes grouped per token per image), written as JSON with its counts beside it."""
    stats = preprocess_vg(objects_json(root), out, load_glove(embeddings), min_count=settings["min_token_count"],
                          count_by=settings["token_count_by"], all_synsets=True)
    write_json(stats_out, stats)
    log.info("VG tokens: %d images, %d categories (%d dropped), at most %d per image", stats["images"],
             stats["categories"], stats["dropped_categories"], stats["max_categories_per_image"])
    return stats


def _split_targets(dataset: DatasetRef, split: str, table: WordEmbeddings, settings: dict[str, Any],
                   vg_concepts: str | None) -> ConceptTargets:
    if settings["concepts"] == "first_token":
        if vg_concepts is None:
            raise ValueError("concepts 'first_token' needs the preprocessed VG tokens (rule lavise_vg_concepts)")
        return vg_split_targets(vg_concepts, dataset.root, split, table)
    return coco_targets(dataset.root, split, table, attributes=settings["attributes"])


def lavise_features(*, model: dict[str, Any], layer: str, dataset: DatasetRef, settings: dict[str, Any],
                    image_list: str, embeddings: str, device: str, out_dir: str,
                    vg_concepts: str | None = None) -> None:
    """Cache the layer's features of the training images (`train/`) and of the reference images (`reference/`:
    the experiment's image list, or with `reference: all` every image of the train split and the experiment's
    split). Concept tokens, resize protocol and mask mode follow the settings (`concepts`, `resize`, `masks`)."""
    table = load_glove(embeddings)
    net = load_model(model, device)
    train = _only(_split_targets(dataset, settings["train_split"], table, settings, vg_concepts), None,
                  settings["train_images"])
    if settings["reference"] == "all":
        splits = list(dict.fromkeys([settings["train_split"], dataset.split]))
        reference = merge_targets([_split_targets(dataset, s, table, settings, vg_concepts) for s in splits],
                                  f"{dataset.name} splits {splits}")
    else:
        reference = _only(_split_targets(dataset, dataset.split, table, settings, vg_concepts),
                          read_image_list(image_list), None)
    for name, targets in (("train", train), ("reference", reference)):
        cache = cache_features(net, layer, targets, Path(out_dir) / name, batch_size=settings["feature_batch_size"],
                               device=resolve_device(device), resize=settings["resize"],
                               mask_mode=settings["masks"])
        log.info("%s: %d images, %d items (%d objects cut off by the crop)", name, cache.meta["images"],
                 cache.meta["items"], cache.meta["outside_crop"])


def partial_checkpoint(checkpoint: str | os.PathLike) -> Path:
    """Where training keeps its per-epoch checkpoint until it finishes; a rerun resumes from it."""
    path = Path(checkpoint)
    return path.with_name(path.name + ".partial")


def lavise_train(*, features_dir: str, embeddings: str, settings: dict[str, Any], device: str, checkpoint: str,
                 history: str, model: dict[str, Any] | None = None) -> pd.DataFrame:
    """Train the explainer on the cached training features; resume an interrupted run of the same settings.
    With `augment`, the backbone (`model`) runs on augmented training images every epoch instead.

    The workflow deletes a job's outputs before it runs, so the per-epoch checkpoint lives beside the
    output and is moved onto it only when every epoch is done.
    """
    partial = partial_checkpoint(checkpoint)
    if partial.exists():
        log.info("resuming from %s", partial)
    extra: dict[str, Any] = {}
    if settings["augment"]:
        if model is None:
            raise ValueError("lavise augment needs the model spec to run the backbone")
        extra = {"backbone": load_model(model, device), "image_batch": settings.get("feature_batch_size", 64)}
    curve = train_explainer(Path(features_dir) / "train", embeddings, partial, device=resolve_device(device),
                            log_path=history, resume=True, **subset(settings, TRAIN_KEYS), **extra)
    os.replace(partial, checkpoint)
    log.info("trained %d epochs; last: %s", len(curve), curve.iloc[-1].to_dict())
    return curve


def lavise_infer(*, features_dir: str, checkpoint: str, embeddings: str, filters: Sequence[int],
                 settings: dict[str, Any], model: dict[str, Any], experiment: str, device: str, analysis_out: str,
                 words_out: str, figure_out: str) -> None:
    """Name one group of filters: their analysis (.npz), top words (Parquet) and figure (top regions, words)."""
    net = load_model(model, device) if settings["input_method"] == "image" else None
    analysis = analyze_filters(Path(features_dir) / "reference", checkpoint, embeddings, filters=list(filters),
                               method=settings["input_method"], p=settings["p"], top_words=settings["top_words"],
                               quantile=settings["quantile"], iou_threshold=settings["iou_threshold"], model=net,
                               device=resolve_device(device))
    analysis.save(analysis_out)
    words = explain_filters(analysis, s=settings["words_per_image"], n_words=settings["words_per_filter"])
    words.insert(0, "experiment", experiment)
    write_parquet(words_out, pa.Table.from_pandas(words, preserve_index=False),
                  provenance(settings, str(resolve_device(device))))
    filter_figure(analysis, figure_out, n_images=settings["figure_images"],
                  n_words=min(5, settings["words_per_filter"]), s=settings["words_per_image"])
    log.info("filters %s: %d (filter, image) pairs", list(filters), len(analysis.pair_filter))


def recall_markdown(recall: pd.DataFrame, words: pd.DataFrame, title: str) -> str:
    """Recall@k per ranking (explainer and baselines) as markdown tables, then the top words of each filter."""
    lines = [f"# LaViSE recall@k: {title}", ""]
    for concepts, part in recall.groupby("concepts", sort=False):
        wide = part.pivot_table(index="ranking", columns="k", values="recall", sort=False).round(3)
        wide.columns = [f"R@{k}" for k in wide.columns]
        wide["pairs"] = part.groupby("ranking", sort=False)["pairs"].first()
        lines += [f"## {concepts} concepts", "", wide.reset_index().to_markdown(index=False), ""]
    top = words.sort_values(["filter", "rank"]).groupby("filter")["word"].apply(lambda w: ", ".join(w.head(5)))
    lines += ["## Top words per filter", "", top.reset_index().rename(columns={"word": "top words"})
              .to_markdown(index=False), ""]
    return "\n".join(lines)


def lavise_recall(*, analyses: Sequence[str], words: Sequence[str], settings: dict[str, Any], experiment: str,
                  recall_out: str, markdown_out: str, words_out: str) -> pd.DataFrame:
    """Recall@k of the explainer and the baselines over all filter groups; the combined words table."""
    merged = FilterAnalysis.concat([FilterAnalysis.load(p) for p in analyses])
    recall = recall_at_k(merged, ks=settings["recall_k"], baselines=BASELINES, seed=settings["seed"],
                         random_draws=settings["baseline_draws"])
    recall.insert(0, "experiment", experiment)
    table = pd.concat([pd.read_parquet(p) for p in words], ignore_index=True)
    meta = provenance(settings)
    write_parquet(recall_out, pa.Table.from_pandas(recall, preserve_index=False), meta)
    write_parquet(words_out, pa.Table.from_pandas(table, preserve_index=False), meta)
    write_text(markdown_out, recall_markdown(recall, table, f"{experiment}: {merged.model} / {merged.layer} "
                                                          f"({merged.method}, {len(merged.filters)} filters)"))
    return recall
