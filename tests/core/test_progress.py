"""Progress lines of long jobs: bounded in number, with the rate and the time left, the last step always logged."""

from __future__ import annotations

import logging

from vislib import models
from vislib.data.dataset import CocoFormatDataset
from vislib.pipeline import explain_shard
from vislib.runlog import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lines_come_at_most_once_per_interval_with_rate_and_time_left(caplog):
    clock = Clock()
    progress = Progress(100, "explain scorecam", interval=60.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="vislib.progress"):
        for _ in range(100):
            clock.now += 2.0  # one image every 2 s: 200 s in all
            progress.update()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4  # at 60, 120 and 180 s, and the last image
    assert lines[0] == "explain scorecam: 30/100 images (30%), 0.5 images/s, 1 min 00 s elapsed, 2 min 20 s left"
    assert lines[-1].startswith("explain scorecam: 100/100 images (100%)") and lines[-1].endswith("0 s left")


def test_a_job_log_shows_the_explain_progress(shapes_root, caplog):
    dataset = CocoFormatDataset("shapes", shapes_root, "val")
    net = models.load("demonet", "random", num_classes=len(dataset.label_names))
    with caplog.at_level(logging.INFO, logger="vislib.progress"):
        explain_shard(net, "features.14", "gradcam", {}, dataset, dataset.image_ids()[:6], batch_size=4)
    lines = [r.getMessage() for r in caplog.records]
    assert lines and lines[-1].startswith("explain gradcam: 6/6 images (100%)")
