# The ViT-UPerNet recipe for single-stride backbones (transformer denoisers: every activation at stride
# 16). The 'default' preset's four block outputs from the middle of the network become four levels of
# one stride; mmseg's stock MultiLevelNeck rebuilds strides 4 / 8 / 16 / 32 from them, as for ViTs; then
# the paper's heads (upernet_diffusion.py). Leaf configs set the model and the neck's in_channels.
_base_ = ['./upernet_diffusion.py']
model = dict(
    backbone=dict(
        activations='default',
        noise=dict(t=None)),  # the model's default: 184 for flow matching (SD's t=50 noise level), 50 for DDPM
    neck=dict(type='MultiLevelNeck', in_channels=[768] * 4, out_channels=768, scales=[4, 2, 1, 0.5]),
    decode_head=dict(in_channels=[768] * 4, in_index=[0, 1, 2, 3]),
    auxiliary_head=dict(in_channels=768, in_index=2))
