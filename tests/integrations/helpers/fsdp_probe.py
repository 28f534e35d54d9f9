"""A hook the FSDP test adds to its runs (custom_imports): what each rank holds and computes, written to JSON.

Per rank, after every iteration: its loss and its images; after the last: how many of the model's and of the
denoiser's parameters it holds. Under
FSDP with use_orig_params the original parameters are views into the rank's shard (size 0 where none of them is
held), so their sizes add up to what the rank holds.
"""
import json
from pathlib import Path

import torch.distributed as dist
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class RankRecordHook(Hook):
    def __init__(self):
        self.losses, self.images = [], []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.losses.append(float(outputs['loss']))
        self.images.append([Path(sample.img_path).stem for sample in data_batch['data_samples']])

    def after_train(self, runner):
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        rank = dist.get_rank() if dist.is_initialized() else 0
        record = dict(losses=self.losses, images=self.images, model_held=sum(p.numel() for p in model.parameters()),
                      denoiser_held=sum(p.numel() for p in model.backbone.denoiser.parameters()),
                      world=dist.get_world_size() if dist.is_initialized() else 1,
                      wrapper=type(runner.model).__name__)
        Path(runner.work_dir, f'rank{rank}.json').write_text(json.dumps(record))
