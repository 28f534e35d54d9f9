# MMDetection's own Mask R-CNN config (ResNet-50 + FPN, COCO, 1x), unchanged but for the backbone: the frozen sd15
# 'practical' features (strides 8, 16, 32; configs/_base_/models/sd15_practical_frozen.py) instead of ResNet-50.
# What changes is what the backbone needs: its input range (RGB in [-1, 1]), FPN's input channels, and the
# strides the anchors and RoI extractors are placed at (FPN's outputs are at 8 to 128 here, not 4 to 64).
# LeanCheckpointHook leaves the frozen weights out of the checkpoints. tests/integrations/test_mmdet.py checks
# that nothing else differs from the base.
#   python $(mmdet)/.mim/tools/train.py CONFIG
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', '../_base_/models/sd15_practical_frozen.py']
custom_imports = dict(imports=['diffbackbones'], allow_failed_imports=False)  # registers DiffusionBackbone
model = dict(
    data_preprocessor={{_base_.diffusion_input}},
    backbone={{_base_.sd15_practical_backbone}},
    neck=dict(in_channels=[320, 640, 2560]),
    rpn_head=dict(anchor_generator=dict(strides=[8, 16, 32, 64, 128])),
    roi_head=dict(bbox_roi_extractor=dict(featmap_strides=[8, 16, 32, 64]),
                  mask_roi_extractor=dict(featmap_strides=[8, 16, 32, 64])))
