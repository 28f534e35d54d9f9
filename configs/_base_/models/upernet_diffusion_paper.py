# The paper's segmentor, setting for setting, as its code ran it (Darkbblue/generic-diffusion-feature:
# segmentation/models/diffusion_segmentor.py, configs/_base_/models/upernet_r50.py and the leaf configs).
# Leaf configs under configs/paper/ set the model, activations, effective timestep and head channels.
# Where this differs from the package's recommended recipe (configs/diffusion/), the README's table
# "Paper-exact vs recommended" says what and why.
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[127.5, 127.5, 127.5],  # RGB in [-1, 1]
    std=[127.5, 127.5, 127.5],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=1)  # sic: the paper's configs pad labels with class 1, not ignore (255)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='DiffusionBackbone',
        pretrained=True,
        # The paper's FeatureExtractor: an img2img call with strength t/1000, fresh noise on every forward
        # (training and test) and a sample of the VAE posterior; fp16 when the UNet is frozen.
        noise=dict(seed=None),
        vae=dict(sample_posterior=True),
        dtype='fp16',
        # The input is resized (bilinear, no antialias) to the model's square working size, and the
        # features stay on that size's grid (not resized back to the crop).
        image=dict(resize_features=False, antialias=False),
        # One all-zero ResBlock (3x3 conv + BN, ReLU, 3x3 conv + BN) per activation and one per level.
        fusion='paper'),
    decode_head=dict(
        type='UPerHead',
        # Leaves set in_channels/in_index coarse to fine (the paper's level order): the pyramid pooling
        # then runs on the finest level and the prediction is made at the coarsest stride.
        pool_scales=(1, 2, 3),
        channels=512,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=[
            dict(type='CrossEntropyLoss', loss_name='loss_ce', use_sigmoid=False, loss_weight=1.0),
            dict(type='LovaszLoss', reduction='none', loss_weight=1.0),
        ]),
    auxiliary_head=dict(
        type='FCNHead',
        channels=512,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', loss_name='loss_ce_aux', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(512, 512)))
