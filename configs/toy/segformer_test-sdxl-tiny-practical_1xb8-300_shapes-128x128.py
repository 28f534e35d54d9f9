# Toy: SegformerHead (all-MLP decoder) on the tiny SDXL-topology model's 'practical' layer ids.
_base_ = ['./upernet_test-sd-tiny-practical_1xb8-300_shapes-128x128.py']
model = dict(
    backbone=dict(model='test_sdxl_tiny', activations='practical'),
    decode_head=dict(
        _delete_=True,
        type='SegformerHead',
        in_channels=[64, 128],
        in_index=[0, 1],
        channels=32,
        dropout_ratio=0.1,
        num_classes=4,
        norm_cfg={{_base_.norm_cfg}},
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=None)
