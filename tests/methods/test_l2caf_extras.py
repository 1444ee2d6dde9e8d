"""L2-CAF extras: several classes of an image in one call, the convergence frames and their GIF, and both from
`vislib explain` (--classes, --convergence-gif)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vislib import methods
from vislib.cli import main
from vislib.data.synthetic import ShapesConfig, generate_shapes
from vislib.errors import VislibError
from vislib.figures import convergence_gif
from vislib.io import load_shard
from vislib.methods import l2caf, split

VARIANTS = ["l2caf_oblivious", "l2caf_specific"]
LAYER = "features.14"
CLASSES = torch.tensor([[0, 3, 5], [1, 1, 4], [2, 0, 3]])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images(n: int, size: int = 64) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(n * 1000 + size))


def _hook_path(monkeypatch):
    monkeypatch.setattr(split, "graph_split", lambda *args: "forced for the test")


def _graph_path(monkeypatch):
    monkeypatch.setattr(l2caf, "_is_affine", lambda tail: False)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("path", ["fx-affine", "fx", "hook"])
def test_several_classes_equal_one_class_at_a_time(demonet, monkeypatch, name, path):
    """Same seed and stopping rule: maps to 1e-5, iteration counts and frames exactly as each class alone."""
    {"fx": _graph_path, "hook": _hook_path}.get(path, lambda _: None)(monkeypatch)
    x = _images(3)
    method = methods.get(name, max_iters=60, check_every=10, stop_threshold=1e-3, record_every=7)
    together = method.explain_classes(demonet, LAYER, x, CLASSES)
    assert together.maps.shape == (3, 3, 8, 8) and together.targets.tolist() == CLASSES.tolist()
    assert together.extras["convergence"].shape == (3, 3, (60 - 1) // 7 + 2, 8, 8)
    assert together.extras["fast_path"].all() == (path != "hook")
    for t in range(CLASSES.shape[1]):
        alone = method.explain(demonet, LAYER, x, CLASSES[:, t])
        torch.testing.assert_close(together.maps[:, t], alone.maps, rtol=0, atol=1e-5)
        torch.testing.assert_close(together.extras["convergence"][:, t], alone.extras["convergence"],
                                   rtol=0, atol=1e-5)
        assert together.extras["iterations"][:, t].tolist() == alone.extras["iterations"].tolist()
        assert together.predicted.tolist() == alone.predicted.tolist()
    if name == "l2caf_oblivious":  # the objective ignores the class: one filter per image for all its classes
        assert (together.maps == together.maps[:, :1]).all()


def test_several_classes_need_a_class_table(demonet):
    method = methods.get("l2caf_specific", max_iters=2)
    with pytest.raises(VislibError, match=r"\[N,T\] = \[2,T\]"):
        method.explain_classes(demonet, LAYER, _images(2), torch.tensor([1, 2]))
    with pytest.raises(VislibError, match="outside the model's range"):
        method.explain_classes(demonet, LAYER, _images(2), torch.tensor([[1, 2], [0, 6]]))


def test_convergence_frames_end_at_the_map_and_make_a_gif(demonet, tmp_path):
    method = methods.get("l2caf_specific", max_iters=40, check_every=5, stop_threshold=1e-2, record_every=5)
    result = method.explain(demonet, LAYER, _images(4))
    frames, iterations = result.extras["convergence"], result.extras["iterations"]
    assert frames.shape == (4, (40 - 1) // 5 + 2, 8, 8)
    assert iterations.min() < 40, "the test needs a row that stops early"
    # The last frame is the reported map; a row that stopped repeats its final map from its stop on.
    torch.testing.assert_close(frames[:, -1], result.maps, rtol=0, atol=0)
    for row, steps in enumerate(iterations.tolist()):
        assert (frames[row, steps // 5:] == result.maps[row]).all()
    # The first frame is the start: unit norm like every frame, and not yet the map.
    torch.testing.assert_close(frames.flatten(2).norm(dim=2), torch.ones(4, frames.shape[1]))
    assert not torch.allclose(frames[:, 0], result.maps)
    pixels = np.random.default_rng(0).random((4, 32, 32, 3))
    path = tmp_path / "convergence.gif"
    written = convergence_gif(path, frames.numpy(), pixels, 5, [f"image {i}" for i in range(4)], columns=2)
    with Image.open(path) as gif:
        assert written == gif.n_frames == frames.shape[1]
        assert gif.size == (2 * 128, 14 + 2 * (128 + 12))


def test_no_frames_unless_asked(demonet):
    assert "convergence" not in methods.get("l2caf_oblivious", max_iters=3).explain(demonet, LAYER, _images(1)).extras


def test_cli_explains_several_classes_and_writes_the_convergence_gif(tmp_path, capsys):
    generate_shapes(tmp_path / "shapes", ShapesConfig(n_train=1, n_val=3, image_size=32, seed=3))
    common = ["explain", "--model", "demonet", "--num-classes", "6", "--input-size", "32", "--dataset-kind",
              "shapes", "--root", str(tmp_path / "shapes"), "--split", "val", "--batch-size", "2"]
    out, gif = tmp_path / "maps.npz", tmp_path / "convergence.gif"
    assert main([*common, "--method", "l2caf_specific", "--params", '{"max_iters": 12, "record_every": 4}',
                 "--classes", "1,4", "--out", str(out), "--convergence-gif", str(gif), "--gif-tiles", "3"]) == 0
    shard = load_shard(out)
    assert shard.maps.shape == (6, 4, 4) and shard.targets.tolist() == [1, 4] * 3
    assert shard.image_ids.tolist() == np.repeat(shard.image_ids[::2], 2).tolist()
    assert shard.extras["convergence"].shape == (6, (12 - 1) // 4 + 2, 4, 4)
    with Image.open(gif) as frames:
        assert frames.n_frames == (12 - 1) // 4 + 2
    # Any other method explains the batch repeated once per class: top:2 gives each image's two best classes.
    assert main([*common, "--method", "gradcam", "--classes", "top:2", "--out", str(out)]) == 0
    assert load_shard(out).maps.shape == (6, 4, 4)
    assert main([*common, "--method", "gradcam", "--out", str(out), "--convergence-gif", str(gif)]) == 2
    assert "record_every" in capsys.readouterr().err
