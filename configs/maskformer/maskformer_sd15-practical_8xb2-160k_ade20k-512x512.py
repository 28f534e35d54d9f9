# mmseg's own MaskFormer config (ADE20K, 512x512, ResNet-50), unchanged but for the backbone: the frozen sd15
# 'practical' features through DiffusionBackbone instead of ResNet-50, with its input range (RGB in [-1, 1]:
# mean = std = 127.5) and the head's input channels. mmseg ships MaskFormer for ADE20K only, so there is no
# Cityscapes sibling to inherit. tests/integrations/test_mask_classification_configs.py checks that nothing
# else differs from the base. MaskFormerHead comes from MMDetection (installed with the mmseg extra).
_base_ = ['mmseg::maskformer/maskformer_r50-d32_8xb2-160k_ade20k-512x512.py']
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
        conditioning=dict(prompt='a highly realistic photo of the real world. It can be an indoor scene, or an '
                                 'outdoor scene, or a photo of nature. high quality.')),
    decode_head=dict(in_channels=[320, 640, 2560]))
