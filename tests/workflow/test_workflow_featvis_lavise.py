"""The featvis and LaViSE rules on tiny sizes in a temp dir: images, grids, word and recall tables, resume,
and config mistakes that must stop the run before any job."""

from __future__ import annotations

import copy
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from tests.workflow_helpers import snakemake, tiny_config
from vislib import featvis, lavise
from vislib.config import check_config
from vislib.errors import ConfigError
from vislib.featvis.units import random_crops, shard_count, unit_list
from vislib.io import load_featvis_shard, read_image_list
from vislib.jobs.lavise import lavise_train, partial_checkpoint
from vislib.lavise.infer import FilterAnalysis
from vislib.lavise.settings import TRAIN_KEYS, lavise_settings

pytestmark = pytest.mark.workflow

FEATVIS = {
    "filter_visualization": {"iterations": 4, "octaves": 1, "jitter": 2},
    "class_image": {"iterations": 4, "octaves": 1, "jitter": 2},
    "deep_dream": {"iterations": 3, "octaves": 1, "jitter": 2},
    "inversion": {"iterations": 4, "jitter": 1},
    "class_agnostic": {"num_clusters": 2, "top_channels": 4, "images_per_cluster": 2, "blur_every": 2,
                       "octaves": [{"iterations": 4, "window_step": 2, "brightness_step": 2}]},
}
LAVISE = {"train_images": 40, "epochs": 2, "batch_size": 16, "filters": 4, "filters_per_group": 2, "p": 4,
          "top_words": 8, "words_per_image": 3, "quantile": 0.5, "recall_k": [1, 3], "figure_images": 3,
          "baseline_draws": 20}
LAYER_DIR = "results/tiny/featvis/demonet"
LAVISE_DIR = "results/tiny/lavise/demonet/features.14"


def featvis_lavise_config() -> dict:
    """The tiny config plus every featvis method and LaViSE on the trained demo net."""
    config = tiny_config()
    config["featvis"] = copy.deepcopy(FEATVIS)
    config["experiments"]["tiny"]["featvis"] = {
        "models": {"demonet": ["features.14"]}, "methods": list(FEATVIS), "channels": 3, "classes": [0, 5],
        "images": 2, "image_set": 6, "shard_size": 2,
    }
    config["lavise"] = copy.deepcopy(LAVISE)
    config["experiments"]["tiny"]["lavise"] = {"models": {"demonet": ["features.14"]}}
    return config


def grid(method: str) -> str:
    layer = "logits" if method == "class_image" else "features.14"
    return f"{LAYER_DIR}/{layer}/{method}/grid.png"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("featvis_lavise")
    snakemake(workdir, featvis_lavise_config(), *[grid(m) for m in FEATVIS], f"{LAVISE_DIR}/recall.md",
              f"{LAVISE_DIR}/group_1/filters.png")
    return workdir


def test_featvis_shards_hold_images_in_range_and_their_units(finished_run):
    def shards(layer, method):
        return [load_featvis_shard(p) for p in sorted((finished_run / LAYER_DIR / layer / method).glob("shard_*.npz"))]

    listed = read_image_list(finished_run / "results/image_lists/shapes.txt")
    expected = {  # method: (layer, units per shard, iterations)
        "filter_visualization": ("features.14", [[0, 1], [2]], 4),
        "class_image": ("logits", [[0, 5]], 4),
        "deep_dream": ("features.14", [[-1, -1]], 3),
        "inversion": ("features.14", [[-1, -1]], 4),
        "class_agnostic": ("features.14", [[0, 1]], 4),
    }
    for method, (layer, units, iterations) in expected.items():
        found = shards(layer, method)
        assert [s.units.tolist() for s in found] == units, method
        for shard in found:
            n = len(shard.units)
            assert shard.images.shape == (n, 3, 64, 64) and shard.images.dtype == np.float32
            assert shard.images.min() >= 0 and shard.images.max() <= 1
            assert shard.images.std() > 0, f"{method}: blank images"
            assert shard.loss_curve.shape == (iterations, n) and np.isfinite(shard.loss_curve).all()
            assert len(shard.labels) == n and shard.method == method and shard.layer == layer
        png = (finished_run / grid(method)).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000
    dream = shards("features.14", "deep_dream")[0]
    assert dream.image_ids.tolist() == listed[:2]
    assert dream.extras["start_images"].shape == dream.images.shape
    clusters = shards("features.14", "class_agnostic")[0]
    assert clusters.extras["image_set_ids"].tolist() == listed[:6]
    assert clusters.extras["start_images"].shape == clusters.images.shape


def test_lavise_tables_and_recall_against_baselines(finished_run):
    out = finished_run / LAVISE_DIR
    words = pd.read_parquet(out / "words.parquet")
    assert {"model", "layer", "filter", "rank", "word", "score"} <= set(words.columns)
    assert sorted(words["filter"].unique()) == [0, 1, 2, 3]
    assert words.groupby("filter")["rank"].min().eq(1).all() and words["score"].between(0, 1).all()
    recall = pd.read_parquet(out / "recall.parquet")
    assert {"explainer", "random", "prior"} <= set(recall["ranking"])
    assert set(recall["k"]) == {1, 3} and (recall["experiment"] == "tiny").all()
    defined = recall["recall"].dropna()
    assert len(defined) and defined.between(0, 1).all()
    assert "| random" in (out / "recall.md").read_text()
    history = pd.read_csv(out / "training.csv")
    assert history["epoch"].tolist() == [1, 2] and np.isfinite(history["train_loss"]).all()
    assert not partial_checkpoint(out / "explainer.pt").exists()
    for group in (0, 1):
        assert (out / f"group_{group}" / "filters.png").stat().st_size > 5_000


def test_groups_combine_to_the_analysis_of_all_filters(finished_run):
    out = finished_run / LAVISE_DIR
    combined = FilterAnalysis.concat([FilterAnalysis.load(out / f"group_{g}" / "analysis.npz") for g in (0, 1)])
    whole = lavise.analyze_filters(out / "features" / "reference", out / "explainer.pt",
                                   finished_run / "results/embeddings/shapes.txt", filters=[0, 1, 2, 3],
                                   p=LAVISE["p"], top_words=LAVISE["top_words"], quantile=LAVISE["quantile"])
    np.testing.assert_array_equal(combined.pair_filter, whole.pair_filter)
    np.testing.assert_array_equal(combined.pair_image_id, whole.pair_image_id)
    assert combined.pair_words == whole.pair_words and combined.pair_truth == whole.pair_truth
    pd.testing.assert_frame_equal(lavise.recall_at_k(combined, ks=(1, 3)), lavise.recall_at_k(whole, ks=(1, 3)))


def test_training_resumes_from_the_partial_checkpoint(finished_run, tmp_path):
    features = finished_run / LAVISE_DIR / "features"
    embeddings = str(finished_run / "results/embeddings/shapes.txt")
    settings = lavise_settings(LAVISE)
    fresh = lavise_train(features_dir=str(features), embeddings=embeddings, settings=settings, device="cpu",
                         checkpoint=str(tmp_path / "fresh.pt"), history=str(tmp_path / "f.csv"))
    # An interrupted run: one epoch done, its checkpoint still under the partial name.
    resumed_ckpt = tmp_path / "resumed.pt"
    lavise.train_explainer(features / "train", embeddings, partial_checkpoint(resumed_ckpt), epochs=1,
                           **{k: settings[k] for k in TRAIN_KEYS if k != "epochs"})
    resumed = lavise_train(features_dir=str(features), embeddings=embeddings, settings=settings, device="cpu",
                           checkpoint=str(resumed_ckpt), history=str(tmp_path / "r.csv"))
    pd.testing.assert_frame_equal(fresh.drop(columns="seconds"), resumed.drop(columns="seconds"))
    assert resumed_ckpt.exists() and not partial_checkpoint(resumed_ckpt).exists()


def test_featvis_units_and_shards():
    filters = featvis.get("filter_visualization")
    assert unit_list(filters, {"channels": 3, "shard_size": 2}, 0) == [0, 1, 2]
    assert shard_count(filters, {"channels": [4, 9, 1], "shard_size": 2}, 0) == 2
    dream = featvis.get("deep_dream")
    assert unit_list(dream, {"images": 5, "image_size": 0, "shard_size": 2}, 3) == [0, 1, 2]
    clusters = featvis.get("class_agnostic", num_clusters=3)
    assert unit_list(clusters, {"image_set": None, "crops_per_image": 1, "image_size": 0}, 10) == [0, 1, 2]
    images = torch.rand(2, 3, 16, 16)
    crops = random_crops(images, 3, seed=1)
    assert crops.shape == (6, 3, 16, 16) and torch.equal(crops, random_crops(images, 3, seed=1))
    assert random_crops(images, 1, seed=1) is images


@pytest.mark.parametrize("mistake, named", [
    ("registry", ["featvis.bad", "filter_visualisation", "filter_visualization"]),
    ("input_method", ["lavise.input_method", "projecton", "projection"]),
])
def test_config_mistakes_stop_the_workflow_before_any_job(tmp_path, mistake, named):
    config = featvis_lavise_config()
    if mistake == "registry":
        config["featvis"]["bad"] = {"method": "filter_visualisation"}
    else:
        config["lavise"]["input_method"] = "projecton"
    proc = snakemake(tmp_path, config, "-n", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for text in named:
        assert text in output, f"{text!r} missing from:\n{output[-2000:]}"
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["experiments"]["tiny"]["featvis"].update(methods=["inversoin"]),
     r"experiments\.tiny\.featvis\.methods.*'inversoin'.*Did you mean 'inversion'"),
    (lambda c: c["experiments"]["tiny"]["featvis"].update(channels=[3, 128]),
     r"experiments\.tiny\.featvis\.channels.*\[128\].*0\.\.127"),
    (lambda c: c["experiments"]["tiny"]["featvis"].update(classes=[6]), r"featvis\.classes.*\[6\].*0\.\.5"),
    (lambda c: c["featvis"].update(inversion={"iterations": 0}), r"featvis\.inversion.*iterations"),
    (lambda c: c["lavise"].update(recall_k=[1, 50]), r"lavise\.recall_k.*\[50\].*top_words"),
    (lambda c: c["lavise"].update(filters=[200]), r"lavise\.filters.*\[200\].*0\.\.127"),
    (lambda c: c["lavise"].update(seen_fraction=0.0), r"lavise: .*seen_fraction"),
    (lambda c: c["experiments"]["tiny"]["lavise"]["models"].update(demonet=["fc"]), r"no spatial maps"),
])
def test_config_check_names_the_key_and_the_fix(edit, message):
    config = featvis_lavise_config()
    edit(config)
    with pytest.raises(ConfigError, match=message):
        check_config(config)


def test_changing_one_featvis_method_reruns_only_its_jobs(finished_run, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(finished_run, workdir, symlinks=True)
    config = featvis_lavise_config()
    config["featvis"]["inversion"] = {"iterations": 5, "jitter": 1}
    # Targets go first: --quiet takes every word after it.
    proc = snakemake(workdir, config, *[grid(m) for m in FEATVIS], f"{LAVISE_DIR}/recall.md", "-n", "--quiet", "rules")
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, re.M))
    assert counts.get("featvis") == "1" and counts.get("featvis_grid") == "1"
    assert not {"lavise_train", "lavise_features", "train_model"} & set(counts)
