# Toy run of a combined backbone with the paper's Ours-XL-t wiring (configs/paper/): the tiny SD1.5- and
# SDXL-topology models (random weights, seeded) joined by stride; per member the paper's all-zero
# ResBlocks applied 4x (per activation) and 2x (per level) with shared weights, one more per combined
# level; the rest of the paper's recipe as in the config this one builds on (UPerHead fed coarse to
# fine, fresh noise and posterior samples, features on the 256 px working grid). fp32 on the CPU.
_base_ = ['./upernet_shapes-sd-tiny-practical-paper_1xb8-300_shapes-geometry-128x128.py']
data_root = 'data/shapes'
model = dict(
    backbone=dict(
        _delete_=True,
        type='CombinedDiffusionBackbone',
        members=[dict(model='test_sd_tiny', activations='practical', fusion=dict(style='paper', repeats=(4, 2))),
                 dict(model='test_sdxl_tiny', activations='practical', fusion=dict(style='paper', repeats=(4, 2)))],
        fusion='paper',
        pretrained=False,
        noise=dict(t=50, seed=None),
        vae=dict(sample_posterior=True),
        image=dict(size=256, resize_features=False, antialias=False),
        dtype='fp32'),
    # levels [32 (stride 8), 64 + 64 (16), 128 + 128 (32)] fed coarse to fine
    decode_head=dict(in_channels=[256, 128, 32]),
    auxiliary_head=dict(in_channels=128))
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
