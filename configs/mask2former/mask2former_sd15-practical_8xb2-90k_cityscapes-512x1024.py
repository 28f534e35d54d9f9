# mmseg's own Mask2Former config (Cityscapes, 512x1024, ResNet-50), unchanged but for the backbone: the frozen
# sd15 'practical' features (strides 8, 16, 32) through DiffusionBackbone instead of ResNet-50, with its input
# range (RGB in [-1, 1]: mean = std = 127.5) and the head's input channels and strides.
# tests/integrations/test_mask_classification_configs.py checks that nothing else differs from the base.
_base_ = ['mmseg::mask2former/mask2former_r50_8xb2-90k_cityscapes-512x1024.py']
custom_imports = dict(imports=['mmdet.models', 'diffbackbones'], allow_failed_imports=False)
data_preprocessor = dict(mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5])
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        _delete_=True,
        type='DiffusionBackbone',
        model='sd15',
        activations='practical',
        pretrained=True,
        noise=dict(t=50),
        conditioning=dict(prompt='a highly realistic photo of a city street scene. high quality.')),
    decode_head=dict(in_channels=[320, 640, 2560], strides=[8, 16, 32]))
