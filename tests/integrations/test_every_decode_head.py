"""Every decode-head family mmseg ships works on the backbone unchanged: its own config with only the backbone
swapped for ``DiffusionBackbone`` (test_sd_tiny, four levels at strides 8 to 64) and only the neck's or heads'
input channels set to those levels. Each builds, trains one step and predicts a map of the input's size.

Two things change for one CPU process, as mmseg's own unit tests change them: SyncBN becomes BN, and the data
preprocessor takes the backbone's input range (mean = std = 127.5). DPT is out of scope: its head reads a
ViT's class token, which a diffusion backbone does not have."""

import pytest
import torch

pytest.importorskip('mmseg')
pytest.importorskip('mmdet')
from mmengine.config import ConfigDict  # noqa: E402
from mmengine.optim import OptimWrapper  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402

import diffbackbones  # noqa: E402,F401  (registers DiffusionBackbone)

from conftest import shipped_config, segmentation_batch  # noqa: E402

register_all_modules(init_default_scope=True)
# four levels at strides 8, 16, 32, 64 (a 128 px input: 16, 8, 4, 2 cells)
LEVELS = ['down-level0-repeat1-vit-out', 'down-level1-repeat1-vit-out', 'down-level2-repeat1-vit-out', 'mid-vit-out']
CHANNELS, STRIDES = [32, 64, 64, 64], [8, 16, 32, 64]
# SETR-MLA's head adds its levels up, so they must share one grid, as a ViT's layers do: four at stride 16
ONE_GRID = ['down-level1-repeat0-res-out', 'down-level1-repeat0-vit-out', 'down-level1-repeat1-res-out',
            'down-level1-repeat1-vit-out']
SIZE, CLASSES = 128, 4
# one shipped config per decode-head family (ADE20K where mmseg has one)
FAMILIES = {
    'FCN': 'fcn/fcn_r50-d8_4xb4-80k_ade20k-512x512.py',
    'PSP': 'pspnet/pspnet_r50-d8_4xb4-80k_ade20k-512x512.py',
    'ASPP': 'deeplabv3/deeplabv3_r50-d8_4xb4-80k_ade20k-512x512.py',
    'DeepLabV3+': 'deeplabv3plus/deeplabv3plus_r50-d8_4xb4-80k_ade20k-512x512.py',
    'UPerNet': 'upernet/upernet_r50_4xb4-80k_ade20k-512x512.py',
    'ANN': 'ann/ann_r50-d8_4xb4-80k_ade20k-512x512.py',
    'APC': 'apcnet/apcnet_r50-d8_4xb4-80k_ade20k-512x512.py',
    'CC': 'ccnet/ccnet_r50-d8_4xb4-80k_ade20k-512x512.py',
    'DA': 'danet/danet_r50-d8_4xb4-80k_ade20k-512x512.py',
    'DM': 'dmnet/dmnet_r50-d8_4xb4-80k_ade20k-512x512.py',
    'DNL': 'dnlnet/dnl_r50-d8_4xb4-80k_ade20k-512x512.py',
    'EMA': 'emanet/emanet_r50-d8_4xb2-80k_cityscapes-512x1024.py',
    'Enc': 'encnet/encnet_r50-d8_4xb4-80k_ade20k-512x512.py',
    'GC': 'gcnet/gcnet_r50-d8_4xb4-80k_ade20k-512x512.py',
    'ISA': 'isanet/isanet_r50-d8_4xb4-80k_ade20k-512x512.py',
    'NL': 'nonlocal_net/nonlocal_r50-d8_4xb4-80k_ade20k-512x512.py',
    'PSA': 'psanet/psanet_r50-d8_4xb4-80k_ade20k-512x512.py',
    'OCR': 'ocrnet/ocrnet_hr18_4xb4-80k_ade20k-512x512.py',
    'PointRend': 'point_rend/pointrend_r50_4xb4-160k_ade20k-512x512.py',
    'semantic FPN': 'sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py',
    'JPU': 'fastfcn/fastfcn_r50-d32_jpu_aspp_4xb4-160k_ade20k-512x512.py',
    'SegFormer': 'segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py',
    'Ham (SegNeXt)': 'segnext/segnext_mscan-t_1xb16-adamw-160k_ade20k-512x512.py',
    'K-Net': 'knet/knet-s3_r50-d8_fcn_8xb2-adamw-80k_ade20k-512x512.py',
    'Segmenter': 'segmenter/segmenter_vit-s_mask_8xb1-160k_ade20k-512x512.py',
    'SETR-MLA': 'setr/setr_vit-l_mla_8xb2-160k_ade20k-512x512.py',
    'Mask2Former': 'mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py',
    'MaskFormer': 'maskformer/maskformer_r50-d32_8xb2-160k_ade20k-512x512.py',
}


def _no_syncbn(node):
    """SyncBN -> BN everywhere (one CPU process has no process group to sync over)."""
    if isinstance(node, dict):
        return {k: ('BN' if k == 'type' and v == 'SyncBN' else _no_syncbn(v)) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(_no_syncbn(v) for v in node)
    return node


def _set_inputs(module: dict, channels: list[int], strides: list[int]) -> None:
    """The input channels (and strides) of a neck or head that reads the backbone's levels."""
    if module.get('type') == 'IterativeDecodeHead':   # K-Net: its kernel generator reads the backbone
        return _set_inputs(module['kernel_generate_head'], channels, strides)
    index = module.get('in_index', -1)
    given = module.get('in_channels')
    if isinstance(given, (list, tuple)):
        if isinstance(index, (list, tuple)):
            module['in_channels'] = type(given)(channels[i] for i in index)
        else:   # necks and mask-classification heads: one entry per level (JPU insists on a tuple)
            module['in_channels'] = type(given)(channels[-len(given):])
    else:
        module['in_channels'] = channels[index] if not isinstance(index, (list, tuple)) else \
            sum(channels[i] for i in index)
    if 'strides' in module:
        module['strides'] = strides[-len(module['strides']):]
    if 'c1_in_channels' in module:   # DeepLabV3+: the low-level features of the first level
        module['c1_in_channels'] = channels[0]


def _heads(model: dict) -> list[dict]:
    heads = [model.get('decode_head'), model.get('auxiliary_head')]
    return [h for entry in heads for h in (entry if isinstance(entry, list) else [entry] if entry else [])]


def swapped_config(name: str) -> ConfigDict:
    cfg = shipped_config(name)
    model = _no_syncbn(cfg.model.to_dict())
    base_levels = len(model['backbone'].get('out_indices', range(4)))   # JPU's ResNet gives 3 levels
    levels = list(range(4))[-base_levels:]
    activations, channels, strides = [LEVELS[i] for i in levels], [CHANNELS[i] for i in levels], \
        [STRIDES[i] for i in levels]
    if model['backbone']['type'] == 'VisionTransformer' and 'neck' in model:   # SETR-MLA sums its levels:
        activations, channels, strides = [[a] for a in ONE_GRID], [64] * 4, [16] * 4   # one grid, as a ViT's
    model['backbone'] = dict(type='DiffusionBackbone', model='test_sd_tiny', pretrained=False, activations=activations)
    model.pop('pretrained', None)
    model['data_preprocessor'].update(mean=[127.5] * 3, std=[127.5] * 3, size=(SIZE, SIZE))
    if 'neck' in model:
        _set_inputs(model['neck'], channels, strides)
        if model['neck']['type'] == 'JPU':   # JPU passes the backbone's levels but the last through
            for head in _heads(model):
                if head['in_index'] < len(channels) - 1:
                    head['in_channels'] = channels[head['in_index']]
    else:
        for head in _heads(model):
            _set_inputs(head, channels, strides)
    for head in _heads(model):   # four classes
        for node in (head, head.get('kernel_generate_head', {}), *(head.get('kernel_update_head') or [])):
            if 'num_classes' in node:
                node['num_classes'] = CLASSES
        weights = head.get('loss_cls', {}).get('class_weight')   # mask classification: classes + 'no object'
        if weights is not None:
            head['loss_cls']['class_weight'] = [1.0] * CLASSES + [weights[-1]]
    if model.get('test_cfg', {}).get('mode') == 'slide':
        model['test_cfg'] = dict(mode='whole')
    return ConfigDict(model)   # mmseg reads train_cfg/test_cfg as attributes


def test_every_family_has_a_config():
    assert len(FAMILIES) == 28 and len(set(FAMILIES.values())) == 28


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_every_decode_head_trains_a_step_and_predicts(family):
    torch.manual_seed(0)
    segmentor = MODELS.build(swapped_config(FAMILIES[family]))
    segmentor.init_weights()
    trainable = [p for p in segmentor.parameters() if p.requires_grad]
    optimizer = OptimWrapper(torch.optim.SGD(trainable, lr=1e-3))
    before = [p.detach().clone() for p in trainable]
    losses = segmentor.train_step(segmentation_batch(SIZE, classes=CLASSES), optimizer)
    assert losses and all(torch.isfinite(v).all() for v in losses.values()), losses
    assert any(not torch.equal(a, p) for a, p in zip(before, trainable))   # the step changed the head
    segmentor.eval()
    with torch.no_grad():
        predictions = segmentor.test_step(segmentation_batch(SIZE, classes=CLASSES))
    for sample in predictions:
        assert sample.pred_sem_seg.data.shape == (1, SIZE, SIZE)
        assert 0 <= int(sample.pred_sem_seg.data.min()) and int(sample.pred_sem_seg.data.max()) < CLASSES
