# Toy: FPN neck + FPNHead (mmseg's Semantic FPN) on the tiny SD-topology model's 'legacy' layer ids.
_base_ = ['./upernet_test-sd-tiny-practical_1xb8-300_shapes-128x128.py']
model = dict(
    backbone=dict(activations='legacy'),
    neck=dict(type='FPN', in_channels=[96, 64, 64], out_channels=32, num_outs=3),
    decode_head=dict(
        _delete_=True,
        type='FPNHead',
        in_channels=[32, 32, 32],
        in_index=[0, 1, 2],
        feature_strides=[8, 16, 32],
        channels=32,
        dropout_ratio=0.1,
        num_classes=4,
        norm_cfg={{_base_.norm_cfg}},
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=None)
