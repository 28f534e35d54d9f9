# mmseg's own MaskFormer config (ADE20K, 512x512, ResNet-50), unchanged but for the backbone: the frozen sd15
# 'practical' features (configs/_base_/models/sd15_practical_frozen.py) instead of ResNet-50, with its input range
# and the head's input channels. mmseg ships MaskFormer for ADE20K only, so there is no Cityscapes sibling to
# inherit. tests/integrations/test_mask_classification_configs.py checks that nothing else differs from the base.
_base_ = ['mmseg::maskformer/maskformer_r50-d32_8xb2-160k_ade20k-512x512.py',
          '../_base_/models/sd15_practical_frozen.py']
custom_imports = dict(imports=['mmdet.models', 'diffbackbones'], allow_failed_imports=False)
data_preprocessor = {{_base_.diffusion_input}}
model = dict(data_preprocessor={{_base_.diffusion_input}}, backbone={{_base_.sd15_practical_backbone}},
             decode_head=dict(in_channels=[320, 640, 2560]))
