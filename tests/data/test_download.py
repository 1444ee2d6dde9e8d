"""Downloads and extraction against a local HTTP server with Range support and scripted failures."""

from __future__ import annotations

import errno
import hashlib
import io
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from vislib.data.download import DownloadError, download, extract, fetch, torchvision_hash_prefix
from vislib.data.published import PUBLISHED, PublishedFile
from vislib.errors import DataError


class _Handler(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    cut_once: dict[str, int] = {}  # path -> bytes sent before dropping the connection, first request only
    requests: list[tuple[str, str | None]] = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.requests.append((self.path, self.headers.get("Range")))
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        cut = self.cut_once.pop(self.path, None)
        if cut is not None:
            self.wfile.write(body[start:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body[start:])


@pytest.fixture
def server():
    _Handler.files, _Handler.cut_once, _Handler.requests = {}, {}, []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_full_download_and_extract(server: str, tmp_path: Path) -> None:
    payload = _zip({"val2017/a.jpg": b"a" * 1000, "val2017/b.jpg": b"b" * 500})
    _Handler.files["/data.zip"] = payload
    out = fetch(f"{server}/data.zip", tmp_path / "dl", tmp_path / "x", progress=False,
                sha256=hashlib.sha256(payload).hexdigest())
    assert (tmp_path / "dl" / "data.zip").read_bytes() == payload
    assert (out / "val2017" / "a.jpg").read_bytes() == b"a" * 1000
    assert (out / ".extracted_data.zip").exists()
    assert not list((tmp_path / "dl").glob("*.part"))


def test_cut_transfer_resumes_with_range(server: str, tmp_path: Path) -> None:
    payload = bytes(range(256)) * 400
    _Handler.files["/big.bin"] = payload
    _Handler.cut_once["/big.bin"] = 30_000
    path = download(f"{server}/big.bin", tmp_path / "big.bin", md5=hashlib.md5(payload).hexdigest(),
                    backoff=0.01, progress=False)
    assert path.read_bytes() == payload
    assert _Handler.requests == [("/big.bin", None), ("/big.bin", "bytes=30000-")]


def test_wrong_checksum_deletes_file(server: str, tmp_path: Path) -> None:
    _Handler.files["/w.bin"] = b"x" * 100
    with pytest.raises(DownloadError, match="sha256 .* expected 0000"):
        download(f"{server}/w.bin", tmp_path / "w.bin", sha256="0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_disk_full_keeps_the_part_file_and_says_so(server: str, tmp_path: Path, monkeypatch) -> None:
    payload = bytes(range(256)) * 8192  # two CHUNKs: the disk fills after the first one is written
    _Handler.files["/full.bin"] = payload

    class _FillingFile(io.FileIO):
        def write(self, block: bytes) -> int:
            if self.tell() > 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(block)

    monkeypatch.setattr("vislib.data.download.open", lambda path, mode: _FillingFile(path, mode), raising=False)
    with pytest.raises(DownloadError, match="disk full while writing .*full.bin.part.*resumes"):
        download(f"{server}/full.bin", tmp_path / "full.bin", progress=False)
    assert not (tmp_path / "full.bin").exists()
    assert (tmp_path / "full.bin.part").stat().st_size == 1 << 20
    monkeypatch.undo()
    path = download(f"{server}/full.bin", tmp_path / "full.bin", sha256=hashlib.sha256(payload).hexdigest(),
                    progress=False)
    assert path.read_bytes() == payload
    assert _Handler.requests[-1] == ("/full.bin", f"bytes={1 << 20}-")


def test_torchvision_hash_prefix_checked(server: str, tmp_path: Path) -> None:
    data = b"weights"
    good = hashlib.sha256(data).hexdigest()[:8]
    assert torchvision_hash_prefix(f"https://x/resnet50-{good}.pth") == good
    _Handler.files[f"/resnet50-{good}.pth"] = data
    _Handler.files["/resnet50-deadbeef.pth"] = data
    download(f"{server}/resnet50-{good}.pth", tmp_path / "ok.pth", sha256_prefix=good, progress=False)
    with pytest.raises(DownloadError, match="expected deadbeef"):
        download(f"{server}/resnet50-deadbeef.pth", tmp_path / "bad.pth", sha256_prefix="deadbeef", progress=False)
    assert not (tmp_path / "bad.pth").exists() and not (tmp_path / "bad.pth.part").exists()


def test_404_names_url(server: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"http://127\.0\.0\.1:\d+/missing\.zip was not found \(HTTP 404\)"):
        download(f"{server}/missing.zip", tmp_path / "missing.zip", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_host_says_where_to_place_file(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="place it at"):
        download("http://127.0.0.1:9/w.pth", tmp_path / "w.pth", retries=1, backoff=0.01, progress=False)
    assert not (tmp_path / "w.pth").exists()


def test_corrupt_archive_has_no_done_marker(tmp_path: Path) -> None:
    good = _zip({"a.txt": b"hello" * 1000})
    bad = tmp_path / "bad.zip"
    bad.write_bytes(good[:40] + b"\0" * 200 + good[240:])
    with pytest.raises(DataError, match="corrupt"):
        extract(bad, tmp_path / "out")
    assert not (tmp_path / "out" / ".extracted_bad.zip").exists()
    truncated = tmp_path / "t.tar.gz"
    src = tmp_path / "f.bin"
    src.write_bytes(bytes(range(256)) * 200)
    with tarfile.open(truncated, "w:gz") as tf:
        tf.add(src, arcname="f.bin")
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(DataError, match="corrupt"):
        extract(truncated, tmp_path / "out2")
    assert not (tmp_path / "out2" / ".extracted_t.tar.gz").exists()


def test_extraction_resumes(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip({"d/1.txt": b"one", "d/2.txt": b"two"}))
    out = tmp_path / "out"
    (out / "d").mkdir(parents=True)
    (out / "d" / "1.txt").write_bytes(b"one")
    (out / "d" / "2.txt").write_bytes(b"t")  # cut short by an earlier interrupted run
    extract(archive, out)
    assert (out / "d" / "2.txt").read_bytes() == b"two"


def test_models_load_from_vislib_weights_cache(monkeypatch, tmp_path: Path) -> None:
    import torch
    import torchvision

    from vislib import models

    monkeypatch.setenv("VISLIB_WEIGHTS", str(tmp_path))
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    torch.manual_seed(0)
    reference = torchvision.models.resnet18()
    cached = tmp_path / "hub" / "checkpoints" / Path(url).name
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    hub_before = torch.hub.get_dir()
    net = models.load("resnet18", "IMAGENET1K_V1")
    assert torch.equal(net.fc.weight, reference.fc.weight)
    assert torch.hub.get_dir() == hub_before


def test_published_digest_is_checked_when_the_caller_gives_none(server: str, tmp_path: Path, monkeypatch) -> None:
    good, bad = b"published bytes", b"changed bytes"
    _Handler.files["/good.zip"], _Handler.files["/bad.zip"] = good, bad
    record = PublishedFile(len(good), hashlib.sha256(good).hexdigest(), "a test registry")
    monkeypatch.setitem(PUBLISHED, f"{server}/good.zip", record)
    monkeypatch.setitem(PUBLISHED, f"{server}/bad.zip", record)
    assert download(f"{server}/good.zip", tmp_path / "good.zip", progress=False).read_bytes() == good
    with pytest.raises(DownloadError, match="expected .*deleted. The expected digest is the one a test registry "
                                            "recorded.*place it at"):
        download(f"{server}/bad.zip", tmp_path / "bad.zip", progress=False)
    assert not (tmp_path / "bad.zip").exists() and not (tmp_path / "bad.zip.part").exists()
    own = download(f"{server}/bad.zip", tmp_path / "own.zip", sha256=hashlib.sha256(bad).hexdigest(), progress=False)
    assert own.read_bytes() == bad  # a digest from the config wins over the recorded one


def test_file_of_known_size_that_cannot_fit_fails_before_transfer(server: str, tmp_path: Path,
                                                                  monkeypatch) -> None:
    _Handler.files["/huge.zip"] = b"z" * 10
    monkeypatch.setitem(PUBLISHED, f"{server}/huge.zip", PublishedFile(5 * 2**30, "0" * 64, "a test registry"))
    asked: list[Path] = []

    def usage(path):
        asked.append(Path(path))
        return SimpleNamespace(free=6 * 2**30)

    monkeypatch.setattr("vislib.data.download.shutil.disk_usage", usage)
    (tmp_path / "dl").mkdir()
    with open(tmp_path / "dl" / "huge.zip.part", "wb") as part:  # sparse: a resumed transfer needs only the rest
        part.truncate(2**30)
    with pytest.raises(DownloadError, match=r"huge\.zip: the download and its extracted copy need 9\.00 GiB "
                                            r"more .* 6\.00 GiB are free.*data_root"):
        fetch(f"{server}/huge.zip", tmp_path / "dl", tmp_path / "x", progress=False)
    assert _Handler.requests == [] and asked == [tmp_path / "dl"]
    assert not (tmp_path / "x").exists()
    monkeypatch.setattr("vislib.data.download.shutil.disk_usage", lambda path: SimpleNamespace(free=2**30))
    with pytest.raises(DownloadError, match=r"huge\.zip: the download needs 5\.00 GiB more .* 1\.00 GiB"):
        download(f"{server}/huge.zip", tmp_path / "huge.zip", progress=False)
    assert _Handler.requests == []


def test_published_records_cover_the_urls_vislib_downloads() -> None:
    from vislib.data import coco, vg

    urls = [f"{coco.COCO_URL}/{coco.ANNOTATIONS_ZIP}", f"{coco.COCO_URL}/zips/train2017.zip",
            f"{coco.COCO_URL}/zips/val2017.zip", *vg.IMAGES_URLS, f"{vg.META_URL}/image_data.json.zip"]
    assert sorted(urls) == sorted(PUBLISHED)
    for record in PUBLISHED.values():
        assert record.size > 0 and len(record.sha256) == 64 and int(record.sha256, 16) >= 0
