"""Real photographs shipped offline by scikit-image, with hand-drawn boxes, in vislib's COCO format."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from PIL import Image

from vislib.data.cocoformat import CocoWriter
from vislib.preprocessing import imagenet_class_names

# Skipped skimage.data images: `cat` is the same photo as `chelsea`; `astronaut` shows a person, which
# ImageNet has no class for; `horse` is a binary silhouette; `immunohistochemistry`, `hubble_deep_field`
# and `retina` show no ImageNet object; `eagle`, `lily` and `skin` need a download.


def write_photos(root: str | Path) -> dict[str, int]:
    """Write images/val/*.png, annotations/instances_val.json and index_val.csv under `root`."""
    # Imported here: vislib.data is imported by every workflow job, only this one needs scikit-image.
    import skimage.data

    root = Path(root)
    # Labels and box categories share the ImageNet space so boxes map onto a pretrained net's classes.
    imagenet = imagenet_class_names()
    photos = json.loads(resources.files("vislib.data").joinpath("photos.json").read_text())["photos"]
    image_dir = root / "images" / "val"
    image_dir.mkdir(parents=True, exist_ok=True)
    writer = CocoWriter(root, "val", imagenet)
    for image_id, photo in enumerate(photos, start=1):
        pixels = getattr(skimage.data, photo["function"])()
        if "element" in photo:  # loaders such as stereo_motorcycle return a tuple of arrays
            pixels = pixels[photo["element"]]
        file_name = f"{photo['function']}.png"
        Image.fromarray(pixels).save(image_dir / file_name)
        height, width = pixels.shape[:2]
        objects = [{"category": imagenet[photo["label"]], "bbox": box, "attributes": []}
                   for box in photo["boxes"]]
        writer.add_image(image_id, file_name, width, height, photo["label"], objects)
    writer.write(imagenet)
    return {"val": len(photos)}
