# Target: the paper's frozen 'Legacy-XL' result, 27.78 mIoU on ADE20K val (not re-measured here: no weights on this machine).
# Meng et al., NeurIPS 2024: UPerNet (512) + FCN auxiliary (0.4) on the frozen sdxl 'legacy' features,
# CE + Lovasz, AdamW 1.6e-4 / wd 1e-3, poly, 80k iterations, batch 2, t=50, slide inference.
# SDXL-family models work at 1024 px: crops of 512x512 are upsampled 2x inside the backbone
# (features are resized back, so strides stay relative to the crop).
# Needs the real weights on disk (Hugging Face cache or model.backbone.pretrained='/path/to/folder').
_base_ = [
    '../_base_/models/upernet_diffusion.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_80k_adamw.py'
]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        model='sdxl',
        activations='legacy',
        image=dict(size=(1024, 1024)),
        conditioning=dict(prompt='a highly realistic photo of the real world. It can be an indoor scene, or an outdoor scene, or a photo of nature. high quality.')),
    decode_head=dict(in_channels=[960, 1280], in_index=[0, 1], num_classes=150),
    auxiliary_head=dict(in_channels=1280, in_index=1, num_classes=150),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))
