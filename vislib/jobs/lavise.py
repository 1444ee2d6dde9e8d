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
from vislib.io import provenance, read_image_list, write_parquet, write_text
from vislib.lavise.embeddings import DISTRACTORS, WordEmbeddings, load_glove, seeded_embeddings, write_glove
from vislib.lavise.features import cache_features
from vislib.lavise.infer import FilterAnalysis, analyze_filters, explain_filters, filter_figure, recall_at_k
from vislib.lavise.settings import BASELINES, TRAIN_KEYS, subset
from vislib.lavise.targets import ConceptTargets, coco_targets, concept_words
from vislib.lavise.train import train_explainer
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


def lavise_features(*, model: dict[str, Any], layer: str, dataset: DatasetRef, settings: dict[str, Any],
                    image_list: str, embeddings: str, device: str, out_dir: str) -> None:
    """Cache the layer's features of the training images (`train/`) and of the listed reference images
    (`reference/`, the experiment's image list)."""
    table = load_glove(embeddings)
    net = load_model(model, device)
    train = _only(coco_targets(dataset.root, settings["train_split"], table), None, settings["train_images"])
    reference = _only(coco_targets(dataset.root, dataset.split, table), read_image_list(image_list), None)
    for name, targets in (("train", train), ("reference", reference)):
        cache = cache_features(net, layer, targets, Path(out_dir) / name, batch_size=settings["feature_batch_size"],
                               device=resolve_device(device))
        log.info("%s: %d images, %d items", name, cache.meta["images"], cache.meta["items"])


def partial_checkpoint(checkpoint: str | os.PathLike) -> Path:
    """Where training keeps its per-epoch checkpoint until it finishes; a rerun resumes from it."""
    path = Path(checkpoint)
    return path.with_name(path.name + ".partial")


def lavise_train(*, features_dir: str, embeddings: str, settings: dict[str, Any], device: str, checkpoint: str,
                 history: str) -> pd.DataFrame:
    """Train the explainer on the cached training features; resume an interrupted run of the same settings.

    The workflow deletes a job's outputs before it runs, so the per-epoch checkpoint lives beside the
    output and is moved onto it only when every epoch is done.
    """
    partial = partial_checkpoint(checkpoint)
    if partial.exists():
        log.info("resuming from %s", partial)
    curve = train_explainer(Path(features_dir) / "train", embeddings, partial, device=resolve_device(device),
                            log_path=history, resume=True, **subset(settings, TRAIN_KEYS))
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
