# Toy run of a combined backbone with the paper's segmentor wiring (configs/paper/, Ours-XL-t): the tiny
# SD1.5- and SDXL-topology models (random weights, seeded) joined by stride, the paper's all-zero
# fusion blocks (4x / 2x weight-shared per member, one per combined level), UPerHead fed coarse to fine
# with pool scales (1, 2, 3), FCN auxiliary head of 512 channels, fresh noise and posterior samples on
# every forward, features on the 256 px working grid, poly(0.9) decay to 1e-4. fp32 on the CPU.
_base_ = [
    '../_base_/models/upernet_diffusion_paper.py', '../_base_/datasets/shapes.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_80k_paper.py'
]
norm_cfg = dict(type='BN', requires_grad=True)  # SyncBN needs GPUs
crop_size = (128, 128)
data_preprocessor = dict(size=crop_size, seg_pad_val=255)  # shapes images are never padded; no label quirk
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='CombinedDiffusionBackbone',
        members=[dict(model='test_sd_tiny', activations='practical', fusion='paper', fusion_repeats=(4, 2)),
                 dict(model='test_sdxl_tiny', activations='practical', fusion='paper', fusion_repeats=(4, 2))],
        pretrained=False,
        dtype='fp32',
        t=50,
        image_size=256),
    # levels [32 (stride 8), 64 + 64 (16), 128 + 128 (32)] fed coarse to fine
    decode_head=dict(in_channels=[256, 128, 32], in_index=[2, 1, 0], channels=64, num_classes=4, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=128, in_index=1, channels=64, num_classes=4, norm_cfg=norm_cfg),
    test_cfg=dict(mode='whole'))
optim_wrapper = dict(optimizer=dict(lr=2e-3))
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=300, by_epoch=False)]
train_cfg = dict(max_iters=300, val_interval=300)
default_hooks = dict(
    logger=dict(interval=50),
    checkpoint=dict(interval=300, max_keep_ckpts=1))
randomness = dict(seed=0)
