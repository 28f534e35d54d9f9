# MMDetection's own Mask2Former instance-segmentation config (ResNet-50, COCO, LSJ 50e), unchanged but for the
# backbone: the frozen sd15 'practical' features (configs/_base_/models/sd15_practical_frozen.py) instead of
# ResNet-50, with its input range and the head's input channels and strides. tests/integrations/test_mmdet.py
# checks that nothing else differs from the base.
_base_ = ['mmdet::mask2former/mask2former_r50_8xb2-lsj-50e_coco.py', '../_base_/models/sd15_practical_frozen.py']
custom_imports = dict(imports=['diffbackbones'], allow_failed_imports=False)  # registers DiffusionBackbone
data_preprocessor = {{_base_.diffusion_input}}
model = dict(data_preprocessor={{_base_.diffusion_input}}, backbone={{_base_.sd15_practical_backbone}},
             panoptic_head=dict(in_channels=[320, 640, 2560], strides=[8, 16, 32]))
