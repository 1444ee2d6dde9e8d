"""A user's own images: an image folder, a COCO-format file, a CSV; labels in a model's classes; clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vislib.data import DATASETS, CocoFormatDataset, ModelClasses
from vislib.errors import ConfigError, DataError
from vislib.preprocessing import imagenet_class_names

IMAGENET = ModelClasses("effnet", 1000, tuple(imagenet_class_names()))
GOLDFISH, RETRIEVER, TABBY = 1, 207, 281


def write_image(path: Path, width: int = 50, height: int = 40, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def image_folder(root: Path, classes: dict[str, int], ext: str = ".png") -> Path:
    """`root/<class>/<i><ext>` with the given number of images per class."""
    for k, (name, count) in enumerate(classes.items()):
        for i in range(count):
            write_image(root / name / f"{i}{ext}", seed=10 * k + i)
    return root


def prepare(kind: str, root: Path, params: dict, classes: ModelClasses | None = None) -> dict[str, int]:
    entry = DATASETS[kind]
    checked = entry.parse_params(kind, params)
    return entry.prepare(root, **checked, model_classes=classes)


def check(kind: str, params: dict, classes: ModelClasses | None = None):
    entry = DATASETS[kind]
    return entry.source_classes(entry.parse_params(kind, params), classes)


# --- imagefolder ---------------------------------------------------------------------------------------------------

def test_image_folder_matches_torchvision_order_and_links_the_files(tmp_path: Path) -> None:
    import torchvision

    folder = image_folder(tmp_path / "pets", {"dog": 2, "Cat": 3, "bird": 1})
    write_image(folder / "dog" / "nested" / "deep.JPG", seed=99)  # subfolders and upper-case endings count
    (folder / "Cat" / "notes.txt").write_text("not an image")
    counts = prepare("imagefolder", tmp_path / "ds", {"path": str(folder)})
    reference = torchvision.datasets.ImageFolder(str(folder))
    assert counts == {"val": len(reference.samples)} == {"val": 7}
    ds = CocoFormatDataset("pets", tmp_path / "ds", "val")
    assert ds.label_names == reference.classes == ["Cat", "bird", "dog"]
    got = [(ds.record(i).path.relative_to(tmp_path / "ds" / "images" / "val").as_posix(), ds.record(i).label)
           for i in ds.image_ids()]
    expected = [(Path(p).relative_to(folder).as_posix(), label) for p, label in reference.samples]
    assert got == expected
    assert (tmp_path / "ds" / "images" / "val").resolve() == folder.resolve()  # a link, not a copy
    assert not ds.has_boxes
    record = ds.record(1)
    assert (record.width, record.height) == (50, 40) and len(record.boxes) == 0


def test_image_folder_by_name_labels_with_the_model_classes(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "imgs", {"goldfish": 1, "Golden_Retriever": 1, "tabby": 1})
    prepare("imagefolder", tmp_path / "ds", {"path": str(folder), "class_map": "by_name"}, IMAGENET)
    ds = CocoFormatDataset("imgs", tmp_path / "ds", "val")
    by_folder = {ds.record(i).path.parent.name: ds.record(i).label for i in ds.image_ids()}
    assert by_folder == {"goldfish": GOLDFISH, "Golden_Retriever": RETRIEVER, "tabby": TABBY}
    assert ds.label_names == list(IMAGENET.names)


def test_image_folder_index_refuses_folders_named_after_other_classes(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "imgs", {"goldfish": 1, "tabby": 1})
    with pytest.raises(ConfigError, match="'tabby' \\(class 281, position 1\\).*class_map: by_name"):
        check("imagefolder", {"path": str(folder)}, IMAGENET)


def test_image_folder_unknown_class_names_the_closest(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "imgs", {"golden retreiver": 1})
    with pytest.raises(ConfigError, match="no class 'golden retreiver'.*'golden retriever' \\(207\\)"):
        check("imagefolder", {"path": str(folder), "class_map": "by_name"}, IMAGENET)


def test_image_folder_explicit_map_leaves_out_folders_and_checks_names(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "imgs", {"kitty": 2, "fish": 1, "other": 1})
    counts = prepare("imagefolder", tmp_path / "ds", {"path": str(folder), "class_map": {"kitty": "tabby", "fish": 1}},
                     IMAGENET)
    assert counts == {"val": 3}
    ds = CocoFormatDataset("imgs", tmp_path / "ds", "val")
    assert sorted(ds.record(i).label for i in ds.image_ids()) == [GOLDFISH, TABBY, TABBY]
    with pytest.raises(ConfigError, match="unknown class folder 'kity'.*'kitty'"):
        check("imagefolder", {"path": str(folder), "class_map": {"kity": 3}}, IMAGENET)
    small = ModelClasses("demonet", 3)
    with pytest.raises(ConfigError, match="class index 5 is out of range; model 'demonet' has 3 classes"):
        check("imagefolder", {"path": str(folder), "class_map": {"kitty": 5}}, small)
    with pytest.raises(ConfigError, match="carries no class names"):
        check("imagefolder", {"path": str(folder), "class_map": {"kitty": "tabby"}}, small)


def test_image_folder_index_needs_enough_model_classes(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "imgs", {"a": 1, "b": 1, "c": 1})
    assert check("imagefolder", {"path": str(folder)}, ModelClasses("net", 3)).labels == {"a": 0, "b": 1, "c": 2}
    with pytest.raises(ConfigError, match="3 class folders, but model 'net' has 2 classes"):
        check("imagefolder", {"path": str(folder)}, ModelClasses("net", 2))


def test_image_folder_splits_share_one_class_list(tmp_path: Path) -> None:
    image_folder(tmp_path / "data" / "train", {"a": 2, "b": 1, "c": 1})
    image_folder(tmp_path / "data" / "val", {"a": 1, "c": 1})
    counts = prepare("imagefolder", tmp_path / "ds", {"path": str(tmp_path / "data"), "splits": ["train", "val"]})
    assert counts == {"train": 4, "val": 2}
    val = CocoFormatDataset("d", tmp_path / "ds", "val")
    assert {val.record(i).path.parent.name: val.record(i).label for i in val.image_ids()} == {"a": 0, "c": 2}
    with pytest.raises(DataError, match="params.splits names \\['test'\\].*folders are train, val"):
        check("imagefolder", {"path": str(tmp_path / "data"), "splits": ["test"]})


def test_image_folder_without_images_says_where_and_what_was_looked_for(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="'.*empty' \\(split val\\) has no class folders"):
        check("imagefolder", {"path": str(tmp_path / "empty")})
    image_folder(tmp_path / "flat", {})
    write_image(tmp_path / "flat" / "loose.png")
    with pytest.raises(DataError, match="holds images directly"):
        check("imagefolder", {"path": str(tmp_path / "flat")})
    folder = image_folder(tmp_path / "imgs", {"a": 1, "b": 0}, ext=".png")
    (folder / "b").mkdir()
    (folder / "b" / "photo.heic").write_bytes(b"x")
    with pytest.raises(DataError, match="imgs/b'.* hold no images \\(looked for files ending in .jpg, .jpeg, .png"):
        check("imagefolder", {"path": str(folder)})
    assert check("imagefolder", {"path": str(folder), "extensions": [".png", ".heic"]}).labels == {"a": 0, "b": 1}
    with pytest.raises(DataError, match="params.path points at '.*missing', which does not exist"):
        check("imagefolder", {"path": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match="params.path is not set"):
        check("imagefolder", {})


def test_unreadable_files_are_skipped(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "imgs", {"a": 2})
    (folder / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    assert prepare("imagefolder", tmp_path / "ds", {"path": str(folder)}) == {"val": 2}


# --- cocofile ------------------------------------------------------------------------------------------------------

def coco_file(tmp_path: Path) -> tuple[Path, Path]:
    """Three images: a small goldfish and a large cat (polygon), one kitten with a crowd region, one with only a
    'leash'; categories carry an annotation tool's own ids and names."""
    images = tmp_path / "export" / "images"
    for name, seed in (("a.jpg", 1), ("sub/b.jpg", 2), ("c.jpg", 3)):
        write_image(images / name, 100, 80, seed)
    doc = {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 100, "height": 80},
                   {"id": 3, "file_name": "sub/b.jpg", "width": 100, "height": 80},
                   {"id": 9, "file_name": "c.jpg"}],
        "categories": [{"id": 10, "name": "Goldfish"}, {"id": 11, "name": "tabby"}, {"id": 12, "name": "leash"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 10, "bbox": [5, 5, 10, 10], "area": 100, "iscrowd": 0,
             "segmentation": [[5, 5, 15, 5, 15, 15, 5, 15]]},
            {"id": 2, "image_id": 7, "category_id": 11, "bbox": [20, 10, 60, 50], "area": 3000, "iscrowd": 0,
             "segmentation": [[20, 10, 80, 10, 80, 60, 20, 60]]},
            {"id": 3, "image_id": 3, "category_id": 11, "bbox": [0, 0, 40, 40], "iscrowd": 0},
            {"id": 4, "image_id": 3, "category_id": 10, "bbox": [0, 0, 100, 80], "iscrowd": 1},
            {"id": 5, "image_id": 9, "category_id": 12, "bbox": [1, 1, 5, 5], "iscrowd": 0},
        ],
    }
    annotations = tmp_path / "export" / "instances.json"
    annotations.write_text(json.dumps(doc))
    return annotations, images


def test_coco_file_maps_categories_and_keeps_boxes_and_masks(tmp_path: Path) -> None:
    annotations, images = coco_file(tmp_path)
    params = {"annotations": str(annotations), "images": str(images), "categories": {"Goldfish": 1, 11: "tabby"}}
    assert prepare("cocofile", tmp_path / "ds", params, IMAGENET) == {"val": 2}  # c.jpg: only an unmapped leash
    ds = CocoFormatDataset("coco", tmp_path / "ds", "val")
    assert ds.image_ids() == [3, 7] and ds.has_boxes
    first = ds.record(7)
    assert first.label == TABBY  # the largest object's class
    assert sorted(first.box_labels.tolist()) == [GOLDFISH, TABBY]
    np.testing.assert_allclose(first.boxes[first.box_labels == TABBY], [[20, 10, 80, 60]])
    sample = ds.sample(7, 50)  # stretch 100x80 -> 50x50: boxes and masks move with the image
    np.testing.assert_allclose(sample.boxes[sample.box_labels == TABBY], [[10, 6.25, 40, 37.5]])
    assert sample.masks is not None and sample.masks.shape == (2, 50, 50)
    assert sample.masks[list(sample.box_labels).index(TABBY)][20, 25]
    second = ds.record(3)  # the crowd region is dropped
    assert second.label == TABBY and len(second.boxes) == 1


def test_coco_file_by_name_and_unknown_category_names_the_closest_classes(tmp_path: Path) -> None:
    annotations, images = coco_file(tmp_path)
    params = {"annotations": str(annotations), "images": str(images)}
    with pytest.raises(ConfigError, match="model 'effnet' has no class 'leash'. Closest:"):
        check("cocofile", params, IMAGENET)
    own = check("cocofile", params)  # no model: the file's categories in id order
    assert own.labels == {10: 0, 11: 1, 12: 2} and own.label_names == ["Goldfish", "tabby", "leash"]
    with pytest.raises(ConfigError, match="unknown category 'tabbby'"):
        check("cocofile", {**params, "categories": {"tabbby": 281}}, IMAGENET)
    with pytest.raises(ConfigError, match="model 'effnet' has no class 'catfish dog'"):
        check("cocofile", {**params, "categories": {"tabby": "catfish dog"}}, IMAGENET)


def test_coco_file_missing_files_are_named(tmp_path: Path) -> None:
    annotations, images = coco_file(tmp_path)
    with pytest.raises(DataError, match="params.annotations points at '.*nope.json', which does not exist"):
        check("cocofile", {"annotations": str(tmp_path / "nope.json"), "images": str(images)})
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="has no annotations, categories list"):
        check("cocofile", {"annotations": str(broken), "images": str(images)})
    unnamed = json.loads(annotations.read_text())
    del unnamed["categories"][1]["name"]
    broken.write_text(json.dumps(unnamed))
    with pytest.raises(DataError, match=r"categories\[1\] has no name; every COCO category needs id and name"):
        check("cocofile", {"annotations": str(broken), "images": str(images)})
    (images / "sub" / "b.jpg").unlink()
    params = {"annotations": str(annotations), "images": str(images), "categories": {"tabby": 281}}
    with pytest.raises(DataError, match="1 images of .* are not readable under params.images .*sub/b.jpg"):
        prepare("cocofile", tmp_path / "ds", params, IMAGENET)


# --- csv -----------------------------------------------------------------------------------------------------------

def test_csv_labels_by_name_or_index_with_boxes(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    for name in ("x.png", "y.png", "z/w.png"):
        write_image(folder / name, 60, 30)
    table = folder / "labels.csv"
    table.write_text("path,label,x0,y0,x1,y1\n"
                     "x.png,goldfish,0,0,10,10\n"
                     "x.png,Tabby,10,0,70,30\n"  # reaches past the right edge: clipped to 60
                     "y.png,207,,,,\n"
                     "z/w.png,tabby,,,,\n")
    assert prepare("csv", tmp_path / "ds", {"path": str(table)}, IMAGENET) == {"val": 3}
    ds = CocoFormatDataset("csv", tmp_path / "ds", "val")
    assert [ds.record(i).label for i in ds.image_ids()] == [TABBY, RETRIEVER, TABBY]
    np.testing.assert_allclose(ds.record(1).boxes, [[0, 0, 10, 10], [10, 0, 60, 30]])
    assert ds.record(1).box_labels.tolist() == [GOLDFISH, TABBY]
    assert len(ds.record(2).boxes) == 0 and ds.record(3).path.name == "w.png"


def test_csv_without_a_model_keeps_its_own_classes(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png")
    table = tmp_path / "t.csv"
    table.write_text("path,label\na.png,zebra\nb.png,ant\n")
    assert check("csv", {"path": str(table)}).label_names == ["ant", "zebra"]
    table.write_text("path,label\na.png,zebra\nb.png,2\n")
    with pytest.raises(ConfigError, match="mixes class indices"):
        check("csv", {"path": str(table)})


def test_csv_errors_name_the_column_or_line(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png")
    table = tmp_path / "t.csv"
    table.write_text("file,class\na.png,tabby\n")
    with pytest.raises(DataError, match="has no column path, label; its header is \\['file', 'class'\\]"):
        check("csv", {"path": str(table)}, IMAGENET)
    table.write_text("path,label,x0,y0\na.png,tabby,1,2\n")
    with pytest.raises(DataError, match="box column\\(s\\) x0, y0 but not x1, y1"):
        check("csv", {"path": str(table)}, IMAGENET)
    table.write_text("path,label\na.png,tabby\nmissing.png,tabby\n")
    with pytest.raises(DataError, match="line 3: image 'missing.png' does not exist"):
        prepare("csv", tmp_path / "ds", {"path": str(table)}, IMAGENET)
    table.write_text("path,label\na.png,tabby\n../outside.png,tabby\n")
    with pytest.raises(DataError, match="line 3: '../outside.png' is not inside the image folder"):
        prepare("csv", tmp_path / "ds", {"path": str(table)}, IMAGENET)
    table.write_text("path,label,xmin,ymin,xmax,ymax\na.png,tabby,80,0,90,10\n")
    with pytest.raises(DataError, match="line 2: box \\[80.0, 0.0, 90.0, 10.0\\] covers nothing of the 50x40 image"):
        prepare("csv", tmp_path / "ds", {"path": str(table)}, IMAGENET)
    table.write_text("path,label\na.png,tabbby\n")
    with pytest.raises(ConfigError, match="no class 'tabbby'. Closest: 'tabby' \\(281\\)"):
        check("csv", {"path": str(table)}, IMAGENET)


def test_every_user_kind_declares_source_classes() -> None:
    for kind in ("imagefolder", "cocofile", "csv"):
        assert DATASETS[kind].source_classes is not None
    assert DATASETS["coco"].source_classes is None
