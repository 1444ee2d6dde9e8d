"""The LaViSE rules with the switches of the original's protocol on (tiny sizes): the wiring from the `lavise:`
block through the rules into the cache, the training and the reference set, and Visual Genome's first-token
concepts from VG's own files."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw

from tests.workflow_helpers import snakemake, tiny_config
from vislib.io import read_image_list

pytestmark = pytest.mark.workflow

OUT = "results/tiny/lavise/demonet/features.14"
ORIGINAL = {"resize": "crop", "masks": "nearest", "bn_eval": True, "augment": True, "reference": "all",
            "optimizer": "dadapt_adam", "lr": 1.0, "attributes": False}


def test_the_originals_switches_reach_the_jobs(tmp_path):
    pytest.importorskip("dadaptation")
    config = tiny_config()
    config["lavise"] = {"train_images": 40, "epochs": 2, "batch_size": 16, "filters": 4, "filters_per_group": 4,
                        "p": 4, "top_words": 8, "words_per_image": 3, "quantile": 0.5, "recall_k": [1, 3],
                        "figure_images": 2, "baseline_draws": 20, "feature_batch_size": 16, **ORIGINAL}
    config["experiments"]["tiny"]["lavise"] = {"models": {"demonet": ["features.14"]}}
    snakemake(tmp_path, config, f"{OUT}/recall.md")
    out = tmp_path / OUT
    reference = json.loads((out / "features/reference/meta.json").read_text())
    train = json.loads((out / "features/train/meta.json").read_text())
    assert (reference["resize"], reference["masks"]) == ("crop", "nearest") == (train["resize"], train["masks"])
    # `reference: all`: every image of the train split and the experiment's split, not the 12 listed ones.
    root = tmp_path / "resources/datasets/shapes/annotations"
    n_all = sum(len(json.loads((root / f"instances_{s}.json").read_text())["images"]) for s in ("train", "val"))
    assert reference["images"] == n_all > len(read_image_list(tmp_path / "results/image_lists/shapes.txt"))
    state = torch.load(out / "explainer.pt", weights_only=True)
    assert {k: state["settings"][k] for k in ("bn_eval", "optimizer", "augment")} == {
        "bn_eval": True, "optimizer": "dadapt_adam", "augment": True}
    assert int(state["state_dict"]["0.num_batches_tracked"]) == 0  # BatchNorm never left eval mode
    assert "d" in state["optimizer"]["param_groups"][0]  # DAdaptAdam's adapted step size
    history = pd.read_csv(out / "training.csv")
    # Augmented crops cut some objects off, so an epoch's item count varies around the cached one.
    assert history["epoch"].tolist() == [1, 2] and history["train_items"].gt(0).all()
    assert pd.read_parquet(out / "recall.parquet")["recall"].dropna().between(0, 1).all()


def _vg_zips(folder: Path) -> None:
    """A 30-image Visual Genome in VG's own files (images zip, objects.json, image_data.json), served as file:// URLs:
    every image shows a traffic light and a square, the first five also a zebra."""
    folder.mkdir(parents=True)
    image_data, objects = [], []
    with zipfile.ZipFile(folder / "images.zip", "w") as zf:
        for i in range(1, 31):
            w, h = (64, 48) if i % 2 else (48, 64)
            img = Image.new("RGB", (w, h), (80, 80, 80))
            draw = ImageDraw.Draw(img)
            boxes = [("traffic_light.n.01", 2, 2), ("square.n.01", 26, 24)]
            boxes += [("zebra.n.01", 10, 28)] if i <= 5 else []
            for k, (_, x, y) in enumerate(boxes):
                draw.rectangle([x, y, x + 15, y + 15], fill=(40 * k, 200 - 40 * k, 90))
            objects.append({"image_id": i, "objects": [
                {"object_id": 10 * i + k, "x": x, "y": y, "w": 16, "h": 16, "synsets": [synset]}
                for k, (synset, x, y) in enumerate(boxes)]})
            buffer = io.BytesIO()
            img.save(buffer, "JPEG")
            zf.writestr(f"VG_100K/{i}.jpg", buffer.getvalue())
            image_data.append({"image_id": i, "url": f"https://x/VG_100K/{i}.jpg", "width": w, "height": h})
    for name, doc in (("objects", objects), ("image_data", image_data)):
        with zipfile.ZipFile(folder / f"{name}.json.zip", "w") as zf:
            zf.writestr(f"{name}.json", json.dumps(doc))


def test_first_token_vg_concepts_run_through_the_rules(tmp_path):
    _vg_zips(tmp_path / "src")
    config = tiny_config()
    config["datasets"] = {"vg": {"kind": "vg", "split": "val", "limit": 6, "params": {
        "min_instances": 2, "val_fraction": 0.3, "seed": 0, "attributes": False,
        "images_urls": [(tmp_path / "src" / "images.zip").as_uri()], "meta_url": (tmp_path / "src").as_uri()}}}
    config["models"] = {"net": {"arch": "demonet", "weights": "random", "num_classes": 6}}
    config["metrics"] = {"energy_pointing_game": {}}
    config["experiments"] = {"vg": {"dataset": "vg", "target": "predicted", "models": {"net": ["features.14"]},
                                    "methods": ["gradcam"], "metrics": ["energy_pointing_game"],
                                    "lavise": {"models": {"net": ["features.14"]}}}}
    config["lavise"] = {"epochs": 1, "batch_size": 8, "filters": 2, "filters_per_group": 2, "p": 3, "top_words": 5,
                        "words_per_image": 3, "quantile": 0.5, "recall_k": [1, 3], "figure_images": 2,
                        "baseline_draws": 10, "concepts": "first_token", "min_token_count": 6,
                        "token_count_by": "instances", "attributes": False, "reference": "all"}
    out = "results/vg/lavise/net/features.14"
    snakemake(tmp_path, config, f"{out}/recall.md")
    stats = json.loads((tmp_path / "results/vg/lavise/vg_concepts_stats.json").read_text())
    # traffic_light.n.01 -> traffic (not "traffic", "light"); zebra's 5 instances fall under the cut of 6.
    assert stats["categories"] == 2 and stats["dropped_categories"] == 1
    reference = json.loads((tmp_path / out / "features/reference/meta.json").read_text())
    assert reference["vocabulary"] == ["square", "traffic"]
    assert reference["images"] == 30 and reference["items"] == 60  # all of VG, one item per box
    assert "light" in (tmp_path / "results/embeddings/vg.txt").read_text()  # in the table, but no concept
