# The demo's recipe on the geometry variant: the shipped shapes_sd_tiny (a tiny SD1.5-topology latent
# diffusion model trained here by tools/train_diffusion.py), frozen, 'practical' layer ids, learnable fusion
# and UPerHead, on the shapes set where only the outline names the class. Worked at 128 px, the size the
# diffusion model was trained at (latent 16x16).
#   make demo       the texture variant (the config beside this one), trained vs random weights
#   make compare    this recipe with trained and random weights, both variants
# Measured val mIoU: docs/shapes-sd-tiny.md ("Segmentation").
_base_ = ['./upernet_test-sd-tiny-practical_1xb8-300_shapes-128x128.py']
data_root = 'data/shapes-geometry'  # python tools/make_shapes.py data/shapes-geometry --variant geometry
model = dict(backbone=dict(model='shapes_sd_tiny', pretrained=True, image=dict(size=None)))
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
