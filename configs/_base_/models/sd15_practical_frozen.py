# The backbone that configs/mmdet/, configs/mask2former/ and configs/maskformer/ put in place of the ResNet-50 of
# mmdet's and mmseg's own shipped configs: the frozen sd15 'practical' features (320 / 640 / 2560 channels at
# strides 8 / 16 / 32), and the input range it needs. The leaf configs use these names:
# model = dict(data_preprocessor=diffusion_input, backbone=sd15_practical_backbone, <what reads the levels>).
# Each leaf sets custom_imports itself (mmseg's Mask2Former base has its own, and bases may not both set one).
custom_hooks = [dict(type='LeanCheckpointHook')]  # checkpoints leave the frozen diffusion weights out
diffusion_input = dict(mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5])  # RGB in [-1, 1], not ImageNet's
sd15_practical_backbone = dict(
    _delete_=True,  # replaces the ResNet-50 as a whole
    type='DiffusionBackbone',
    model='sd15',  # diffusers weights: the zoo's hub id, or pretrained='/path/to/a/diffusers/folder'
    activations='practical',
    pretrained=True,
    noise=dict(t=50),
    conditioning=dict(prompt='a highly realistic photo of the real world. high quality.'))
