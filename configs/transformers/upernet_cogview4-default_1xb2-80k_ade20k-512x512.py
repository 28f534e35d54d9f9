# CogView4-6B (GLM-4 9B text encoder; 28 joint blocks) on ADE20K: the recipe of configs/_base_/transformer_ade20k.py
# (ViT-UPerNet, the paper's heads and schedule, the 'default' preset). Not trained here (no weights on this machine).
_base_ = ['../_base_/transformer_ade20k.py']
model = dict(backbone=dict(model='cogview4'), neck=dict(in_channels=[4096] * 4))
