# Z-Image-Turbo (Qwen3-4B text encoder, 2 noise-refiner + 30 main blocks) on ADE20K: the recipe of
# configs/_base_/transformer_ade20k.py (ViT-UPerNet, the paper's heads and schedule, the 'default' preset). Not
# trained here (no weights on this machine).
_base_ = ['../_base_/transformer_ade20k.py']
model = dict(backbone=dict(model='z_image_turbo'), neck=dict(in_channels=[3840] * 4))
