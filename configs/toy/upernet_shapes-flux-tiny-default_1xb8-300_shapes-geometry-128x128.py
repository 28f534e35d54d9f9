# The demo's recipe on the shipped shapes_flux_tiny (a tiny Flux-topology flow-matching transformer trained
# here by `tools/train_diffusion.py --arch flux`), frozen, its 'default' preset: four block outputs from the
# middle of the network (blocks 2-5 of 8, 96 channels each, all at stride 16), learnable fusion, mmseg's
# MultiLevelNeck back to strides 4 / 8 / 16 / 32 (the ViT-UPerNet recipe), UPerHead; geometry variant, 128 px
# (the size the model was trained at: 8x8 tokens), t = the model's default (184 of 1000, sigma 0.184).
#   make compare    this config trained and random, beside shapes_sd_tiny's demo
# Measured val mIoU: see docs/shapes-flux-tiny.md.
_base_ = ['./upernet_shapes-sd-tiny-practical_1xb8-300_shapes-geometry-128x128.py']
model = dict(
    backbone=dict(model='shapes_flux_tiny', activations='default', noise=dict(t=None)),
    neck=dict(type='MultiLevelNeck', in_channels=[96] * 4, out_channels=64, scales=[4, 2, 1, 0.5]),
    decode_head=dict(in_channels=[64] * 4, in_index=[0, 1, 2, 3]),
    auxiliary_head=dict(in_channels=64, in_index=2))
