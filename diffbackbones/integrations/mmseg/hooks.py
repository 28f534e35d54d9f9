"""``LeanCheckpointHook``: checkpoints that leave out the frozen diffusion weights.

A frozen SDXL denoiser is 10 GB of fp32 that never changes; writing it into every checkpoint would
dwarf the head being trained. The model's ``state_dict()`` stays complete (torch, timm and EMA users
rely on that); this hook trims only the checkpoint file, and ``DiffusionBackbone.load_state_dict``
fills the missing frozen weights back from the live model, so every mmseg loading path (resume,
``load_from``, ``init_model``, ``MMSegInferencer``) still loads such a file strictly.
"""
from __future__ import annotations

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS

from diffbackbones.backbone.diffusion_backbone import DiffusionBackbone

__all__ = ['LeanCheckpointHook']


@HOOKS.register_module()
class LeanCheckpointHook(Hook):
    """Drop the frozen parts of every ``DiffusionBackbone`` from the checkpoints the runner saves.

    Add it with ``custom_hooks = [dict(type='LeanCheckpointHook')]`` (the base runtime does). Trainable
    parts (``trainable_denoiser=True``, ``trainable_vae=True``) are kept.
    """

    priority = 'LOW'  # after other hooks that add to the checkpoint

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        frozen = tuple(f'{name}.{part}' if name else part for name, module in model.named_modules()
                       if isinstance(module, DiffusionBackbone) for part in module.frozen_prefixes)
        if frozen:
            state_dict = checkpoint['state_dict']
            for key in [k for k in state_dict if k.startswith(frozen)]:
                del state_dict[key]
