"""The depth toy end to end: mmseg's own tools/train.py and tools/test.py on configs/depth/'s toy config
(DepthEstimator + VPDDepthHead on shapes_sd_tiny, the shapes-depth set in NYU's layout), and where the
gradients of one training step go for each way the backbone trains."""
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip('mmseg')
import mmseg  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.structures import PixelData  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from mmseg.structures import SegDataSample  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402

import diffbackbones  # noqa: E402,F401  (registers DiffusionBackbone, DepthPanelVisualizer)
from diffbackbones.data.depth_shapes import make_depth_dataset  # noqa: E402

from conftest import REPO  # noqa: E402
from test_segmentation import run_tool  # noqa: E402

register_all_modules(init_default_scope=False)
TOY = REPO / 'configs' / 'depth' / 'vpd-diffusers_shapes-sd-tiny_1xb8-300_shapes-depth-128x128.py'
MMSEG_TOOLS = os.path.join(os.path.dirname(mmseg.__file__), '.mim', 'tools')


@pytest.fixture(scope='module')
def depth_root(tmp_path_factory):
    return make_depth_dataset(tmp_path_factory.mktemp('data') / 'shapes-depth', n_train=8, n_test=3)


@pytest.mark.slow
def test_depth_toy_trains_and_tests_through_mmseg_own_tools(depth_root, tmp_path):
    data = [f'{loader}.dataset.data_root={depth_root}' for loader in ('train_dataloader', 'val_dataloader',
                                                                      'test_dataloader')]
    run_tool(os.path.join(MMSEG_TOOLS, 'train.py'), TOY, '--work-dir', tmp_path, '--cfg-options', *data,
             'train_dataloader.batch_size=2', 'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
             'default_hooks.checkpoint.interval=2')
    state = torch.load(tmp_path / 'iter_2.pth', map_location='cpu', weights_only=False)['state_dict']
    assert any(k.startswith('backbone.denoiser.') for k in state)  # fine-tuned: kept
    assert any(k.startswith('backbone.conditioning.text_adapter.') for k in state)
    assert not any(k.startswith('backbone.vae.') for k in state)  # frozen: left out (LeanCheckpointHook)
    log = run_tool(os.path.join(MMSEG_TOOLS, 'test.py'), TOY, tmp_path / 'iter_2.pth', '--work-dir', tmp_path / 'test',
                   '--show-dir', tmp_path / 'pictures', '--cfg-options', *data,
                   'default_hooks.visualization.interval=1')  # mmseg's test.py draws every 50th image otherwise
    scores = dict(re.findall(r'(d1|abs_rel|rmse): ([\d.]+)', re.findall(r'Iter\(test\) \[3/3\].*', log)[-1]))
    assert set(scores) == {'d1', 'abs_rel', 'rmse'} and 0 <= float(scores['d1']) <= 1
    pictures = sorted((tmp_path / 'pictures').rglob('*.png'))
    assert len(pictures) == 3
    panel = np.asarray(Image.open(pictures[0]))
    assert panel.shape == (128, 3 * 128 + 8, 3)  # input | ground truth | prediction, 4 px gaps
    assert not np.array_equal(panel[:, 132:260], panel[:, 264:])  # two different depth maps


def _batch(depth_root, indices=(0, 4)):
    """A real training batch of the toy config's pipeline, as the data preprocessor passes it on."""
    from mmengine.registry import DefaultScope
    from mmseg.datasets import NYUDataset
    cfg = Config.fromfile(TOY)
    with DefaultScope.overwrite_default_scope('mmseg'):
        dataset = NYUDataset(data_root=str(depth_root), data_prefix=dict(img_path='images/train',
                             depth_map_path='annotations/train'), pipeline=cfg.test_pipeline)
    samples = [dataset[i] for i in indices]  # sorted by name: a bedroom and a classroom
    images = torch.stack([s['inputs'] for s in samples]).float()[:, [2, 1, 0]] / 127.5 - 1  # BGR 0..255 -> RGB
    return images, [s['data_samples'] for s in samples]


def _one_step(backbone_changes, depth_root):
    cfg = Config.fromfile(TOY)
    cfg.model.backbone.update(backbone_changes)
    cfg.model.backbone.conditioning.templates = ['a photo of a {}.']  # VPD's 80 in the config; one is faster
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.train()
    images, samples = _batch(depth_root)
    assert [s.metainfo['category_id'] for s in samples] == [8, 24]  # bedroom, classroom: NYU's own ids
    sum(model.loss(images, samples).values()).backward()
    return model


def _grads(module, prefix=''):
    return {n: p.grad for n, p in module.named_parameters() if n.startswith(prefix)}


def test_gradients_reach_the_trained_parts_and_no_frozen_weight(depth_root):
    lora = _one_step(dict(denoiser=dict(trainable=False, lora=dict(rank=2, targets=['to_q', 'to_v']))), depth_root)
    adapters = {n: g for n, g in _grads(lora, 'backbone.denoiser.').items() if '.lora_' in n}
    assert adapters and all(g is not None for g in adapters.values())
    # B starts at 0 (so A's gradients are 0 too). Cross-attention over VPD's one selected token is softmax over
    # one key, 1: its output is that token's value whatever the query, so to_q of attn2 gets none either
    self_attention = [g for n, g in adapters.items() if '.lora_B.' in n and '.attn1.' in n]
    assert self_attention and all(g.abs().sum() > 0 for g in self_attention)
    assert all(g is None for n, g in _grads(lora, 'backbone.denoiser.').items() if '.lora_' not in n)
    for model in (lora, _one_step({}, depth_root)):  # LoRA, and the config's fine-tuning
        assert all(g is None for g in _grads(model, 'backbone.vae.').values())
        for prefix in ('backbone.conditioning.text_adapter.', 'decode_head.'):
            grads = _grads(model, prefix)
            assert grads and all(g is not None and torch.isfinite(g).all() for g in grads.values()), prefix
            assert sum(float(g.abs().sum()) for g in grads.values()) > 0, prefix
    finetuned = _grads(model, 'backbone.denoiser.')
    assert sum(g is not None and float(g.abs().sum()) > 0 for g in finetuned.values()) > len(finetuned) // 2
