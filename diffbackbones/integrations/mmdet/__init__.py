"""MMDetection glue: the backbones and ``LeanCheckpointHook`` in mmdet's registries.

Loaded by ``import diffbackbones`` when mmdet is installed (the ``mmseg`` extra installs it), so an mmdet
config needs only ``custom_imports=dict(imports=['diffbackbones'], allow_failed_imports=False)`` and
``backbone=dict(type='DiffusionBackbone', ...)``. mmdet's registries are its own (its scope is ``mmdet``):
registering in mmseg's is not enough for mmdet's Runner, tools and ``init_detector``. Nothing of mmdet is
subclassed or patched. Safe checkpoint loading comes from the mmseg glue (``allow_mmengine_checkpoints``),
which every mmengine Runner shares.
"""
try:
    import mmdet  # noqa: F401
except ImportError:
    __all__ = []
else:
    from mmdet.registry import HOOKS, MODELS

    from diffbackbones.backbone.combined import CombinedDiffusionBackbone
    from diffbackbones.backbone.diffusion_backbone import DiffusionBackbone
    from diffbackbones.integrations.mmseg.hooks import LeanCheckpointHook

    MODELS.register_module('DiffusionBackbone', module=DiffusionBackbone)
    MODELS.register_module('CombinedDiffusionBackbone', module=CombinedDiffusionBackbone)
    HOOKS.register_module('LeanCheckpointHook', module=LeanCheckpointHook)
    __all__ = ['LeanCheckpointHook']
