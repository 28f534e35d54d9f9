# The recommended schedule (AdamW 1.6e-4, poly, 80k) for a backbone whose denoiser trains, with VPD's
# learning-rate multipliers on this package's parameter names. mmseg's VPD config
# (configs/vpd/vpd_sd_4xb8-25k_nyu-480x480.py) sets 'backbone.encoder_vq' (its VAE) x0 and 'backbone.unet'
# x0.01, and leaves its TextAdapter at the base lr; here: backbone.vae x0, backbone.denoiser x0.01, and the
# learned conditioning (conditioning=dict(type='learned' | 'vpd-classes')), fusion and heads x1.
# The leaf config makes the denoiser trainable: model.backbone.denoiser=dict(trainable=True).
# Not taken from VPD: its ForceDefaultOptimWrapperConstructor with bias_decay_mult=0 (no weight decay on
# biases), which belongs to its own AdamW recipe (lr 1e-3, weight decay 0.1).
_base_ = ['./schedule_80k_adamw.py']
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={
        'backbone.vae': dict(lr_mult=0.0),  # frozen unless vae=dict(trainable=True); x0 even then, as VPD
        'backbone.denoiser': dict(lr_mult=0.01),
        'backbone.conditioning': dict(lr_mult=1.0),  # VPD's TextAdapter trains at the base lr
    }))
