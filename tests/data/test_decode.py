"""Decoding image files (simplejpeg for colour and greyscale JPEGs, PIL for the rest): every format gives the pixels
an independent decoder (torchvision's) or the saved levels give; JPEGs give PIL's pixels, as vislib read them
before; 16-bit greyscale keeps its levels; files that cannot be read fail with PIL's message naming them."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from vislib.data import dataset
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


def _real_photo_jpeg(path, **options) -> None:
    """scikit-image's chelsea brought to ImageNet's usual 500x375 and saved as a JPEG."""
    from skimage import data

    Image.fromarray(data.chelsea()).resize((500, 375)).save(path, quality=90, **options)


@pytest.mark.parametrize("options", [{}, {"subsampling": 0}, {"subsampling": 1}, {"progressive": True},
                                     {"mode": "L"}, {"mode": "CMYK"}], ids=str)
def test_a_jpeg_gives_pils_pixels_and_the_fast_decoder_reads_the_plain_ones(tmp_path, monkeypatch, options):
    options = dict(options)
    mode = options.pop("mode", "RGB")
    path = tmp_path / "photo.jpg"
    _real_photo_jpeg(path, **options)
    if mode != "RGB":
        Image.open(path).convert(mode).save(path, quality=90)
    with Image.open(path) as img:
        before = np.array(img.convert("RGB"))
    fast_decodes = []
    monkeypatch.setattr(dataset.simplejpeg, "decode_jpeg",
                        _counting(dataset.simplejpeg.decode_jpeg, fast_decodes))
    pixels = read_image(path)
    assert pixels.dtype == np.uint8 and pixels.shape == (375, 500, 3)
    assert np.array_equal(pixels, before)
    # CMYK goes to PIL, whose CMYK -> RGB rounding libjpeg-turbo's differs from by a level.
    assert len(fast_decodes) == (0 if mode == "CMYK" else 1)


def _counting(function, calls: list):
    def counted(*args, **kwargs):
        calls.append(args)
        return function(*args, **kwargs)
    return counted


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
