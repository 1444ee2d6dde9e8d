"""Class-agnostic extras: the image set's 2-D embedding with thumbnails (the cluster scatter, its figure and job)
and snapshots of the optimisation (in the featvis grid)."""

import numpy as np
import pytest
import torch

from vislib import featvis
from vislib.featvis.base import FeatVisResult
from vislib.featvis.class_agnostic import THUMBNAIL_SIDE, to_bytes
from vislib.figures import cluster_scatter, featvis_grid
from vislib.io import FeatVisShard, load_featvis_shard, save_featvis_shard
from vislib.jobs.featvis import featvis_scatter

# Fewer steps than blur_every (10): no TV denoising, whose import alone takes a second.
SHORT = {"num_clusters": 2, "top_channels": 4, "images_per_cluster": 3, "image_size": 32,
         "octaves": [{"iterations": 8, "window_step": 5, "brightness_step": 6}]}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _shard(result: FeatVisResult) -> FeatVisShard:
    return FeatVisShard(method="class_agnostic", layer=str(result.layer), images=result.images.numpy(),
                        units=result.units.numpy(), labels=result.labels, loss_curve=result.loss_curve.numpy(),
                        image_ids=np.full(len(result.images), -1), seconds=0.0,
                        extras={k: v.numpy() for k, v in result.extras.items()})


@pytest.mark.parametrize("embedding", ["pca", "tsne"])
def test_cluster_scatter_draws_every_image_and_thumbnails_deterministically(model, photos, tmp_path, embedding):
    method = featvis.get("class_agnostic", **SHORT, embedding=embedding, scatter=True)
    runs = [method.generate(model, "features.14", units, photos) for units in ([0], [1], None)]
    extras = runs[-1].extras
    members, labels = extras["scatter_members"], extras["cluster_of_image"]
    assert extras["embedding"].shape == (12, 2) and members.shape == (2, 3)
    assert extras["thumbnails"].shape == (2, 3, 3, THUMBNAIL_SIDE, THUMBNAIL_SIDE)
    assert extras["thumbnails"].dtype == torch.uint8
    torch.testing.assert_close(extras["thumbnails"][1, 0], to_bytes(photos[members[1, 0]]))
    for k in range(2):  # a centre is the mean of its cluster's points
        torch.testing.assert_close(extras["cluster_centres"][k], extras["embedding"][labels == k].mean(0))
    # One shard per cluster clusters the same set: same embedding, members and thumbnails (deterministic, seeded).
    for key in ("embedding", "scatter_members", "thumbnails", "cluster_centres"):
        assert torch.equal(runs[0].extras[key], extras[key]) and torch.equal(runs[1].extras[key], extras[key])
    paths = [tmp_path / f"shard_{k}.npz" for k in range(2)]
    for path, run in zip(paths, runs[:2], strict=True):
        save_featvis_shard(path, _shard(run))
    featvis_scatter(shards=[str(p) for p in paths], out=str(tmp_path / "scatter.png"), title="t")
    assert (tmp_path / "scatter.png").stat().st_size > 0
    shard = load_featvis_shard(paths[0])
    args = (shard.extras["embedding"], shard.extras["cluster_of_image"], shard.extras["cluster_centres"],
            shard.extras["scatter_members"], shard.extras["thumbnails"].transpose(0, 1, 3, 4, 2) / 255,
            {0: runs[0].images[0].permute(1, 2, 0).numpy(), 1: runs[1].images[0].permute(1, 2, 0).numpy()})
    # 12 image dots and 2 centres; 2 x 3 member thumbnails and the 2 clusters' images.
    assert cluster_scatter(tmp_path / "a.png", *args) == (14, 8)
    assert cluster_scatter(tmp_path / "b.png", *args) == (14, 8)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_no_scatter_thumbnails_unless_asked(model, photos, tmp_path):
    result = featvis.get("class_agnostic", **SHORT).generate(model, "features.14", None, photos)
    assert "thumbnails" not in result.extras and "snapshots" not in result.extras
    save_featvis_shard(tmp_path / "shard_0.npz", _shard(result))
    with pytest.raises(featvis.base.ConfigError, match="scatter: true"):
        featvis_scatter(shards=[str(tmp_path / "shard_0.npz")], out=str(tmp_path / "scatter.png"), title="t")


def test_snapshots_every_k_steps_end_at_the_result_and_fill_the_grid(model, photos, tmp_path):
    two_octaves = [SHORT["octaves"][0], {**SHORT["octaves"][0], "iterations": 4, "scale": 1.0}]
    result = featvis.get("class_agnostic", **{**SHORT, "octaves": two_octaves}, snapshot_every=4).generate(
        model, "features.14", None, photos)
    snapshots = result.extras["snapshots"]
    # Steps count on across octaves: 12 steps give snapshots after steps 4, 8 and 12, the last one the result.
    assert result.extras["snapshot_steps"].tolist() == [4, 8, 12]
    assert snapshots.shape == (2, 3, 3, 32, 32) and snapshots.dtype == torch.uint8
    assert torch.equal(snapshots[:, -1], to_bytes(result.images))
    assert not torch.equal(snapshots[:, 0], snapshots[:, -1])
    # Per cluster: its start, the three snapshots and the result.
    assert featvis_grid(tmp_path / "grid.png", [_shard(result)]) == 2 * (1 + 3 + 1)
    assert (tmp_path / "grid.png").stat().st_size > 0
