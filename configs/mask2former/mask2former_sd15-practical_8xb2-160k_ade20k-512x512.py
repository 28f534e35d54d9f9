# mmseg's own Mask2Former config (ADE20K, 512x512, ResNet-50), unchanged but for the backbone: the frozen sd15
# 'practical' features (strides 8, 16, 32; configs/_base_/models/sd15_practical_frozen.py) instead of ResNet-50.
# What changes is what the backbone needs: its input range (RGB in [-1, 1]) and the head's input channels and
# strides. tests/integrations/test_mask_classification_configs.py checks that nothing else differs from the
# base. Mask2FormerHead comes from MMDetection (installed with the mmseg extra).
_base_ = ['mmseg::mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py',
          '../_base_/models/sd15_practical_frozen.py']
custom_imports = dict(imports=['mmdet.models', 'diffbackbones'], allow_failed_imports=False)
data_preprocessor = {{_base_.diffusion_input}}
model = dict(data_preprocessor={{_base_.diffusion_input}}, backbone={{_base_.sd15_practical_backbone}},
             decode_head=dict(in_channels=[320, 640, 2560], strides=[8, 16, 32]))
