"""Decoding image files with PIL: every format gives the pixels an independent decoder (torchvision's) or the saved
levels give; 16-bit greyscale keeps its levels; files that cannot be read fail with a message naming them."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from vislib.data.dataset import read_image
from vislib.errors import ImageDecodeError


def _photo() -> np.ndarray:
    """A small image with smooth parts and edges, like a photo's."""
    ys, xs = np.mgrid[:24, :32]
    pixels = np.stack([xs * 8, ys * 10, (xs + ys) * 4], axis=-1).astype(np.uint8)
    pixels[8:16, 10:20] = (250, 30, 60)
    return pixels


def _torchvision_pixels(path) -> np.ndarray:
    from torchvision.io import ImageReadMode, decode_image, read_file

    return decode_image(read_file(str(path)), mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()


# file name -> PIL mode the image is saved in. torchvision decodes the PNG, GIF, WEBP and JPEG files; the BMP and
# TIFF files are lossless RGB, so they must give the saved levels.
TORCHVISION_READS = {"rgb.png": "RGB", "rgba.png": "RGBA", "palette.png": "P", "grey.png": "L",
                     "grey_alpha.png": "LA", "palette.gif": "P", "lossless.webp": "RGB", "rgb.jpg": "RGB",
                     "grey.jpg": "L", "cmyk.jpg": "CMYK"}
LOSSLESS_RGB = ["rgb.bmp", "rgb.tiff"]


@pytest.mark.parametrize("name", list(TORCHVISION_READS) + LOSSLESS_RGB)
def test_every_format_reads_as_an_independent_decoder_reads_it(tmp_path, name):
    path = tmp_path / name
    image = Image.fromarray(_photo()).convert(TORCHVISION_READS.get(name, "RGB"))
    image.save(path, **({"quality": 90} if name.endswith(".jpg") else {"lossless": True} if name.endswith("webp")
                        else {}))
    pixels = read_image(path)
    expected = _torchvision_pixels(path) if name in TORCHVISION_READS else _photo()
    assert pixels.dtype == np.uint8 and pixels.shape == expected.shape == (24, 32, 3)
    difference = np.abs(pixels.astype(int) - expected)
    # Lossless formats decode to the same levels; JPEG decoders may round a level apart (one libjpeg build and
    # another), though torchvision's and Pillow's builds here agree exactly.
    assert difference.max() <= (1 if name.endswith(".jpg") else 0)


def test_a_16_bit_png_keeps_its_levels_scaled_to_8_bits(tmp_path):
    levels = np.arange(24 * 32).reshape(24, 32) % 256
    Image.fromarray((levels * 257).astype(np.uint16)).save(tmp_path / "deep.png")  # level v as 16 bits: v * 257
    pixels = read_image(tmp_path / "deep.png")
    assert pixels.dtype == np.uint8
    assert (pixels == levels[..., None]).all()  # convert("RGB") clips every level above 255 to white


def _truncated(path):
    Image.fromarray(_photo()).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize("case,reason", [
    ("truncated.jpg", "[Tt]runcated"),
    ("empty.jpg", "cannot identify image file"),
    ("text.png", "cannot identify image file"),
    ("missing.jpg", "No such file or directory"),
])
def test_a_file_no_decoder_reads_fails_naming_it(tmp_path, case, reason):
    path = tmp_path / case
    if case == "truncated.jpg":
        _truncated(path)
    elif case == "empty.jpg":
        path.write_bytes(b"")
    elif case == "text.png":
        path.write_bytes(b"not an image")
    # The file and PIL's reason.
    with pytest.raises(ImageDecodeError, match=f"image {re.escape(repr(str(path)))} cannot be decoded: .*{reason}"):
        read_image(path)
