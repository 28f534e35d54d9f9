"""Parity with each family's own diffusers pipeline (its test_family_*.py uses this).

The backbone's activations must equal what forward hooks read off the modules behind the same layer ids while the
pipeline makes its one denoiser call: the pipeline encodes the prompt, the backbone hands it its own noisy latent
(in the pipeline's layout) and noise level, and both run the same seeded tiny denoiser. Relative L2 < 1e-5.

Also the helpers the family tests share: ``rel_l2``, ``model_config`` (a model_configs json's public keys),
``diffusers_model`` / ``transformers_model`` (a seeded model of the class a json names) and ``pin_sigma``.
"""
from __future__ import annotations

import json
from typing import Callable

import torch
import torch.nn as nn

from diffbackbones import DiffusionBackbone
from diffbackbones.models.zoo import CONFIG_ROOT

PROMPT, T = 'a red cube on a wooden table', 500  # t = 500: sigma 0.5, exact in binary
TOLERANCE = 1e-5


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _config_file(model: str, component: str) -> dict:
    return json.loads((CONFIG_ROOT / model / f'{component}.json').read_text())


def model_config(model: str, component: str) -> dict:
    """``model_configs/<model>/<component>.json`` without its private keys (``_class_name``): the keyword arguments
    of a diffusers ``from_config`` or of a transformers config class."""
    return {k: v for k, v in _config_file(model, component).items() if not k.startswith('_')}


def diffusers_model(model: str, component: str, device: str = 'cpu') -> nn.Module:
    """The diffusers class the json names (``_class_name``) built from ``model_config``, seeded 0, in eval mode."""
    import diffusers
    cls = getattr(diffusers, _config_file(model, component)['_class_name'])
    torch.manual_seed(0)
    with torch.device(device):
        return cls.from_config(model_config(model, component)).eval()


def transformers_model(model: str, component: str = 'text_encoder') -> nn.Module:
    """The transformers class the json names (``architectures[0]``, config by ``model_type``), seeded 0, eval."""
    import transformers
    config = model_config(model, component)
    torch.manual_seed(0)
    return getattr(transformers, config['architectures'][0])(transformers.AutoConfig.for_model(**config)).eval()


def pin_sigma(scheduler, sigma: float) -> None:
    """Pin a flow-matching scheduler's one step at ``sigma``: WanPipeline passes ``set_timesteps`` no sigmas (one
    step would be sigma 1), so every ``set_timesteps`` call is answered with ``sigmas=[sigma]``."""
    set_timesteps = scheduler.set_timesteps
    scheduler.set_timesteps = lambda *args, device=None, **kwargs: set_timesteps(sigmas=[sigma], device=device)


@torch.no_grad()
def backbone_and_noisy(model: str, names, *, t: int = T, prompt: str = PROMPT, size=(64, 48), batch: int = 2):
    """The backbone of ``model`` capturing ``names``, its activations of a seeded batch, and the noisy latent
    (B, C, h, w) its denoiser saw (the noise stage is seeded: the same draw as inside ``activations``)."""
    backbone = DiffusionBackbone(model, list(names), pretrained=False, noise=dict(t=t, seed=0),
                                 conditioning=dict(prompt=prompt, cache=False))
    images = torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    activations = backbone.activations(images)
    working, _ = backbone.working_input(images)
    noisy, _ = backbone.stages.noise(backbone.encode(working), None)
    return backbone, activations, noisy


@torch.no_grad()
def hooked_call(watch: dict[str, tuple[nn.Module, Callable, str]], call: Callable):
    """``call()`` with a plain forward hook on each watched module: ``(module, read, 'output' | 'input')``, where
    ``read`` turns the module's output (or first input) into the (B, C, h, w) activation. Returns (hooked, result)."""
    hooked, handles = {}, []
    for name, (module, read, where) in watch.items():
        if where == 'input':
            handles.append(module.register_forward_pre_hook(
                lambda m, args, name=name, read=read: hooked.__setitem__(name, read(args[0]))))
        else:
            handles.append(module.register_forward_hook(
                lambda m, args, out, name=name, read=read: hooked.__setitem__(name, read(out))))
    try:
        result = call()
    finally:
        for handle in handles:
            handle.remove()
    assert set(hooked) == set(watch), f'hooks that never fired: {set(watch) - set(hooked)}'
    return hooked, result


def assert_parity(activations: dict, hooked: dict) -> None:
    for name, expected in hooked.items():
        assert activations[name].shape == expected.shape, (name, activations[name].shape, expected.shape)
        assert rel_l2(activations[name], expected) < TOLERANCE, (name, rel_l2(activations[name], expected))


def tiny_pipeline(model: str):
    """The diffusers pipeline of a tiny zoo entry, from the same seeded parts its backbone builds: denoiser, VAE
    (decoder included), text encoders with the byte-level tokenizer; a flow-matching Euler scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from diffbackbones.backbone.conditioning.pipeline_prompt import _random_pipeline
    from diffbackbones.models.loading import RANDOM_INIT_SEED, build_denoiser, vae_class
    from diffbackbones.models.zoo import MODELS, load_config
    spec = MODELS[model]
    pipe = _random_pipeline(spec, torch.float32, limit=10 ** 9)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        vae = vae_class(spec).from_config(load_config(spec, 'vae'))
    pipe.register_modules(transformer=build_denoiser(spec), vae=vae, scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe
