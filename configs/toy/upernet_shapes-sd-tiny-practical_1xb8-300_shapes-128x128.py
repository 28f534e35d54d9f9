# The demo (make demo): the shipped shapes_sd_tiny, frozen, 'practical' layer ids, learnable fusion and
# UPerHead, on the texture variant of the shapes set, where texture and hue name a class as well as the
# outline. tools/demo.py trains it twice, with the shipped weights and with random ones (latents rescaled
# to unit variance: the fair baseline), and prints both. Measured: README, "Quick start"; the geometry
# variant (outline only) is the config beside this one.
_base_ = ['./upernet_shapes-sd-tiny-practical_1xb8-300_shapes-geometry-128x128.py']
data_root = 'data/shapes'  # diffbackbones make-shapes data/shapes (the texture variant is the default)
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
