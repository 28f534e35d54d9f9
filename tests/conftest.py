import os
from pathlib import Path

import tempfile

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # tests never touch the network
# Prompt embeddings are cached on disk (diffbackbones.backbone.conditioning.text_encoders): a fresh folder
# per session, so no test reads what an earlier run (or the user's own cache) wrote, and nothing lands in
# the home folder.
os.environ['DIFFBACKBONES_CACHE'] = tempfile.mkdtemp(prefix='diffbackbones-test-cache-')

import pytest

import torch

REPO = Path(__file__).resolve().parents[1]


def _fixtures_root() -> Path:
    # DIFFBACKBONES_FIXTURES names a fixtures folder (one holding reference-activations/); otherwise the
    # project's ../shared/fixtures beside the clone, the full set.
    env = os.environ.get('DIFFBACKBONES_FIXTURES')
    return Path(env) if env else REPO.parent / 'shared' / 'fixtures'


FIXTURES = _fixtures_root() / 'reference-activations'
# The shrunk copy in the repository (tools/shrink_reference_fixtures.py): SD, PixArt and Flux topologies, a
# subset of their activations. A user's clone runs the parity tests on it; SDXL's need the full set.
SHIPPED_FIXTURES = REPO / 'tests' / 'fixtures' / 'reference-activations'


def reference_fixture(topology: str) -> Path:
    """The reference-activation fixture folder of ``topology`` (the full set first, else the shipped copy),
    or a skip that says where it was looked for."""
    for root in (FIXTURES / topology, SHIPPED_FIXTURES / topology):
        if (root / 'activations.json').is_file():
            return root
    pytest.skip(f'reference fixtures of the {topology} topology not found at {FIXTURES / topology} (the shipped '
                f'copy in tests/fixtures has sd, pixart and flux only): set DIFFBACKBONES_FIXTURES to a folder '
                'holding the full reference-activations/ (the project keeps them in ../shared/fixtures)')


def segmentation_batch(size: int = 128, n: int = 2, seed: int = 0, classes: int = 4) -> dict:
    """An mmseg data batch as a dataloader hands it to ``train_step``/``test_step``: uint8 images and
    ``SegDataSample``s with random label maps (seeded)."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    g = torch.Generator().manual_seed(seed)
    inputs = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g) for _ in range(n)]
    samples = []
    for _ in inputs:
        sample = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, classes, (1, size, size), generator=g))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: longer than a few seconds; still part of make test')


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


def random_images(batch: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, h, w, generator=g) * 2 - 1


def shipped_config(name: str, package: str = 'mmseg'):
    """One of mmseg's (or mmdet's) shipped configs (``mask2former/...py``), read from the installed package."""
    import importlib
    from mmengine.config import Config
    root = os.path.dirname(importlib.import_module(package).__file__)
    return Config.fromfile(os.path.join(root, '.mim', 'configs', name))


def config_differences(a, b, prefix='') -> set[str]:
    """Dotted keys whose values differ between two config dicts (a key on one side only counts). ``_scope_``
    is left out: mmengine writes it into every dict of a base read through ``mmseg::``."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = (set(a) | set(b)) - {'_scope_'}
        return set().union(*(config_differences(a.get(k), b.get(k), f'{prefix}{k}.') for k in keys)) if keys else set()
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return set().union(*(config_differences(x, y, f'{prefix}{i}.') for i, (x, y) in enumerate(zip(a, b))))
    return set() if a == b else {prefix[:-1]}


def collapse_keys(keys: set[str], to: set[str]) -> set[str]:
    """Each differing key as the listed key it lies under (model.backbone.type -> model.backbone)."""
    return {next((t for t in to if k == t or k.startswith(t + '.')), k) for k in keys}
