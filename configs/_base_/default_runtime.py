# Runtime shared by every config (mmseg's default_runtime.py plus what diffbackbones needs).
default_scope = 'mmseg'
# Registers type='DiffusionBackbone' and type='ShapesDataset'; nothing is copied into site-packages.
custom_imports = dict(imports=['diffbackbones'], allow_failed_imports=False)
env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),  # tools/train.py starts gloo itself when there is no GPU
)
# device_ids=None lets the same config run DDP on CPU (gloo) and on GPUs.
model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False)
log_level = 'INFO'
# Checkpoints leave out the frozen diffusion weights (they come back from their pretrained source).
custom_hooks = [dict(type='LeanCheckpointHook')]
load_from = None
resume = False
tta_model = dict(type='SegTTAModel')
