"""COCO, Visual Genome and ImageNet-val preparation on small fake files written in the official formats."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torchvision
from PIL import Image

from vislib.data import DATASETS, open_dataset
from vislib.data.coco import convert_instances, link_split
from vislib.data.imagenet import prepare_imagenet_val
from vislib.data.vg import convert_vg
from vislib.errors import DataError
from vislib.preprocessing import IMAGENET


def _jpeg(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 120, np.uint8)).save(path)


def test_coco_official_instances(tmp_path: Path) -> None:
    _jpeg(tmp_path / "val2017" / "000000000139.jpg", 80, 40)
    _jpeg(tmp_path / "val2017" / "000000000285.jpg", 30, 60)
    doc = {
        "images": [{"id": 139, "file_name": "000000000139.jpg", "width": 80, "height": 40},
                   {"id": 285, "file_name": "000000000285.jpg", "width": 30, "height": 60},
                   {"id": 632, "file_name": "000000000632.jpg", "width": 50, "height": 50}],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 90, "name": "toothbrush"}],
        "annotations": [
            {"id": 1, "image_id": 139, "category_id": 18, "bbox": [8, 4, 40, 20], "area": 800, "iscrowd": 0,
             "segmentation": [[8, 4, 48, 4, 48, 24, 8, 24]]},
            {"id": 2, "image_id": 139, "category_id": 1, "bbox": [60, 10, 10, 10], "area": 100, "iscrowd": 0,
             "segmentation": [[60, 10, 70, 10, 70, 20, 60, 20]]},
            {"id": 3, "image_id": 139, "category_id": 1, "bbox": [0, 0, 80, 40], "area": 3200, "iscrowd": 1,
             "segmentation": {"size": [40, 80], "counts": [0, 3200]}},
            {"id": 4, "image_id": 285, "category_id": 90, "bbox": [3, 30, 15, 30], "area": 450, "iscrowd": 0,
             "segmentation": [[3, 30, 18, 30, 18, 60, 3, 60]]},
        ],
    }
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(doc))
    link_split(tmp_path, "val", "val2017")
    assert convert_instances(tmp_path / "annotations" / "instances_val2017.json", tmp_path, "val") == 2
    ds = open_dataset("coco", "coco", tmp_path, "val")
    assert ds.image_ids() == [139, 285]  # 632 has no objects, crowd-only regions are dropped
    assert ds.label_names == ["person", "dog", "toothbrush"]
    rec = ds.record(139)
    assert rec.label == 1  # dog: the largest non-crowd object
    np.testing.assert_allclose(rec.boxes, [[8, 4, 48, 24], [60, 10, 70, 20]])
    assert rec.box_labels.tolist() == [1, 0]
    batch = ds.load_batch([139, 285], IMAGENET)
    assert batch.images.shape == (2, 3, 224, 224)
    np.testing.assert_allclose(batch.samples[0].boxes[0], [8 * 2.8, 4 * 5.6, 48 * 2.8, 24 * 5.6], rtol=1e-5)
    mask = batch.samples[0].masks[0]
    assert mask[60, 60] and not mask[10, 10] and not mask[60, 200]
    assert batch.samples[1].label == 2


def test_vg_objects_and_attributes(tmp_path: Path) -> None:
    image_data = [{"image_id": 1, "url": "https://cs.stanford.edu/people/rak248/VG_100K/1.jpg", "width": 80,
                   "height": 50},
                  {"image_id": 2, "url": "https://cs.stanford.edu/people/rak248/VG_100K_2/2.jpg", "width": 40,
                   "height": 90}]
    objects = [{"image_id": 1, "objects": [
        {"object_id": 10, "x": 5, "y": 6, "w": 30, "h": 20, "names": ["traffic light"],
         "synsets": ["traffic_light.n.01"]},
        {"object_id": 11, "x": 50, "y": 10, "w": 10, "h": 10, "names": ["shade"], "synsets": []},
        {"object_id": 12, "x": 0, "y": 0, "w": 2, "h": 2, "names": ["rare thing"], "synsets": ["rarity.n.01"]}]},
        {"image_id": 2, "objects": [
            {"object_id": 20, "x": 1, "y": 2, "w": 30, "h": 70, "names": ["shades"], "synsets": ["shade.n.01"]},
            {"object_id": 21, "x": 0, "y": 0, "w": 5, "h": 5, "names": ["light"], "synsets": ["traffic_light.n.01"]}]}]
    attributes = [{"image_id": 1, "attributes": [
        {"object_id": 10, "x": 5, "y": 6, "w": 30, "h": 20, "names": ["traffic light"],
         "attributes": ["Red ", "tall"]}]}]
    for name, doc in [("image_data", image_data), ("objects", objects), ("attributes", attributes)]:
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    _jpeg(tmp_path / "raw" / "VG_100K" / "1.jpg", 80, 50)
    _jpeg(tmp_path / "raw" / "VG_100K_2" / "2.jpg", 40, 90)
    for split in ("train", "val"):
        link_split(tmp_path, split, "raw")
    counts = convert_vg(tmp_path, tmp_path / "objects.json", tmp_path / "image_data.json",
                        tmp_path / "attributes.json", min_instances=2, val_fraction=0.5, seed=1)
    assert sum(counts.values()) == 2
    records = {}
    for split in ("train", "val"):
        if counts[split]:
            ds = open_dataset("vg", "vg", tmp_path, split)
            assert ds.label_names == ["shade", "traffic_light"]
            records.update({i: (ds, ds.record(i)) for i in ds.image_ids()})
    ds1, rec1 = records[1]
    np.testing.assert_allclose(rec1.boxes, [[5, 6, 35, 26], [50, 10, 60, 20]])
    assert rec1.box_labels.tolist() == [1, 0] and rec1.label == 1
    assert rec1.attributes == [["red", "tall"], []]
    ds2, rec2 = records[2]
    assert rec2.label == 0 and rec2.path.exists()
    batch = ds2.load_batch([2], IMAGENET)
    np.testing.assert_allclose(batch.samples[0].boxes[0], [1 * 5.6, 2 * 224 / 90, 31 * 5.6, 72 * 224 / 90], rtol=1e-5)


def _imagenet_files(tmp_path: Path, n: int = 3) -> tuple[Path, list[str], list[tuple[int, int]]]:
    wnids = [f"n{i:08d}" for i in range(1000)]
    sizes = [(60, 40), (30, 70), (50, 50)][:n]
    archive = tmp_path / "ILSVRC2012_img_val.tar"
    with tarfile.open(archive, "w") as tf:
        for i, (w, h) in enumerate(sizes, start=1):
            buf = io.BytesIO()
            Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(buf, format="JPEG")
            info = tarfile.TarInfo(f"ILSVRC2012_val_{i:08d}.JPEG")
            info.size = len(buf.getvalue())
            tf.addfile(info, io.BytesIO(buf.getvalue()))
    (tmp_path / "LOC_synset_mapping.txt").write_text("".join(f"{w} name {i}\n" for i, w in enumerate(reversed(wnids))))
    return archive, wnids, sizes


def test_imagenet_val_from_loc_csv(tmp_path: Path) -> None:
    archive, wnids, _ = _imagenet_files(tmp_path)
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text("ImageId,PredictionString\n"
                   f"ILSVRC2012_val_00000002,{wnids[517]} 3 5 20 60 \n"
                   f"ILSVRC2012_val_00000001,{wnids[0]} 10 5 50 35 {wnids[0]} 1 1 9 9\n"
                   f"ILSVRC2012_val_00000003,{wnids[999]} 0 0 49 49\n")
    root = tmp_path / "ds"
    assert prepare_imagenet_val(root, str(archive), str(csv), synsets=str(tmp_path / "LOC_synset_mapping.txt")) == {
        "val": 3}
    ds = open_dataset("imagenet_val", "imagenet", root, "val")
    names = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    assert [ds.record(i).label for i in (1, 2, 3)] == [0, 517, 999]
    assert ds.label_names == names
    rec = ds.record(1)
    np.testing.assert_allclose(rec.boxes, [[10, 5, 50, 35], [1, 1, 9, 9]])
    assert rec.box_labels.tolist() == [0, 0] and (rec.width, rec.height) == (60, 40)
    assert ds.record(2).box_labels.tolist() == [517]
    batch = ds.load_batch([2], IMAGENET)
    np.testing.assert_allclose(batch.samples[0].boxes[0], [3 * 224 / 30, 5 * 3.2, 20 * 224 / 30, 60 * 3.2], rtol=1e-5)


def test_imagenet_val_from_xml_archive(tmp_path: Path) -> None:
    archive, wnids, sizes = _imagenet_files(tmp_path)
    xml_tar = tmp_path / "ILSVRC2012_bbox_val_v3.tgz"
    with tarfile.open(xml_tar, "w:gz") as tf:
        for i, (w, h) in enumerate(sizes, start=1):
            xml = (f"<annotation><filename>ILSVRC2012_val_{i:08d}</filename><size><width>{w}</width>"
                   f"<height>{h}</height><depth>3</depth></size><object><name>{wnids[10 * i]}</name><bndbox>"
                   f"<xmin>{i}</xmin><ymin>2</ymin><xmax>20</xmax><ymax>30</ymax></bndbox></object></annotation>")
            info = tarfile.TarInfo(f"val/ILSVRC2012_val_{i:08d}.xml")
            info.size = len(xml)
            tf.addfile(info, io.BytesIO(xml.encode()))
    root = tmp_path / "ds"
    prepare_imagenet_val(root, str(archive), str(xml_tar), synsets=str(tmp_path / "LOC_synset_mapping.txt"))
    ds = DATASETS["imagenet_val"].open("imagenet", root, "val")
    assert [ds.record(i).label for i in (1, 2, 3)] == [10, 20, 30]
    np.testing.assert_allclose(ds.record(2).boxes, [[2, 2, 20, 30]])
    assert (ds.record(2).width, ds.record(2).height) == (30, 70)


def test_imagenet_bad_input_messages(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"needs params\.archive .*image-net\.org"):
        prepare_imagenet_val(tmp_path / "ds", None, "x.csv")
    with pytest.raises(DataError, match=r"params\.archive points at '/nope/ILSVRC2012_img_val\.tar', which does not"):
        prepare_imagenet_val(tmp_path / "ds", "/nope/ILSVRC2012_img_val.tar", "x.csv")
    wrong = tmp_path / "wrong.tar"
    wrong.write_text("not a tar")
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text("ImageId,PredictionString\n")
    with pytest.raises(DataError, match="is not a tar archive"):
        prepare_imagenet_val(tmp_path / "ds", str(wrong), str(csv))
    archive, wnids, _ = _imagenet_files(tmp_path)
    csv.write_text(f"ImageId,PredictionString\nILSVRC2012_val_00000001,{wnids[0]} 1 1 5 5\n")
    with pytest.raises(DataError, match="found 1 distinct wnids, expected the 1000"):
        prepare_imagenet_val(tmp_path / "ds", str(archive), str(csv))
