# SDXL beside the SD1.5 VPD config: its 'practical' layer ids (the paper's, strides 16 and 32), everything
# else as configs/depth/vpd-diffusers_sd15_4xb8-25k_nyu-480x480.py (mmseg's VPD config, fine-tuned at
# VPD's multipliers, NYU scene-class context). SDXL works at 1024 px: the 480 px crops are resized to
# 960 and padded to 1024, and mmseg's FPN adds strides 64 and 128, so VPDDepthHead receives four levels
# on exactly the grids VPD's SD1.5 levels have at 480 px (64, 32, 16, 8 cells; fmap_border crops 16 to 15).
_base_ = ['./vpd-diffusers_sd15_4xb8-25k_nyu-480x480.py']
model = dict(
    backbone=dict(model='sdxl', activations='practical', image=dict(size=960, pad_to=1024)),
    neck=dict(type='FPN', in_channels=[1280, 2560], out_channels=320, num_outs=4, add_extra_convs='on_output'),
    decode_head=dict(in_channels=[320, 320, 320, 320]))
