# The paper's schedule (its configs/_base_/schedules/schedule_80k.py with the leaves' val_interval):
# AdamW lr 1.6e-4, weight decay 1e-3, poly decay with power 0.9 down to 1e-4, 80k iterations.
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1.6e-4, weight_decay=1e-3), clip_grad=None)
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=80000, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=80000, val_interval=2000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=8000),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
