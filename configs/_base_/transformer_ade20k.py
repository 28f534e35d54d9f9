# The ADE20K recipe of the transformer denoisers' configs (configs/transformers/): the ViT-UPerNet recipe
# (models/upernet_diffusion_single_stride.py): the 'default' preset's four mid-depth block outputs (a starting point,
# not a preset the paper measured: screen and rank your own with tools/screen.py), mmseg's MultiLevelNeck rebuilding
# strides 4 / 8 / 16 / 32, the paper's heads and schedule (UPerNet 512 + FCN auxiliary 0.4, CE + Lovasz, AdamW 1.6e-4 /
# wd 1e-3, poly, 80k iterations, batch 2). Flow matching: t=184 by default, the noise level of SD's t=50. The models
# work at 1024 px: 512 crops are resized inside the backbone and the features resized back. bf16: several overflow
# in fp16. A leaf config names the model and the neck's channels.
_base_ = [
    './models/upernet_diffusion_single_stride.py', './datasets/ade20k.py', './default_runtime.py',
    './schedules/schedule_80k_adamw.py'
]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        image=dict(size=(1024, 1024)),
        dtype='bf16',
        conditioning=dict(prompt='a highly realistic photo of the real world. It can be an indoor scene, or an outdoor '
                                 'scene, or a photo of nature. high quality.')),
    decode_head=dict(num_classes=150),
    auxiliary_head=dict(num_classes=150),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))
