# The backbone of mmseg's own VPD configs (mmseg::vpd/vpd_sd_4xb8-25k_nyu-*.py), whose type='VPD' needs the
# CompVis `ldm` package and a converted checkpoint, as a DiffusionBackbone on diffusers weights, setting for
# setting (docs/vpd.md): SD1.5, VPD's four decoder outputs (activations='vpd'), the clean latent at t=1 not
# scaled by the VAE factor, inputs padded to 512 with 0, and VPD's class-embedding context (the NYU scene
# names through the model's own CLIP with VPD's 80 templates, as its dump_nyu_text_embeddings.py makes
# nyu_class_embeddings.pth; one per image, chosen by the category id NYUDataset reads off the file name),
# through a TextAdapter with gamma 1e-4. The denoiser is fine-tuned; the VAE is frozen.
# The leaf configs use these two names: model = dict(backbone=vpd_backbone), and
# optim_wrapper.paramwise_cfg.custom_keys = vpd_lr_mult (VPD's multipliers on our parameter names).
custom_imports = dict(imports=['diffbackbones'], allow_failed_imports=False)  # registers DiffusionBackbone
# Checkpoints leave out the frozen VAE (it comes back from its pretrained source); the fine-tuned denoiser,
# the class adapter and the head are kept. The only setting beside the backbone that mmseg's config lacks.
custom_hooks = [dict(type='LeanCheckpointHook')]
nyu_scene_names = [  # NYUDataset.METAINFO['classes'] (VPD's order), '_' read as ' ' as VPD encodes them
    'printer room', 'bathroom', 'living room', 'study', 'conference room', 'study room', 'kitchen', 'home office',
    'bedroom', 'dinette', 'playroom', 'indoor balcony', 'laundry room', 'basement', 'excercise room', 'foyer',
    'home storage', 'cafe', 'furniture store', 'office kitchen', 'student lounge', 'dining room', 'reception room',
    'computer lab', 'classroom', 'office', 'bookstore']
vpd_backbone = dict(
    _delete_=True,  # replaces mmseg's VPD backbone (diffusion_cfg, class_embed_path, unet_cfg) as a whole
    type='DiffusionBackbone',
    model='sd15',  # diffusers weights: the zoo's hub id, or pretrained='/path/to/a/diffusers/folder'
    activations='vpd',  # LDM output blocks 1, 4, 7 and the last, fine to coarse: 320/640/1280/1280 channels
    noise='clean',  # VPD: no noise, t=1
    vae=dict(scale=1.0),  # VPD encodes with .mode() and never multiplies by 0.18215
    image=dict(pad_to=512, pad_value=0.0),  # VPD's pad_shape=512, pad_val=0; the levels keep the padding
    conditioning=dict(type='vpd-classes', class_names=nyu_scene_names, class_embed_select=True, gamma=1e-4),
    denoiser=dict(trainable=True))
vpd_lr_mult = {
    '_delete_': True,  # mmseg's keys name its VPD's modules ('backbone.encoder_vq', 'backbone.unet')
    'backbone.vae': dict(lr_mult=0.0),
    'backbone.denoiser': dict(lr_mult=0.01),
}
