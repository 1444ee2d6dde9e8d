"""Fixtures of the feature-visualization tests: the seeded random demo net and a two-colour photo set."""

import pytest
import torch

from vislib import models


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return models.load("demonet")


@pytest.fixture(scope="module")
def photos():
    generator = torch.Generator().manual_seed(1)
    # Two colour families, so that two clusters are unambiguous.
    reds = torch.rand(6, 3, 32, 32, generator=generator) * torch.tensor([1.0, 0.2, 0.2])[:, None, None]
    blues = torch.rand(6, 3, 32, 32, generator=generator) * torch.tensor([0.2, 0.2, 1.0])[:, None, None]
    return torch.cat([reds, blues])
