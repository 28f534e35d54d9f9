# HiDream-I1 Full (17 B sparse mixture-of-experts DiT; CLIP-L, CLIP-G, T5-XXL and Llama 3.1 8B text encoders; bf16) on ADE20K, the ViT-UPerNet recipe
# (configs/_base_/models/upernet_diffusion_single_stride.py): the 'default' preset's four mid-depth block
# outputs (a starting point, not a preset the paper measured: screen and rank your own with tools/screen.py),
# MultiLevelNeck, the paper's heads and schedule (UPerNet 512 + FCN auxiliary 0.4, CE + Lovasz, AdamW
# 1.6e-4 / wd 1e-3, poly, 80k iterations, batch 2). Flow matching: t=184 by default, the noise level of SD's
# t=50. The model works at 1024 px: 512 crops are resized inside the backbone and the features resized back.
# Its Llama comes from meta-llama/Meta-Llama-3.1-8B-Instruct (gated), as diffusers loads it. At 17 B parameters:
# docs/big-models.md (quantized, offloaded, sharded).
# Not trained here (no weights on this machine).
_base_ = [
    '../_base_/models/upernet_diffusion_single_stride.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_80k_adamw.py'
]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        model='hidream_i1_full',
        image=dict(size=(1024, 1024)),
        dtype='bf16',
        conditioning=dict(prompt='a highly realistic photo of the real world. It can be an indoor scene, or an outdoor scene, or a photo of nature. high quality.')),
    neck=dict(in_channels=[2560] * 4),
    decode_head=dict(num_classes=150),
    auxiliary_head=dict(num_classes=150),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))
