# Qwen-Image (20 B MMDiT, Qwen2.5-VL-7B text encoder) on ADE20K: the recipe of configs/_base_/transformer_ade20k.py
# (ViT-UPerNet, the paper's heads and schedule, the 'default' preset). Not trained here (no weights on this machine).
# At 20 B parameters: an 80 GB GPU in bf16, or denoiser=dict(quantization=...) (docs/big-models.md).
_base_ = ['../_base_/transformer_ade20k.py']
model = dict(backbone=dict(model='qwen_image'), neck=dict(in_channels=[3072] * 4))
