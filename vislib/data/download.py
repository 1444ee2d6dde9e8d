"""Resumable, checksum-verified downloads and resumable archive extraction."""

from __future__ import annotations

import errno
import functools
import hashlib
import http.client
import logging
import os
import re
import shutil
import socket
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, TypedDict, Unpack

from tqdm import tqdm

from vislib.data.published import PUBLISHED
from vislib.errors import DataError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
# Errors after which a retry can succeed: dropped connections, timeouts, truncated bodies, 5xx.
_TRANSIENT = (ConnectionError, TimeoutError, socket.timeout, http.client.IncompleteRead,
              http.client.RemoteDisconnected, urllib.error.URLError)
_TORCH_HASH = re.compile(r"-([a-f0-9]+)\.")


class DownloadError(DataError):
    """A download that failed for good: not found, no network, or wrong content."""


def _disk_full(path: Path, exc: OSError) -> DownloadError:
    free = shutil.disk_usage(path.parent).free / 2**30
    return DownloadError(f"disk full while writing {str(path)!r} ({free:.2f} GiB free): free space or point "
                         f"data_root at a bigger disk, then re-run; the partial file is kept and the "
                         f"download resumes ({exc})")


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    """Hex digest of a file (algorithm: sha256 or md5)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def torchvision_hash_prefix(url: str) -> str | None:
    """The sha256 prefix torchvision puts in weight file names (`resnet50-0676ba61.pth`), if any."""
    match = _TORCH_HASH.search(PurePosixPath(url).name)
    return match.group(1) if match else None


def _verify(path: Path, url: str, sha256: str | None, md5: str | None, sha256_prefix: str | None,
            fix: str) -> None:
    checks = [("sha256", sha256, False), ("md5", md5, False), ("sha256", sha256_prefix, True)]
    for algorithm, expected, prefix in checks:
        if not expected:
            continue
        actual = file_digest(path, algorithm)
        ok = actual.startswith(expected.lower()) if prefix else actual == expected.lower()
        if not ok:
            path.unlink()
            raise DownloadError(f"{algorithm} of the file downloaded from {url} is {actual}, expected "
                                f"{expected}{'...' if prefix else ''}; the file was deleted. {fix}")


def _check_free_space(part: Path, url: str, size: int, extracted: bool) -> None:
    """Fail before transferring if the rest of a file of known size (and its extracted copy) cannot fit."""
    needed = size - (part.stat().st_size if part.exists() else 0) + (size if extracted else 0)
    free = shutil.disk_usage(part.parent).free
    if needed > free:
        what = "the download and its extracted copy need" if extracted else "the download needs"
        raise DownloadError(f"{url}: {what} {needed / 2**30:.2f} GiB more in {str(part.parent)!r} but "
                            f"{free / 2**30:.2f} GiB are free: free space or point data_root at a bigger disk, "
                            f"then re-run")


def _open(url: str, offset: int, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": "vislib"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(request, timeout=timeout)


def _transfer(url: str, part: Path, timeout: float, progress: bool) -> None:
    """Append the rest of `url` to `part`; raise a transient error if the transfer stops early."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the part file is already complete (or longer than the file)
            part.unlink()
            raise ConnectionError("server rejected the resume range; restarting from zero") from exc
        raise
    with response:
        if offset and response.status != 206:  # no Range support: start over
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        mode = "ab" if offset else "wb"
        try:
            with open(part, mode) as fh, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                               desc=part.name[:-5], disable=not progress) as bar:
                for block in iter(lambda: response.read(CHUNK), b""):
                    fh.write(block)
                    bar.update(len(block))
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise _disk_full(part, exc) from exc
            raise
    if total is not None and part.stat().st_size != total:
        raise http.client.IncompleteRead(b"", total - part.stat().st_size)


def download(url: str, dest: str | os.PathLike, sha256: str | None = None, md5: str | None = None,
             sha256_prefix: str | None = None, retries: int = 5, backoff: float = 2.0,
             timeout: float = 60.0, progress: bool = True, extracted: bool = False) -> Path:
    """Download `url` to `dest`: resumes a partial `.part` file, verifies, then renames into place.

    Files listed in `vislib.data.published` are checked against their recorded sha256 unless the caller
    gives its own digest (or digest prefix), and their size (twice it if `extracted`: the archive is kept
    beside its extracted copy) against the free disk space before transferring.
    """
    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    published = PUBLISHED.get(url)
    fix = "Check the URL and checksum in the config, or a proxy rewriting the download"
    if published is not None:
        _check_free_space(part, url, published.size, extracted)
        if not (sha256 or md5 or sha256_prefix):
            sha256 = published.sha256
            fix = (f"The expected digest is the one {published.source} recorded for this URL; if the publisher "
                   f"has replaced the file, download it yourself, check it, and place it at {str(dest)!r}")
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, timeout, progress)
            break
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise DownloadError(f"{url} was not found (HTTP 404); check the URL in the config") from None
            if exc.code < 500 or attempt == retries:
                raise DownloadError(f"downloading {url} failed with HTTP {exc.code} {exc.reason}") from None
            error: Exception = exc
        except _TRANSIENT as exc:
            if attempt == retries:
                raise DownloadError(
                    f"downloading {url} failed after {retries + 1} attempts ({exc}). Without network, "
                    f"download it elsewhere and place it at {str(dest)!r}; the partial file "
                    f"{str(part)!r} is kept and the next run resumes it") from None
            error = exc
        delay = backoff * 2**attempt
        log.warning("download of %s interrupted (%s); retrying in %.1f s", url, error, delay)
        time.sleep(delay)
    _verify(part, url, sha256, md5, sha256_prefix, fix)
    os.replace(part, dest)
    return dest


def _marker(archive: Path, dest: Path) -> Path:
    return dest / f".extracted_{archive.name}"


def _safe_target(dest: Path, name: str, archive: Path) -> Path:
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise DataError(f"archive {str(archive)!r} has an unsafe member path {name!r}; refusing to extract it")
    return dest.joinpath(*rel.parts)


def _tar_opener(tf: tarfile.TarFile, member: tarfile.TarInfo) -> Callable[[], IO[bytes]]:
    def opener() -> IO[bytes]:
        src = tf.extractfile(member)
        if src is None:  # only for non-regular members, which `_members` skips
            raise DataError(f"archive member {member.name!r} cannot be read as a file")
        return src
    return opener


def _members(archive: Path) -> Iterator[tuple[str, int, Callable[[], IO[bytes]]]]:
    """(name, size, opener) of every regular file in a zip or tar archive."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    yield info.filename, info.file_size, functools.partial(zf.open, info)
        return
    with tarfile.open(archive) as tf:
        for member in tf:
            if member.isfile():
                yield member.name, member.size, _tar_opener(tf, member)


def extract(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract a zip or tar archive into `dest`; files already there at full size are skipped (resume)."""
    archive, dest = Path(archive), Path(dest)
    marker = _marker(archive, dest)
    if marker.exists():
        return dest
    if not archive.exists():
        raise DataError(f"archive {str(archive)!r} does not exist")
    dest.mkdir(parents=True, exist_ok=True)
    count = 0
    try:
        for name, size, opener in _members(archive):
            target = _safe_target(dest, name, archive)
            count += 1
            if target.exists() and target.stat().st_size == size:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".part")
            with opener() as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
            os.replace(tmp, target)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise DataError(f"archive {str(archive)!r} is corrupt or truncated ({exc}); delete it and "
                        f"download it again") from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise _disk_full(dest / "x", exc) from exc
        raise
    if count == 0:
        raise DataError(f"archive {str(archive)!r} contains no files")
    marker.write_text(f"{count}\n")
    return dest


class _DownloadOptions(TypedDict, total=False):
    """Keyword arguments `fetch` passes through to `download`."""

    sha256: str | None
    md5: str | None
    sha256_prefix: str | None
    retries: int
    backoff: float
    timeout: float
    progress: bool


def fetch(url: str, downloads: str | os.PathLike, extract_to: str | os.PathLike | None = None,
          **checks: Unpack[_DownloadOptions]) -> Path:
    """Download `url` into `downloads` (verified), then extract it into `extract_to` if given."""
    path = download(url, Path(downloads) / PurePosixPath(url).name, extracted=extract_to is not None, **checks)
    return extract(path, extract_to) if extract_to is not None else path
