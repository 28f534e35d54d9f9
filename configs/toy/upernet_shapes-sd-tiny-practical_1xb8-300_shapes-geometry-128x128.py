# The demo: the shipped shapes_sd_tiny (a tiny SD1.5-topology latent diffusion model trained here by
# tools/train_diffusion.py), frozen, 'practical' layer ids, learnable fusion and UPerHead, trained on the
# geometry variant of the shapes set, where only the outline names the class. Worked at 128 px, the
# size the diffusion model was trained at (latent 16x16).
#   make demo       this config;  make compare   the same recipe with random weights, both variants
# Measured val mIoU: see the README ("A diffusion model that has learned something").
_base_ = ['./upernet_test-sd-tiny-practical_1xb8-300_shapes-128x128.py']
data_root = 'data/shapes-geometry'  # python tools/make_shapes.py data/shapes-geometry --variant geometry
model = dict(backbone=dict(model='shapes_sd_tiny', pretrained=True, image=dict(size=None)))
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
