# Chroma1-HD (FLUX.1-schnell derivative, T5 only) on ADE20K: the recipe of configs/_base_/transformer_ade20k.py (ViT-
# UPerNet, the paper's heads and schedule, the 'default' preset). Not trained here (no weights on this machine).
_base_ = ['../_base_/transformer_ade20k.py']
model = dict(backbone=dict(model='chroma'), neck=dict(in_channels=[3072] * 4))
