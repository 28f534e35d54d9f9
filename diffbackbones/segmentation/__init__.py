"""MMSegmentation glue: the backbone and the shapes dataset in mmseg's registries, and runtime helpers.

Loaded by ``import diffbackbones`` when mmseg is installed, so a config only needs
``custom_imports=dict(imports=['diffbackbones'], allow_failed_imports=False)`` and
``backbone=dict(type='DiffusionBackbone', model='sd15', activations='practical', ...)``.
The backbone is registered as it is: no mmseg class is subclassed or patched.
"""
from mmseg.registry import MODELS

from ..backbone import DiffusionBackbone
from .datasets import ShapesDataset
from .runtime import allow_mmengine_checkpoints, build_runner, check_segmentor, init_cpu_distributed, load_tool_config

MODELS.register_module('DiffusionBackbone', module=DiffusionBackbone)

__all__ = ['ShapesDataset', 'allow_mmengine_checkpoints', 'build_runner', 'check_segmentor', 'init_cpu_distributed',
           'load_tool_config']
