"""A checkpoint of the previous release (0.1.0, the flat package) loads strictly: module moves must not
change a state_dict key, a config ``type=`` or the checkpoint's pickled globals."""
from __future__ import annotations


import pytest
import torch

pytest.importorskip('mmseg')
from mmengine.config import Config  # noqa: E402
from mmengine.runner import load_checkpoint  # noqa: E402
from mmseg.apis import init_model  # noqa: E402

import diffbackbones  # noqa: E402,F401  (registers the backbone and the safe checkpoint globals)

from conftest import REPO  # noqa: E402

RELEASE = REPO / 'tests' / 'fixtures' / 'release-checkpoint'


def test_a_checkpoint_written_by_the_previous_release_loads_strictly():
    cfg = Config.fromfile(RELEASE / 'config.py')  # the config as the old release dumped it
    model = init_model(cfg, None, device='cpu')  # mmseg's own builder, as its tools and APIs use it
    saved = torch.load(RELEASE / 'iter_1.pth', map_location='cpu')['state_dict']  # safe loader
    assert not any('.denoiser.' in k for k in saved)  # lean: the frozen weights are not in the file
    load_checkpoint(model, str(RELEASE / 'iter_1.pth'), map_location='cpu', strict=True)
    state = model.state_dict()
    assert set(saved) <= set(state)
    for key, value in saved.items():  # every trained weight (heads, fusion) landed where it was saved from
        assert torch.equal(state[key], value), key
    with torch.no_grad():
        logits = model(torch.rand(1, 3, 128, 128) * 255, mode='tensor')
    assert logits.shape == (1, 4, 16, 16) and torch.isfinite(logits).all()
