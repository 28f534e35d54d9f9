# mmseg's own VPD depth config (NYU, 480x480), unchanged but for the backbone: diffusers weights through
# DiffusionBackbone instead of mmseg's ldm-based VPD (configs/_base_/models/vpd_diffusers.py), and VPD's
# learning-rate multipliers on this backbone's parameter names. Dataset, pipeline (its Albu step needs
# pip install albumentations), schedule, DepthEstimator, VPDDepthHead and test_cfg are mmseg's.
_base_ = ['mmseg::vpd/vpd_sd_4xb8-25k_nyu-480x480.py', '../_base_/models/vpd_diffusers.py']
model = dict(backbone={{_base_.vpd_backbone}})
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={{_base_.vpd_lr_mult}}))
