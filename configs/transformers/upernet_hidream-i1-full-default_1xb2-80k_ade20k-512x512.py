# HiDream-I1 Full (17 B sparse mixture-of-experts DiT; CLIP-L, CLIP-G, T5-XXL and Llama 3.1 8B text encoders) on
# ADE20K: the recipe of configs/_base_/transformer_ade20k.py (ViT-UPerNet, the paper's heads and schedule, the
# 'default' preset). Not trained here (no weights on this machine). Its Llama comes from meta-llama/Meta-
# Llama-3.1-8B-Instruct (gated), as diffusers loads it.
_base_ = ['../_base_/transformer_ade20k.py']
model = dict(backbone=dict(model='hidream_i1_full'), neck=dict(in_channels=[2560] * 4))
