"""configs/mask2former/ and configs/maskformer/: mmseg's own shipped Mask2Former and MaskFormer configs with only
the backbone replaced. Each is read next to the mmseg config it inherits and every setting compared; each is
built at full size on the meta device (sd15, no weights) and its levels checked against the head's inputs.
``import diffbackbones`` registers the backbone in MMDetection's registries too."""
import pytest
import torch

pytest.importorskip('mmseg')
pytest.importorskip('mmdet')
from mmengine.config import Config  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402

import diffbackbones  # noqa: E402,F401  (registers DiffusionBackbone)

from conftest import REPO, collapse_keys, config_differences, shipped_config  # noqa: E402

register_all_modules(init_default_scope=False)
# what each config changes in the mmseg config it inherits: the backbone, its input range, and the head's
# inputs; everything else must be mmseg's, unchanged
OURS = {'model.backbone', 'model.data_preprocessor.mean', 'model.data_preprocessor.std', 'data_preprocessor.mean',
        'data_preprocessor.std', 'custom_imports', 'custom_hooks', 'model.decode_head.in_channels',
        'sd15_practical_backbone', 'diffusion_input'}   # the last two: configs/_base_/models/sd15_practical_frozen.py
CONFIGS = {  # ours -> (mmseg's, changes beyond OURS)
    'mask2former/mask2former_sd15-practical_8xb2-160k_ade20k-512x512.py':
        ('mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py', {'model.decode_head.strides'}),
    'mask2former/mask2former_sd15-practical_8xb2-90k_cityscapes-512x1024.py':
        ('mask2former/mask2former_r50_8xb2-90k_cityscapes-512x1024.py', {'model.decode_head.strides'}),
    'maskformer/maskformer_sd15-practical_8xb2-160k_ade20k-512x512.py':
        ('maskformer/maskformer_r50-d32_8xb2-160k_ade20k-512x512.py', set()),
}


def test_every_mask_classification_config_is_listed():
    found = sorted(str(p.relative_to(REPO / 'configs')) for folder in ('mask2former', 'maskformer')
                   for p in (REPO / 'configs' / folder).glob('*.py'))
    assert found == sorted(CONFIGS)


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_mask_classification_configs_keep_every_mmseg_setting_but_the_backbone(name):
    base_name, extra = CONFIGS[name]
    ours, base = Config.fromfile(REPO / 'configs' / name), shipped_config(base_name)
    assert base.model.backbone.type == 'ResNet'  # the ResNet-50 being replaced
    assert collapse_keys(config_differences(ours.to_dict(), base.to_dict()), OURS | extra) == OURS | extra
    assert ours.model.decode_head.type == base.model.decode_head.type
    assert ours.model.backbone.type == 'DiffusionBackbone' and '_delete_' not in ours.model.backbone
    assert ours.model.data_preprocessor.mean == ours.model.data_preprocessor.std == [127.5] * 3
    assert 'diffbackbones' in ours.custom_imports.imports and 'mmdet.models' in ours.custom_imports.imports


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_mask_classification_configs_build_at_full_size_and_match_the_head(name):
    cfg = Config.fromfile(REPO / 'configs' / name)
    cfg.model.backbone.pretrained = False  # the real architecture, no weights (the meta device holds none)
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
        levels = model.backbone.features(torch.empty(1, 3, 512, 512))
    assert [level.shape[1] for level in levels] == list(cfg.model.decode_head.in_channels)
    assert [512 // level.shape[-1] for level in levels] == cfg.model.decode_head.get('strides', [8, 16, 32])


def test_the_backbone_is_in_mmdet_registries():
    from mmdet.registry import HOOKS as MMDET_HOOKS
    from mmdet.registry import MODELS as MMDET_MODELS
    assert MMDET_MODELS.get('DiffusionBackbone') is diffbackbones.DiffusionBackbone
    assert MMDET_MODELS.get('CombinedDiffusionBackbone') is diffbackbones.CombinedDiffusionBackbone
    assert MMDET_HOOKS.get('LeanCheckpointHook').__name__ == 'LeanCheckpointHook'
