# MMDetection's own Mask2Former instance-segmentation config (ResNet-50, COCO, LSJ 50e), unchanged but for the
# backbone: the frozen sd15 'practical' features (strides 8, 16, 32) through DiffusionBackbone instead of
# ResNet-50, with its input range (RGB in [-1, 1]: mean = std = 127.5) and the head's input channels and
# strides. tests/integrations/test_mmdet.py checks that nothing else differs from the base.
_base_ = ['mmdet::mask2former/mask2former_r50_8xb2-lsj-50e_coco.py']
custom_imports = dict(imports=['diffbackbones'], allow_failed_imports=False)
custom_hooks = [dict(type='LeanCheckpointHook')]
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
        conditioning=dict(prompt='a highly realistic photo of the real world. high quality.')),
    panoptic_head=dict(in_channels=[320, 640, 2560], strides=[8, 16, 32]))
