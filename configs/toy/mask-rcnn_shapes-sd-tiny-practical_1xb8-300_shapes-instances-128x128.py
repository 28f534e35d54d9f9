# Toy detection (make detect): MMDetection's own Mask R-CNN recipe at CPU-minutes scale. It inherits
# configs/mmdet/mask-rcnn_sd15-practical_fpn_1x_coco.py (mmdet's shipped config with only the backbone
# replaced), so MaskRCNN, FPN, RPNHead, StandardRoIHead, CocoDataset and CocoMetric (pycocotools' bbox and segm
# mAP) are mmdet's. What changes is scale: the shipped shapes_sd_tiny, frozen, at 128 px on the embedded
# shapes-instances set (diffbackbones make-shapes data/shapes-instances --task instances: COCO format, every
# visible shape an instance), narrower FPN and heads (64 channels), 300 iterations of batch 8.
# Measured (docs/mmdet.md, make detect, 2 CPU cores, 6 min for both runs): COCO bbox / segm mAP 60.7 / 62.7 on
# the trained weights against 16.3 / 13.8 on random ones.
#   python $(mmdet)/.mim/tools/train.py CONFIG --work-dir DIR
#   python $(mmdet)/.mim/tools/test.py CONFIG DIR/iter_300.pth --show-dir pictures
_base_ = ['../mmdet/mask-rcnn_sd15-practical_fpn_1x_coco.py']
classes = ('circle', 'square', 'triangle')
metainfo = dict(classes=classes, palette=[(220, 60, 60), (60, 200, 60), (60, 90, 230)])
data_root = 'data/shapes-instances'
channels = 64
model = dict(
    backbone=dict(model='shapes_sd_tiny', conditioning=dict(prompt='')),
    neck=dict(in_channels=[32, 64, 128], out_channels=channels),
    # anchors of 32 px at stride 8 (mmdet's 8 x stride would start at 64 px here, as its first level is at 4):
    # the shapes are 30 to 65 px
    rpn_head=dict(in_channels=channels, feat_channels=channels, anchor_generator=dict(scales=[4])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=channels),
        bbox_head=dict(in_channels=channels, fc_out_channels=256, num_classes=len(classes)),
        mask_roi_extractor=dict(out_channels=channels),
        mask_head=dict(in_channels=channels, conv_out_channels=channels, num_classes=len(classes))),
    # 64 RoIs per image for the box and mask heads (mmdet: 512, for COCO's crowded 1333 px images): a 128 px
    # image holds 1 to 3 shapes, so 512 RoIs would be nearly all background (1-2 % positives, not mmdet's 25 %)
    train_cfg=dict(rcnn=dict(sampler=dict(num=64))))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),  # the images are 128 px already: sets scale_factor
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),  # iteration-based: no restart at each epoch's end
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/instances_train.json',
                 data_prefix=dict(img='train/'), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/instances_val.json',
                 data_prefix=dict(img='val/'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=f'{data_root}/annotations/instances_val.json')
test_evaluator = val_evaluator
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=300, val_interval=300)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=300, milestones=[220, 280], gamma=0.1),
]
default_hooks = dict(logger=dict(interval=50), checkpoint=dict(by_epoch=False, interval=300, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
