"""Shared fixtures: a small generated shapes dataset and seeded models."""

from __future__ import annotations

import pytest
import torch

from vislib.data.synthetic import ShapesConfig, generate_shapes


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    """A tiny shapes dataset (40 train, 16 val, 64 px) written once per test session."""
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, ShapesConfig(n_train=40, n_val=16, image_size=64, seed=3))
    return root


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
