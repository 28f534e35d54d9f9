# Wan 2.1 text-to-video 1.3 B, an image as a one-frame video (UMT5 text encoder) on ADE20K: the recipe of
# configs/_base_/transformer_ade20k.py (ViT-UPerNet, the paper's heads and schedule, the 'default' preset). Not
# trained here (no weights on this machine). It works at the crop size (a 480p video model).
_base_ = ['../_base_/transformer_ade20k.py']
model = dict(backbone=dict(model='wan21_t2v_1_3b', image=dict(size=None)), neck=dict(in_channels=[1536] * 4))
