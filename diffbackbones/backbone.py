"""`DiffusionBackbone`: a diffusion model as a multi-scale feature backbone.

    image (B,3,H,W) in [-1,1] -> [resize] -> pad -> VAE latent -> noise at t -> denoiser with cached
    conditioning, stopped right after the last requested activation -> levels by stride -> crop

Returns a tuple of (B, C_i, ceil(H/s_i), ceil(W/s_i)), fine to coarse (the mmseg backbone contract);
``feature_info`` describes the levels in timm's form.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Callable, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cache import LatentCache
from .capture import ActivationCapture
from .catalog import ActivationPoint, activation_points, catalog_index, latent_multiple, resolve_names
from .conditioning import PromptConditioning
from .families import family_of
from .fusion import FUSION_STYLES, LevelFusion
from .loading import load_components
from .noise import NoiseSchedule
from .pruning import prune_unexecuted
from .zoo import MODELS, Levels, ModelSpec, get_model_spec

__all__ = ['DiffusionBackbone', 'pixels_to_input', 'resolve_levels']

ActivationsArg = Union[str, Sequence[str], Sequence[Sequence[str]]]
_DTYPES = {'fp32': torch.float32, 'float32': torch.float32, 'fp16': torch.float16, 'float16': torch.float16,
           'bf16': torch.bfloat16, 'bfloat16': torch.bfloat16}


def _as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f'dtype must be one of {sorted(_DTYPES)} or the matching torch dtype; got {dtype!r}')


def pixels_to_input(pixels) -> torch.Tensor:
    """0..255 RGB pixels, (H, W, 3) or (N, H, W, 3) (numpy or tensor), as the backbone's input:
    float (N, 3, H, W) in [-1, 1], what diffusion VAEs take."""
    pixels = torch.as_tensor(pixels)
    batch = pixels if pixels.ndim == 4 else pixels[None]
    return batch.permute(0, 3, 1, 2).float() / 127.5 - 1


def _preset_file_levels(spec: ModelSpec, path: str) -> Levels:
    # A preset written by tools/screen.py: {"model": ..., "levels": [[layer ids], ...], ...}
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f'preset file {path} does not exist') from None
    except json.JSONDecodeError as e:
        raise ValueError(f'preset file {path} is not valid JSON: {e}') from None
    if not isinstance(data, dict) or not isinstance(data.get('levels'), list) or not data['levels']:
        raise ValueError(f'preset file {path} must hold {{"levels": [[layer ids], ...]}} (as tools/screen.py writes)')
    other = data.get('model')
    if other and other in MODELS and MODELS[other].family != spec.family:
        raise ValueError(f'preset file {path} was written for {other!r} ({MODELS[other].family} topology), but this '
                         f'backbone is {spec.name!r} ({spec.family} topology), whose layer ids differ.')
    return tuple(tuple(level) for level in data['levels'])


def _preset_levels(spec: ModelSpec, preset: str) -> Levels:
    if preset.endswith('.json'):
        return _preset_file_levels(spec, preset)
    if preset in spec.presets:
        return spec.presets[preset]
    for other in MODELS.values():
        for name, levels in other.presets.items():
            if preset == f'{other.name}_{name}':
                if other.family == spec.family:  # same topology: the layer ids are valid here
                    return levels
                raise ValueError(
                    f'Preset {preset!r} belongs to {other.name!r} ({other.family} topology), but this backbone is '
                    f'{spec.name!r} ({spec.family} topology), whose layer ids differ. Presets for {spec.name!r}: '
                    f'{sorted(spec.presets)} (also as {[f"{spec.name}_{p}" for p in spec.presets]}).')
    raise ValueError(f'Unknown preset {preset!r} for {spec.name!r}; available: {sorted(spec.presets)}. '
                     'Or pass a list of layer ids (see diffbackbones.list_activations).')


def resolve_levels(spec: ModelSpec, activations: ActivationsArg, points: Sequence[ActivationPoint],
                   stride_of: dict[str, int]) -> Levels:
    """Normalise the ``activations`` argument into levels (fine to coarse) of valid layer ids.

    Args:
        spec: Zoo entry (for presets).
        activations: A preset name, a flat list of layer ids (grouped by stride), or a list of levels.
        points: The denoiser's catalog.
        stride_of: Pixel stride of every layer id.
    """
    if isinstance(activations, str):
        levels = _preset_levels(spec, activations)
    elif activations and all(isinstance(a, str) for a in activations):
        resolve_names(points, activations)
        by_stride: dict[int, list[str]] = {}
        for name in dict.fromkeys(activations):
            by_stride.setdefault(stride_of[name], []).append(name)
        levels = tuple(tuple(by_stride[s]) for s in sorted(by_stride))
    elif activations and all(not isinstance(a, str) and len(a) > 0 for a in activations):
        levels = tuple(tuple(level) for level in activations)
    else:
        raise ValueError('activations must be a preset name, a non-empty list of layer ids, or a list of '
                         f'non-empty levels (lists of layer ids); got {activations!r}')
    resolve_names(points, [n for level in levels for n in level])
    strides = []
    for level in levels:
        level_strides = {stride_of[n]: n for n in level}
        if len(level_strides) > 1:
            raise ValueError(f'Activations in one level must share a stride to be concatenated; level {list(level)} '
                             f'mixes strides {sorted(level_strides)}. Put them in separate levels.')
        strides.append(stride_of[level[0]])
    if strides != sorted(strides):
        raise ValueError(f'Levels must go fine to coarse (non-decreasing stride); got strides {strides} '
                         f'for levels {[list(level) for level in levels]}.')
    return levels


class DiffusionBackbone(nn.Module):
    """A pretrained diffusion model's activations as a feature pyramid.

    Args:
        model: Zoo name (``'sd15'``, ``'sd21'``, ``'sdxl'``, ``'pgv2'``, ``'test_sd_tiny'``, ...).
        activations: Preset name (``'practical'``, ``'legacy'``, or qualified ``'sd15_practical'``), a
            preset file (``'preset.json'``, as ``tools/screen.py --rank`` writes), a flat list of layer ids
            (grouped by stride, fine to coarse), or a list of levels.
        pretrained: True (the zoo entry's hub id, from the local cache when offline), a local
            diffusers folder, or False (exact architecture, seeded random weights, no network).
        t: Integer training timestep used for the noise level and the denoiser's timestep input; a
            list of timesteps runs them all in one batched forward and averages the activations.
            Default: the zoo entry's ``default_t``: 50 (the paper's) for DDPM models; for flow-matching
            models (SD3, Flux) 184, the same noise-to-signal ratio (``noise.py``).
        prompt: Text prompt, encoded once at construction; the text encoders are loaded one at a time
            and released. A list of prompts encodes them all; the first is active until
            ``backbone.conditioning.using(p)`` selects another (per-category prompts, as DIFT's protocol).
        prompt_cache: Cache the prompt embeddings on disk (True: ``$DIFFBACKBONES_CACHE/prompts``, or a
            folder), keyed by model, weights source, dtype and prompt: a second build with the same
            ones loads no text encoder. False: always encode.
        class_label: Class-conditioned models (DiT): the ImageNet class, 1000 (the null class) by default.
        image_size: Optional working size (int or (h, w)) the input is resized to; features are
            resized back so level i is always ceil(H / s_i) x ceil(W / s_i) of the input. Pixel-space
            models default to theirs (DeepFloyd IF-I: 64 px, the size it was trained at).
        resize_features: False keeps the levels on the working size's grids, ceil(h / s_i) for the
            working size h (the paper's code: a 512 px crop at SDXL's 1024 px gives twice the grid).
            ``feature_info`` reductions are then relative to the working size.
        antialias: Antialias the input resize to ``image_size`` (matters when shrinking). The paper's
            code resizes without it.
        noise_seed: Seed of the noise (same image, same features); None draws fresh noise each call.
        ensemble_size: Noise samples per timestep, run in the same batched forward and averaged.
        sample_posterior: Sample the VAE posterior instead of taking its mean.
        dtype: Denoiser dtype, ``'fp32'``/``'fp16'``/``'bf16'`` or a torch dtype. The VAE runs in fp32
            under fp16 (SDXL's VAE overflows in fp16).
        trainable_denoiser: Let gradients reach the denoiser (it is frozen and in eval mode otherwise,
            also after ``.train()``).
        trainable_vae: Let gradients reach the VAE encoder (frozen and in eval mode otherwise). The
            timm entries train both by default, like every timm model; ``frozen=True`` there is this
            class's default.
        fusion: Add learnable, zero-initialised residual blocks per activation and per level (identity
            at the start of training): ``True`` or ``'residual'`` (the package's block), ``'paper'`` (the
            paper code's block, exactly; see ``fusion.py`` for what its all-zero init implies).
        fusion_repeats: (per activation, per level) weight-shared repeats of ``'paper'`` blocks; the
            paper's combined run (Ours-XL-t) uses (4, 2).
        prune: Drop the denoiser modules that run after the last requested activation (measured
            with one probe forward at construction); they are never computed anyway.
        latent_cache: ``'memory'`` or a folder: cache VAE latents by image content so repeated
            images skip the VAE encoder (needs the posterior mean, not sampling).
        channels_last: Memory format. ``None`` (default): the VAE encoder runs channels-last on the CPU,
            where its convolutions are measurably faster that way, and the denoiser keeps the
            default format (its attention blocks reshape to tokens; channels-last measured slower
            on the CPU). ``True``: VAE encoder and denoiser channels-last on any device (try it on
            GPUs). ``False``: the default format everywhere.
        compile: ``torch.compile`` the denoiser parts that hold no capture point (the forward
            stops by an exception at the last activation, which compiled graphs must not contain).
        latent_scale: Replaces the VAE's ``scaling_factor``. The factor belongs to trained weights (SD's
            0.18215 makes its latents unit-variance); a random-weight VAE (``pretrained=False``) of
            the same architecture gives latents of another scale, which the noise at ``t`` may drown.
            ``tools/compare.py`` uses it for a fair random baseline.
        strict_input: Raise on image values outside [-1, 1]. By default such input runs and warns
            once per model (the range is the VAE's, but any normalised tensor is a valid input, as
            for every timm model). NaN or inf values always raise.

    ``state_dict()`` is complete, as torch, timm and EMA users expect. Checkpoints can still leave the
    frozen parts out (mmseg configs do, through ``LeanCheckpointHook``): ``load_state_dict`` fills
    frozen weights a checkpoint lacks from the live model, which rebuilt them from their pretrained
    source (or the seeded random init), so such a checkpoint loads strictly.
    """

    def __init__(self, model: str = 'sd15', activations: ActivationsArg = 'practical', *,
                 pretrained: bool | str = True, t: int | Sequence[int] | None = None, prompt: str | Sequence[str] = '',
                 image_size: int | tuple[int, int] | None = None, noise_seed: int | None = 0,
                 ensemble_size: int = 1, sample_posterior: bool = False, dtype: str | torch.dtype = torch.float32,
                 trainable_denoiser: bool = False, trainable_vae: bool = False, fusion: bool | str = False,
                 fusion_repeats: tuple[int, int] = (1, 1), resize_features: bool = True, antialias: bool = True,
                 prune: bool = True, latent_cache: str | None = None, channels_last: bool | None = None,
                 compile: bool = False, latent_scale: float | None = None, strict_input: bool = False,
                 prompt_cache: bool | str = True, class_label: int | None = None):
        super().__init__()
        self.spec = spec = get_model_spec(model)
        t = spec.default_t if t is None else t
        timesteps = (t,) if isinstance(t, int) else tuple(t) if isinstance(t, (list, tuple)) else ()
        if not timesteps or not all(isinstance(s, int) and 0 <= s < spec.num_train_timesteps for s in timesteps):
            raise ValueError(f't must be an integer training timestep in [0, {spec.num_train_timesteps}) or a list of '
                             f'them; got {t!r}')
        if not (isinstance(ensemble_size, int) and ensemble_size >= 1):
            raise ValueError(f'ensemble_size must be a positive integer; got {ensemble_size!r}')
        if fusion not in (False, None, True) and fusion not in FUSION_STYLES:
            raise ValueError(f'fusion must be False, True (the residual style) or one of {FUSION_STYLES}; got {fusion!r}')
        if not (len(fusion_repeats) == 2 and all(isinstance(r, int) and r >= 1 for r in fusion_repeats)):
            raise ValueError(f'fusion_repeats must be two positive integers (per activation, per level); '
                             f'got {fusion_repeats!r}')
        if channels_last not in (None, True, False):
            raise ValueError(f'channels_last must be None (channels-last VAE on the CPU), True or False; '
                             f'got {channels_last!r}')
        self.dtype = _as_dtype(dtype)
        if self.dtype == torch.float16 and spec.fp16_overflows:
            warnings.warn(f'{spec.name} has activations beyond the float16 range (its blocks clip them, which '
                          "changes the features): use dtype='bf16' for half precision.", stacklevel=2)
        self.t, self.timesteps, self.noise_seed, self.ensemble_size = t, timesteps, noise_seed, ensemble_size
        self.sample_posterior, self.trainable_denoiser, self.trainable_vae = sample_posterior, trainable_denoiser, trainable_vae
        self.strict_input, self._warned_range = strict_input, False
        if latent_cache is not None and sample_posterior:
            raise ValueError('latent_cache keeps one latent per image, so it needs the posterior mean: '
                             'use sample_posterior=False or latent_cache=None.')
        if latent_cache is not None and trainable_vae:
            raise ValueError('latent_cache keeps the latents of a fixed encoder, but trainable_vae=True changes '
                             'the encoder as it trains: use one or the other.')
        if image_size is None and spec.working_size is not None:  # pixel-space models work at one size (IF: 64)
            image_size = spec.working_size
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else image_size
        self.resize_features, self.antialias = resize_features, antialias

        parts = load_components(spec, pretrained, self.dtype,
                                vae_dtype=torch.float32 if self.dtype == torch.float16 else self.dtype)
        self.denoiser, self.vae = parts.denoiser, parts.vae
        self.family = family_of(self.denoiser)
        if latent_scale is not None:
            if not (isinstance(latent_scale, (int, float)) and latent_scale > 0):
                raise ValueError(f'latent_scale must be a positive number; got {latent_scale!r}')
            self.vae.scaling_factor = float(latent_scale)
        self.conditioning = PromptConditioning.encode(spec, parts.source, prompt, self.dtype, prompt_cache, class_label)
        self.schedule = NoiseSchedule(spec)

        self.latent_multiple = latent_multiple(self.denoiser)
        reference_latent = (self.latent_multiple * 4,) * 2  # any multiple works: strides are ratios
        self.points = activation_points(self.denoiser, reference_latent, self.conditioning.n_tokens)
        self.stride_of = {name: self.vae.downsample_factor * p.stride(reference_latent)
                          for name, p in catalog_index(self.points).items()}
        self.levels = resolve_levels(spec, activations, self.points, self.stride_of)
        self._set_levels(self.levels)
        style = 'residual' if fusion is True else fusion
        self.fusion = nn.ModuleList(LevelFusion([self._channels[n] for n in level], style, fusion_repeats)
                                    for level in self.levels) if fusion else None
        self.pruned = self.prune_tail() if prune else []
        if channels_last:
            self.denoiser.to(memory_format=torch.channels_last)
        self.channels_last = channels_last
        self.compiled = self._compile() if compile else []
        self.latent_cache = None if latent_cache is None else LatentCache(
            latent_cache, f'{spec.name}|{pretrained}|{self.vae_dtype}|{self.vae.scaling_factor}')

        for p in self.vae.parameters():
            p.requires_grad_(trainable_vae)
        for p in self.denoiser.parameters():
            p.requires_grad_(trainable_denoiser)
        self.train(False)
        self.register_load_state_dict_pre_hook(_fill_frozen_weights)

    @property
    def frozen_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of the diffusion parts that are not trained (lean checkpoints leave them out)."""
        return tuple(f'{part}.' for part, trainable in (('vae', self.trainable_vae),
                                                         ('denoiser', self.trainable_denoiser)) if not trainable)

    def _set_levels(self, levels: Levels) -> None:
        self._channels = {name: p.channels for name, p in catalog_index(self.points).items()}
        self.levels = levels
        self.feature_info = [dict(num_chs=sum(self._channels[n] for n in level), reduction=self.stride_of[level[0]],
                                  module=f'levels.{i}') for i, level in enumerate(levels)]
        self.capture = ActivationCapture(self.denoiser, [n for level in levels for n in level], stop_early=True,
                                         catalog=self.points)

    def prune_tail(self) -> list[str]:
        """Drop the denoiser modules that run after the last requested activation, and the projections
        that run before it but feed none of the activations; returns their paths.

        Measured with one probe forward at the smallest valid latent size (see ``pruning.py``). The
        probe keeps a graph from its input (not from the weights: no weight gradient is allocated),
        which is what tells a projection that feeds nothing.
        """
        device = next(self.denoiser.parameters()).device
        m = self.latent_multiple
        probe = torch.zeros(1, self.vae.latent_channels, m, m, device=device, dtype=self.dtype, requires_grad=True)
        f = self.vae.downsample_factor

        def run():
            with torch.enable_grad(), self.capture:
                timesteps = torch.full((1,), self.timesteps[0], device=device)
                self.denoiser(**self.family.inputs(self.denoiser, probe, timesteps, self.conditioning, (m * f, m * f)))
            captured, self.capture.activations = list(self.capture.activations.values()), {}
            return captured
        return prune_unexecuted(self.denoiser, run)

    def _compile(self) -> list[str]:
        """Compile the largest denoiser parts that contain no hooked module (and were not pruned)."""
        hooked = {p.module for p in self.capture.points} | {p.grid_module for p in self.capture.points if p.grid_module}
        compiled = []

        def visit(name: str, module: nn.Module) -> None:
            for child_name, child in module.named_children():
                path = f'{name}.{child_name}' if name else child_name
                contains_hook = any(h == path or h.startswith(path + '.') for h in hooked)
                if isinstance(child, (nn.ModuleList, nn.ModuleDict)) or contains_hook:
                    visit(path, child)
                elif next(child.parameters(), None) is not None:  # pruned and skipped parts hold none
                    child.compile()
                    compiled.append(path)
        visit('', self.denoiser)
        # nn.Module.compile() routes every part through one shared wrapper function, so all parts'
        # graphs (one or two per part: static, then dynamic shapes) count against that one function's
        # recompile limit. At dynamo's default of 8, most of sd15's 52 parts fell back to eager with
        # only a log warning. Raise the limit (never lower it) to what these parts need.
        needed = 2 * len(compiled) + 8
        dynamo_config = torch._dynamo.config
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, needed)
        dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, needed)
        return compiled

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute denoiser activations in the backward pass (for a trainable denoiser)."""
        if enable:
            self.denoiser.enable_gradient_checkpointing()
        else:
            self.denoiser.disable_gradient_checkpointing()

    def select_levels(self, indices: Sequence[int]) -> None:
        """Keep only the levels at ``indices`` (renumbered 0..k-1, order kept).

        In a UNet the finest levels are computed last, so keeping a prefix would not save anything;
        after selecting, the forward stops right after the last activation the kept levels need.
        """
        indices = sorted(set(int(i) for i in indices))
        if not indices or indices[0] < 0 or indices[-1] >= len(self.levels):
            raise ValueError(f'level indices must be in [0, {len(self.levels)}); got {indices}')
        self._set_levels(tuple(self.levels[i] for i in indices))
        if self.fusion is not None:
            self.fusion = nn.ModuleList(self.fusion[i] for i in indices)

    def train(self, mode: bool = True) -> 'DiffusionBackbone':
        super().train(mode)
        if not self.trainable_vae:
            self.vae.eval()
        if not self.trainable_denoiser:
            self.denoiser.eval()  # frozen means eval too: no dropout, whatever the caller's mode
        return self

    @property
    def vae_dtype(self) -> torch.dtype:
        """The VAE encoder's dtype (a pixel-space model has no VAE: the denoiser's)."""
        return next(self.vae.parameters(), torch.empty(0, dtype=self.dtype)).dtype

    @property
    def pixel_multiple(self) -> int:
        """Input sides are padded up to a multiple of this (VAE factor x UNet downsampling)."""
        return self.vae.downsample_factor * self.latent_multiple

    def check_images(self, images) -> None:
        """Refuse what cannot be an image batch; warn once (or raise, ``strict_input``) outside [-1, 1].

        Raises ``ValueError`` unless ``images`` is a float (B, 3, H, W) tensor of finite values.
        """
        if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            got = (f'{type(images).__name__}' if not torch.is_tensor(images)
                   else f'{images.dtype} tensor of shape {tuple(images.shape)}')
            raise ValueError(f'Expected images as a float tensor of shape (B, 3, H, W) with values in [-1, 1]; '
                             f'got a {got}.')
        if images.numel() == 0:
            return
        lo, hi = (float(v) for v in torch.aminmax(images.detach()))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            n_bad = int((~torch.isfinite(images.detach())).sum())
            raise ValueError(f'The images contain NaN or inf values ({n_bad} of {images.numel()}); check the '
                             'data loading and augmentation that produced them.')
        if lo < -1.001 or hi > 1.001:
            message = (f'Expected image values in [-1, 1]; got values in [{lo:.4g}, {hi:.4g}]. Diffusion VAEs take '
                       'x / 127.5 - 1 for 0..255 images (normalise with mean = std = 127.5, or 0.5 for 0..1 images), '
                       'not ImageNet mean/std.')
            if self.strict_input:
                raise ValueError(message)
            if not self._warned_range:  # once per model: a training loop would repeat it every step
                self._warned_range = True
                # stacklevel: past forward and nn.Module's call wrappers, to the caller's line
                warnings.warn(message + ' (Warned once per model; strict_input=True makes this an error.)',
                              stacklevel=5)

    @property
    def n_members(self) -> int:
        """Forward copies of each image: one per (timestep, noise sample)."""
        return len(self.timesteps) * self.ensemble_size

    def _noise(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """(members * B, C, h, w) noise, member-major."""
        e, (b, *chw) = self.n_members, shape
        if self.noise_seed is None:
            return torch.randn((e * b, *chw), device=device)
        # One draw per member shared across the batch: an image's features do not depend on its
        # batch or its position in it.
        generator = torch.Generator().manual_seed(self.noise_seed)
        noise = torch.randn((e, 1, *chw), generator=generator).to(device)
        return noise.expand(e, b, *chw).reshape(e * b, *chw)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Scaled VAE latent of images whose sides are multiples of ``pixel_multiple``."""
        images = images.to(self.vae_dtype)
        if self.latent_cache is not None:
            return self._encode_cached(images)
        generator = None
        if self.sample_posterior and self.noise_seed is not None:
            generator = torch.Generator(images.device).manual_seed(self.noise_seed + 1)
        return self._run_vae(images, self.sample_posterior, generator)

    def _run_vae(self, images: torch.Tensor, sample: bool = False,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """The VAE encoder in the chosen memory format (cached and uncached paths alike)."""
        if self.channels_last or (self.channels_last is None and images.device.type == 'cpu'):
            # A channels-last input is enough: convolutions follow it (weights are reordered per call,
            # which is cheap next to the activations), and the output latent comes back channels-last.
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.set_grad_enabled(self.trainable_vae and torch.is_grad_enabled()):
            return self.vae(images, sample, generator)

    def _encode_cached(self, images: torch.Tensor) -> torch.Tensor:
        keys = [self.latent_cache.key(image) for image in images]
        latents = [self.latent_cache.get(key) for key in keys]
        misses = [i for i, latent in enumerate(latents) if latent is None]
        if misses:
            fresh = self._run_vae(images[misses])
            for i, latent in zip(misses, fresh):
                self.latent_cache.put(keys[i], latent)
                latents[i] = latent
        return torch.stack([latent.to(images.device) for latent in latents])

    def denoiser_inputs(self, latents: torch.Tensor, image_hw: tuple[int, int]) -> dict:
        """Keyword arguments of one batched denoiser call: noisy latents, timesteps and conditioning.

        Every (timestep, noise sample) member gets a copy of the batch, member-major, so the call has
        ``n_members * B`` rows; ``self.denoiser(**kwargs)`` runs it (the family decides the names).
        """
        e, b = self.n_members, latents.shape[0]
        timesteps = torch.tensor(self.timesteps, device=latents.device).repeat_interleave(self.ensemble_size * b)
        noisy = self.schedule.add_noise(latents.float().repeat(e, 1, 1, 1), self._noise(latents.shape, latents.device),
                                        timesteps)
        # Explicit both ways: a channels-last latent from the VAE must not switch the denoiser's format.
        noisy = noisy.to(self.dtype, memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        return self.family.inputs(self.denoiser, noisy, timesteps, self.conditioning, image_hw)

    def extract(self, latents: torch.Tensor, image_hw: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Run the denoiser on all members up to the last requested activation; member-averaged activations."""
        e, b = self.n_members, latents.shape[0]
        kwargs = self.denoiser_inputs(latents, image_hw)
        # A graph is kept when anything upstream trains (a trainable VAE needs it through a frozen denoiser).
        trains = self.trainable_denoiser or self.trainable_vae
        with torch.set_grad_enabled(trains and torch.is_grad_enabled()), self.capture:
            self.denoiser(**kwargs)
        captured, self.capture.activations = self.capture.activations, {}
        if len(captured) != len(self.capture.points):
            missing = sorted({p.name for p in self.capture.points} - set(captured))
            raise RuntimeError(f'the denoiser forward did not produce {missing}')
        return {name: a.view(e, b, *a.shape[1:]).mean(0) if e > 1 else a for name, a in captured.items()}

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.check_images(images)
        return self.features(images)

    def features(self, images: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, ...]:
        """The forward after ``check_images``, with the VAE encode step replaceable: ``encode`` maps the
        resized and padded images to latents (``CombinedDiffusionBackbone`` passes one that encodes once
        for members sharing a VAE)."""
        in_hw = tuple(images.shape[-2:])
        if images.shape[0] == 0:  # an empty batch: empty levels of the shapes a full one would have
            grid_hw = in_hw if self.resize_features or self.image_size is None else tuple(self.image_size)
            return tuple(images.new_zeros(0, info['num_chs'], math.ceil(grid_hw[0] / info['reduction']),
                                          math.ceil(grid_hw[1] / info['reduction']), dtype=self.dtype)
                         for info in self.feature_info)
        acts = self.activations(images, encode)
        work_hw = tuple(self.image_size) if self.image_size is not None else in_hw
        outputs = []
        for i, level in enumerate(self.levels):
            parts = [acts[n] for n in level]
            feat = self.fusion[i](parts) if self.fusion is not None else torch.cat(parts, dim=1)
            if work_hw != in_hw and self.resize_features:
                s = self.feature_info[i]['reduction']
                feat = F.interpolate(feat, size=(math.ceil(in_hw[0] / s), math.ceil(in_hw[1] / s)), mode='bilinear',
                                     align_corners=False)
            outputs.append(feat)
        return tuple(outputs)

    def activations(self, images: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor] | None = None
                    ) -> dict[str, torch.Tensor]:
        """Every requested activation by name, on the working size's grid (ceil(h / stride) for the
        working size h): resize, pad, encode, noise, the denoiser up to the last one, crop."""
        images, work_hw = self.working_input(images)
        acts = self.extract((encode or self.encode)(images), work_hw)
        cropped = {}
        for name, value in acts.items():  # the padding's rows and columns go
            h, w = self.grid_of(name, work_hw)
            cropped[name] = value[..., :h, :w]
        return cropped

    def working_input(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images resized to the working size and padded (replicate) to ``pixel_multiple``; and the
        working size itself, which the activations are cropped back to."""
        if self.image_size is not None and tuple(self.image_size) != tuple(images.shape[-2:]):
            images = F.interpolate(images, size=self.image_size, mode='bilinear', align_corners=False,
                                   antialias=self.antialias)
        work_hw = tuple(images.shape[-2:])
        m = self.pixel_multiple
        pad_h, pad_w = (-work_hw[0]) % m, (-work_hw[1]) % m
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h), mode='replicate')
        return images, work_hw

    def grid_of(self, name: str, work_hw: tuple[int, int]) -> tuple[int, int]:
        """The grid of activation ``name`` for working size ``work_hw``: ceil(h / stride) x ceil(w / stride)."""
        s = self.stride_of[name]
        return math.ceil(work_hw[0] / s), math.ceil(work_hw[1] / s)

    def extra_repr(self) -> str:
        return (f'model={self.spec.name!r}, t={self.t}, levels={[list(level) for level in self.levels]}, '
                f'channels={[i["num_chs"] for i in self.feature_info]}, '
                f'strides={[i["reduction"] for i in self.feature_info]}, dtype={self.dtype}')


def _fill_frozen_weights(module: DiffusionBackbone, state_dict: dict, prefix: str, local_metadata, strict,
                         missing_keys, unexpected_keys, error_msgs) -> None:
    # A checkpoint without the frozen weights loads strictly: they are taken from the live model,
    # which rebuilt them from their pretrained source. Frozen weights a checkpoint does hold win.
    for part in module.frozen_prefixes:  # the hook sits on the backbone, not on its parts
        for key, value in getattr(module, part.rstrip('.')).state_dict(prefix=prefix + part, keep_vars=True).items():
            state_dict.setdefault(key, value)
