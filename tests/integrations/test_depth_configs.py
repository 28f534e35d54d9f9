"""configs/depth/: mmseg's own shipped VPD configs with only the backbone replaced. Each is read next to the
mmseg config it inherits, every setting compared, and built at full size on the meta device (no weights)."""

import pytest
import torch

pytest.importorskip('mmseg')
from mmengine.config import Config  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402
from mmseg.datasets import NYUDataset  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402

import diffbackbones  # noqa: E402,F401  (registers DiffusionBackbone)

from conftest import REPO, collapse_keys, config_differences, shipped_config  # noqa: E402

register_all_modules(init_default_scope=False)
DEPTH = REPO / 'configs' / 'depth'
# what each config changes in the mmseg config it inherits; everything else must be mmseg's, unchanged
OURS = {'model.backbone', 'optim_wrapper.paramwise_cfg.custom_keys', 'custom_imports', 'custom_hooks',
        'nyu_scene_names', 'vpd_backbone', 'vpd_lr_mult'}
CONFIGS = {  # ours -> (mmseg's, the changes beyond OURS)
    'vpd-diffusers_sd15_4xb8-25k_nyu-480x480.py': ('vpd/vpd_sd_4xb8-25k_nyu-480x480.py', set()),
    'vpd-diffusers_sd15_4xb8-25k_nyu-512x512.py': ('vpd/vpd_sd_4xb8-25k_nyu-512x512.py', set()),
    'vpd-diffusers_sdxl-practical_4xb8-25k_nyu-480x480.py': ('vpd/vpd_sd_4xb8-25k_nyu-480x480.py',
                                                             {'model.neck', 'model.decode_head.in_channels'}),
}


def test_every_depth_config_is_listed():
    # the sharded variant (*_fsdp-*) inherits one of these, not mmseg's: tests/integrations/test_fsdp.py
    assert sorted(p.name for p in DEPTH.glob('*_nyu-*.py') if '_fsdp-' not in p.name) == sorted(CONFIGS)


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_depth_configs_keep_every_mmseg_setting_but_the_backbone(name):
    base_name, extra = CONFIGS[name]
    ours, base = Config.fromfile(DEPTH / name), shipped_config(base_name)
    assert base.model.backbone.type == 'VPD'  # the ldm-based backbone being replaced
    assert collapse_keys(config_differences(ours.to_dict(), base.to_dict()), OURS | extra) == OURS | extra
    # the inherited settings themselves, spot-checked against what mmseg ships
    assert ours.model.type == 'DepthEstimator' and ours.model.decode_head.type == 'VPDDepthHead'
    assert ours.train_dataloader.dataset.type == 'NYUDataset' and ours.val_evaluator.type == 'DepthMetric'
    assert ours.train_cfg.max_iters == 25000 and ours.optim_wrapper.constructor == 'ForceDefaultOptimWrapperConstructor'
    assert ours.model.test_cfg.mode == 'slide_flip' and ours.find_unused_parameters is True
    backbone = ours.model.backbone
    assert backbone.type == 'DiffusionBackbone' and '_delete_' not in backbone
    assert backbone.conditioning.class_names == [c.replace('_', ' ') for c in NYUDataset.METAINFO['classes']]
    assert backbone.noise == 'clean' and backbone.vae == dict(scale=1.0)
    assert backbone.image.pad_to == (1024 if 'sdxl' in name else base.model.backbone.pad_shape)
    assert ours.optim_wrapper.paramwise_cfg.custom_keys == {'backbone.vae': dict(lr_mult=0.0),
                                                            'backbone.denoiser': dict(lr_mult=0.01)}


@pytest.mark.parametrize('name', ['vpd-diffusers_sd15_4xb8-25k_nyu-480x480.py',
                                  'vpd-diffusers_sdxl-practical_4xb8-25k_nyu-480x480.py'])
def test_depth_configs_build_at_full_size_and_feed_vpd_depth_head(name):
    cfg = Config.fromfile(DEPTH / name)
    cfg.model.backbone.pretrained = False  # the real architecture, no weights (the meta device holds none)
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
        crops = torch.empty(2, 3, *cfg.crop_size)
        with model.backbone.conditioning.per_image(torch.tensor([3, -1], device='cpu'), 2):  # what DepthEstimator passes
            levels = model.backbone.features(crops)  # forward() checks values, which meta tensors have none of
        if model.with_neck:
            levels = model.neck(levels)
        depth = model.decode_head(levels)
    assert model.backbone.class_embed_select  # so DepthEstimator passes each image's NYU category id
    grids = [tuple(level.shape[-2:]) for level in levels]
    assert grids == [(64, 64), (32, 32), (16, 16), (8, 8)]  # VPD's grids for a 480 crop padded to 512
    assert [level.shape[1] for level in levels] == list(cfg.model.decode_head.in_channels)
    assert depth.shape == (2, 1, *cfg.crop_size)
    # VPD's learning rates: the denoiser at 1/100, the VAE not at all, the class adapter at the base lr
    with DefaultScope.overwrite_default_scope('mmseg'):  # as the Runner does: mmseg's constructor
        optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    lr = {id(p): g['lr'] for g in optimizer.param_groups for p in g['params']}
    base = cfg.optim_wrapper.optimizer.lr
    for part, mult in (('denoiser', 0.01), ('conditioning.text_adapter', 1.0)):
        params = list(model.backbone.get_submodule(part).parameters())
        assert params and all(p.requires_grad and lr[id(p)] == pytest.approx(base * mult) for p in params), part
    # the VAE is frozen outright (mmseg's constructor puts frozen parameters in a default group: no gradient
    # ever reaches them, whatever lr that group has); x0 also covers vae=dict(trainable=True)
    assert not any(p.requires_grad for p in model.backbone.vae.parameters())
