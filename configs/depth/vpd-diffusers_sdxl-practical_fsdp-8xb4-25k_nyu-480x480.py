# The SDXL VPD recipe (vpd-diffusers_sdxl-practical_4xb8-25k_nyu-480x480.py, mmseg's VPD config with the
# backbone replaced) fine-tuned sharded: mmengine's FlexibleRunner with its FSDPStrategy (PyTorch FSDP, FULL_SHARD)
# in place of DDP. Fine-tuning the 2.48 B parameters SDXL's 'practical' preset keeps takes 37 GiB for fp32
# weights, gradients and AdamW moments on one GPU, 4.7 GiB per rank over 8 (`diffbackbones memory`).
# - Every diffusers block is its own FSDP unit (diffusion_block_wrap_policy); the few blocks that hold the
#   captured activations stay in the root unit with the VAE, the embeddings and the head.
# - bf16 mixed precision: weights gathered and computed in bf16, gradients reduced in fp32.
# - Checkpoints hold the whole state dict, gathered on rank 0 (state_dict_cfg='full'), without the frozen VAE
#   (LeanCheckpointHook): they load into an unsharded DiffusionBackbone.
# 8 GPUs x 4 images: the 4xb8 config's global batch of 32. On CPUs (gloo) FSDP needs device_id='cpu' in the
# model wrapper: configs/toy/fcn_shapes-sd-tiny-finetune_fsdp-2xb2-4_shapes-64x64.py, tests/integrations/test_fsdp.py.
#   torchrun --nproc_per_node=8 tools/train.py CONFIG --launcher pytorch
_base_ = ['./vpd-diffusers_sdxl-practical_4xb8-25k_nyu-480x480.py']
runner_type = 'FlexibleRunner'
strategy = dict(
    type='FSDPStrategy',
    model_wrapper=dict(type='MMFullyShardedDataParallel', auto_wrap_policy=dict(type='diffusion_block_wrap_policy'),
                       mixed_precision=dict(param_dtype='bfloat16', reduce_dtype='float32', buffer_dtype='float32')),
    state_dict_cfg='full')
train_dataloader = dict(batch_size=4)
