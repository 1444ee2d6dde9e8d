"""LaViSE as the original and the reproduction run it, each behind one `lavise:` key, with known answers taken from
their code on tiny inputs: VG tokens and the instance cut, BatchNorm in eval mode, 7x7 nearest masks,
Resize(256) + CenterCrop(224), the COCO training augmentation, the reference set and the optimizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vislib.models as vm
from vislib import lavise
from vislib.config import check_config
from vislib.data import DatasetRef
from vislib.data.coco import link_split
from vislib.data.synthetic import ShapesConfig, generate_shapes
from vislib.data.vg import convert_vg, objects_json
from vislib.errors import ConfigError
from vislib.jobs.lavise import _split_targets, lavise_vg_concepts
from vislib.lavise import train as train_module
from vislib.lavise.features import (
    AugmentedItemReader,
    augment_image,
    augmentation,
    grid_masks,
    recall_masks,
)
from vislib.lavise.settings import check_settings, lavise_settings, train_job_settings
from vislib.lavise.targets import ConceptObject, ConceptTargets, ImageConcepts, merge_targets
from vislib.lavise.train import make_optimizer, set_bn_eval

LAYER = "features.14"
REPO = Path(__file__).resolve().parents[2]


# --- Visual Genome tokens ------------------------------------------------------------------------------

def _raw_vg(root: Path) -> None:
    """Raw VG files (objects.json, image_data.json, JPEGs) as `prepare_vg` leaves them, then converted."""
    (root / "meta").mkdir(parents=True)
    sizes = {1: (48, 32), 2: (32, 48), 3: (40, 40)}
    image_data, objects = [], []
    for image_id, (w, h) in sizes.items():
        path = root / "raw" / "VG_100K" / f"{image_id}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (w, h), (90, 90, 90)).save(path)
        image_data.append({"image_id": image_id, "url": f"https://x/VG_100K/{image_id}.jpg", "width": w,
                           "height": h})
        objects.append({"image_id": image_id, "objects": [
            {"object_id": 10 * image_id, "x": 2, "y": 4, "w": 12, "h": 6, "synsets": ["traffic_light.n.01"],
             "names": ["traffic light"]},
        ]})
    # Image 1 also has three boxes of one token (3 instances, 1 image) and an object with two synsets.
    objects[0]["objects"] += [
        {"object_id": 101, "x": 20, "y": 2, "w": 4, "h": 4, "synsets": ["zebra.n.01"]},
        {"object_id": 102, "x": 26, "y": 2, "w": 4, "h": 4, "synsets": ["zebra.n.01"]},
        {"object_id": 103, "x": 32, "y": 2, "w": 4, "h": 4, "synsets": ["zebra.n.01"]},
        {"object_id": 104, "x": 30, "y": 20, "w": 6, "h": 6, "synsets": ["street_lamp.n.01", "light.n.02"]},
    ]
    objects[1]["objects"].append({"object_id": 201, "x": 10, "y": 30, "w": 6, "h": 6, "synsets": ["light.n.02"]})
    (root / "meta" / "image_data.json").write_text(json.dumps(image_data))
    objects_json(root).write_text(json.dumps(objects))
    for split in ("train", "val"):
        link_split(root, split, "raw")
    convert_vg(root, objects_json(root), root / "meta" / "image_data.json", None, min_instances=1,
               val_fraction=0.0, seed=0)


WORDS = ["traffic", "light", "zebra", "street", "lamp"]


def test_traffic_light_is_traffic_under_first_token_and_two_words_by_default(tmp_path):
    _raw_vg(tmp_path)
    table = lavise.seeded_embeddings(WORDS, dim=8)
    dataset = DatasetRef("vg", "vg", str(tmp_path), "train")
    # Default (`concepts: words`): the whole lemma is split into words.
    words = _split_targets(dataset, "train", table, lavise_settings({}), None)
    assert words.images[2].objects[0].tokens == ["traffic", "light"]
    # `concepts: first_token`: the reproduction keeps the lemma's first token (traffic_light.n.01 -> traffic).
    settings = lavise_settings({"concepts": "first_token", "min_token_count": 1, "token_count_by": "instances"})
    lavise_vg_concepts(root=tmp_path, embeddings=_glove(tmp_path, table), settings=settings,
                       out=tmp_path / "tok.json", stats_out=tmp_path / "stats.json")
    first = _split_targets(dataset, "train", table, settings, str(tmp_path / "tok.json"))
    tokens = {img.image_id: [o.tokens for o in img.objects] for img in first.images}
    assert tokens[3] == [["traffic"]]
    assert "light" not in {t for toks in tokens[3] for t in toks}
    # One item per box (the reproduction's VisualGenomeInstances): zebra's three boxes are three items.
    assert tokens[1].count(["zebra"]) == 3
    # Every synset of an object counts (the reproduction loops over them): street_lamp.n.01 and light.n.02.
    assert ["street"] in tokens[1] and ["light"] in tokens[1]
    assert lavise.synset_token("traffic_light.n.01") == "traffic"


def test_tokens_below_the_instance_cut_are_dropped(tmp_path):
    _raw_vg(tmp_path)
    table = lavise.seeded_embeddings(WORDS, dim=8)
    glove = _glove(tmp_path, table)
    stats = lavise_vg_concepts(root=tmp_path, embeddings=glove, out=tmp_path / "i.json", stats_out=tmp_path / "s.json",
                               settings=lavise_settings({"min_token_count": 3, "token_count_by": "instances"}))
    kept = {t for entry in json.loads((tmp_path / "i.json").read_text()) for t in entry["objects"]}
    # Instances: traffic 3, zebra 3 (all in image 1), light 2, street 1 -> light and street are cut.
    assert kept == {"traffic", "zebra"} and stats["categories"] == 2
    by_images = lavise_vg_concepts(root=tmp_path, embeddings=glove, out=tmp_path / "m.json",
                                   stats_out=tmp_path / "t.json",
                                   settings=lavise_settings({"min_token_count": 2, "token_count_by": "images"}))
    kept = {t for entry in json.loads((tmp_path / "m.json").read_text()) for t in entry["objects"]}
    # Images (the paper's text): zebra is in one image only, light in two.
    assert kept == {"traffic", "light"} and by_images["dropped_categories"] == 2
    # A token the word table lacks is dropped before counting, as in the reproduction.
    small = lavise.seeded_embeddings(["zebra", "light"], dim=8)
    stats = lavise.preprocess_vg(objects_json(tmp_path), tmp_path / "z.json", small, min_count=1,
                                 count_by="instances", all_synsets=True)
    assert stats["words_not_in_embeddings"] == {"street": 1, "traffic": 3}


def _glove(tmp_path: Path, table) -> str:
    path = tmp_path / "words.txt"
    lavise.write_glove(path, table)
    return str(path)


def test_first_token_is_for_visual_genome_only_and_settings_are_checked():
    from tests.workflow_helpers import tiny_config

    config = tiny_config()
    config["lavise"] = {"concepts": "first_token"}
    config["experiments"]["tiny"]["lavise"] = {"models": {"demonet": [LAYER]}}
    with pytest.raises(ConfigError, match=r"lavise\.concepts.*first_token.*'words'"):
        check_config(config)
    for key, bad in [("masks", "nearst"), ("resize", "center"), ("reference", "everything"),
                     ("optimizer", "sgd"), ("concepts", "first"), ("token_count_by", "boxes")]:
        with pytest.raises(ConfigError, match=rf"lavise\.{key}"):
            check_settings(lavise_settings({key: bad}))
    with pytest.raises(ConfigError, match="min_token_count"):
        check_settings(lavise_settings({"min_token_count": 0}))


# --- masks on the feature grid ------------------------------------------------------------------------

def test_7x7_nearest_masks_match_the_originals_pil_resize():
    import torchvision.transforms as T
    from torchvision.transforms import InterpolationMode

    mask = torch.zeros(3, 224, 224, dtype=torch.bool)
    mask[0, 0:20, 0:20] = True  # covers cell (0, 0)'s centre pixel (16, 16)
    mask[1, 20:31, 20:31] = True  # inside cell (0, 0) but off its centre: vanishes
    mask[2, 100:120, 40:60] = True  # covers (112, 48): cell (3, 1)
    nearest = grid_masks(mask, (7, 7), "nearest")
    expected = torch.zeros(3, 7, 7)
    expected[0, 0, 0] = expected[2, 3, 1] = 1
    assert torch.equal(nearest, expected)
    # The original's mask transform (ToPILImage, Resize([7, 7], NEAREST), ToTensor) gives the same.
    pil = T.Compose([T.ToPILImage(), T.Resize([7, 7], interpolation=InterpolationMode.NEAREST), T.ToTensor()])
    for k in range(3):
        assert torch.equal(pil(mask[k].float()[None])[0], nearest[k])
    # vislib's coverage keeps the off-centre box as a fraction of its cell.
    coverage = grid_masks(mask, (7, 7), "coverage")
    assert coverage[1, 0, 0] == pytest.approx(11 * 11 / 32 ** 2) and coverage[0, 0, 0] == pytest.approx(400 / 1024)
    # Recall: the 7x7 mask upsampled back with nearest neighbour is a whole 32 x 32 cell (the reproduction's G).
    up = recall_masks(mask.numpy(), (7, 7), "nearest")
    assert up[0, :32, :32].all() and up[0].sum() == 32 * 32 and not up[1].any()
    assert (recall_masks(mask.numpy(), (7, 7), "coverage") == mask.numpy()).all()


def test_resize_256_center_crop_224_places_masks_like_the_originals_mask_transform():
    import torchvision.transforms as T
    from torchvision.transforms import InterpolationMode

    image = ImageConcepts(1, "unused.jpg", 400, 200, [ConceptObject(["square"], [[100, 50, 200, 150]]),
                                                      ConceptObject(["edge"], [[0, 0, 40, 40]])])
    targets = ConceptTargets(["edge", "square"], [image], "hand-made")
    masks = targets.masks(0, 224, "crop")
    # Resize(256): 400x200 -> 512x256 (scale 1.28), CenterCrop(224): left 144, top 16.
    assert masks[0][48:176, 0:112].all() and masks[0].sum() == 128 * 112
    assert not masks[1].any()  # the corner box is cut off by the crop
    full = np.zeros((200, 400), np.float32)
    full[50:150, 100:200] = 1
    original = T.Compose([T.ToPILImage(), T.Resize(256, interpolation=InterpolationMode.NEAREST),
                          T.CenterCrop(224), T.ToTensor()])(torch.from_numpy(full)[None])[0]
    assert np.array_equal(original.numpy() > 0.5, masks[0])
    assert targets.masks(0, 224).sum() > 0  # stretch keeps both (the default)


# --- augmentation ---------------------------------------------------------------------------------------

def test_augmentation_moves_masks_with_the_pixels():
    pixels = np.full((60, 90, 3), 40, np.uint8)
    pixels[10:40, 50:80] = (250, 20, 20)  # a red object
    masks = np.zeros((2, 60, 90), bool)
    masks[0, 10:40, 50:80] = True
    masks[1, 45:55, 5:15] = True
    transform = augmentation(32)
    flipped = 0
    for seed in range(12):
        torch.manual_seed(seed)
        image, out = augment_image(pixels, masks, transform)
        assert image.shape == (3, 32, 32) and out.shape == (2, 32, 32) and out.dtype == torch.bool
        assert 0 <= float(image.min()) and float(image.max()) <= 1
        red = (image[0] > 0.6) & (image[1] < 0.3)
        # The mask marks the red pixels (up to the object's border, where resampling blends the colours).
        if out[0].sum() > 8:
            assert red[out[0]].float().mean() > 0.8
        if (~out[0]).sum() > 8:
            assert red[~out[0]].float().mean() < 0.1
        torch.manual_seed(seed)
        again, out_again = augment_image(pixels, masks, transform)
        assert torch.equal(image, again) and torch.equal(out, out_again)
        # Red on the right half of the original; after a flip it can sit on the left.
        cols = torch.nonzero(out[0].any(0)).flatten()
        flipped += int(len(cols) > 0 and cols.float().mean() < 16)
    assert flipped > 0


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, ShapesConfig(n_train=16, n_val=4, seed=5))
    return root


@pytest.fixture(scope="module")
def emb(shapes):
    words = lavise.concept_words(shapes, ["train", "val"])
    return lavise.seeded_embeddings(words + ["zebra", "violin"], dim=16, seed=0)


@pytest.fixture(scope="module")
def demonet():
    torch.manual_seed(0)
    return vm.load("demonet")


@pytest.fixture(scope="module")
def nearest_cache(shapes, emb, demonet, tmp_path_factory):
    out = tmp_path_factory.mktemp("nearest") / "train"
    targets = lavise.coco_targets(shapes, "train", emb, attributes=False)
    lavise.cache_features(demonet, LAYER, targets, out, batch_size=8, resize="crop", mask_mode="nearest")
    return out


def test_cache_with_the_originals_geometry_holds_0_1_masks(nearest_cache):
    cache = lavise.FeatureCache(nearest_cache)
    assert cache.resize == "crop" and cache.mask_mode == "nearest"
    masks = torch.cat([s.item_masks.float() for s in cache])
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    # Every object is an item unless the centre crop cut it off entirely.
    objects = sum(len(img.objects) for img in cache.targets().images)
    assert cache.meta["items"] + cache.meta["outside_crop"] == objects and cache.meta["items"] > 0


def test_augmented_reader_gives_items_of_the_explainers_shape(nearest_cache, demonet):
    cache = lavise.FeatureCache(nearest_cache)
    reader = AugmentedItemReader(cache, demonet, cache.image_index()[:6], image_batch=4)
    torch.manual_seed(0)
    batches = list(reader.batches(8, torch.Generator().manual_seed(0)))
    assert batches and all(x.shape[1] == cache.in_features for x, _ in batches)
    assert all(t.shape[1] == len(cache.vocabulary) and t.any(1).all() for _, t in batches)
    assert all(len(x) == 8 for x, _ in batches[:-1]) and not reader.failed
    # A chunk's items are the items of its images read one at a time (same augmentation draws).
    positions = cache.image_index()[:4]
    torch.manual_seed(1)
    together = reader._items(positions)
    torch.manual_seed(1)
    alone = [reader._items(positions[i:i + 1]) for i in range(len(positions))]
    torch.testing.assert_close(together[0], torch.cat([x for x, _ in alone]), atol=1e-5, rtol=1e-4)
    assert torch.equal(together[1], torch.cat([t for _, t in alone]))


def test_training_with_augmentation_runs_and_is_seeded(nearest_cache, emb, demonet, tmp_path):
    kwargs = dict(epochs=1, batch_size=8, val_fraction=0.25, augment=True, backbone=demonet, image_batch=4)
    with pytest.raises(ConfigError, match="pass the model"):
        lavise.train_explainer(nearest_cache, emb, tmp_path / "x.pt", **{**kwargs, "backbone": None})
    a = lavise.train_explainer(nearest_cache, emb, tmp_path / "a.pt", **kwargs)
    b = lavise.train_explainer(nearest_cache, emb, tmp_path / "b.pt", **kwargs)
    assert np.isfinite(a["train_loss"]).all() and a["train_loss"].tolist() == b["train_loss"].tolist()
    assert train_job_settings(lavise_settings({"augment": True}))["feature_batch_size"] == 64


# --- BatchNorm in eval mode -----------------------------------------------------------------------------

def _bn_run(cache_dir, emb, tmp_path, monkeypatch, bn_eval: bool):
    seen_modes: list[bool] = []

    class Recording(lavise.Explainer):
        def forward(self, x):
            if torch.is_grad_enabled():  # training steps, not validation
                seen_modes.extend(m.training for m in self if isinstance(m, torch.nn.BatchNorm1d))
            return super().forward(x)

    monkeypatch.setattr(train_module, "Explainer", Recording)
    ckpt = tmp_path / f"bn_{bn_eval}.pt"
    lavise.train_explainer(cache_dir, emb, ckpt, epochs=2, batch_size=4, val_fraction=0.25, bn_eval=bn_eval)
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    return seen_modes, state


def test_batch_norms_stay_in_eval_mode_through_training_with_the_switch(nearest_cache, emb, tmp_path, monkeypatch):
    modes, state = _bn_run(nearest_cache, emb, tmp_path, monkeypatch, bn_eval=True)
    assert modes and not any(modes)  # every BatchNorm1d ran with training=False in every step
    for bn in ("0", "4"):
        assert torch.equal(state[f"{bn}.running_mean"], torch.zeros_like(state[f"{bn}.running_mean"]))
        assert torch.equal(state[f"{bn}.running_var"], torch.ones_like(state[f"{bn}.running_var"]))
        assert int(state[f"{bn}.num_batches_tracked"]) == 0
    # The affine weights still learn (only the statistics are frozen).
    assert not torch.equal(state["0.weight"], torch.ones_like(state["0.weight"]))
    modes, state = _bn_run(nearest_cache, emb, tmp_path, monkeypatch, bn_eval=False)
    assert modes and all(modes)
    assert not torch.equal(state["0.running_mean"], torch.zeros_like(state["0.running_mean"]))
    assert int(state["0.num_batches_tracked"]) > 0


def test_set_bn_eval_touches_only_batch_norms():
    model = lavise.Explainer(8, 4).train()
    set_bn_eval(model)
    assert [m.training for m in model] == [False, True, True, True, False, True, True]


# --- reference set and optimizer ------------------------------------------------------------------------

def test_reference_all_is_train_and_val(shapes, emb):
    settings = lavise_settings({"reference": "all"})
    dataset = DatasetRef("shapes", "shapes", str(shapes), "val")
    parts = [_split_targets(dataset, s, emb, settings, None) for s in ("train", "val")]
    merged = merge_targets(parts, "shapes train + val")
    assert len(merged.images) == 20 and merged.vocabulary == sorted(set(parts[0].vocabulary) | set(parts[1].vocabulary))


def test_dadapt_adam_is_the_reproductions_optimizer():
    pytest.importorskip("dadaptation")
    from dadaptation import DAdaptAdam

    params = [torch.nn.Parameter(torch.tensor([1.0, -2.0]))]
    opt = make_optimizer("dadapt_adam", params, lr=1.0)
    assert isinstance(opt, DAdaptAdam) and opt.defaults["lr"] == 1.0 and opt.defaults["d"] == 1e-6
    (params[0] ** 2).sum().backward()
    opt.step()
    assert torch.isfinite(params[0]).all()


def test_dadapt_adam_without_the_package_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_dadaptation(name, *args, **kwargs):
        if name == "dadaptation":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dadaptation)
    with pytest.raises(ConfigError, match=r"vislib\[dadapt\]"):
        make_optimizer("dadapt_adam", [torch.nn.Parameter(torch.zeros(1))], lr=1.0)


def test_config_check_names_the_extra_when_dadaptation_is_missing(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "dadaptation" else real(name, *a))
    with pytest.raises(ConfigError, match=r"lavise\.optimizer.*vislib\[dadapt\]"):
        check_settings(lavise_settings({"optimizer": "dadapt_adam"}))
    check_settings(lavise_settings({"optimizer": "adam"}))


def test_training_with_dadapt_adam_and_resume(nearest_cache, emb, tmp_path):
    pytest.importorskip("dadaptation")
    kwargs = dict(batch_size=4, val_fraction=0.25, optimizer="dadapt_adam", lr=1.0, bn_eval=True)
    straight = lavise.train_explainer(nearest_cache, emb, tmp_path / "a.pt", epochs=2, **kwargs)
    lavise.train_explainer(nearest_cache, emb, tmp_path / "b.pt", epochs=1, **kwargs)
    resumed = lavise.train_explainer(nearest_cache, emb, tmp_path / "b.pt", epochs=2, **kwargs)
    assert straight["train_loss"].tolist() == resumed["train_loss"].tolist()
    with pytest.raises(ConfigError, match="optimizer"):
        lavise.train_explainer(nearest_cache, emb, tmp_path / "b.pt", epochs=3, **{**kwargs, "optimizer": "adam"})


# --- presets ----------------------------------------------------------------------------------------------

def test_presets_run_the_reproductions_protocol():
    import yaml

    coco = yaml.safe_load((REPO / "config/presets/lavise_coco.yaml").read_text())["lavise"]
    vg = yaml.safe_load((REPO / "config/presets/lavise_vg.yaml").read_text())
    common = {"bn_eval": True, "masks": "nearest", "resize": "crop", "reference": "all",
              "optimizer": "dadapt_adam", "lr": 1.0, "batch_size": 512, "epochs": 30}
    assert {k: coco[k] for k in common} == common and coco["augment"] is True
    assert {k: vg["lavise"][k] for k in common} == common and vg["lavise"]["augment"] is False
    assert vg["lavise"]["concepts"] == "first_token" and vg["lavise"]["token_count_by"] == "instances"
    assert vg["lavise"]["min_token_count"] == 100 and vg["lavise"]["seen_fraction"] == 0.7
    assert vg["datasets"]["vg"]["params"]["attributes"] is False

