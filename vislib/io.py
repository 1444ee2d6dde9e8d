"""Atomic writes, heatmap shards and Parquet files with provenance."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import secrets
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vislib.errors import DataError


def _create_temp_beside(target: Path) -> Path:
    """A new empty file with a unique name next to `target`, created with mode 0666 so that the umask and any
    default ACL of the folder decide its permissions, as for a plain `open` (mkstemp's 0600 would hide results
    from the rest of a group on a shared cluster)."""
    for _ in range(100):
        candidate = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"no free temporary name beside {str(target)!r}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` only if the block succeeds.

    The file gets the permissions a plain `open` would give it.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_temp_beside(target)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: object) -> None:
    """Write JSON atomically."""
    write_text(path, json.dumps(obj, indent=1, sort_keys=True))


def read_image_list(path: str | os.PathLike) -> list[int]:
    """Image ids of an image list (one per line, as the image_list rule writes them)."""
    return [int(line) for line in Path(path).read_text().split()]


@dataclass
class HeatmapShard:
    """The maps one explain job produced for a shard of images (the heatmap-shard contract)."""

    maps: np.ndarray  # float16 [N,h,w]
    image_ids: np.ndarray  # int64 [N]
    targets: np.ndarray  # int64 [N]
    predicted: np.ndarray  # int64 [N]
    seconds: float  # wall time of the method over the shard
    failed_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    failed_reasons: list[str] = field(default_factory=list)
    extras: dict[str, np.ndarray] = field(default_factory=dict)


def save_shard(path: str | os.PathLike, shard: HeatmapShard) -> None:
    """Write a heatmap shard atomically (.npz)."""
    arrays: dict[str, np.ndarray | np.generic] = {
        "maps": shard.maps.astype(np.float16),
        "image_ids": shard.image_ids.astype(np.int64),
        "targets": shard.targets.astype(np.int64),
        "predicted": shard.predicted.astype(np.int64),
        "seconds": np.float64(shard.seconds),
        "failed_ids": shard.failed_ids.astype(np.int64),
        "failed_reasons": np.array(shard.failed_reasons, dtype=np.str_),
    }
    _save_npz(path, arrays, shard.extras)


def _save_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray | np.generic],
              extras: Mapping[str, np.ndarray]) -> None:
    """Write `arrays` and `extras` (stored as `extra_<name>`) to one .npz, atomically."""
    # Any: mypy matches str-keyed ** unpacking against savez's `allow_pickle: bool` keyword too.
    members: dict[str, Any] = {**arrays, **{f"extra_{k}": v for k, v in extras.items()}}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **members)


def _load_npz(path: str | os.PathLike, what: str, build):
    """`build(data, extras)` on the .npz at `path`; an unreadable file is a DataError naming `what` and the fix."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return build(data, {k[len("extra_"):]: data[k] for k in data.files if k.startswith("extra_")})
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{what} {str(path)!r} is unreadable ({exc}); delete it to recompute") from exc


def load_shard(path: str | os.PathLike) -> HeatmapShard:
    """Read a heatmap shard written by `save_shard`."""
    return _load_npz(path, "heatmap shard", lambda data, extras: HeatmapShard(
        maps=data["maps"], image_ids=data["image_ids"], targets=data["targets"],
        predicted=data["predicted"], seconds=float(data["seconds"]),
        failed_ids=data["failed_ids"], failed_reasons=[str(r) for r in data["failed_reasons"]], extras=extras,
    ))


def config_hash(config: object) -> str:
    """Stable short hash of a JSON-serialisable config."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def provenance(config: object = None, device: str = "cpu") -> dict[str, str]:
    """Key-value metadata that says how a table was made."""
    from importlib.metadata import version

    import torch

    import vislib

    return {
        "vislib_version": vislib.__version__,
        "git_commit": _git_commit(),
        "config_hash": config_hash(config) if config is not None else "",
        "torch_version": torch.__version__,
        # The installed distribution's version: importing torchvision only to read it costs every
        # evaluate job seconds (torchvision pulls in torch._dynamo).
        "torchvision_version": version("torchvision"),
        "python_version": platform.python_version(),
        "device": device,
    }


def write_parquet(path: str | os.PathLike, table: pa.Table, metadata: dict[str, str] | None = None) -> None:
    """Write a Parquet file atomically with `metadata` in its key-value metadata."""
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({f"vislib.{k}".encode(): str(v).encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The vislib key-value metadata of a Parquet file."""
    meta = pq.read_schema(path).metadata or {}
    return {k.decode()[len("vislib."):]: v.decode() for k, v in meta.items() if k.startswith(b"vislib.")}


@dataclass
class FeatVisShard:
    """The images one feature-visualization job synthesised, with what each shows (numpy, torch-free)."""

    method: str  # config label of the method
    layer: str  # layer visualised ("logits" for class images)
    images: np.ndarray  # float32 [N,3,H,W] RGB in [0,1]
    units: np.ndarray  # int64 [N] channel, class or cluster; -1 = the whole layer
    labels: list[str]  # one readable line per image
    loss_curve: np.ndarray  # float32 [T,N] per-image loss at every iteration
    image_ids: np.ndarray  # int64 [N] dataset image each result started from; -1 = noise or a cluster
    seconds: float  # wall time of the method over the shard
    extras: dict[str, np.ndarray] = field(default_factory=dict)


def save_featvis_shard(path: str | os.PathLike, shard: FeatVisShard) -> None:
    """Write a feature-visualization shard atomically (.npz)."""
    arrays: dict[str, np.ndarray | np.generic] = {
        "method": np.array(shard.method), "layer": np.array(shard.layer),
        "images": shard.images.astype(np.float32), "units": shard.units.astype(np.int64),
        "labels": np.array(shard.labels, dtype=np.str_), "loss_curve": shard.loss_curve.astype(np.float32),
        "image_ids": shard.image_ids.astype(np.int64), "seconds": np.float64(shard.seconds),
    }
    _save_npz(path, arrays, shard.extras)


def load_featvis_shard(path: str | os.PathLike) -> FeatVisShard:
    """Read a feature-visualization shard written by `save_featvis_shard`."""
    return _load_npz(path, "feature-visualization shard", lambda data, extras: FeatVisShard(
        method=str(data["method"]), layer=str(data["layer"]), images=data["images"],
        units=data["units"], labels=[str(x) for x in data["labels"]], loss_curve=data["loss_curve"],
        image_ids=data["image_ids"], seconds=float(data["seconds"]), extras=extras,
    ))


@dataclass
class SanityMaps:
    """One image's maps along a sanity-check cascade: `image` [H,W,3] pixels in [0,1], `maps` [S,h,w] at the
    method's native resolution (step 0: the trained model), `steps` the deepest layer randomized at each step ("" for
    none), `signed` whether the method's maps carry a sign, `label` the method, model and layer."""

    image: np.ndarray
    maps: np.ndarray
    steps: list[str]
    signed: bool
    label: str


def save_sanity_maps(path: str | os.PathLike, maps: SanityMaps) -> None:
    """Write a cascade's maps of one image atomically (.npz)."""
    _save_npz(path, {"image": maps.image.astype(np.float32), "maps": maps.maps.astype(np.float32),
                     "steps": np.array(maps.steps, dtype=np.str_), "signed": np.array(maps.signed),
                     "label": np.array(maps.label, dtype=np.str_)}, {})


def load_sanity_maps(path: str | os.PathLike) -> SanityMaps:
    """Read what `save_sanity_maps` wrote."""
    return _load_npz(path, "sanity-check maps", lambda data, extras: SanityMaps(
        image=data["image"], maps=data["maps"], steps=[str(s) for s in data["steps"]], signed=bool(data["signed"]),
        label=str(data["label"])))
