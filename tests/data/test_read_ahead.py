"""Reading ahead: the next batch is read while the caller works on this one, at most `read_ahead` batches ahead,
its images decoded by one or more threads, with the same batches, order, failures and errors as reading each batch
when asked on the caller's thread; explain and evaluate jobs give the same results with it."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest
import torch

from vislib import models
from vislib.data.dataset import CocoFormatDataset, read_in_order
from vislib.data.synthetic import ShapesConfig, generate_shapes
from vislib.errors import DataError
from vislib.models.demonet import DEMO_PREPROCESSING
from vislib.pipeline import evaluate_shard, explain_shard


class Loads:
    """Loads that record which of them started; load `fail_at` raises."""

    def __init__(self, count: int, fail_at: int | None = None) -> None:
        self.started: list[int] = []
        self.began = [threading.Event() for _ in range(count)]
        self.fail_at = fail_at
        self.calls = [self._load(i) for i in range(count)]

    def _load(self, position: int):
        def load() -> int:
            self.started.append(position)
            self.began[position].set()
            if position == self.fail_at:
                raise DataError(f"load {position} broke")
            return position
        return load


@pytest.mark.parametrize("read_ahead", [1, 2])
def test_the_next_loads_start_before_they_are_asked_for_and_no_more(read_ahead):
    loads = Loads(6)
    for position, result in enumerate(read_in_order(loads.calls, read_ahead)):
        assert result == position
        last_ahead = min(position + read_ahead, 5)
        # The background thread starts the next loads while the caller holds this result...
        assert loads.began[last_ahead].wait(timeout=10)
        # ...and never one further ahead.
        assert max(loads.started) == last_ahead
    assert loads.started == list(range(6))


def test_without_read_ahead_each_load_runs_when_asked():
    loads = Loads(3)
    for position, _ in enumerate(read_in_order(loads.calls, 0)):
        assert loads.started == list(range(position + 1))


@pytest.mark.parametrize("read_ahead", [0, 1])
def test_a_load_that_raises_raises_where_its_result_was_due(read_ahead):
    loads = Loads(6, fail_at=2)
    received = []
    with pytest.raises(DataError, match="load 2 broke"):
        for result in read_in_order(loads.calls, read_ahead):
            received.append(result)
    assert received == [0, 1]
    assert max(loads.started) <= 2 + read_ahead


def test_a_caller_that_stops_early_starts_no_further_loads():
    loads = Loads(6)
    results = read_in_order(loads.calls, 1)
    assert next(results) == 0
    results.close()  # returns once the background thread is done: nothing starts after it
    assert loads.started in ([0], [0, 1])  # load 1 ran ahead, or was cancelled before it started


@pytest.fixture()
def shapes_with_bad_files(tmp_path):
    """Nine small shapes images; image 2 is not an image and image 7 is truncated."""
    generate_shapes(tmp_path, ShapesConfig(n_train=2, n_val=9, image_size=32, seed=1))
    folder = tmp_path / "images" / "val"
    (folder / "000002.png").write_bytes(b"not a png")
    data = (folder / "000007.png").read_bytes()
    (folder / "000007.png").write_bytes(data[:len(data) // 2])
    return CocoFormatDataset("shapes", tmp_path, "val")


@pytest.mark.parametrize("batch_size,decode_threads", [(1, 1), (4, 1), (20, 1), (4, 3), (20, 2)])
def test_batches_read_ahead_are_the_batches_read_when_asked(shapes_with_bad_files, batch_size, decode_threads):
    dataset = shapes_with_bad_files
    ids = dataset.image_ids()
    ahead = list(dataset.batches(ids, batch_size, DEMO_PREPROCESSING, read_ahead=2, decode_threads=decode_threads))
    asked = [dataset.load_batch(ids[start:start + batch_size], DEMO_PREPROCESSING)
             for start in range(0, len(ids), batch_size)]
    assert len(ahead) == len(asked) == -(-len(ids) // batch_size)
    for got, expected in zip(ahead, asked, strict=True):
        assert got.image_ids == expected.image_ids
        assert got.failures == expected.failures
        assert torch.equal(got.images, expected.images) and torch.equal(got.labels, expected.labels)
    assert {i for b in ahead for i in b.failures} == {2, 7}


def test_explain_and_evaluate_give_the_same_results_with_and_without_reading_ahead(shapes_with_bad_files):
    dataset = shapes_with_bad_files
    net = models.load("demonet", "random", num_classes=len(dataset.label_names))
    ids = dataset.image_ids()
    ahead = explain_shard(net, "features.14", "gradcam", {}, dataset, ids, batch_size=2, read_ahead=1)
    asked = explain_shard(net, "features.14", "gradcam", {}, dataset, ids, batch_size=2, read_ahead=0)
    threaded = explain_shard(net, "features.14", "gradcam", {}, dataset, ids, batch_size=2, read_ahead=1,
                             decode_threads=2)
    assert ahead.image_ids.tolist() == asked.image_ids.tolist() == [i for i in ids if i not in (2, 7)]
    np.testing.assert_array_equal(ahead.maps, asked.maps)
    np.testing.assert_array_equal(threaded.maps, asked.maps)
    assert ahead.failed_ids.tolist() == asked.failed_ids.tolist() == threaded.failed_ids.tolist() == [2, 7]
    assert ahead.failed_reasons == asked.failed_reasons == threaded.failed_reasons

    # An image that breaks between the two jobs: a row with a reason, wherever it falls in the batches.
    (dataset.root / "images" / "val" / "000005.png").write_bytes(b"broken since")
    # MaxBoxAcc's value depends on the other images (the threshold best over them): it joins its batches.
    specs = {"pointing_game": {}, "maxboxacc": {"thresholds": 10}, "deletion_auc": {"step": 0.25}}
    labels = {"experiment": "e"}
    in_batches, at_once = [evaluate_shard(ahead, dataset, net, specs, labels, batch_size=size, read_ahead=read_ahead,
                                          decode_threads=threads).to_pandas()
                           for size, read_ahead, threads in [(2, 2, 3), (100, 0, 1)]]
    assert in_batches[in_batches["image_id"] == 5]["reason"].eq("image failed to decode").all()
    assert len(in_batches) == len(specs) * len(ids)
    pd.testing.assert_frame_equal(in_batches, at_once, check_exact=False, rtol=1e-5, atol=1e-6)


def test_a_batch_decoded_by_several_threads_uses_them(shapes_with_bad_files, monkeypatch):
    from vislib.data import dataset as dataset_module

    threads = set()
    original = dataset_module.read_image

    def read_and_record(path):
        threads.add(threading.current_thread().name)
        return original(path)

    monkeypatch.setattr(dataset_module, "read_image", read_and_record)
    ids = shapes_with_bad_files.image_ids()
    list(shapes_with_bad_files.batches(ids, 9, DEMO_PREPROCESSING, read_ahead=0, decode_threads=3))
    assert threads and all(name.startswith("vislib-decode") for name in threads)


def test_decode_threads_below_one_are_refused(shapes_with_bad_files):
    with pytest.raises(DataError, match="decode_threads must be at least 1, got 0"):
        next(shapes_with_bad_files.batches([1], 1, DEMO_PREPROCESSING, decode_threads=0))


def test_batches_closed_early_stop_their_threads(shapes_with_bad_files):
    def reading_threads() -> set[str]:
        return {t.name for t in threading.enumerate() if t.name.startswith(("vislib-decode", "vislib-read-ahead"))}

    before = reading_threads()
    ids = shapes_with_bad_files.image_ids()
    batches = shapes_with_bad_files.batches(ids, 2, DEMO_PREPROCESSING, read_ahead=1, decode_threads=2)
    next(batches)
    assert reading_threads() - before  # the read-ahead thread and the decoders are at work
    batches.close()
    assert reading_threads() == before
