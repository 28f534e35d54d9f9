# Toy: VPD's recipe at CPU-minutes scale. It inherits configs/depth/vpd-diffusers_sd15_4xb8-25k_nyu-480x480.py
# (mmseg's own VPD config with only the backbone replaced), so DepthEstimator, VPDDepthHead, SiLogLoss,
# NYUDataset, DepthMetric, AdamW at VPD's multipliers and its schedule's shape are mmseg's. What changes is
# scale: the shipped shapes_sd_tiny (SD1.5's topology, trained here) at 128 px on the embedded shapes-depth
# set (python tools/make_shapes.py data/shapes-depth --task depth: NYU's layout, two of its scene classes),
# a narrower VPDDepthHead, 300 iterations, and no Albu step (albumentations is not a dependency).
#   python tools/train.py CONFIG            or mmseg's own .mim/tools/train.py CONFIG
#   python tools/test.py CONFIG CKPT --show-dir DIR     draws input | ground truth | prediction
_base_ = ['./vpd-diffusers_sd15_4xb8-25k_nyu-480x480.py']
crop_size = (128, 128)
data_root = 'data/shapes-depth'
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(model='shapes_sd_tiny', activations='sd15_vpd',  # the SD1.5 preset, by its qualified name
                  image=dict(_delete_=True)),  # no pad_shape: 128 px is a multiple of 64 already
    decode_head=dict(in_channels=[32, 64, 64, 64], embed_dim=16, feature_dim=128, fmap_border=0),
    test_cfg=dict(crop_size=crop_size, stride=(64, 64)))  # mmseg's slide_flip, one 128 px window and its flip
meta_keys = ('img_path', 'depth_map_path', 'ori_shape', 'img_shape', 'pad_shape', 'scale_factor', 'flip',
             'flip_direction', 'category_id')
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadDepthAnnotation', depth_rescale_factor=1e-3),
    dict(type='RandomDepthMix', prob=0.25),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs', meta_keys=meta_keys),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadDepthAnnotation', depth_rescale_factor=1e-3),
    dict(type='PackSegInputs', meta_keys=meta_keys),
]
train_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(crop_type=None)  # NYU's eval crop is in 640x480 pixel coordinates
test_evaluator = val_evaluator
# schedule_25k's shape (linear warm-up over the first 48%, poly decay to 3% over the next 48%, constant
# after), over 300 iterations
param_scheduler = [
    dict(type='LinearLR', start_factor=3e-2, begin=0, end=144, by_epoch=False),
    dict(type='PolyLRRatio', eta_min_ratio=3e-2, power=0.9, begin=144, end=288, by_epoch=False),
    dict(type='ConstantLR', by_epoch=False, factor=1, begin=288, end=300),
]
train_cfg = dict(max_iters=300, val_interval=300)
default_hooks = dict(logger=dict(interval=50), checkpoint=dict(interval=300))
randomness = dict(seed=0)
# --show-dir draws input | ground truth | prediction on one colour scale (mmseg's own draws each depth map on
# its own scale, under the image)
visualizer = dict(type='DepthPanelVisualizer', max_depth=10.0)
