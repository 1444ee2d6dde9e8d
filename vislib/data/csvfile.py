"""A user's CSV of images: one row per image (path, label) or per object (path, label, box corners)."""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from vislib.data.classmap import (
    ModelClasses,
    SourceClasses,
    existing_path,
    image_size,
    label_names,
    link_images,
    map_by_name,
    model_index,
)
from vislib.data.cocoformat import CocoWriter
from vislib.errors import ConfigError, DataError
from vislib.params import param

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("path", "label")
# Box corners in the image's pixels; the second spelling is the one of Pascal VOC and most exporters.
BOX_COLUMNS = (("x0", "y0", "x1", "y1"), ("xmin", "ymin", "xmax", "ymax"))


@dataclass(frozen=True)
class CsvParams:
    """Parameters of the `csv` kind."""

    path: str | None = param(None, "path of the CSV: columns path, label and optionally box corners x0, y0, x1, y1 "
                                   "(or xmin, ymin, xmax, ymax) in pixels; one row per image, or per object")
    images: str | None = param(None, "folder the CSV's relative paths start from, holding every image (default: "
                                     "the CSV's folder)")
    split: str = param("val", "split name the images are stored as (the dataset's `split`)")


@dataclass(frozen=True)
class Row:
    """One CSV row: its line number in the file, the image, the label as written, and the box if it has one."""

    line: int
    path: str
    label: str
    box: tuple[float, float, float, float] | None


def _box_columns(header: list[str], where: str) -> tuple[str, ...] | None:
    for names in BOX_COLUMNS:
        present = [n for n in names if n in header]
        if len(present) == len(names):
            return names
        if present:
            missing = [n for n in names if n not in header]
            raise DataError(f"{where} has box column(s) {', '.join(present)} but not {', '.join(missing)}; give all "
                            f"four corners ({', '.join(names)}) or none")
    return None


def read_rows(path: Path) -> list[Row]:
    """The rows of the CSV, checked for the required columns, a label on every row and numeric box corners."""
    where = f"CSV {str(path)!r} (params.path)"
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in reader.fieldnames or []]
            missing = [name for name in REQUIRED_COLUMNS if name not in header]
            if missing:
                raise DataError(f"{where} has no column {', '.join(missing)}; its header is {header or 'empty'}. "
                                "Its first line must name the columns: path,label[,x0,y0,x1,y1]")
            reader.fieldnames = header
            corners = _box_columns(header, where)
            rows = [_row(reader.line_num, record, corners, where) for record in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{where} cannot be read: {exc}") from None
    if not rows:
        raise DataError(f"{where} has no rows below its header")
    return rows


def _row(line: int, record: dict[str, str | None], corners: tuple[str, ...] | None, where: str) -> Row:
    path, label = (record.get("path") or "").strip(), (record.get("label") or "").strip()
    if not path or not label:
        raise DataError(f"{where} line {line}: {'path' if not path else 'label'} is empty")
    values = [(record.get(name) or "").strip() for name in corners] if corners else []
    if not any(values):
        return Row(line, path, label, None)
    try:
        x0, y0, x1, y1 = (float(v) for v in values)
    except ValueError:
        raise DataError(f"{where} line {line}: box {values} must be four numbers (or all four empty)") from None
    return Row(line, path, label, (x0, y0, x1, y1))


def _label_value(label: str) -> str | int:
    """A label as written: digits are a class index, anything else a class name."""
    return int(label) if label.isdigit() else label


def source_classes(params: dict, classes: ModelClasses | None) -> SourceClasses:
    """Check the CSV and map its labels to labels of the model (indices as given, names by the model's class names);
    without a model, indices as given or the names in sorted order."""
    csv_path = existing_path(params["path"], "path", "a CSV with columns path,label", folder=False)
    if params["images"] is not None:
        existing_path(params["images"], "images", "the folder the CSV's paths are relative to", folder=True)
    written = sorted({row.label for row in read_rows(csv_path)})
    indices = [label for label in written if isinstance(_label_value(label), int)]
    names = [label for label in written if not isinstance(_label_value(label), int)]
    if classes is None and indices and names:
        raise ConfigError(f"CSV {params['path']!r} mixes class indices ({', '.join(indices[:3])}) and names "
                          f"({', '.join(names[:3])}); use one of them in the label column")
    where = f"label column of {params['path']!r}"
    labels = map_by_name(names, classes, where)
    for label in indices:
        labels[label] = model_index(int(label), classes, where) if classes else int(label)
    shown = {w: f"class {w}" if w in indices else w for w in written}
    return SourceClasses((params["split"],), labels, label_names(labels, shown, classes))


def _inside(path: Path, folder: Path) -> bool:
    # Not resolve(): a link inside the folder to an image elsewhere is the user's image in that folder.
    return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))


def prepare_csv(root: str | os.PathLike, path: str | None = None, images: str | None = None, split: str = "val",
                model_classes: ModelClasses | None = None) -> dict[str, int]:
    """Write the CSV's images in vislib's COCO format: images/{split} links to `images`; rows of one path make one
    image whose boxes are its rows' boxes, clipped to the image; its label is its largest box's, else its rows'."""
    classes = source_classes({"path": path, "images": images, "split": split}, model_classes)
    csv_path = Path(str(path)).expanduser()
    folder = Path(images).expanduser() if images is not None else csv_path.parent
    rows_of: dict[str, list[Row]] = {}
    for row in read_rows(csv_path):
        rows_of.setdefault(row.path, []).append(row)
    writer = CocoWriter(Path(root), split, classes.label_names)
    clipped = 0
    for image_id, (name, rows) in enumerate(rows_of.items(), start=1):
        file = folder / name
        first = rows[0].line
        if not _inside(file, folder):
            raise DataError(f"CSV {str(csv_path)!r} line {first}: {name!r} is not inside the image folder "
                            f"{str(folder)!r}; set params.images to a folder that holds every image")
        if not file.is_file():
            raise DataError(f"CSV {str(csv_path)!r} line {first}: image {name!r} does not exist (looked at "
                            f"{str(file)!r})")
        size = image_size(file)
        if size is None:
            raise DataError(f"CSV {str(csv_path)!r} line {first}: {str(file)!r} is not a readable image")
        objects, areas = [], []
        for row in rows:
            if row.box is None:
                continue
            box, was_clipped = _clipped(row, size, csv_path)
            clipped += was_clipped
            objects.append({"category": classes.label_names[classes.labels[row.label]], "bbox": box})
            areas.append((box[2] * box[3], classes.labels[row.label]))
        writer.add_image(image_id, Path(os.path.abspath(file)).relative_to(os.path.abspath(folder)).as_posix(), *size,
                         max(areas)[1] if areas else _image_label(rows, classes, csv_path), objects)
    if clipped:
        log.info("%d boxes reaching outside their image were clipped to it", clipped)
    link_images(Path(root), split, folder)
    writer.write(classes.label_names)
    return {split: len(writer.images)}


def _clipped(row: Row, size: tuple[int, int], csv_path: Path) -> tuple[list[float], bool]:
    """The row's box as COCO [x, y, w, h] clipped to the image, and whether clipping moved it."""
    assert row.box is not None
    width, height = size
    x0, y0, x1, y1 = row.box
    cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))
    if cx1 <= cx0 or cy1 <= cy0:
        raise DataError(f"CSV {str(csv_path)!r} line {row.line}: box {list(row.box)} covers nothing of the "
                        f"{width}x{height} image; corners are x0,y0 (top left) and x1,y1 (bottom right) in pixels")
    return [cx0, cy0, cx1 - cx0, cy1 - cy0], (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1)


def _image_label(rows: list[Row], classes: SourceClasses, csv_path: Path) -> int:
    """The label of an image without boxes: its rows must agree."""
    labels = {classes.labels[row.label] for row in rows}
    if len(labels) > 1:
        raise DataError(f"CSV {str(csv_path)!r} lines {', '.join(str(r.line) for r in rows)} give image "
                        f"{rows[0].path!r} different labels and no box; give each row a box, or one label")
    return labels.pop()
