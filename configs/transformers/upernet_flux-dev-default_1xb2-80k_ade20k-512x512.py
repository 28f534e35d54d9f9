# FLUX.1-dev (flow matching, t=184; bf16 on GPUs: it overflows in fp16) on ADE20K: the ViT-UPerNet recipe on a single-stride backbone.
# Every transformer activation has stride 16; the 'default' preset takes four block outputs from the
# middle of the network (a starting point, not a preset the paper measured: screen and rank your own with
# tools/screen.py). mmseg's stock MultiLevelNeck rebuilds strides 4 / 8 / 16 / 32 from them, as for
# ViTs; then the paper's heads and schedule (UPerNet 512 + FCN auxiliary 0.4, CE + Lovasz, AdamW
# 1.6e-4 / wd 1e-3, poly, 80k iterations, batch 2). The model works at 1024 px: 512 crops are upsampled
# 2x inside the backbone and the features resized back. Not trained here (no weights on this machine).
_base_ = [
    '../_base_/models/upernet_diffusion.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_80k_adamw.py'
]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        model='flux_dev',
        activations='default',
        t=None,  # the model's default: 184 for flow matching (SD's t=50 noise level), 50 for DDPM
        image_size=(1024, 1024),
        dtype='bf16',
        prompt='a highly realistic photo of the real world. It can be an indoor scene, or an outdoor scene, or a photo of nature. high quality.'),
    neck=dict(type='MultiLevelNeck', in_channels=[3072] * 4, out_channels=768, scales=[4, 2, 1, 0.5]),
    decode_head=dict(in_channels=[768] * 4, in_index=[0, 1, 2, 3], num_classes=150),
    auxiliary_head=dict(in_channels=768, in_index=2, num_classes=150),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))
