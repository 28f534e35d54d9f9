"""MMSegmentation glue: the backbone and the shapes dataset in mmseg's registries, and runtime helpers.

Loaded by ``import diffbackbones`` when mmseg is installed, so a config only needs
``custom_imports=dict(imports=['diffbackbones'], allow_failed_imports=False)`` and
``backbone=dict(type='DiffusionBackbone', model='sd15', activations='practical', ...)`` (or
``type='CombinedDiffusionBackbone', members=[dict(model='sdxl', ...), dict(model='pgv2', ...)]``).
The backbone is registered as it is: no mmseg class is subclassed or patched.

The import has one process-wide effect: torch's safe loader (``torch.load(weights_only=True)``, the
default since torch 2.6) learns the few globals mmengine writes into every checkpoint (see
``allow_mmengine_checkpoints``), so mmseg's own ``tools/train.py --resume``, ``tools/test.py``,
``init_model`` and ``MMSegInferencer`` read checkpoints unchanged. It only adds to the allow-list, with
``getattr`` narrowed to HistoryBuffer's statistics methods: the loader stays safe for every other file.
"""
try:
    import mmseg  # noqa: F401
except ImportError:  # the shapes set (segmentation/shapes.py) needs no mmseg; only the registration does
    __all__ = []
else:
    from mmseg.registry import MODELS

    from diffbackbones.backbone.diffusion_backbone import DiffusionBackbone
    from diffbackbones.backbone.combined import CombinedDiffusionBackbone
    from .datasets import ShapesDataset
    from .hooks import LeanCheckpointHook
    from .fsdp import diffusion_block_wrap_policy  # noqa: F401  (registered in mmengine's FUNCTIONS)
    from .visualization import DepthPanelVisualizer
    from .runtime import (allow_mmengine_checkpoints, build_runner, check_segmentor, finish_distributed,
                          init_cpu_distributed, load_tool_config)

    MODELS.register_module('DiffusionBackbone', module=DiffusionBackbone)
    MODELS.register_module('CombinedDiffusionBackbone', module=CombinedDiffusionBackbone)
    allow_mmengine_checkpoints()

    __all__ = ['ShapesDataset', 'LeanCheckpointHook', 'DepthPanelVisualizer', 'allow_mmengine_checkpoints', 'build_runner', 'check_segmentor',
               'finish_distributed', 'init_cpu_distributed', 'load_tool_config']
