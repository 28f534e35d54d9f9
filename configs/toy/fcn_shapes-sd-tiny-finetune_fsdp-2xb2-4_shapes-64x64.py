# Sharded fine-tuning on the CPU: the denoiser of shapes_sd_tiny fine-tuned through mmengine's FlexibleRunner and
# FSDPStrategy (PyTorch FSDP, FULL_SHARD), two ranks on gloo, a few iterations; the path
# configs/depth/vpd-diffusers_sdxl-practical_fsdp-8xb4-25k_nyu-480x480.py takes on GPUs, at toy scale. Every
# diffusers block is its own FSDP unit (diffusion_block_wrap_policy), so each rank holds about half the denoiser.
# A plain FCNHead without BatchNorm or dropout and a pipeline without random flips: a 2-rank run then computes
# exactly what one process computes on the same global batch (tests/integrations/test_fsdp.py checks it).
#   torchrun --nproc_per_node=2 tools/train.py CONFIG --launcher pytorch --work-dir work_dirs/fsdp
_base_ = ['../_base_/datasets/shapes.py', '../_base_/default_runtime.py']
crop_size = (64, 64)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(type='SegDataPreProcessor', mean=[127.5] * 3, std=[127.5] * 3, bgr_to_rgb=True,
                           pad_val=0, seg_pad_val=255, size=crop_size),
    backbone=dict(type='DiffusionBackbone', model='shapes_sd_tiny', activations='practical', trainable_denoiser=True),
    decode_head=dict(type='FCNHead', in_channels=[32, 64, 128], in_index=[0, 1, 2], input_transform='resize_concat',
                     channels=32, num_convs=1, concat_input=False, dropout_ratio=0.0, num_classes=4, norm_cfg=None,
                     align_corners=False, loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(), test_cfg=dict(mode='whole'))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='Resize', scale=crop_size, keep_ratio=False),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=2, sampler=dict(type='DefaultSampler', shuffle=False),
                        dataset=dict(pipeline=train_pipeline))
runner_type = 'FlexibleRunner'
strategy = dict(
    type='FSDPStrategy',
    model_wrapper=dict(type='MMFullyShardedDataParallel', auto_wrap_policy=dict(type='diffusion_block_wrap_policy'),
                       device_id='cpu'),  # FSDP shards and computes on the CPU (mmengine passes the local rank, a GPU)
    state_dict_cfg='full')  # checkpoints hold the whole model, loadable without FSDP
env_cfg = dict(dist_cfg=dict(backend='gloo'))
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.01))
param_scheduler = []
train_cfg = dict(type='IterBasedTrainLoop', max_iters=4, val_interval=1000)
val_cfg = None
val_dataloader = None
val_evaluator = None
test_cfg = None
test_dataloader = None
test_evaluator = None
default_hooks = dict(
    timer=dict(type='IterTimerHook'), logger=dict(type='LoggerHook', interval=1),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=4), sampler_seed=dict(type='DistSamplerSeedHook'))
randomness = dict(seed=0)
