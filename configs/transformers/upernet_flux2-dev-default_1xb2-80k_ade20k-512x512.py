# FLUX.2 [dev] (32 B; Mistral Small 3.2 text encoder) on ADE20K: the recipe of configs/_base_/transformer_ade20k.py
# (ViT-UPerNet, the paper's heads and schedule, the 'default' preset). Not trained here (no weights on this machine).
# At 32 B parameters: int8 weights on a 48 GB GPU (denoiser=dict(quantization='int8'), docs/big-models.md), or FSDP.
_base_ = ['../_base_/transformer_ade20k.py']
model = dict(backbone=dict(model='flux2_dev'), neck=dict(in_channels=[6144] * 4))
