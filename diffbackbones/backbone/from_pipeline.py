"""``DiffusionBackbone.from_pipeline``: any diffusers pipeline as a backbone, with no zoo entry and no family module.

A denoiser whose class a family names keeps that family (``family='auto'``). Any other, or one routed here on
purpose (``family='generic'``), gets a ``GenericFamily`` measured from the pipeline itself:

- **inputs**: the pipeline's own call. For each batch size, latent size and timestep the backbone meets, the pipeline
  runs once with the backbone's prompt embeddings, ``sigmas=[t / 1000]`` (flow matching; its shift turned off, so
  the noise level is the backbone's) or ``timesteps=[t]`` (DDPM), and the keyword arguments it hands its denoiser are
  recorded; the denoiser is stopped before it runs. Each backbone forward then replays them with its own noisy latent
  in the argument that carried the pipeline's (as is, as one frame, packed 2x2 into tokens, or a list of frames).
- **catalog**: the members of the denoiser's ModuleLists are its blocks, numbered in the order a probe forward enters
  them. Each block offers its output (``vit-block{k}-out``) and its attention's ``to_q``/``to_k``/``to_v``
  (``vit-block{k}-self-q``, ...). Two probe forwards at two latent sizes tell the image tokens apart: their count
  grows with the image, the text's does not. A tuple output gives the element that holds only image tokens; a
  sequence that holds text as well gives its image tokens where the denoiser's final norm reads them (first or
  last), measured; where that cannot be measured the activation is not offered.
- **conditioning**: the pipeline's ``encode_prompt``, as for the zoo's language-model families.

What the generic path does not do: attention maps, FFN activations, predictions (DDIM inversion, generation), and
timestep conventions a pipeline applies outside its scheduler's sigmas with the shift off (CogView4's).
"""
from __future__ import annotations

import inspect
import json
import math
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from diffbackbones.models.catalog import ActivationPoint
from diffbackbones.models.families import ADOPTED, DenoiserFamily, family_of, pack_latents
from diffbackbones.models.latents import latent_encoder
from diffbackbones.models.loading import Components, WeightsNotFoundError, offline_note
from diffbackbones.models.zoo import FLOW_DEFAULT_T, ModelSpec, PipelinePrompt
from diffbackbones.utils.dtypes import as_dtype

from .stages import set_default_option

__all__ = ['GenericFamily', 'backbone_from_pipeline', 'denoiser_of']

PROBE_SIZES = ((16, 16), (32, 32))  # latent pixels: multiples of every patch size up to 16; four times the tokens


class _Recorded(Exception):
    """Raised from the denoiser's pre-hook once the pipeline's call is recorded."""


def denoiser_of(pipeline) -> nn.Module:
    denoiser = getattr(pipeline, 'transformer', None) or getattr(pipeline, 'unet', None)
    if not isinstance(denoiser, nn.Module):
        raise TypeError(f'{type(pipeline).__name__} holds no denoiser (a `transformer` or `unet` component): pass a '
                        'diffusers text-to-image pipeline, its folder or its hub id.')
    return denoiser


@dataclass
class _Call:
    kwargs: dict
    latent: str                                   # the argument that carries the latent
    layout: Callable[[torch.Tensor], object]      # (B, C, h, w) -> that argument


def _layouts(shape) -> list[tuple[tuple[int, ...] | str, Callable]]:
    """How a (B, C, h, w) latent may reach a denoiser, by the shape it then has ('frames': a list of (C, 1, h, w))."""
    b, c, h, w = shape
    return [((b, c, h, w), lambda x: x), ((b, c, 1, h, w), lambda x: x.unsqueeze(2)),
            ((b, h * w // 4, 4 * c), pack_latents), ('frames', lambda x: list(x.unsqueeze(2).unbind(0)))]


def _match_layout(value, shape) -> Callable | None:
    b, c, h, w = shape
    for expected, layout in _layouts(shape):
        if expected == 'frames':
            if isinstance(value, (list, tuple)) and len(value) == b and torch.is_tensor(value[0]) \
                    and tuple(value[0].shape) == (c, 1, h, w):
                return layout
        elif torch.is_tensor(value) and tuple(value.shape) == expected:
            return layout
    return None


class GenericFamily(DenoiserFamily):
    """A family measured from a pipeline (see the module docstring); adopted by one denoiser object."""

    name = 'generic'

    def __init__(self, pipeline, flow: bool, latent_channels: int, vae_factor: int,
                 probe_prompt: Callable[[], tuple]):
        self.pipeline, self.flow = pipeline, flow
        self.latent_channels, self.vae_factor = latent_channels, vae_factor
        self.class_name = type(denoiser_of(pipeline)).__name__
        self.probe_prompt = probe_prompt
        self.calls: dict[tuple, _Call] = {}
        self.grid: tuple[int, int] | None = None
        self._layout: dict | None = None

    def matches(self, denoiser: nn.Module) -> bool:
        return getattr(denoiser, ADOPTED, None) is self

    # -- the pipeline's call ---------------------------------------------------------------------------
    def record(self, batch: int, latent_hw: tuple[int, int], t: int, embeds, mask, pooled, context=None) -> _Call:
        """The keyword arguments the pipeline gives its denoiser for ``batch`` images of ``latent_hw`` at ``t``;
        ``context`` names what else they depend on (the conditioning, its prompt, the device and dtype)."""
        key = (batch, tuple(latent_hw), t, context)
        if key in self.calls:
            return self.calls[key]
        pipe, denoiser = self.pipeline, denoiser_of(self.pipeline)  # (a copy of the user's, with its own scheduler)
        params = inspect.signature(type(pipe).__call__).parameters
        seen = {}

        def stop(module, args, kwargs):
            bound = inspect.signature(module.forward).bind(*args, **kwargs)
            arguments = dict(bound.arguments)
            for name, p in inspect.signature(module.forward).parameters.items():
                if p.kind is p.VAR_KEYWORD:
                    arguments.update(arguments.pop(name, {}))
            seen['kwargs'] = arguments
            raise _Recorded
        call = dict(prompt=None, prompt_embeds=embeds.to(pipe.dtype), height=latent_hw[0] * self.vae_factor,
                    width=latent_hw[1] * self.vae_factor, num_inference_steps=1, output_type='latent')
        call.update({'sigmas': [t / 1000]} if self.flow else {'timesteps': [t]})
        for name in ('num_images_per_prompt', 'num_videos_per_prompt'):
            if name in params:
                call[name] = batch
        mask_name = next((n for n in ('prompt_attention_mask', 'prompt_embeds_mask') if n in params), None)
        if mask is not None and mask_name is not None:
            call[mask_name] = mask
        if pooled is not None and 'pooled_prompt_embeds' in params:
            call['pooled_prompt_embeds'] = pooled.to(pipe.dtype)
        if 'true_cfg_scale' in params:
            call['true_cfg_scale'] = 1.0
        if 'use_resolution_binning' in params:  # SANA, PixArt: the size asked for, not the nearest trained one
            call['use_resolution_binning'] = False
        guidance_embedded = bool(denoiser.config.get('guidance_embeds'))
        shape = (batch, self.latent_channels, *latent_hw)
        refusal = None
        for guidance in ((None,) if guidance_embedded or 'guidance_scale' not in params else (1.0, 0.0)):
            if guidance is not None:  # one conditional call: no classifier-free guidance (1: most; 0: Z-Image)
                call['guidance_scale'] = guidance
            handle = denoiser.register_forward_pre_hook(stop, with_kwargs=True)
            try:
                pipe(**call)
            except _Recorded:
                pass
            except ValueError as e:  # e.g. guidance 1 still means classifier-free guidance to Z-Image: try 0
                refusal = e
                continue
            finally:
                handle.remove()
            if 'kwargs' not in seen:
                raise RuntimeError(f'{type(pipe).__name__} never called its denoiser')
            found = [(name, _match_layout(value, shape)) for name, value in seen['kwargs'].items()]
            found = [(name, layout) for name, layout in found if layout is not None]
            if found:
                self.calls[key] = _Call(seen['kwargs'], *found[0])
                return self.calls[key]
        if 'kwargs' not in seen and refusal is not None:
            raise refusal  # the pipeline's own word on the call
        raise TypeError(f'{type(pipe).__name__} gave its denoiser no argument holding a ({", ".join(map(str, shape))}) '
                        'latent as is, as one frame, packed 2x2 into tokens or as a list of frames: its layout has no '
                        'generic reading; write a family for ' + self.class_name + ' (diffbackbones/models/families/).')

    def inputs(self, denoiser, noisy, timesteps, conditioning, image_hw):
        if timesteps.unique().numel() != 1:
            raise ValueError('the generic path records one pipeline call per timestep: use a single t')
        # recorded per conditioning, prompt, device and dtype: a moved or cast backbone records its calls anew
        context = (id(conditioning), getattr(conditioning, 'active', 0), noisy.device, noisy.dtype)
        call = self.record(noisy.shape[0], tuple(noisy.shape[-2:]), int(timesteps[0]), conditioning.prompt_embeds,
                           conditioning.attention_mask, conditioning.pooled_embeds, context)
        self.grid = tuple(s // self.patch for s in noisy.shape[-2:])
        return dict(call.kwargs, **{call.latent: call.layout(noisy)})

    def token_grid(self, args, kwargs, patch):
        return self.grid  # set by inputs(): the replayed call's latent size over the measured patch

    def prediction(self, output, noisy):
        raise NotImplementedError('the generic path offers features, not predictions (DDIM inversion, generation): '
                                  'they need the pipeline\'s output convention, which a family module states.')

    # -- the catalog -----------------------------------------------------------------------------------
    @property
    def patch(self) -> int:
        return self.layout['patch']

    def latent_multiple(self, denoiser):
        return self.patch

    def token_patch(self, config):
        return self.patch

    @property
    def layout(self) -> dict:
        if self._layout is None:
            self._layout = self._probe(denoiser_of(self.pipeline))
        return self._layout

    def _probe(self, denoiser: nn.Module) -> dict:
        """Two forwards at two latent sizes: block order, token counts of every block output and projection, and
        where the final norm reads the image tokens."""
        embeds, mask, pooled = self.probe_prompt()
        lists = [(name, m) for name, m in denoiser.named_children() if isinstance(m, nn.ModuleList) and len(m)]
        blocks = [f'{name}.{i}' for name, m in lists for i in range(len(m))]
        runs = []
        for hw in PROBE_SIZES:
            call = self.record(1, hw, 500, embeds, mask, pooled, 'probe')
            kwargs = dict(call.kwargs, **{call.latent: call.layout(torch.zeros(1, self.latent_channels, *hw,
                                                                               dtype=denoiser.dtype))})
            runs.append(_probe_run(denoiser, blocks, kwargs))
        (order, shapes_a, tail_a, outs_a, channels), (_, shapes_b, _, _, _) = runs
        n_image = {}
        for path, shapes in shapes_a.items():
            counts = []
            for tokens_a, tokens_b in zip(shapes, shapes_b[path]):
                grown = tokens_b - tokens_a
                counts.append(grown // 3 if grown > 0 and grown % 3 == 0 else None)
            n_image[path] = (shapes, counts)
        counts = {c for _, cs in n_image.values() for c in cs if c}
        if len(counts) != 1:
            raise TypeError(f'{self.class_name}: the probe forwards found no single image-token count ({counts}); '
                            'the generic path cannot read this denoiser, write a family for it.')
        n = counts.pop()
        patch = math.isqrt(PROBE_SIZES[0][0] * PROBE_SIZES[0][1] // n)
        if patch * patch * n != PROBE_SIZES[0][0] * PROBE_SIZES[0][1]:
            raise TypeError(f'{self.class_name}: {n} image tokens for a {PROBE_SIZES[0]} latent is no square patch')
        # the final norm reads the image tokens of the last block's output: first or last, measured
        last = order[-1]
        where_last = None
        if tail_a is not None and last in outs_a and outs_a[last].shape[1] > n and tail_a.shape[1] == n:
            out = outs_a[last]
            where_last = 'first' if torch.equal(out[:, :n], tail_a) else 'last' if torch.equal(out[:, -n:], tail_a) \
                else None
        return dict(patch=patch, n=n, order=order, tokens=n_image, where_last=where_last, channels=channels,
                    last_list=last.rsplit('.', 1)[0])

    def walk(self, denoiser, latent_hw, n_text_tokens):
        layout = self.layout
        grid = (latent_hw[0] // layout['patch'], latent_hw[1] // layout['patch'])
        points = []

        def add(name, kind, path, shapes, counts, channels):
            for pick, (tokens, n_img) in enumerate(zip(shapes, counts)):
                if n_img is None:
                    continue
                if tokens == n_img:
                    where = 'all'
                elif path.rsplit('.', 1)[0].startswith(layout['last_list']) and layout['where_last']:
                    where = layout['where_last']
                else:
                    continue  # text and image in one sequence, in an order nothing measured
                points.append(ActivationPoint(name, kind, channels[pick], grid, path, 'tokens', '', len(points),
                                              pick if len(shapes) > 1 else None, where, layout['patch']))
                return
        tokens = layout['tokens']

        def role(path):  # a projection of an attention whose keys hold image tokens is self-attention's
            attention = path.rsplit('.', 1)[0]
            keys = tokens.get(f'{attention}.to_k', ((), ()))[1]
            return 'self' if any(c is not None for c in keys) else 'cross'
        for k, block in enumerate(layout['order']):
            for path, (shapes, counts) in tokens.items():
                if path == block:
                    add(f'vit-block{k}-out', 'vit-block-out', path, shapes, counts, layout['channels'][path])
                elif path.startswith(block + '.'):
                    kind = f'{role(path)}-{path[-1]}'  # to_q -> self-q / cross-q
                    add(f'vit-block{k}-{kind}', kind, path, shapes, counts, layout['channels'][path])
        return points


def _probe_run(denoiser: nn.Module, blocks: list[str], kwargs: dict):
    """One forward: the order blocks are entered in, the token counts of each block's and projection's output
    tensors, the last block outputs, and the input of the first module that runs after the last block."""
    order, shapes, outs, tail, channels = [], {}, {}, {}, {}
    handles = []
    watched = set(blocks)
    for path in blocks:
        block = denoiser.get_submodule(path)
        handles.append(block.register_forward_pre_hook(lambda m, a, path=path: order.append(path)))
        for sub, module in block.named_modules():
            if sub.rsplit('.', 1)[-1] in ('to_q', 'to_k', 'to_v') and isinstance(module, nn.Linear):
                watched.add(f'{path}.{sub}')
    for path in watched:
        def keep(m, a, out, path=path):
            tensors = [out] if torch.is_tensor(out) else [o for o in out if torch.is_tensor(o)] \
                if isinstance(out, (tuple, list)) else []
            tensors = [x for x in tensors if x.ndim == 3]
            shapes[path] = [x.shape[1] for x in tensors]
            channels[path] = [x.shape[2] for x in tensors]
            if len(tensors) == 1:
                outs[path] = tensors[0]
        handles.append(denoiser.get_submodule(path).register_forward_hook(keep))
    def first_after_blocks(module, args):  # (returns None: a pre-hook's return value would replace the inputs)
        if order and args and torch.is_tensor(args[0]) and args[0].ndim == 3:
            tail.setdefault('input', args[0])
    for name, child in denoiser.named_children():
        if not isinstance(child, nn.ModuleList):
            handles.append(child.register_forward_pre_hook(first_after_blocks))
    try:
        with torch.no_grad():
            denoiser(**kwargs)
    finally:
        for h in handles:
            h.remove()
    return order, shapes, tail.get('input'), outs, channels


def _spec_for(pipe, name: str, folder: str, flow: bool, max_length: int) -> ModelSpec:
    denoiser = denoiser_of(pipe)
    component = 'unet' if denoiser is getattr(pipe, 'unet', None) else 'transformer'
    for part, module in ((component, denoiser), ('vae', pipe.vae)):
        path = Path(folder) / part
        path.mkdir(parents=True, exist_ok=True)
        (path / 'config.json').write_text(json.dumps(dict(module.config), default=list))
    scheduler = pipe.scheduler.config
    noise = dict(schedule='flow', prediction='flow', default_t=FLOW_DEFAULT_T) if flow else dict(
        schedule=scheduler.get('beta_schedule', 'scaled_linear'), beta_start=scheduler.get('beta_start', 0.00085),
        beta_end=scheduler.get('beta_end', 0.012), prediction=scheduler.get('prediction_type', 'epsilon'))
    guidance = None
    if denoiser.config.get('guidance_embeds'):
        guidance = inspect.signature(type(pipe).__call__).parameters['guidance_scale'].default
    return ModelSpec(name, f'{type(pipe).__name__} ({type(denoiser).__name__}), through the generic path', None, '',
                     'generic', (), 1024, 'see the model card', {}, guidance=guidance, folder=folder,
                     prompt_pipeline=PipelinePrompt(type(pipe).__name__, max_length, instance=pipe), **noise)


def _is_flow(scheduler) -> bool:
    config = scheduler.config
    return 'FlowMatch' in type(scheduler).__name__ or bool(config.get('use_flow_sigmas')) \
        or config.get('prediction_type') == 'flow_prediction'


def backbone_from_pipeline(cls, pipeline, activations, *, family: str = 'auto', dtype=None,
                           prompt_length: int | None = None, **options):
    """``DiffusionBackbone.from_pipeline(pipeline, activations, family='auto' | 'generic', prompt_length=None,
    **options)``; ``prompt_length``: ``max_sequence_length`` of ``encode_prompt`` (None: the pipeline's default);
    ``dtype``: None is the denoiser's own.

    The caller's pipeline stays usable: its scheduler is not replaced (calls are recorded on a copy of the pipeline),
    its VAE keeps its decoder, and its denoiser is not pruned unless ``prune=True`` is passed (the pipeline then
    cannot generate any more: the blocks after the last activation are gone)."""
    from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
    if family not in ('auto', 'generic'):
        raise ValueError(f"family must be 'auto' (the denoiser's own family where one names its class) or 'generic'; "
                         f'got {family!r}')
    if isinstance(pipeline, (str, os.PathLike)):
        try:
            pipeline = DiffusionPipeline.from_pretrained(os.fspath(pipeline),
                                                         torch_dtype=as_dtype(dtype or torch.float32))
        except (OSError, ValueError) as e:
            raise WeightsNotFoundError(f'Could not load a diffusers pipeline from {os.fspath(pipeline)!r}'
                                       f'{offline_note()}: {e}') from e
    denoiser_of(pipeline)  # a pipeline at all: it holds a denoiser
    if not (hasattr(pipeline, 'encode_prompt') and 'latents' in inspect.signature(type(pipeline).__call__).parameters
            and getattr(pipeline, 'vae', None) is not None):
        raise TypeError(f'{type(pipeline).__name__} is no usable pipeline for the generic path: it needs a VAE, '
                        '`encode_prompt` and a `latents=` argument (a diffusers text-to-image or text-to-video '
                        'pipeline). Give such a pipeline, or write a family for its denoiser '
                        '(diffbackbones/models/families/) and a zoo entry.')
    denoiser = denoiser_of(pipeline)
    dtype = as_dtype(dtype) if dtype is not None else denoiser.dtype
    if denoiser.dtype != dtype:
        raise ValueError(f'the pipeline\'s denoiser is {denoiser.dtype}, the backbone was asked for {dtype}: build the '
                         'pipeline in that dtype (torch_dtype=...), or leave dtype=None to use its own.')
    flow = _is_flow(pipeline.scheduler)
    level = 'sigmas' if flow else 'timesteps'
    if level not in inspect.signature(type(pipeline).__call__).parameters:
        raise TypeError(f'{type(pipeline).__name__} takes no `{level}=`, so the generic path cannot set the noise '
                        f'level of its one denoiser call; write a family for {type(denoiser).__name__} '
                        '(diffbackbones/models/families/) and a zoo entry.')
    recorder = pipeline
    if flow:  # the noise level is the backbone's: sigmas pass through unshifted, on a copy of the pipeline
        recorder = type(pipeline)(**pipeline.components)
        recorder.register_modules(scheduler=FlowMatchEulerDiscreteScheduler.from_config(
            pipeline.scheduler.config, shift=1.0, use_dynamic_shifting=False))
        recorder.set_progress_bar_config(disable=True)
    call = inspect.signature(type(pipeline).__call__).parameters
    max_length = prompt_length or (call['max_sequence_length'].default if 'max_sequence_length' in call else 512)
    source = getattr(pipeline, 'name_or_path', None) or pipeline.config.get('_name_or_path')
    name = f'pipeline:{type(pipeline).__name__}:{source or id(pipeline)}'
    folder = tempfile.mkdtemp(prefix='diffbackbones-pipeline-')  # the configs the spec reads, gone with the spec
    spec = _spec_for(pipeline, name, folder, flow, max_length)
    weakref.finalize(spec, shutil.rmtree, folder, ignore_errors=True)
    vae = latent_encoder(pipeline.vae)
    try:
        own = family_of(denoiser) if family == 'auto' else None
    except TypeError:
        own = None
    if own is None or own.name == 'generic':
        from diffbackbones.backbone.conditioning.pipeline_prompt import encode_with_pipeline

        def probe_prompt():
            return encode_with_pipeline(spec, None, [''], denoiser.dtype, None, 0, None)[0]
        generic = GenericFamily(recorder, flow, vae.latent_channels, vae.downsample_factor, probe_prompt)
        setattr(denoiser, ADOPTED, generic)
    if not source:
        set_default_option(options, 'prompt_cache', False)  # nothing names these weights: a cache key could collide
    set_default_option(options, 'prune', False)  # the caller's pipeline keeps every block (see the docstring)
    parts = Components(denoiser, vae, source)
    return cls(spec, activations, pretrained=parts, dtype=dtype, **options)
