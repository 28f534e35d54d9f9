"""What users of the previous release (0.1.0, the flat package) wrote keeps working: its checkpoints load
strictly, and every public name it offered still exists (``diffbackbones.__all__``, timm entry points,
mmseg registry names, stage variants, commands, zoo entries). Module moves must not break either.

Run as a script, this file prints the public names of whatever ``diffbackbones`` is first on the path:
``PYTHONPATH=<checkout of 7d3a9c4> python tests/integrations/test_release_compat.py`` made
``tests/fixtures/release-0.1.0/names.json``."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

RELEASE = Path(__file__).resolve().parents[1] / 'fixtures' / 'release-0.1.0'


def public_names() -> dict:
    import timm
    from mmseg.registry import DATASETS, HOOKS, MODELS, VISUALIZERS

    import diffbackbones
    from diffbackbones.commands import COMMANDS
    try:
        from diffbackbones.backbone.stages import STAGE_VARIANTS
    except ImportError:  # 0.1.0's flat package
        from diffbackbones.stages import STAGE_VARIANTS

    def ours(registry):
        return sorted(n for n, cls in registry.module_dict.items() if cls.__module__.startswith('diffbackbones'))
    return {
        'version': diffbackbones.__version__,
        'all': sorted(diffbackbones.__all__),
        'timm': sorted(n for n, fn in timm.models._registry._model_entrypoints.items()
                       if fn.__module__.startswith('diffbackbones')),
        'mmseg': {kind: ours(registry) for kind, registry in
                  [('models', MODELS), ('datasets', DATASETS), ('hooks', HOOKS), ('visualizers', VISUALIZERS)]},
        'stages': {stage: sorted(variants) for stage, variants in STAGE_VARIANTS.items()},
        'commands': sorted(COMMANDS),
        'zoo': sorted(diffbackbones.MODELS),
    }


def test_every_public_name_of_the_previous_release_still_exists():
    pytest.importorskip('mmseg')
    import diffbackbones
    old, now = json.loads((RELEASE / 'names.json').read_text()), public_names()
    assert old['timm'] and old['mmseg']['models']  # the fixture holds real names, not an empty list
    for key in ('all', 'timm', 'commands', 'zoo'):
        assert set(old[key]) <= set(now[key]), f'{key}: gone since 0.1.0: {sorted(set(old[key]) - set(now[key]))}'
    for kind, names in old['mmseg'].items():
        assert set(names) <= set(now['mmseg'][kind]), f'mmseg {kind}: gone since 0.1.0'
    for stage, variants in old['stages'].items():
        assert set(variants) <= set(now['stages'].get(stage, ())), f'stage {stage}: variants gone since 0.1.0'
    for name in old['all']:  # and each imports from the top level
        assert getattr(diffbackbones, name) is not None


def test_a_checkpoint_written_by_the_previous_release_loads_strictly():
    pytest.importorskip('mmseg')
    from mmengine.config import Config
    from mmengine.runner import load_checkpoint
    from mmseg.apis import init_model

    import diffbackbones  # noqa: F401  (registers the backbone and the safe checkpoint globals)

    cfg = Config.fromfile(RELEASE / 'config.py')  # the config as the old release dumped it
    model = init_model(cfg, None, device='cpu')  # mmseg's own builder, as its tools and APIs use it
    saved = torch.load(RELEASE / 'iter_1.pth', map_location='cpu')['state_dict']  # torch's safe loader
    assert not any('.denoiser.' in k for k in saved)  # lean: the frozen weights are not in the file
    load_checkpoint(model, str(RELEASE / 'iter_1.pth'), map_location='cpu', strict=True)
    state = model.state_dict()
    assert set(saved) <= set(state)
    for key, value in saved.items():  # every trained weight (heads, fusion) landed where it was saved from
        assert torch.equal(state[key], value), key
    with torch.no_grad():
        logits = model(torch.rand(1, 3, 128, 128) * 255, mode='tensor')
    assert logits.shape == (1, 4, 16, 16) and torch.isfinite(logits).all()


if __name__ == '__main__':
    json.dump(public_names(), sys.stdout, indent=1)
