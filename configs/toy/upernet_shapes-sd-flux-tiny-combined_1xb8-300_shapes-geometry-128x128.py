# The demo's recipe on the two shipped models combined: shapes_sd_tiny ('practical': strides 8 / 16 / 32)
# and shapes_flux_tiny ('default': four block outputs, all at stride 16) joined by stride, so the stride-16
# level holds the UNet's level and the transformer's four (64 + 4 x 96 channels). Both models were trained
# on the latents of one VAE, so the combined backbone holds one encoder and encodes each image once. Each
# member keeps its own noise convention and default t (DDPM t=50; flow matching t=184).
#   make compare    this config is its "combined" row
_base_ = ['./upernet_shapes-sd-tiny-practical_1xb8-300_shapes-geometry-128x128.py']
model = dict(
    backbone=dict(
        _delete_=True,
        type='CombinedDiffusionBackbone',
        members=[dict(model='shapes_sd_tiny', activations='practical', noise=dict(t=50), fusion=True),
                 dict(model='shapes_flux_tiny', activations='default', noise=dict(t=None), fusion=True)],
        pretrained=True,
        fusion=True,
        image=dict(size=None)),
    decode_head=dict(in_channels=[32, 64 + 4 * 96, 128]),
    auxiliary_head=dict(in_channels=64 + 4 * 96))
