# Cityscapes (19 classes) as the paper's code trains it (its configs/_base_/datasets/cityscapes.py):
# 1024 x 1024 crops of the image at its fixed (2048, 1024) size, no random rescaling; batch 2.
_base_ = ['./cityscapes.py']
crop_size = (1024, 1024)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='Resize', scale=(2048, 1024), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
