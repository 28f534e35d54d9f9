# UPerNet (512 channels) + FCN auxiliary head (weight 0.4) on a frozen diffusion backbone, CE + Lovasz
# loss: the paper's segmentor. Leaf configs set the backbone's model/activations and the heads' channels.
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[127.5, 127.5, 127.5],  # diffusion VAEs take RGB in [-1, 1]
    std=[127.5, 127.5, 127.5],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='DiffusionBackbone',
        model='sd15',
        activations='practical',
        pretrained=True,
        noise=dict(t=50),
        conditioning=dict(prompt=''),
        fusion=True),  # zero-initialised residual fusion per activation and per level
    decode_head=dict(
        type='UPerHead',
        in_channels=[320, 640, 2560],
        in_index=[0, 1, 2],
        pool_scales=(1, 2, 3, 6),
        channels=512,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=[
            dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            dict(type='LovaszLoss', loss_type='multi_class', per_image=False, reduction='none', loss_weight=1.0),
        ]),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=640,
        in_index=1,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
