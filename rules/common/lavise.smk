# Helpers of rules/lavise.smk (functions and settings; Snakemake's linter keeps them apart from rules).
from vislib.config import lavise_jobs
from vislib.lavise.settings import (CONCEPT_KEYS, FEATURE_KEYS, INFER_KEYS, RECALL_KEYS, SEEDED, filter_groups,
                                    group_count, lavise_settings, subset, train_job_settings)

LAVISE = lavise_settings(config.get("lavise"))
# Whole-dataset target sets (per-box VG items, `reference: all`, the training targets `augment` reads) hold
# millions of objects in memory: the feature, training and inference jobs then ask for more.
LAVISE_MEM_MB = 16000 if (LAVISE["concepts"] == "first_token" or LAVISE["reference"] == "all"
                          or LAVISE["augment"]) else 4000


def lavise_vg_concepts_input(experiment):
    """The reproduction's VG tokens where `concepts: first_token` asks for them (a named input), else nothing."""
    if LAVISE["concepts"] == "first_token":
        return {"vg_concepts": Paths.lavise_experiment(experiment, "vg_concepts.json")}
    return {}


def lavise_embeddings(experiment):
    """The word file of an experiment's LaViSE runs: the seeded table of its dataset, or the configured file."""
    if LAVISE["embeddings"] == SEEDED:
        return Paths.seeded_embeddings(experiment_dataset(experiment))
    return LAVISE["embeddings"]


def lavise_groups(wildcards, name):
    return [Paths.lavise_group(wildcards.experiment, wildcards.model, wildcards.layer, group, name)
            for group in range(group_count(LAVISE))]


def lavise_outputs(experiment):
    out = []
    for model, layer in lavise_jobs(config, experiment):
        out += [Paths.lavise(experiment, model, layer, n) for n in ("recall.parquet", "recall.md", "words.parquet")]
        out += [Paths.lavise_group(experiment, model, layer, g, "filters.png") for g in range(group_count(LAVISE))]
    return out
