import os
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # tests never touch the network

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / 'shared' / 'fixtures' / 'reference-activations'


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: longer than a few seconds; still part of make test')


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


def random_images(batch: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, h, w, generator=g) * 2 - 1
