"""Shared fixtures: a small generated shapes dataset and seeded models; how pytest-xdist spreads the tests."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from filelock import FileLock

from vislib import models
from vislib.data.dataset import CocoFormatDataset
from vislib.data.synthetic import ShapesConfig, generate_shapes
from vislib.training import TrainConfig, save_checkpoint, train_classifier

# `make test` runs the tests in pytest-xdist workers (pyproject.toml addopts: -n auto --dist loadgroup).
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if XDIST_WORKER:
    # Each worker gets its share of the cores for torch. Two workers each with torch's default of one thread per
    # core oversubscribe the machine (OpenMP threads spin while they wait): the model tests ran about 2x slower.
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, _cores // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))

# Test files whose groups take longest, longest first (seconds in a worker, measured with 3 workers on 2 cores): sent
# to the workers before everything else, so no worker starts a long group while the others run out of tests. The
# SLURM tests lead: they mostly wait on the queue, which overlaps the others' work. Files not named here keep their
# order after these.
SLOW_FILES = [
    "test_slurm.py",  # ~215: the tiny demo and the memory retries through sbatch (skipped without a SLURM cluster)
    "test_workflow.py",  # ~250: the tiny run, then reruns and a second run
    "test_workflow_featvis_lavise.py",  # ~145: the featvis + LaViSE run, ~20 jobs, a chain of them
    "test_presets.py",  # ~140: 7 dry runs of the documented preset commands, the missing-archive message
    "test_resume.py",  # ~100: three runs
    "test_workflow_lavise_original.py",  # ~100: two runs of the LaViSE rules with the original's switches
    "test_trained_pointing.py",  # ~90: trains the demo net, ~35 methods on two nets
]


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: a worker per core plus one, at most 4 (each holds torch and its models, ~2 GB). The workflow and
    SLURM tests spend much of their time waiting (on job start-up, on the queue's status checks); the extra worker
    runs other tests meanwhile."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores + 1, 4))


# How the workers tell the scheduler which tests belong together: pytest-xdist's own loadgroup side channel (an
# "@group" suffix it writes into each node id) has no effect with pytest 9.2's structured node ids
# (pytest-dev/pytest-xdist#1386), so each worker writes {node id: group} to a file in this directory instead.
GROUPS_DIR = "VISLIB_TEST_XDIST_GROUPS"


def pytest_configure(config: pytest.Config) -> None:
    if not XDIST_WORKER and config.getoption("dist", "no") == "loadgroup" and GROUPS_DIR not in os.environ:
        os.environ[GROUPS_DIR] = tempfile.mkdtemp(prefix="pytest-xdist-groups-")
        config.add_cleanup(lambda: shutil.rmtree(os.environ.pop(GROUPS_DIR), ignore_errors=True))


def _shared_fixtures(item: pytest.Item) -> list[str]:
    """The module- or class-scoped fixtures `item` uses, each with its parameter index if it has params."""
    shared = []
    for name, defs in sorted(getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {}).items()):
        if defs and defs[-1].scope in ("class", "module", "package"):
            callspec = getattr(item, "callspec", None)
            index = callspec.indices.get(name) if callspec is not None else None
            shared.append(name if index is None else f"{name}[{index}]")
    return shared


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In an xdist worker with --dist loadgroup: the tests of a file that share a module- or class-scoped fixture
    (a finished workflow run, a loaded model) form one group, which one worker runs, so the fixture is built once;
    the other tests are handed out one at a time. The slow files' tests go first (SLOW_FILES)."""
    if not XDIST_WORKER or not config.getoption("loadgroup", False) or GROUPS_DIR not in os.environ:
        return  # a worker's "dist" option reads "no"; "loadgroup" says how the run is distributed
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: same order within a rank
    groups = {item.nodeid: f"{item.path.name}:{'+'.join(shared)}"
              for item in items if (shared := _shared_fixtures(item))}
    path = Path(os.environ[GROUPS_DIR]) / f"{XDIST_WORKER}.json"
    path.with_suffix(".tmp").write_text(json.dumps(groups))
    path.with_suffix(".tmp").replace(path)


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """--dist loadgroup, with the groups the workers wrote to GROUPS_DIR (read once every worker has collected)."""
    if config.getoption("dist", "no") != "loadgroup" or GROUPS_DIR not in os.environ:
        return None
    from xdist.scheduler import LoadGroupScheduling

    class FixtureGroupScheduling(LoadGroupScheduling):
        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:
                self.groups = {}
                for path in sorted(Path(os.environ[GROUPS_DIR]).glob("*.json")):
                    self.groups.update(json.loads(path.read_text()))
            return self.groups.get(nodeid) or super()._split_scope(nodeid)

    return FixtureGroupScheduling(config, log)


def _build_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A directory `build` fills once per test session, also across xdist workers: the first worker to ask builds
    it in the session's temp dir, under a file lock; the others wait for it, then read the same files."""
    base = tmp_path_factory.getbasetemp()
    if XDIST_WORKER:
        base = base.parent  # a worker's basetemp is <session temp dir>/popen-<worker>
    root = base / name
    with FileLock(f"{root}.lock"):
        if not (root / ".built").exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            build(root)
            (root / ".built").touch()
    return root


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    """A tiny shapes dataset (40 train, 16 val, 64 px) written once per test session."""
    return _build_once(tmp_path_factory, "shapes",
                       lambda root: generate_shapes(root, ShapesConfig(n_train=40, n_val=16, image_size=64, seed=3)))


class TrainedDemoNet(NamedTuple):
    """A demo net checkpoint trained on a small shapes set, and that set."""

    checkpoint: Path
    shapes_root: Path
    val_accuracy: float


@pytest.fixture(scope="session")
def trained_demonet(tmp_path_factory) -> TrainedDemoNet:
    """The demo net trained as the train_model rule does, on fewer images and epochs (about 20 s on 2 CPU
    cores; about 0.9 val accuracy), once per test session (shared by the xdist workers)."""

    def build(root: Path) -> None:
        generate_shapes(root, ShapesConfig(n_train=800, n_val=64, image_size=64, seed=1))
        train, val = (CocoFormatDataset("shapes", root, split) for split in ("train", "val"))
        # Seeded as the train_model rule seeds, so the initial weights do not depend on which tests ran before.
        torch.manual_seed(0)
        net = models.load("demonet", "random", num_classes=len(train.label_names))
        history = train_classifier(net, train, val, TrainConfig(epochs=8, batch_size=32, lr=0.1, seed=0))
        save_checkpoint(root / "demonet.pt", net, train.label_names, "demonet", history)
        (root / "val_accuracy.json").write_text(json.dumps(history["val_accuracy"]))

    root = _build_once(tmp_path_factory, "shapes_trained", build)
    return TrainedDemoNet(root / "demonet.pt", root, json.loads((root / "val_accuracy.json").read_text()))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module single-threaded (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`), restoring the
    setting afterwards: on tiny tensors intra-op threads only add synchronisation, and on a busy 2-core machine their
    spin-waiting made such modules up to ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
