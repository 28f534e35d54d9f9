# Toy: the same run through mmseg's own TIMMBackbone and the timm registry entry 'test_sd_tiny_practical'.
_base_ = ['./upernet_test-sd-tiny-practical_1xb8-300_shapes-128x128.py']
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmseg.TIMMBackbone',
        model_name='test_sd_tiny_practical',
        features_only=True,
        pretrained=False,
        frozen=True,  # the paper's setting; a timm entry trains its VAE and denoiser by default
        out_indices=(0, 1, 2),
        image=dict(size=256)))
