"""LaViSE: targets, embeddings, feature cache, explainer, CSMR loss, training/resume, inference, recall."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import vislib.models as vm
from vislib import lavise
from vislib.data.synthetic import ShapesConfig, generate_shapes
from vislib.errors import ConfigError, DataError, LayerError
from vislib.lavise.infer import FilterAnalysis
from vislib.preprocessing import Preprocessing

LAYER = "features.14"  # the demo net's last ReLU


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, ShapesConfig(n_train=32, n_val=16, seed=3))
    return root


@pytest.fixture(scope="module")
def emb(shapes):
    words = lavise.concept_words(shapes, ["train", "val"])
    return lavise.seeded_embeddings(words + [w for w in lavise.DISTRACTORS if w not in words], dim=16, seed=0)


@pytest.fixture(scope="module")
def demonet():
    torch.manual_seed(0)
    return vm.load("demonet")


@pytest.fixture(scope="module")
def caches(shapes, emb, demonet, tmp_path_factory):
    out = tmp_path_factory.mktemp("features")
    for split in ("train", "val"):
        targets = lavise.coco_targets(shapes, split, emb)
        lavise.cache_features(demonet, LAYER, targets, out / split, batch_size=8, shard_size=10)
    return out


@pytest.fixture(scope="module")
def trained(caches, emb, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("ckpt") / "explainer.pt"
    log = lavise.train_explainer(caches / "train", emb, ckpt, epochs=2, batch_size=4, lr=1e-3, margin=1.0,
                                 seen_fraction=0.7, val_fraction=0.2, seed=0)
    return ckpt, log


# --- embeddings ---------------------------------------------------------------------------------------

def test_seeded_embeddings_roundtrip_and_stable_per_word(tmp_path):
    table = lavise.write_seeded_embeddings(tmp_path / "e.txt", ["square", "circle", "red"], dim=8, seed=1)
    loaded = lavise.load_glove(tmp_path / "e.txt")
    assert loaded.words == ["square", "circle", "red"]
    np.testing.assert_allclose(loaded.vectors, table.vectors, atol=1e-6)
    bigger = lavise.seeded_embeddings(["blue", "square", "circle", "red"], dim=8, seed=1)
    np.testing.assert_array_equal(bigger.vectors[1:], table.vectors)
    assert lavise.load_glove(tmp_path / "e.txt", keep={"red"}).words == ["red"]


def test_glove_loader_rejects_bad_files(tmp_path):
    (tmp_path / "bad.txt").write_text("square 0.1 0.2\ncircle 0.3\n")
    with pytest.raises(DataError, match="line 2"):
        lavise.load_glove(tmp_path / "bad.txt")
    with pytest.raises(DataError, match="does not exist"):
        lavise.load_glove(tmp_path / "missing.txt")


# --- targets ------------------------------------------------------------------------------------------

def _fake_coco(root, width=40, height=24):
    """3 categories (one two-word), a box-only object, an RLE object and a polygon object on non-square images."""
    from vislib.data.cocoformat import encode_mask

    rle_mask = np.zeros((height, width), bool)
    rle_mask[12:24, 30:40] = True  # bottom-right corner
    doc = {
        "images": [{"id": 1, "file_name": "a.png", "width": width, "height": height},
                   {"id": 2, "file_name": "b.png", "width": width, "height": height}],
        "categories": [{"id": 1, "name": "traffic light"}, {"id": 2, "name": "square"},
                       {"id": 3, "name": "circle"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 6], "attributes": ["red"]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [30, 12, 10, 12],
             "segmentation": encode_mask(rle_mask), "attributes": ["blue", "striped"]},
            {"id": 3, "image_id": 2, "category_id": 3, "bbox": [0, 12, 20, 12],
             "segmentation": [[0, 12, 20, 12, 20, 24, 0, 24]], "attributes": []},
        ],
    }
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_train.json").write_text(json.dumps(doc))


def test_coco_targets_split_words_and_place_masks_untransposed(tmp_path):
    _fake_coco(tmp_path)
    table = lavise.seeded_embeddings(["traffic", "light", "square", "circle", "red", "blue", "striped"], dim=8)
    targets = lavise.coco_targets(tmp_path, "train", table)
    assert targets.vocabulary == sorted(["traffic", "light", "square", "circle", "red", "blue", "striped"])
    assert [o.tokens for o in targets.images[0].objects] == [["traffic", "light", "red"],
                                                             ["square", "blue", "striped"]]
    matrix = targets.target_matrix(0)
    assert matrix.shape == (2, 7) and matrix.sum(1).tolist() == [3, 3]
    masks = targets.masks(0, 16)  # 40x24 stretched to 16x16: x scale 0.4, y scale 2/3
    box = masks[0]
    assert box[:4, :8].all() and box.sum() == 4 * 8  # rows 0..4 (y 0..6), columns 0..8 (x 0..20)
    assert masks[1][8:, 12:].all() and masks[1].sum() == 8 * 4  # the RLE: bottom-right
    polygon = targets.masks(1, 16)[0]
    assert polygon[9:, :8].all() and not polygon[:7].any()  # bottom-left


def test_words_not_in_embedding_are_skipped_and_counted(tmp_path):
    _fake_coco(tmp_path)
    table = lavise.seeded_embeddings(["light", "square", "circle", "blue"], dim=8)
    targets = lavise.coco_targets(tmp_path, "train", table)
    assert targets.skipped_words == {"traffic": 1, "red": 1, "striped": 1}
    assert targets.images[0].objects[0].tokens == ["light"]
    assert targets.dropped_objects == 0
    no_attrs = lavise.coco_targets(tmp_path, "train", table, attributes=False)
    assert no_attrs.skipped_words == {"traffic": 1}


def test_empty_vocabulary_is_a_clear_error(tmp_path):
    _fake_coco(tmp_path)
    table = lavise.seeded_embeddings(["tree", "car"], dim=8)
    with pytest.raises(DataError, match="vocabulary is empty.*traffic"):
        lavise.coco_targets(tmp_path, "train", table)


# --- Visual Genome ------------------------------------------------------------------------------------

def _fake_vg(root):
    """Non-square PIL images with boxes and the raw objects.json that describes them."""
    images = root / "VG_100K"
    images.mkdir(parents=True)
    sizes = {1: (48, 32), 2: (32, 48), 3: (40, 40), 4: (48, 32)}
    raw = []
    for image_id, (w, h) in sizes.items():
        img = Image.new("RGB", (w, h), (90, 90, 90))
        ImageDraw.Draw(img).rectangle([2, 4, 13, 9], fill=(200, 30, 30))
        img.save(images / f"{image_id}.jpg")
        raw.append({"image_id": image_id, "objects": [
            {"x": 2, "y": 4, "w": 12, "h": 6, "synsets": ["square.n.01"], "names": ["box"]},
            {"x": 20, "y": 20, "w": 8, "h": 8, "synsets": ["traffic_light.n.01"]},
            {"x": 0, "y": 0, "w": 4, "h": 4, "synsets": []},
        ]})
    raw[3]["objects"] = [{"x": 1, "y": 1, "w": 3, "h": 3, "synsets": ["zebra.n.01"]}]
    raw[2]["objects"].append({"x": 5, "y": 5, "w": 5, "h": 5, "synsets": ["qwerty.n.01"]})
    (root / "objects.json").write_text(json.dumps(raw))
    return images


def test_vg_preprocess_and_targets_on_non_square_images(tmp_path):
    image_dir = _fake_vg(tmp_path)
    table = lavise.seeded_embeddings(["square", "traffic", "zebra", "circle"], dim=8)
    stats = lavise.preprocess_vg(tmp_path / "objects.json", tmp_path / "pre.json", table, min_count=2)
    assert stats["categories"] == 2 and stats["images"] == 3  # zebra is rare; image 4 ends up empty
    assert stats["words_not_in_embeddings"] == {"qwerty": 1}
    pre = json.loads((tmp_path / "pre.json").read_text())
    assert pre[0] == {"image_id": 1, "objects": {"square": [{"x": 2, "y": 4, "w": 12, "h": 6}],
                                                 "traffic": [{"x": 20, "y": 20, "w": 8, "h": 8}]}}
    targets = lavise.vg_targets(tmp_path / "pre.json", image_dir, table)
    assert targets.vocabulary == ["square", "traffic"]
    assert (targets.images[0].width, targets.images[0].height) == (48, 32)
    wide = targets.masks(0, 48)[0]  # 48x32 -> 48x48: y scale 1.5
    assert wide[6:15, 2:14].all() and wide.sum() == 9 * 12
    tall = targets.masks(1, 48)[0]  # 32x48 -> 48x48: x scale 1.5
    assert tall[4:10, 3:21].all() and tall.sum() == 6 * 18
    assert lavise.synset_token("traffic_light.n.01") == "traffic"
    with pytest.raises(DataError, match="is a directory"):
        lavise.preprocess_vg(image_dir, tmp_path / "x.json", table)


def test_vg_features_with_resnet18_layer4(tmp_path):
    image_dir = _fake_vg(tmp_path)
    table = lavise.seeded_embeddings(["square", "traffic"], dim=8)
    lavise.preprocess_vg(tmp_path / "objects.json", tmp_path / "pre.json", table, min_count=2)
    targets = lavise.vg_targets(tmp_path / "pre.json", image_dir, table)
    torch.manual_seed(0)
    model = vm.load("resnet18")
    model.vislib_preprocessing = Preprocessing(model.vislib_preprocessing.mean, model.vislib_preprocessing.std, 64)
    cache = lavise.cache_features(model, "layer4", targets, tmp_path / "cache")
    shard = cache.shard(0)
    assert tuple(shard.features.shape) == (3, 512, 2, 2) and shard.features.dtype == torch.float16
    assert cache.in_features == 512 and cache.pool_size == (1, 1)
    # The square sits in the top-left quarter of image 1, whichever axis is stretched.
    square = shard.item_masks[0].float()
    assert square[0, 0] > 0 and square[1, 1] == 0
    assert tuple(cache.pooled_items(shard).shape) == (len(shard.item_row), 512)


# --- features, explainer, loss ------------------------------------------------------------------------

@pytest.mark.parametrize("layer", ["avgpool", "fc"])
def test_layer_without_spatial_extent_is_rejected(shapes, emb, demonet, tmp_path, layer):
    targets = lavise.coco_targets(shapes, "val", emb)
    with pytest.raises(LayerError, match="spatial layer"):
        lavise.cache_features(demonet, layer, targets, tmp_path / "c")


def test_explainer_tensor_shapes():
    model = lavise.Explainer(128, 16).eval()
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append((type(m).__name__, tuple(o.shape))))
             for m in model]
    model(torch.randn(5, 128))
    for h in hooks:
        h.remove()
    assert shapes == [("BatchNorm1d", (5, 128)), ("Dropout", (5, 128)), ("Linear", (5, 128)),
                      ("ReLU", (5, 128)), ("BatchNorm1d", (5, 128)), ("Dropout", (5, 128)),
                      ("Linear", (5, 16))]


def test_cache_holds_features_masks_and_targets(caches):
    cache = lavise.FeatureCache(caches / "train")
    assert cache.meta["images"] == 32 and cache.n_shards == 4
    shard = cache.shard(0)
    assert tuple(shard.features.shape[1:]) == (128, 8, 8)
    assert shard.item_masks.shape[0] == shard.item_targets.shape[0] == len(shard.item_row)
    assert float(shard.item_masks.float().max()) <= 1 and bool(shard.item_targets.any(1).all())


def test_csmr_matches_hand_computation_on_2x3_toy():
    concepts = torch.eye(3)
    pred = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    targets = torch.tensor([[True, False, False], [False, True, True]])
    r = 1 / math.sqrt(2)
    # row 1: pos = r; c1: 1 - r + 0, c2: 1 - r + r.  row 2: pos = r/2; c0: 1 - r/2 + r.
    expected = ((1 - r) + 1 + (1 + r / 2)) / 2
    assert float(lavise.csmr_loss(pred, targets, concepts)) == pytest.approx(expected, abs=1e-6)


def test_csmr_row_without_positive_counts_zero_and_keeps_grads_finite():
    pred = torch.randn(2, 3, requires_grad=True)
    targets = torch.tensor([[True, False, False], [False, False, False]])
    loss = lavise.csmr_loss(pred, targets, torch.eye(3))
    loss.backward()
    alone = lavise.csmr_loss(pred[:1], targets[:1], torch.eye(3))
    assert float(loss.detach()) == pytest.approx(float(alone.detach()) / 2)
    assert torch.isfinite(pred.grad).all()


# --- training -----------------------------------------------------------------------------------------

def test_training_loss_decreases_and_checkpoint_is_written(trained):
    ckpt, log = trained
    assert ckpt.exists()
    losses = log["train_loss"].tolist()
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    model, info = lavise.load_explainer(ckpt, "last")
    assert info.epoch == 2 and len(info.seen) == round(0.7 * len(info.vocabulary))
    assert info.unseen_words and not model.training


def test_resume_continues_the_same_curve(caches, emb, tmp_path):
    settings = dict(batch_size=4, lr=1e-3, seen_fraction=0.7, val_fraction=0.2, seed=5)
    straight = lavise.train_explainer(caches / "train", emb, tmp_path / "a.pt", epochs=2, **settings)
    lavise.train_explainer(caches / "train", emb, tmp_path / "b.pt", epochs=1, **settings)
    resumed = lavise.train_explainer(caches / "train", emb, tmp_path / "b.pt", epochs=2, **settings)
    cols = ["train_loss", "val_loss", "val_top1"]
    assert straight[cols].values.tolist() == resumed[cols].values.tolist()
    a, _ = lavise.load_explainer(tmp_path / "a.pt", "last")
    b, _ = lavise.load_explainer(tmp_path / "b.pt", "last")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    with pytest.raises(ConfigError, match="lr"):
        lavise.train_explainer(caches / "train", emb, tmp_path / "b.pt", epochs=3, **{**settings, "lr": 0.1})


# --- inference and recall -----------------------------------------------------------------------------

def test_recall_on_hand_made_rankings():
    rankings = [["a", "b", "c"], ["x", "y", "z"], ["a", "q", "r"], ["m", "n", "o"]]
    truths = [{"a", "c"}, {"q"}, set(), {"m", "o", "p", "s"}]
    # k=2: 1/2, 0/1, (skipped), 1/4 -> 0.25; k=3: 2/2, 0/1, 2/4 -> 0.5
    assert lavise.recall_from_rankings(rankings, truths, 2) == (pytest.approx(0.25), 3)
    assert lavise.recall_from_rankings(rankings, truths, 3) == (pytest.approx(0.5), 3)


def test_iou_threshold_is_strict_at_0_04():
    region = np.zeros((40, 40), bool)
    region[:20, :20] = True  # 400 pixels
    masks = np.zeros((3, 40, 40), bool)
    masks[0].flat[np.flatnonzero(region)[:17]] = True  # IoU 17/400 = 0.0425
    masks[1].flat[np.flatnonzero(region)[:15]] = True  # IoU 15/400 = 0.0375
    masks[2].flat[np.flatnonzero(region)[:16]] = True  # IoU exactly 0.04: not above
    np.testing.assert_allclose(lavise.mask_iou(region, masks), [0.0425, 0.0375, 0.04])
    got = lavise.concepts_in_region(region, masks, [["above"], ["below"], ["equal"]], 0.04)
    assert got == {"above"}


@pytest.mark.parametrize("method", lavise.INPUT_METHODS)
def test_analyze_filters_all_methods(caches, emb, trained, demonet, method):
    ckpt, _ = trained
    kwargs = dict(filters=[0, 1], method=method, p=4, top_words=5, quantile=0.5, model=demonet)
    first = lavise.analyze_filters(caches / "val", ckpt, emb, **kwargs)
    again = lavise.analyze_filters(caches / "val", ckpt, emb, **kwargs)
    assert first.pair_words == again.pair_words and len(first.pair_words) <= 8
    table = lavise.recall_at_k(first, ks=(1, 5))
    assert set(table["ranking"]) == {"explainer", "random", "prior"}
    values = table["recall"].dropna()
    assert ((values >= 0) & (values <= 1)).all()
    non_empty = sum(1 for t in first.pair_truth if t)
    assert (table.loc[table["concepts"] == "all", "pairs"] == non_empty).all()
    words = lavise.explain_filters(first, s=5, n_words=3)
    assert list(words.columns) == ["model", "layer", "method", "filter", "rank", "word", "score"]
    assert set(words["filter"]) <= {0, 1} and (words["score"] <= 1).all()


def test_empty_ground_truth_pairs_are_skipped_and_random_baseline_is_k_over_v(caches, emb, trained, tmp_path):
    ckpt, _ = trained
    analysis = lavise.analyze_filters(caches / "val", ckpt, emb, filters=[0, 1, 2], p=4, quantile=0.5)
    analysis.pair_truth = [[] for _ in analysis.pair_truth]
    analysis.pair_truth[0] = ["circle", "red"]
    table = lavise.recall_at_k(analysis, ks=(5,), baselines=("random",), random_draws=4000)
    assert (table.loc[table["concepts"] == "all", "pairs"] == 1).all()
    rand = table[(table["ranking"] == "random") & (table["concepts"] == "all")]["recall"].item()
    assert rand == pytest.approx(5 / len(emb), abs=0.01)
    analysis.save(tmp_path / "a.npz")
    loaded = FilterAnalysis.load(tmp_path / "a.npz")
    assert loaded.pair_words == analysis.pair_words and loaded.pair_truth == analysis.pair_truth
    lavise.filter_figure(loaded, tmp_path / "fig.png", n_images=3)
    assert (tmp_path / "fig.png").stat().st_size > 1000


def test_analysis_rejects_bad_parameters(caches, emb, trained):
    ckpt, _ = trained
    with pytest.raises(ConfigError, match="outside"):
        lavise.analyze_filters(caches / "val", ckpt, emb, filters=[999])
    with pytest.raises(ConfigError, match="method"):
        lavise.analyze_filters(caches / "val", ckpt, emb, method="nope")
    with pytest.raises(ConfigError, match="pass the model"):
        lavise.analyze_filters(caches / "val", ckpt, emb, method="image")
