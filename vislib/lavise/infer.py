"""Naming filters: top images per filter, words ranked by the explainer, and recall@k against annotations."""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from vislib.data.dataset import read_image, to_input
from vislib.errors import ConfigError, DataError
from vislib.io import atomic_path
from vislib.lavise.embeddings import WordEmbeddings, load_glove
from vislib.lavise.features import FeatureCache, pool_features, recall_masks
from vislib.lavise.train import load_explainer
from vislib.methods.hooks import capture_layer, frozen_model
from vislib.models.registry import preprocessing_of

INPUT_METHODS = ("projection", "activation", "image", "original")
"""How a filter selects what the explainer sees: filter attention (the paper's), masks, or nothing."""


def mask_iou(region: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """IoU of a bool [S,S] region with each of the bool [K,S,S] masks; 0 where both are empty."""
    region = np.asarray(region, dtype=bool)
    masks = np.asarray(masks, dtype=bool).reshape(-1, *region.shape)
    inter = (masks & region).sum(axis=(1, 2))
    union = (masks | region).sum(axis=(1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def concepts_in_region(region: np.ndarray, masks: np.ndarray, tokens: Sequence[Sequence[str]],
                       iou_threshold: float = 0.04) -> set[str]:
    """G: the tokens of every object whose mask has IoU with `region` strictly above the threshold."""
    ious = mask_iou(region, masks)
    return {t for iou, toks in zip(ious, tokens, strict=True) if iou > iou_threshold for t in toks}


def recall_from_rankings(rankings: Sequence[Sequence[str]], truths: Sequence[Collection[str]],
                         k: int) -> tuple[float, int]:
    """Mean over pairs of |top-k words ∩ G| / |G| (pairs with empty G skipped), and the pair count."""
    if k < 1:
        raise ConfigError(f"recall k {k} must be at least 1")
    values = [len(set(words[:k]) & set(truth)) / len(set(truth))
              for words, truth in zip(rankings, truths, strict=True) if truth]
    return (float(np.mean(values)) if values else float("nan")), len(values)


@dataclass
class FilterAnalysis:
    """Per (filter, top image) pair: the filter's map, the explainer's ranked words and the concepts G."""

    model: str
    layer: str
    method: str
    feature_dir: str
    quantile: float
    iou_threshold: float
    vocabulary_size: int  # words the explainer's output was ranked against
    filters: list[int]
    thresholds: list[float]  # T_u per filter, same order as `filters`
    pair_filter: np.ndarray  # int64 [P]
    pair_image: np.ndarray  # int64 [P] position in the cache's target list
    pair_image_id: np.ndarray  # int64 [P]
    pair_max: np.ndarray  # float32 [P] max activation of the filter on the image
    pair_maps: np.ndarray  # float32 [P,h,w] the filter's activation map
    pair_words: list[list[str]]  # top words per pair, best first
    pair_scores: np.ndarray  # float32 [P,n] their cosines
    pair_truth: list[list[str]]  # G per pair
    unseen: list[str] = field(default_factory=list)  # concepts held out of explainer training
    concept_counts: dict[str, int] = field(default_factory=dict)  # items per concept in the reference set

    def save(self, path: str | os.PathLike) -> None:
        """Write the analysis as one .npz, atomically."""
        meta = {k: getattr(self, k) for k in ("model", "layer", "method", "feature_dir", "quantile",
                                              "iou_threshold", "vocabulary_size", "filters", "thresholds",
                                              "pair_words", "pair_truth", "unseen", "concept_counts")}
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, meta=np.array(json.dumps(meta)), pair_filter=self.pair_filter,
                     pair_image=self.pair_image, pair_image_id=self.pair_image_id, pair_max=self.pair_max,
                     pair_maps=self.pair_maps, pair_scores=self.pair_scores)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FilterAnalysis:
        """Read an analysis written by `save`."""
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                arrays = {k: data[k] for k in data.files if k != "meta"}
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(f"filter analysis {str(path)!r} is unreadable ({exc}); run the infer step again") from exc
        return cls(**meta, **arrays)

    @classmethod
    def concat(cls, parts: Sequence[FilterAnalysis]) -> FilterAnalysis:
        """One analysis of the filters of all `parts` (analyses of filter groups with the same settings)."""
        if not parts:
            raise ConfigError("no filter analyses to combine; give at least one")
        shared = ("model", "layer", "method", "feature_dir", "quantile", "iou_threshold", "vocabulary_size",
                  "unseen", "concept_counts")
        for part in parts[1:]:
            differ = [k for k in shared if getattr(part, k) != getattr(parts[0], k)]
            if differ:
                raise ConfigError(f"filter analyses differ in {differ}; combine only groups of one inference run")
        filters = [u for part in parts for u in part.filters]
        if len(set(filters)) != len(filters):
            raise ConfigError(f"filter groups overlap (filters {sorted(filters)}); give each filter to one group")
        first = parts[0]
        return cls(
            **{k: getattr(first, k) for k in shared}, filters=filters,
            thresholds=[t for part in parts for t in part.thresholds],
            pair_filter=np.concatenate([p.pair_filter for p in parts]),
            pair_image=np.concatenate([p.pair_image for p in parts]),
            pair_image_id=np.concatenate([p.pair_image_id for p in parts]),
            pair_max=np.concatenate([p.pair_max for p in parts]),
            pair_maps=np.concatenate([p.pair_maps for p in parts]),
            pair_words=[w for p in parts for w in p.pair_words],
            pair_scores=np.concatenate([p.pair_scores for p in parts]),
            pair_truth=[t for p in parts for t in p.pair_truth],
        )


def _thresholds_and_maxima(cache: FeatureCache, filters: list[int], quantile: float
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    maxima, values, index = [], [], []
    for shard in cache:
        act = shard.features[:, filters]
        maxima.append(act.float().amax(dim=(2, 3)).numpy())
        values.append(act.transpose(0, 1).reshape(len(filters), -1).numpy())
        index.append(shard.image_index)
    # One filter at a time keeps the float32 copy small on large reference sets.
    stacked = np.concatenate(values, axis=1)
    thresholds = np.array([np.quantile(stacked[u].astype(np.float32), quantile) for u in range(len(filters))])
    return thresholds, np.concatenate(maxima), np.concatenate(index)


def _gather_rows(cache: FeatureCache, rows: np.ndarray) -> torch.Tensor:
    """Features of the given global cache rows, float32 [len(rows),d,h,w], in the order of `rows`."""
    out = torch.zeros(len(rows), cache.meta["channels"], cache.meta["height"], cache.meta["width"])
    start = 0
    for shard in cache:
        n = len(shard.image_index)
        inside = (rows >= start) & (rows < start + n)
        if inside.any():
            out[torch.from_numpy(np.nonzero(inside)[0])] = shard.features[rows[inside] - start].float()
        start += n
    return out


def _masked_image_features(model: nn.Module, layer: str, cache: FeatureCache, image_pos: np.ndarray,
                           keep: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Re-run the backbone on images whose pixels outside `keep` [b,S,S] are set to the mean colour."""
    prep = preprocessing_of(model)
    targets = cache.targets()
    pixels = torch.stack([to_input(read_image(targets.images[int(i)].path), prep.input_size, cache.resize)
                          for i in image_pos])
    # Zero in normalised space is the dataset mean colour, the neutral value for the network.
    images = prep.normalize(pixels) * keep[:, None].to(pixels.dtype)
    with frozen_model(model, keep_inplace=True), capture_layer(model, layer) as capture, torch.no_grad():
        model(images.to(device))
        return capture.spatial(layer, "lavise").float().cpu()


def analyze_filters(feature_dir: str | os.PathLike, checkpoint: str | os.PathLike,
                    embeddings: WordEmbeddings | str | os.PathLike, filters: Sequence[int] | None = None,
                    method: str = "projection", p: int = 25, top_words: int = 20, quantile: float = 0.995,
                    iou_threshold: float = 0.04, model: nn.Module | None = None, which: str = "best",
                    batch_size: int = 128, device: str | torch.device = "cpu") -> FilterAnalysis:
    """For each filter: its top-p reference images, T_u, the explainer's words per image and G per image."""
    if method not in INPUT_METHODS:
        raise ConfigError(f"lavise method {method!r} is not known; use one of {list(INPUT_METHODS)}")
    if not 0 < quantile < 1:
        raise ConfigError(f"lavise threshold quantile {quantile} must be in (0, 1) (0.995 in the paper)")
    if p < 1 or top_words < 1:
        raise ConfigError(f"lavise p ({p}) and top_words ({top_words}) must be at least 1")
    device = torch.device(device)
    cache = FeatureCache(feature_dir)
    explainer, info = load_explainer(checkpoint, which, device)
    if (info.model, info.layer, info.in_features) != (cache.meta["model"], cache.meta["layer"], cache.in_features):
        raise ConfigError(f"explainer {str(checkpoint)!r} was trained on {info.model}/{info.layer} but the "
                          f"feature cache {str(feature_dir)!r} holds {cache.meta['model']}/{cache.meta['layer']}")
    if method == "image" and model is None:
        raise ConfigError("lavise method 'image' re-runs the backbone: pass the model it was cached with")
    if isinstance(embeddings, str | os.PathLike):
        embeddings = load_glove(embeddings)
    if embeddings.dim != info.embedding_dim:
        raise ConfigError(f"embedding table has D={embeddings.dim} but the explainer outputs "
                          f"D={info.embedding_dim}; use the embedding file it was trained with")
    channels = cache.meta["channels"]
    filters = list(range(channels)) if filters is None else [int(u) for u in filters]
    bad = [u for u in filters if not 0 <= u < channels]
    if bad or not filters:
        raise ConfigError(f"lavise filters {bad or filters} are outside layer {cache.meta['layer']!r}'s "
                          f"{channels} channels; use indices 0..{channels - 1}")
    thresholds, maxima, image_index = _thresholds_and_maxima(cache, filters, quantile)
    slots: list[int] = []
    picked: list[int] = []
    for slot in range(len(filters)):
        order = np.argsort(-maxima[:, slot], kind="stable")
        best = [r for r in order[:p] if maxima[r, slot] > 0]
        slots += [slot] * len(best)
        picked += best
    pair_slot, pair_row = np.asarray(slots, np.int64), np.asarray(picked, np.int64)
    rows = np.unique(pair_row)
    feats = _gather_rows(cache, rows)
    pos = np.searchsorted(rows, pair_row)
    filter_ids = torch.as_tensor(filters)[torch.from_numpy(pair_slot)]
    thr = torch.as_tensor(thresholds, dtype=torch.float32)[torch.from_numpy(pair_slot)]
    unit_words = embeddings.unit_vectors().to(device)
    n_top = min(top_words, len(embeddings))
    size = cache.meta["input_size"]
    maps_all, words_idx, scores = [], [], []
    for s in range(0, len(pair_row), batch_size):
        idx = torch.from_numpy(pos[s:s + batch_size])
        f = feats[idx]
        fu = f[torch.arange(len(idx)), filter_ids[s:s + batch_size]]
        t = thr[s:s + batch_size, None, None]
        maps_all.append(fu)
        if method == "projection":
            # Filter attention: every map weighted by the target filter's L2-normalised map.
            x = f * (fu / fu.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None])[:, None]
        elif method == "activation":
            x = f * (fu > t)[:, None]
        elif method == "original":
            x = f
        else:
            assert model is not None  # method 'image' without a model was rejected above
            keep = F.interpolate(fu[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0] > t
            x = _masked_image_features(model, cache.meta["layer"], cache,
                                       image_index[pair_row[s:s + batch_size]], keep, device)
        with torch.no_grad():
            pred = F.normalize(explainer(pool_features(x, cache.pool_size).to(device)), dim=1)
            top = (pred @ unit_words.T).topk(n_top, dim=1)
        words_idx.append(top.indices.cpu())
        scores.append(top.values.cpu())
    maps = torch.cat(maps_all) if maps_all else torch.zeros(0, cache.meta["height"], cache.meta["width"])
    targets = cache.targets()
    truths, mask_memo = [], {}
    regions = (F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
               > thr[:, None, None])
    grid = (int(cache.meta["height"]), int(cache.meta["width"]))
    for k, row in enumerate(pair_row):
        image = int(image_index[row])
        if image not in mask_memo:
            mask_memo[image] = recall_masks(targets.masks(image, size, cache.resize), grid, cache.mask_mode)
        tokens = [obj.tokens for obj in targets.images[image].objects]
        truths.append(sorted(concepts_in_region(regions[k].numpy(), mask_memo[image], tokens, iou_threshold)))
    word_idx = torch.cat(words_idx).numpy() if words_idx else np.zeros((0, n_top), np.int64)
    counts = Counter(t for img in targets.images for obj in img.objects for t in obj.tokens)
    return FilterAnalysis(
        model=cache.meta["model"], layer=cache.meta["layer"], method=method, feature_dir=str(feature_dir),
        quantile=quantile, iou_threshold=iou_threshold, vocabulary_size=len(embeddings), filters=filters,
        thresholds=[float(v) for v in thresholds], pair_filter=filter_ids.numpy().astype(np.int64),
        pair_image=image_index[pair_row].astype(np.int64),
        pair_image_id=np.array([targets.images[int(image_index[r])].image_id for r in pair_row], np.int64),
        pair_max=maxima[pair_row, pair_slot].astype(np.float32), pair_maps=maps.numpy().astype(np.float32),
        pair_words=[[embeddings.words[i] for i in r] for r in word_idx],
        pair_scores=(torch.cat(scores).numpy() if scores else np.zeros((0, n_top))).astype(np.float32),
        pair_truth=truths, unseen=info.unseen_words, concept_counts=dict(sorted(counts.items())),
    )


def explain_filters(analysis: FilterAnalysis, s: int = 5, n_words: int = 10,
                    allowed_words: Collection[str] | None = None,
                    weight_by_activation: bool = False) -> pd.DataFrame:
    """Each filter's most frequent words over its top images' top-s words.

    Rows are (model, layer, method, filter, rank, word, score).

    `score` is the share of the filter's images (weighted by max activation if asked) that rank the word
    in their top s. `allowed_words` keeps only those words (the original code's entities list).
    """
    if not 1 <= s <= analysis.pair_scores.shape[1]:
        raise ConfigError(f"lavise s {s} must be in 1..{analysis.pair_scores.shape[1]} (the top_words inferred)")
    allowed = set(allowed_words) if allowed_words is not None else None
    rows = []
    for u in analysis.filters:
        picks = np.nonzero(analysis.pair_filter == u)[0]
        weights = analysis.pair_max[picks] if weight_by_activation else np.ones(len(picks), np.float32)
        tally: defaultdict[str, float] = defaultdict(float)
        for k, w in zip(picks, weights, strict=True):
            for word in analysis.pair_words[k][:s]:
                if allowed is None or word in allowed:
                    tally[word] += float(w)
        total = float(weights.sum()) or 1.0
        # Ties break alphabetically so the table is the same on every run.
        ranked = sorted(tally.items(), key=lambda kv: (-kv[1], kv[0]))[:n_words]
        rows += [(analysis.model, analysis.layer, analysis.method, u, rank, word, count / total)
                 for rank, (word, count) in enumerate(ranked, start=1)]
    return pd.DataFrame(rows, columns=["model", "layer", "method", "filter", "rank", "word", "score"])


def _random_recall(truths: Sequence[Collection[str]], k: int, vocabulary_size: int,
                   rng: np.random.Generator, draws: int) -> float:
    sizes = np.array([len(t) for t in truths if t])
    if not len(sizes):
        return float("nan")
    # Under a uniform random ranking, the hits among the top k follow a hypergeometric law.
    hits = rng.hypergeometric(sizes, vocabulary_size - sizes, min(k, vocabulary_size), size=(draws, len(sizes)))
    return float((hits / sizes[None, :]).mean())


def recall_at_k(analysis: FilterAnalysis, ks: Sequence[int] = (5, 10, 20),
                baselines: Sequence[str] = ("random", "prior"), seed: int = 0,
                random_draws: int = 20) -> pd.DataFrame:
    """Recall@k of the explainer's word rankings and of baselines, over all concepts and unseen ones.

    Baselines: 'random' (a uniform random ranking of the full vocabulary, mean of `random_draws`) and
    'prior' (the reference set's concepts by item frequency, the same ranking for every image).
    """
    unknown = set(baselines) - {"random", "prior"}
    if unknown:
        raise ConfigError(f"lavise recall baselines {sorted(unknown)} are unknown; use 'random' and/or 'prior'")
    width = analysis.pair_scores.shape[1]
    if any(k > width for k in ks):
        raise ConfigError(f"recall k {max(ks)} exceeds the {width} words inferred per image; raise top_words")
    prior = [w for w, _ in sorted(analysis.concept_counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    subsets = {"all": analysis.pair_truth}
    if analysis.unseen:
        unseen = set(analysis.unseen)
        subsets["unseen"] = [[t for t in truth if t in unseen] for truth in analysis.pair_truth]
    rng = np.random.default_rng(seed)
    rows = []
    for subset, truths in subsets.items():
        for k in ks:
            rankings = {"explainer": analysis.pair_words}
            if "prior" in baselines:
                rankings["prior"] = [prior] * len(truths)
            for name, ranking in rankings.items():
                value, pairs = recall_from_rankings(ranking, truths, k)
                rows.append((analysis.model, analysis.layer, analysis.method, name, subset, k, value, pairs))
            if "random" in baselines:
                pairs = sum(1 for t in truths if t)
                value = _random_recall(truths, k, analysis.vocabulary_size, rng, random_draws)
                rows.append((analysis.model, analysis.layer, analysis.method, "random", subset, k, value, pairs))
    return pd.DataFrame(rows, columns=["model", "layer", "method", "ranking", "concepts", "k", "recall", "pairs"])


def filter_figure(analysis: FilterAnalysis, out_path: str | os.PathLike, filters: Sequence[int] | None = None,
                  n_images: int = 5, n_words: int = 5, s: int = 5) -> None:
    """One row per filter: its top images with the thresholded region outlined, then its top words."""
    from matplotlib.figure import Figure

    filters = list(analysis.filters if filters is None else filters)
    missing = [u for u in filters if u not in analysis.filters]
    if missing:
        raise ConfigError(f"filters {missing} were not analysed; pick from {analysis.filters}")
    words = explain_filters(analysis, s=s, n_words=n_words)
    cache = FeatureCache(analysis.feature_dir)
    targets = cache.targets()
    size = int(cache.meta["input_size"])
    fig = Figure(figsize=(1.7 * (n_images + 1.6), 1.8 * max(len(filters), 1)))
    grid = fig.add_gridspec(max(len(filters), 1), n_images + 1, width_ratios=[1] * n_images + [1.6])
    for r, u in enumerate(filters):
        picks = np.nonzero(analysis.pair_filter == u)[0][:n_images]
        threshold = analysis.thresholds[analysis.filters.index(u)]
        for c in range(n_images):
            ax = fig.add_subplot(grid[r, c])
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(picks):
                ax.axis("off")
                continue
            k = picks[c]
            pixels = to_input(read_image(targets.images[int(analysis.pair_image[k])].path), size, cache.resize)
            heat = F.interpolate(torch.from_numpy(analysis.pair_maps[k])[None, None], size=(size, size),
                                 mode="bilinear", align_corners=False)[0, 0].numpy()
            ax.imshow(pixels.permute(1, 2, 0).numpy())
            ax.imshow(heat, cmap="jet", alpha=0.3)
            if (heat > threshold).any():
                ax.contour(heat > threshold, levels=[0.5], colors="white", linewidths=1.0)
            ax.set_title(f"#{analysis.pair_image_id[k]} max {analysis.pair_max[k]:.2f}", fontsize=6)
            if c == 0:
                ax.set_ylabel(f"filter {u}", fontsize=8)
        text_ax = fig.add_subplot(grid[r, n_images])
        text_ax.axis("off")
        rows = words[words["filter"] == u]
        lines = [f"{w} ({sc:.2f})" for w, sc in zip(rows["word"], rows["score"], strict=True)] or ["(no image > 0)"]
        text_ax.text(0.0, 0.95, "\n".join(lines), va="top", fontsize=8, family="monospace",
                     transform=text_ax.transAxes)
    fig.suptitle(f"LaViSE {analysis.model} {analysis.layer} ({analysis.method})", fontsize=9)
    fig.tight_layout()
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=110, format=out_path.suffix.lstrip(".") or "png")
