# SANA 1.6 B (linear attention; DC-AE at 32x, so every activation is at stride 32) on ADE20K: the recipe of
# configs/_base_/transformer_ade20k.py (ViT-UPerNet, the paper's heads and schedule, the 'default' preset). Not
# trained here (no weights on this machine). Stride 32: the neck scales the four levels by 8 / 4 / 2 / 1 to strides 4
# / 8 / 16 / 32.
_base_ = ['../_base_/transformer_ade20k.py']
model = dict(backbone=dict(model='sana_1600m'), neck=dict(in_channels=[2240] * 4, scales=[8, 4, 2, 1]))
