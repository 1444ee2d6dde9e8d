"""ILSVRC2012 validation set from user-supplied files, written in vislib's COCO format with torchvision labels."""

from __future__ import annotations

import csv
import os
import re
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

from PIL import Image

from vislib.data.cocoformat import CocoWriter
from vislib.data.download import extract
from vislib.errors import DataError
from vislib.preprocessing import imagenet_class_names

WHERE = ("ImageNet cannot be downloaded automatically: register at https://image-net.org/download-images.php "
         "(ILSVRC2012_img_val.tar, ILSVRC2012_bbox_val_v3.tgz) or take LOC_val_solution.csv and "
         "LOC_synset_mapping.txt from https://www.kaggle.com/c/imagenet-object-localization-challenge")
_VAL_ID = re.compile(r"ILSVRC2012_val_(\d+)")


def _require(path: str | os.PathLike | None, key: str) -> Path:
    if not path:
        raise DataError(f"dataset kind imagenet_val needs params.{key} in the config. {WHERE}")
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"params.{key} points at {str(path)!r}, which does not exist. {WHERE}")
    return path


def _image_id(name: str) -> int:
    match = _VAL_ID.search(name)
    if not match:
        raise DataError(f"{name!r} is not an ILSVRC2012 validation image name (ILSVRC2012_val_NNNNNNNN)")
    return int(match.group(1))


def read_loc_csv(path: Path) -> dict[int, list[tuple[str, list[float]]]]:
    """Boxes per image id from LOC_val_solution.csv (`ImageId,PredictionString` of wnid x0 y0 x1 y1 ...)."""
    boxes: dict[int, list[tuple[str, list[float]]]] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
            raise DataError(f"{str(path)!r} is not LOC_val_solution.csv: its header must be ImageId,PredictionString")
        for row in reader:
            tokens = row["PredictionString"].split()
            if len(tokens) % 5:
                raise DataError(f"{str(path)!r}: row {row['ImageId']!r} does not hold groups of 'wnid x0 y0 x1 y1'")
            boxes[_image_id(row["ImageId"])] = [(tokens[i], [float(v) for v in tokens[i + 1:i + 5]])
                                                for i in range(0, len(tokens), 5)]
    return boxes


def _parse_xml(text: bytes, where: str) -> tuple[int, list[tuple[str, list[float]]], tuple[int, int]]:
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise DataError(f"{where} is not valid XML ({exc})") from None

    def field(node: ET.Element, path: str) -> str:
        value = node.findtext(path)
        if value is None:
            raise DataError(f"{where} has no <{path}>; it is not an ImageNet box annotation")
        return value

    size = (int(field(root, "size/width")), int(field(root, "size/height")))
    objects = [(field(obj, "name"), [float(field(obj, f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")])
               for obj in root.iter("object")]
    return _image_id(root.findtext("filename") or where), objects, size


def read_bbox_xml_archive(path: Path) -> tuple[dict[int, list[tuple[str, list[float]]]], dict[int, tuple[int, int]]]:
    """Boxes and (width, height) per image id from the val XML archive (ILSVRC2012_bbox_val_v3.tgz)."""
    boxes: dict[int, list[tuple[str, list[float]]]] = {}
    sizes: dict[int, tuple[int, int]] = {}
    try:
        with tarfile.open(path) as tf:
            for member in tf:
                handle = tf.extractfile(member) if member.isfile() and member.name.endswith(".xml") else None
                if handle is not None:
                    image_id, objects, size = _parse_xml(handle.read(), f"{path}:{member.name}")
                    boxes[image_id], sizes[image_id] = objects, size
    except (tarfile.TarError, EOFError) as exc:
        raise DataError(f"{str(path)!r} is not a readable tar of val XML files ({exc}). {WHERE}") from None
    return boxes, sizes


def _wnid_order(synsets: Path | None, boxes: dict[int, list[tuple[str, list[float]]]]) -> list[str]:
    """The 1000 wnids in torchvision's class order, which is the sorted wnid order."""
    if synsets is not None:
        wnids = [line.split()[0] for line in synsets.read_text().splitlines() if line.strip()]
    else:
        wnids = sorted({wnid for objects in boxes.values() for wnid, _ in objects})
    if len(wnids) != 1000 or len(set(wnids)) != 1000:
        raise DataError(f"found {len(set(wnids))} distinct wnids, expected the 1000 ILSVRC classes; give "
                        f"params.synsets (LOC_synset_mapping.txt, one 'wnid name' per line) or the full box file")
    return sorted(wnids)


def prepare_imagenet_val(root: str | os.PathLike, archive: str | None = None, boxes: str | None = None,
                         synsets: str | None = None) -> dict[str, int]:
    """Extract ILSVRC2012_img_val.tar and write the val split with torchvision labels and GT boxes."""
    root = Path(root)
    archive_path = _require(archive, "archive")
    boxes_path = _require(boxes, "boxes")
    synsets_path = _require(synsets, "synsets") if synsets else None
    if not tarfile.is_tarfile(archive_path):
        raise DataError(f"params.archive {str(archive_path)!r} is not a tar archive; it must be "
                        f"ILSVRC2012_img_val.tar. {WHERE}")
    sizes: dict[int, tuple[int, int]] = {}
    if boxes_path.suffix == ".csv":
        per_image = read_loc_csv(boxes_path)
    else:
        per_image, sizes = read_bbox_xml_archive(boxes_path)
    wnids = _wnid_order(synsets_path, per_image)
    index = {w: i for i, w in enumerate(wnids)}
    # torchvision's class names are unique (its duplicates such as the two cranes were renamed).
    names = imagenet_class_names()
    image_dir = root / "images" / "val"
    extract(archive_path, image_dir)
    writer = CocoWriter(root, "val", names)
    for path in sorted(p for p in image_dir.iterdir() if p.suffix.upper() == ".JPEG"):
        image_id = _image_id(path.name)
        if image_id not in per_image:
            raise DataError(f"image {path.name} has no boxes in {str(boxes_path)!r}; is it the val box file?")
        if image_id in sizes:
            width, height = sizes[image_id]
        else:
            with Image.open(path) as img:
                width, height = img.size
        objects = []
        for wnid, (x0, y0, x1, y1) in per_image[image_id]:
            if wnid not in index:
                raise DataError(f"wnid {wnid!r} of {path.name} is not one of the 1000 ILSVRC classes")
            objects.append({"category": names[index[wnid]], "bbox": [x0, y0, x1 - x0, y1 - y0]})
        writer.add_image(image_id, path.name, width, height, index[per_image[image_id][0][0]], objects)
    if not writer.images:
        raise DataError(f"{str(archive_path)!r} holds no JPEG images. {WHERE}")
    writer.write(names)
    return {"val": len(writer.images)}
