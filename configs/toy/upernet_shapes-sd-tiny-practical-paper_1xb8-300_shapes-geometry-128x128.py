# The demo's model and data (shapes_sd_tiny, frozen, 'practical'; shapes geometry variant) with the
# paper's segmentor recipe instead of the package's (configs/paper/ settings, scaled to the toy):
# levels fed coarse to fine, pool scales (1, 2, 3), the paper's all-zero ResBlock fusion, FCN auxiliary
# head as wide as the decode head, poly(0.9) decay to 62.5% of the learning rate (the paper's 1e-4 of
# 1.6e-4), fresh noise and posterior samples on every forward, t=51. Head widths, learning rate and
# iterations are the demo's. Measured val mIoU against the demo: the README's paper-vs-recommended table.
_base_ = [
    '../_base_/models/upernet_diffusion_paper.py', '../_base_/datasets/shapes.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_80k_paper.py'
]
norm_cfg = dict(type='BN', requires_grad=True)  # SyncBN needs GPUs
crop_size = (128, 128)
data_preprocessor = dict(size=crop_size, seg_pad_val=255)  # shapes images are never padded; no label quirk
data_root = 'data/shapes-geometry'  # python tools/make_shapes.py data/shapes-geometry --variant geometry
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(model='shapes_sd_tiny', activations='practical', pretrained=True, dtype='fp32', noise=dict(t=51),
                  image=dict(size=128)),
    decode_head=dict(in_channels=[128, 64, 32], in_index=[2, 1, 0], channels=64, num_classes=4, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=64, in_index=1, channels=64, num_classes=4, norm_cfg=norm_cfg),
    test_cfg=dict(mode='whole'))
optim_wrapper = dict(optimizer=dict(lr=2e-3))
param_scheduler = [dict(type='PolyLR', eta_min=1.25e-3, power=0.9, begin=0, end=300, by_epoch=False)]
train_cfg = dict(max_iters=300, val_interval=300)
default_hooks = dict(
    logger=dict(interval=50),
    checkpoint=dict(interval=300, max_keep_ckpts=1))
randomness = dict(seed=0)
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
