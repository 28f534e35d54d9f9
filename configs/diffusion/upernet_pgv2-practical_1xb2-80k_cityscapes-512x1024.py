# Paper: Playground v2 with the activations the paper selects for it from its combined set;
# the paper reports no single frozen-backbone mIoU for this exact run.
# Meng et al., NeurIPS 2024: UPerNet (512) + FCN auxiliary (0.4) on the frozen pgv2 'practical' features,
# CE + Lovasz, AdamW 1.6e-4 / wd 1e-3, poly, 80k iterations, batch 2, t=50, slide inference.
# SDXL-family models work at 1024 px: crops of 512x1024 are upsampled 2x inside the backbone
# (features are resized back, so strides stay relative to the crop).
# Needs the real weights on disk (Hugging Face cache or model.backbone.pretrained='/path/to/folder').
_base_ = [
    '../_base_/models/upernet_diffusion.py', '../_base_/datasets/cityscapes.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_80k_adamw.py'
]
crop_size = (512, 1024)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        model='pgv2',
        activations='practical',
        image=dict(size=(1024, 2048)),
        conditioning=dict(prompt='An urban street scene with multiple lanes, various buildings, traffic lights, cars in the lanes, and pedestrians, highly realistic.')),
    decode_head=dict(in_channels=[640, 640, 1280], in_index=[0, 1, 2], num_classes=19),
    auxiliary_head=dict(in_channels=640, in_index=1, num_classes=19),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 683)))
