# HunyuanImage 2.1 (17 B; its VAE is 32x, so every activation is at stride 32) on ADE20K: the recipe of
# configs/_base_/transformer_ade20k.py (ViT-UPerNet, the paper's heads and schedule, the 'default' preset). Not
# trained here (no weights on this machine). Stride 32: the neck scales the four levels by 8 / 4 / 2 / 1. The model
# generates at 2048 px; 1024 keeps its tokens as FLUX.1 at 1024.
_base_ = ['../_base_/transformer_ade20k.py']
model = dict(backbone=dict(model='hunyuan_image21'), neck=dict(in_channels=[3584] * 4, scales=[8, 4, 2, 1]))
