"""A bf16 DiffusionBackbone under fp32 mmseg heads: the usual way to save memory on a frozen denoiser. Its
features leave in the input's dtype, so the heads' first convolution takes them with AMP and without."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip('mmseg')
from mmengine.config import Config  # noqa: E402
from mmengine.optim import OptimWrapper  # noqa: E402
from mmengine.runner import autocast  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402

import diffbackbones  # noqa: E402,F401  (registers DiffusionBackbone)

from conftest import REPO, segmentation_batch  # noqa: E402

register_all_modules()
TOY = REPO / 'configs' / 'toy' / 'upernet_test-sd-tiny-practical_1xb8-300_shapes-128x128.py'


@pytest.mark.parametrize('amp', [False, True], ids=['fp32-head', 'autocast-bf16'])
@pytest.mark.parametrize('fusion', [False, True], ids=['no-fusion', 'fusion'])
def test_a_bf16_backbone_under_fp32_heads_trains_a_step_and_predicts(amp, fusion):
    cfg = Config.fromfile(TOY)
    cfg.model.backbone.update(dtype='bf16', fusion=fusion, image=dict(size=64))
    torch.manual_seed(0)
    segmentor = MODELS.build(cfg.model)
    assert next(segmentor.backbone.denoiser.parameters()).dtype == torch.bfloat16
    head_weights = [p for n, p in segmentor.named_parameters() if n.startswith('decode_head.')]
    assert all(p.dtype == torch.float32 for p in head_weights)
    before = [p.detach().clone() for p in head_weights]
    wrapper = OptimWrapper(torch.optim.SGD([p for p in segmentor.parameters() if p.requires_grad], lr=0.1))
    # mmengine's AmpOptimWrapper needs a GPU; on the CPU its optim_context is this same autocast
    with autocast(device_type='cpu', dtype=torch.bfloat16, enabled=amp):
        losses = segmentor.train_step(segmentation_batch(64), wrapper)
        assert all(torch.isfinite(v) for v in losses.values())
        segmentor.eval()
        with torch.no_grad():
            features = segmentor.backbone(torch.zeros(1, 3, 64, 64))
            (prediction, _) = segmentor.test_step(segmentation_batch(64))
    assert all(f.dtype == torch.float32 for f in features)  # the input's dtype, whatever the denoiser's
    assert any(not torch.equal(b, p) for b, p in zip(before, head_weights))  # the fp32 head trained
    assert all(p.dtype == torch.float32 for p in head_weights)
    assert prediction.pred_sem_seg.data.shape == (1, 64, 64)
