"""MMDetection: configs/mmdet/ are mmdet's own shipped configs with only the backbone replaced (each read next to
the config it inherits and every setting compared, and built at full size on the meta device); the embedded
instances set in COCO format; the toy detector trained and tested through mmdet's own tools/train.py and
tools/test.py, COCO bbox and segm mAP from pycocotools, the checkpoints lean."""
import numpy as np
import pytest
import torch

pytest.importorskip('mmdet')
from mmengine.config import Config  # noqa: E402
from mmdet.registry import MODELS  # noqa: E402
from mmdet.utils import register_all_modules  # noqa: E402

import diffbackbones  # noqa: E402,F401  (registers DiffusionBackbone in mmdet's registries)

from conftest import REPO, collapse_keys, config_differences, shipped_config  # noqa: E402

register_all_modules(init_default_scope=False)
MMDET = REPO / 'configs' / 'mmdet'
# what each config changes in the mmdet config it inherits: the backbone, its input range and what reads its
# levels (channels, and the strides anchors and RoIs are placed at); everything else must be mmdet's
OURS = {'model.backbone', 'model.data_preprocessor.mean', 'model.data_preprocessor.std', 'custom_imports',
        'custom_hooks', 'sd15_practical_backbone', 'diffusion_input'}   # the last two: the shared base's names
MASK_RCNN = {'model.neck.in_channels', 'model.rpn_head.anchor_generator.strides',
             'model.roi_head.bbox_roi_extractor.featmap_strides', 'model.roi_head.mask_roi_extractor.featmap_strides'}
CONFIGS = {  # ours -> (mmdet's, changes beyond OURS)
    'mask-rcnn_sd15-practical_fpn_1x_coco.py': ('mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', MASK_RCNN),
    'mask-rcnn_sd15-practical-finetune_fpn_1x_coco.py': ('mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
                                                         MASK_RCNN | {'optim_wrapper.paramwise_cfg'}),
    'mask2former_sd15-practical_8xb2-lsj-50e_coco.py': (
        'mask2former/mask2former_r50_8xb2-lsj-50e_coco.py',
        {'model.panoptic_head.in_channels', 'model.panoptic_head.strides', 'data_preprocessor.mean',
         'data_preprocessor.std'}),
}


def test_every_mmdet_config_is_listed():
    assert sorted(p.name for p in MMDET.glob('*.py')) == sorted(CONFIGS)


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_mmdet_configs_keep_every_mmdet_setting_but_the_backbone(name):
    base_name, extra = CONFIGS[name]
    ours, base = Config.fromfile(MMDET / name), shipped_config(base_name, 'mmdet')
    assert base.model.backbone.type == 'ResNet'  # the ResNet-50 being replaced
    assert collapse_keys(config_differences(ours.to_dict(), base.to_dict()), OURS | extra) == OURS | extra
    assert ours.model.type == base.model.type and ours.model.backbone.type == 'DiffusionBackbone'
    assert ours.custom_hooks == [dict(type='LeanCheckpointHook')]
    trainable = ours.model.backbone.get('denoiser', {}).get('trainable', False)
    assert trainable == ('finetune' in name)   # the frozen and the fine-tuned setting


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_mmdet_configs_build_at_full_size_and_read_the_levels(name):
    cfg = Config.fromfile(MMDET / name)
    cfg.model.backbone.pretrained = False  # the real architecture, no weights (the meta device holds none)
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
        levels = model.backbone.features(torch.empty(1, 3, 512, 512))
    channels, strides = [level.shape[1] for level in levels], [512 // level.shape[-1] for level in levels]
    if cfg.model.type == 'MaskRCNN':
        assert channels == list(cfg.model.neck.in_channels)
        # FPN adds two pooled levels above the coarsest: anchors at 8 .. 128, RoIs read the first four
        assert cfg.model.rpn_head.anchor_generator.strides == strides + [strides[-1] * 2, strides[-1] * 4]
        assert cfg.model.roi_head.bbox_roi_extractor.featmap_strides == strides + [strides[-1] * 2]
    else:
        assert channels == list(cfg.model.panoptic_head.in_channels)
        assert strides == list(cfg.model.panoptic_head.strides)
    if 'finetune' in name:
        assert any(p.requires_grad for p in model.backbone.denoiser.parameters())


def test_instances_set_is_coco_and_matches_the_segmentation_set(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools import mask as mask_utils
    from PIL import Image
    from diffbackbones.data.shapes import make_shapes_dataset
    from diffbackbones.data.shapes_instances import make_instances_dataset
    root = make_instances_dataset(tmp_path / 'instances', 6, 3)
    segmentation = make_shapes_dataset(tmp_path / 'segmentation', 6, 3)
    coco = COCO(str(root / 'annotations' / 'instances_train.json'))
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == ['circle', 'square', 'triangle']
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        image = np.asarray(Image.open(root / 'train' / info['file_name']))
        assert np.array_equal(image, np.asarray(Image.open(segmentation / 'img_dir' / 'train' / info['file_name'])))
        label = np.asarray(Image.open(segmentation / 'ann_dir' / 'train' / info['file_name']))
        union = np.zeros_like(label)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            mask = mask_utils.decode(ann['segmentation']).astype(bool)
            assert (label[mask] == ann['category_id']).all()   # each instance one class, the label map's
            assert ann['area'] == mask.sum() >= 16 and ann['iscrowd'] == 0
            x, y, w, h = ann['bbox']
            rows, cols = np.nonzero(mask)
            assert (x, y, w, h) == (cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1)
            assert not (union[mask]).any()   # instances never overlap
            union[mask] = ann['category_id']
        # every labelled pixel belongs to an instance, unless its shape was hidden to under 16 pixels
        assert ((union > 0) == (label > 0)).mean() > 0.99


def test_rois_pool_the_cells_they_cover_on_the_backbone_levels():
    # mmcv's compiled RoIAlign reads its input's memory as NCHW without checking the strides; on channels-last
    # levels (the CPU's channels-last VAE carries through the denoiser) it pooled other cells, and Mask R-CNN's
    # box classifier learned nothing. torchvision's roi_align honours strides: the two must agree
    import torchvision
    from mmcv.ops import RoIAlign
    backbone = diffbackbones.DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False)
    with torch.no_grad():
        levels = backbone(torch.rand(2, 3, 64, 64) * 2 - 1)
    rois = torch.tensor([[0, 4., 8, 40, 30], [1, 20, 10, 60, 62], [0, 0, 0, 63, 63]])
    for level, info in zip(levels, backbone.feature_info):
        scale = 1 / info['reduction']
        expected = torchvision.ops.roi_align(level, rois, (7, 7), scale, sampling_ratio=0, aligned=True)
        torch.testing.assert_close(RoIAlign((7, 7), scale, sampling_ratio=0, aligned=True)(level, rois), expected)


TOY = REPO / 'configs' / 'toy' / 'mask-rcnn_shapes-sd-tiny-practical_1xb8-300_shapes-instances-128x128.py'


@pytest.mark.slow
def test_toy_detector_trains_and_tests_through_mmdet_own_tools(tmp_path):
    # make detect's path, shortened: mmdet's own tools/train.py and tools/test.py as subprocesses, the shipped
    # weights, a few iterations; every detection kept (score_thr 0: an untrained classifier scores low), so
    # pycocotools has something to score
    from diffbackbones.data.shapes_instances import make_instances_dataset
    from diffbackbones.integrations.mmdet.detect import detection_table, run_detect
    data = make_instances_dataset(tmp_path / 'data', 16, 3)
    options = ['model.test_cfg.rcnn.score_thr=0.0', 'train_dataloader.batch_size=4']
    (run,) = run_detect(TOY, data, tmp_path / 'work', iters=3, weights=['trained'], options=options)
    for key in ('bbox_mAP', 'bbox_mAP_50', 'segm_mAP', 'segm_mAP_50'):
        assert 0 <= run.metrics[key] <= 1, run.metrics
    assert len(list(run.pictures.glob('*.png'))) == 3   # mmdet drew ground truth | prediction per val image
    checkpoint = torch.load(tmp_path / 'work' / 'trained' / 'iter_3.pth', map_location='cpu', weights_only=True)
    assert checkpoint['state_dict'] and not any(k.startswith('backbone.') for k in checkpoint['state_dict'])
    assert 'trained (shipped weights)' in detection_table([run])
    with pytest.raises(ValueError, match='weights must be among'):
        run_detect(TOY, data, tmp_path / 'other', weights=['imagenet'])


def test_panoptic_metric_needs_panopticapi_which_the_index_lacks():
    # docs/mmdet.md says mmdet's panoptic metric cannot run without panopticapi (not on the package index,
    # so not a dependency): mmdet refuses it at construction, naming the package
    try:
        import panopticapi  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip('panopticapi is installed here')
    from mmdet.evaluation import CocoPanopticMetric
    with pytest.raises(RuntimeError, match='panopticapi is not installed'):
        CocoPanopticMetric()
