# Lumina-Image 2.0 (Gemma 2 2B text encoder; 2 noise-refiner + 26 joint blocks) on ADE20K: the recipe of
# configs/_base_/transformer_ade20k.py (ViT-UPerNet, the paper's heads and schedule, the 'default' preset). Not
# trained here (no weights on this machine).
_base_ = ['../_base_/transformer_ade20k.py']
model = dict(backbone=dict(model='lumina2'), neck=dict(in_channels=[2304] * 4))
