"""Fixtures of the method tests."""

import pytest
import torch
from torch import nn

from vislib import models


@pytest.fixture(scope="module")
def demonet() -> nn.Module:
    """The demo net with seeded random weights."""
    torch.manual_seed(0)
    return models.load("demonet", "random")
