# The fine-tuned setting of configs/mmdet/mask-rcnn_sd15-practical_fpn_1x_coco.py, as the segmentation configs
# fine-tune (configs/_base_/schedules/schedule_80k_adamw_finetune-denoiser.py): the denoiser trains at 1/100 of
# the base learning rate, the VAE not at all (VPD's multipliers). LeanCheckpointHook then keeps the denoiser in
# the checkpoints and leaves the frozen VAE and text encoder out.
_base_ = ['./mask-rcnn_sd15-practical_fpn_1x_coco.py']
model = dict(backbone=dict(denoiser=dict(trainable=True)))
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={
    'backbone.vae': dict(lr_mult=0.0),
    'backbone.denoiser': dict(lr_mult=0.01),
}))
