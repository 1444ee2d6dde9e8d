"""A user's images through the config check and the evaluate path: classes checked against every model that uses
them, and an image folder without boxes scored with honest NaN reasons."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vislib.config import check_config, dataset_model_classes
from vislib.data import DatasetRef
from vislib.errors import ConfigError
from vislib.jobs.aggregate import aggregate, figure_grid
from vislib.jobs.data import image_list, prepare_dataset
from vislib.jobs.evaluate import evaluate
from vislib.jobs.explain import explain
from vislib.jobs.figures import perturbation_curves
from vislib.jobs.sanity import sanity
from vislib.metrics.base import NO_BOXES_IN_DATASET

CLASSES = ["circle", "square", "triangle"]
BOX_METRICS = ["pointing_game", "energy_pointing_game", "loc_error_gt_known", "maxboxacc"]
PERTURBATION_METRICS = ["deletion_auc", "insertion_auc", "average_drop"]


def image_folder(root: Path, per_class: int = 2) -> Path:
    """Small random JPEGs and PNGs of different sizes, one folder per class."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (48 + 8 * k, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def config_for(folder: Path, **dataset_params) -> dict:
    return {
        "datasets": {"mine": {"kind": "imagefolder", "params": {"path": str(folder), **dataset_params}}},
        "models": {"demonet_random": {"arch": "demonet", "weights": "random", "num_classes": 3},
                   "resnet18": {"arch": "resnet18", "weights": "random"}},
        "methods": {"gradcam": {}},
        "metrics": {"pointing_game": {}},
        "experiments": {"mine": {"dataset": "mine", "models": {"demonet_random": ["features.14"]},
                                 "methods": ["gradcam"], "metrics": ["pointing_game"]}},
    }


def test_the_config_check_maps_the_classes_for_each_model(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "imgs")
    config = config_for(folder)
    check_config(config)
    assert dataset_model_classes(config, "mine") == {"model": "demonet_random", "count": 3, "names": []}
    config["datasets"]["mine"]["split"] = "test"
    with pytest.raises(ConfigError, match="datasets.mine.split is 'test', but its params make split\\(s\\) val"):
        check_config(config)
    config = config_for(folder, class_map="by_name")
    with pytest.raises(ConfigError, match="datasets.mine: .*model 'demonet_random' carries no class names"):
        check_config(config)
    # resnet18 knows ImageNet's names, which have no 'circle'; the closest ones are named.
    config["experiments"]["mine"]["models"] = {"resnet18": ["layer4"]}
    with pytest.raises(ConfigError, match="datasets.mine: .*model 'resnet18' has no class 'circle'. Closest:"):
        check_config(config)
    config = config_for(folder, class_map={"circle": 0, "square": 1, "triangle": 2})
    config["experiments"]["mine"]["models"] = {"demonet_random": ["features.14"], "resnet18": ["layer4"]}
    check_config(config)  # explicit indices hold for both models
    assert dataset_model_classes(config, "mine")["model"] == "resnet18"  # the one with class names labels the data
    config["datasets"]["mine"]["params"]["class_map"] = {"circle": "tench", "square": 1, "triangle": 2}
    with pytest.raises(ConfigError, match="datasets.mine: .*carries no class names"):
        check_config(config)


def test_the_config_check_refuses_a_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "imgs" / "circle").mkdir(parents=True)
    with pytest.raises(ConfigError, match="datasets.mine: class folder\\(s\\) '.*circle' hold no images"):
        check_config(config_for(tmp_path / "imgs"))


def test_one_dataset_cannot_label_differently_for_two_models(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    for name in ("tench", "goldfish"):
        (folder / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(folder / name / "a.png")
    config = config_for(folder, class_map="by_name")
    # ImageNet has tench at 0 and goldfish at 1; this model the other way round.
    config["models"]["fish_net"] = {"arch": "resnet18", "weights": "random", "num_classes": 2,
                                    "class_names": ["goldfish", "tench"]}
    config["experiments"]["mine"]["models"] = {"resnet18": ["layer4"], "fish_net": ["layer4"]}
    with pytest.raises(ConfigError, match="datasets.mine: 'goldfish' is class 1 of model 'resnet18' but 0 of model "
                                          "'fish_net'.*its own dataset entry"):
        check_config(config)
    config["experiments"]["mine"]["models"] = {"fish_net": ["layer4"]}
    check_config(config)
    assert dataset_model_classes(config, "mine") == {"model": "fish_net", "count": 2, "names": ["goldfish", "tench"]}
    config["datasets"]["mine"]["params"]["class_map"] = "index"
    config["experiments"]["mine"]["models"] = {"resnet18": ["layer4"], "demonet_random": ["features.14"]}
    with pytest.raises(ConfigError, match="index labels folders by their sorted position"):
        check_config(config)  # sorted: goldfish 0, tench 1; resnet18 has them the other way round
    config["datasets"]["mine"]["params"]["class_map"] = {"tench": 0, "goldfish": 1}
    check_config(config)


def test_an_image_folder_runs_the_evaluate_path_with_honest_nan_reasons(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "imgs")
    root = tmp_path / "datasets" / "mine"
    prepare_dataset(kind="imagefolder", params={"path": str(folder)}, root=str(root),
                    marker=str(root / "prepared.json"), model_classes=None)
    dataset = DatasetRef("imagefolder", "mine", str(root), "val")
    ids_file = tmp_path / "images.txt"
    image_list(dataset=dataset, limit=None, out=str(ids_file))
    assert len(ids_file.read_text().split()) == 6
    model = {"arch": "demonet", "weights": "random", "num_classes": 3}
    labels = {"experiment": "mine", "dataset": "mine", "model": "demonet_random", "layer": "features.14",
              "method": "gradcam", "target_mode": "label"}
    heatmaps, shard = tmp_path / "heatmaps.npz", tmp_path / "metrics.parquet"
    explain(image_list=str(ids_file), shard=0, shard_size=6, method=("gradcam", {}), model=model,
            layer="features.14", dataset=dataset, target="label", batch_size=4, device="cpu", out=str(heatmaps))
    metric_specs = {name: (name, {}) for name in BOX_METRICS + PERTURBATION_METRICS}
    evaluate(heatmaps=str(heatmaps), metrics=metric_specs, model=model, dataset=dataset, labels=labels,
             device="cpu", out=str(shard))
    rows = pd.read_parquet(shard)
    assert len(rows) == 6 * len(metric_specs) and sorted(set(rows["target"])) == [0, 1, 2]
    boxes = rows[rows["metric"].isin(BOX_METRICS)]
    assert boxes["value"].isna().all() and (boxes["reason"] == NO_BOXES_IN_DATASET).all()
    perturbation = rows[rows["metric"].isin(PERTURBATION_METRICS)]
    assert np.isfinite(perturbation["value"]).all() and (perturbation["reason"] == "").all()

    out = tmp_path / "results"
    aggregate(metric_shards=[str(shard)], metrics=str(out / "metrics.parquet"), summary=str(out / "summary.parquet"),
              summary_md=str(out / "summary.md"), summary_html=str(out / "summary.html"),
              comparisons=str(out / "comparisons.parquet"), experiment="mine", experiment_config={}, device="cpu")
    table = pd.read_parquet(out / "metrics.parquet")
    assert (table.loc[table["metric"].isin(BOX_METRICS), "reason"] == NO_BOXES_IN_DATASET).all()
    summary = pd.read_parquet(out / "summary.parquet").set_index("metric")
    assert summary.loc[BOX_METRICS, "n"].eq(0).all() and summary.loc[BOX_METRICS, "n_undefined"].eq(6).all()
    assert summary.loc[PERTURBATION_METRICS, "n"].eq(6).all()
    assert all(math.isfinite(v) for v in summary.loc[PERTURBATION_METRICS, "mean"])
    perturbation_curves(metrics=str(out / "metrics.parquet"), out=str(out / "curves.png"), title="mine")
    figure_grid(heatmaps=[str(heatmaps)], methods={"gradcam": ("gradcam", {})}, n_images=3, model=model,
                dataset=dataset, title="mine", out=str(out / "grid.png"))
    sanity(image_list=str(ids_file), n_images=3, method=("gradcam", {}), model=model, layer="features.14",
           dataset=dataset, target="label", steps=2, device="cpu", labels=labels, out=str(out / "sanity.parquet"),
           maps_out=str(out / "sanity_maps.npz"))
    assert len(pd.read_parquet(out / "sanity.parquet")) > 0
    for picture in ("curves.png", "grid.png"):
        assert Image.open(out / picture).size[0] > 100
