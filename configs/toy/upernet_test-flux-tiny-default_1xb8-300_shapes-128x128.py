# Toy: the tiny Flux-topology model (2 double + 2 single blocks, random weights, seeded) as a
# single-stride backbone: its four block outputs (all stride 16), mmseg's MultiLevelNeck back to strides
# 4 / 8 / 16 / 32, UPerHead; the ViT-UPerNet recipe of configs/transformers/, at CPU-minutes scale.
_base_ = ['./upernet_test-sd-tiny-practical_1xb8-300_shapes-128x128.py']
model = dict(
    backbone=dict(model='test_flux_tiny', activations='default', noise=dict(t=None)),  # t=None: the model's default (184)
    neck=dict(type='MultiLevelNeck', in_channels=[16] * 4, out_channels=32, scales=[4, 2, 1, 0.5]),
    decode_head=dict(in_channels=[32] * 4, in_index=[0, 1, 2, 3], channels=32),
    auxiliary_head=dict(in_channels=32, in_index=2))
