"""LaViSE: train a visual-semantic explainer on a layer's features and name what each filter detects.

Pipeline: concept targets (`coco_targets`, `vg_targets`, `vg_split_targets`) -> `cache_features` (backbone run
once; `AugmentedItemReader` runs it every epoch on augmented images instead) ->
`train_explainer` -> `analyze_filters` -> `explain_filters` / `recall_at_k` / `filter_figure`.
"""

from vislib.lavise.embeddings import (
    DISTRACTORS,
    WordEmbeddings,
    load_glove,
    seeded_embeddings,
    write_glove,
    write_seeded_embeddings,
)
from vislib.lavise.features import (
    MASK_MODES,
    AugmentedItemReader,
    FeatureCache,
    FeatureShard,
    ItemReader,
    cache_features,
    grid_masks,
    pool_features,
)
from vislib.lavise.infer import (
    INPUT_METHODS,
    FilterAnalysis,
    analyze_filters,
    concepts_in_region,
    explain_filters,
    filter_figure,
    mask_iou,
    recall_at_k,
    recall_from_rankings,
)
from vislib.lavise.model import Explainer
from vislib.lavise.targets import (
    ConceptObject,
    ConceptTargets,
    ImageConcepts,
    coco_targets,
    concept_words,
    merge_targets,
    split_category,
)
from vislib.lavise.train import (
    ExplainerInfo,
    csmr_loss,
    load_explainer,
    topk_accuracy,
    train_explainer,
)
from vislib.lavise.vg import preprocess_vg, synset_token, vg_split_targets, vg_targets

__all__ = [
    "DISTRACTORS",
    "INPUT_METHODS",
    "MASK_MODES",
    "AugmentedItemReader",
    "ConceptObject",
    "ConceptTargets",
    "Explainer",
    "ExplainerInfo",
    "FeatureCache",
    "FeatureShard",
    "FilterAnalysis",
    "ImageConcepts",
    "ItemReader",
    "WordEmbeddings",
    "analyze_filters",
    "cache_features",
    "coco_targets",
    "concept_words",
    "concepts_in_region",
    "csmr_loss",
    "explain_filters",
    "filter_figure",
    "grid_masks",
    "load_explainer",
    "load_glove",
    "mask_iou",
    "merge_targets",
    "pool_features",
    "preprocess_vg",
    "recall_at_k",
    "recall_from_rankings",
    "seeded_embeddings",
    "split_category",
    "synset_token",
    "topk_accuracy",
    "train_explainer",
    "vg_split_targets",
    "vg_targets",
    "write_glove",
    "write_seeded_embeddings",
]
