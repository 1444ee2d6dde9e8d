"""Sizes and sha256 digests of the public dataset files vislib downloads, where a public record of them exists.

COCO and Visual Genome publish no checksums themselves. The values below were recorded by two dataset
libraries when they downloaded the same URLs (the files have not changed since 2017):
- COCO 2017: TensorFlow Datasets, `tensorflow_datasets/url_checksums/coco.txt`;
- Visual Genome 1.2 images and image metadata: Hugging Face `datasets`,
  `datasets/visual_genome/dataset_infos.json`.
No public record was found for Visual Genome's `objects.json.zip` / `attributes.json.zip` or for GloVe's
`glove.6B.zip`; those downloads are checked against the server's Content-Length only.
"""

from __future__ import annotations

from typing import NamedTuple


class PublishedFile(NamedTuple):
    size: int
    sha256: str
    source: str


_TFDS = "TensorFlow Datasets url_checksums/coco.txt"
_HF = "Hugging Face datasets visual_genome/dataset_infos.json"

PUBLISHED: dict[str, PublishedFile] = {
    "http://images.cocodataset.org/zips/train2017.zip": PublishedFile(
        19336861798, "69a8bb58ea5f8f99d24875f21416de2e9ded3178e903f1f7603e283b9e06d929", _TFDS),
    "http://images.cocodataset.org/zips/val2017.zip": PublishedFile(
        815585330, "4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05", _TFDS),
    "http://images.cocodataset.org/annotations/annotations_trainval2017.zip": PublishedFile(
        252907541, "113a836d90195ee1f884e704da6304dfaaecff1f023f49b6ca93c4aaae470268", _TFDS),
    "https://cs.stanford.edu/people/rak248/VG_100K_2/images.zip": PublishedFile(
        9731705982, "51c682d2721f880150720bb416e0346a4c787e4c55d7f80dfd1bd3f73ba81646", _HF),
    "https://cs.stanford.edu/people/rak248/VG_100K_2/images2.zip": PublishedFile(
        5471658058, "99da1a0ddf87011319ff3b05cf9176ffee2731cc3c52951162d9ef0d68e3cfb5", _HF),
    "https://visualgenome.org/static/data/dataset/image_data.json.zip": PublishedFile(
        1780854, "b87a94918cb2ff4d952cf1dfeca0b9cf6cd6fd204c2f8704645653be1163681a", _HF),
}
