"""`DiffusionBackbone`: a diffusion model as a multi-scale feature backbone.

The forward is the data flow, one stage after the other (``stages.py``):

    image (B,3,H,W) in [-1,1] -> image: check, resize, pad -> vae: latent -> noise: noisy latent at t
    -> conditioning: cached prompt embeddings -> denoiser: one forward, stopped right after the last
    requested activation -> fusion: levels by stride, cropped (and resized back) to the input

Returns a tuple of (B, C_i, ceil(H/s_i), ceil(W/s_i)), fine to coarse (the mmseg backbone contract);
``feature_info`` describes the levels in timm's form.
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from diffbackbones.backbone.denoiser.capture import ActivationCapture, mark_capture_holders
from diffbackbones.models.catalog import activation_points, catalog_index, latent_multiple
from diffbackbones.models.families import family_of
from diffbackbones.models.loading import Components, is_gguf, load_components
from diffbackbones.utils.dtypes import as_dtype
from .presets import ActivationsArg, resolve_levels
from .stages import build_stages
from diffbackbones.models.zoo import Levels, ModelSpec, get_model_spec

__all__ = ['DiffusionBackbone', 'pixels_to_input']

def pixels_to_input(pixels) -> torch.Tensor:
    """0..255 RGB pixels, (H, W, 3) or (N, H, W, 3) (numpy or tensor), as the backbone's input:
    float (N, 3, H, W) in [-1, 1], what diffusion VAEs take."""
    pixels = torch.as_tensor(pixels)
    batch = pixels if pixels.ndim == 4 else pixels[None]
    return batch.permute(0, 3, 1, 2).float() / 127.5 - 1


class DiffusionBackbone(nn.Module):
    """A pretrained diffusion model's activations as a feature pyramid.

    Args:
        model: Zoo name (``'sd15'``, ``'sd21'``, ``'sdxl'``, ``'pgv2'``, ``'test_sd_tiny'``, ...).
        activations: Preset name (``'practical'``, ``'legacy'``, or qualified ``'sd15_practical'``), a
            ``Preset`` or preset file (``'preset.json'``, as ``diffbackbones screen --rank`` writes), a flat
            list of layer ids (grouped by stride, fine to coarse), or a list of levels.
        pretrained: True (the zoo entry's hub id, from the local cache when offline, or the weights shipped
            in the package), a local diffusers folder, False (exact architecture, seeded random
            weights, no network), or a ``.gguf`` file of the denoiser (quantized as stored; the VAE and text
            encoders then come from the zoo entry).
        dtype: Denoiser dtype, ``'fp32'``/``'fp16'``/``'bf16'`` or a torch dtype. The VAE runs in fp32
            under fp16 (SDXL's VAE overflows in fp16). Features leave in the input's dtype (fp32 in: fp32 out).
        channels_last: ``None`` (default): the VAE encoder channels-last on the CPU (measured faster there),
            the denoiser not (measured slower); ``True``: both, on any device (try it on GPUs); ``False``: neither.
        image: Input stage options (``ImageStage``): ``size``, ``resize_features``, ``antialias``, ``strict``,
            ``pad_to`` (VPD's ``pad_shape``).
        vae: Encode stage options (``VaeStage``): ``sample_posterior``, ``cache``, ``scale``, ``trainable``.
        noise: Noise stage options (``NoiseStage``): ``t``, ``seed``, ``ensemble``; e.g.
            ``noise=dict(t=50, seed=0, ensemble=4)``. ``noise='ddim-inversion'`` (``DdimInversionStage``,
            option ``inversion_steps``) walks the clean latent to ``t`` with the denoiser instead.
        conditioning: Conditioning stage options (``ConditioningStage``): ``prompt``, ``cache``,
            ``class_label``, ``long_prompt``; trained: ``type='learned'`` or ``'vpd-classes'``.
        control: ControlNet stage options (``ControlStage``): ``model``, ``image``, ``scale``; e.g.
            ``control=dict(model='lllyasviel/sd-controlnet-canny', image='canny')``.
        denoiser: Denoise-and-capture stage options (``DenoiserStage``): ``trainable``, ``prune``,
            ``compile``, ``lora``.
        fusion: Levels stage (``FusionStage``): False concatenates a level's activations; True or
            ``'residual'`` adds learnable, zero-initialised residual blocks per activation and per level
            (identity at the start of training); ``'paper'`` the paper code's block, exactly;
            ``dict(style='paper', repeats=(4, 2))`` with weight-shared repeats.
        **flat: The flat keywords of earlier releases (``t``, ``prompt``, ``image_size``, ``lora``, ...), each
            one option of a stage (``stages.FLAT_KEYWORDS`` lists them).

    ``state_dict()`` is complete, as torch, timm and EMA users expect. Checkpoints can still leave the
    frozen parts out (mmseg configs do, through ``LeanCheckpointHook``): ``load_state_dict`` fills
    frozen weights a checkpoint lacks from the live model, which rebuilt them from their pretrained
    source (or the seeded random init), so such a checkpoint loads strictly.
    """

    def __init__(self, model: str = 'sd15', activations: ActivationsArg = 'practical', *,
                 pretrained: bool | str = True, dtype: str | torch.dtype = torch.float32,
                 channels_last: bool | None = None, image: Any = None, vae: Any = None, noise: Any = None,
                 conditioning: Any = None, control: Any = None, denoiser: Any = None, fusion: Any = None,
                 **flat: Any):
        super().__init__()
        self.spec = spec = model if isinstance(model, ModelSpec) else get_model_spec(model)  # or from_pipeline's
        self.stages = stages = build_stages(dict(image=image, vae=vae, noise=noise, conditioning=conditioning,
                                                 control=control, denoiser=denoiser, fusion=fusion), flat)
        if channels_last not in (None, True, False):
            raise ValueError(f'channels_last must be None (channels-last VAE on the CPU), True or False; '
                             f'got {channels_last!r}')
        self.dtype, self.channels_last = as_dtype(dtype), channels_last
        _warn_if_fp16_overflows(spec, self.dtype)
        stages.image.bind(spec)
        stages.noise.bind(spec)

        stages.denoiser.check_weights(gguf=is_gguf(pretrained))
        parts, pretrained = _load_parts(spec, pretrained, self.dtype)
        self.denoiser, self.vae = parts.denoiser, parts.vae
        self.family = family_of(self.denoiser)
        self.lora = stages.denoiser.load_lora(self.denoiser, self.family, spec.name)
        stages.vae.bind(spec, pretrained, self.vae, self.vae_dtype)
        self.conditioning = stages.conditioning.build(spec, parts.source, self.dtype)

        self.latent_multiple = latent_multiple(self.denoiser)
        reference_latent = (self.latent_multiple * 4,) * 2  # any multiple works: strides are ratios
        self.points = activation_points(self.denoiser, reference_latent, self.conditioning.n_tokens)
        self.stride_of = {name: self.vae.downsample_factor * p.stride(reference_latent)
                          for name, p in catalog_index(self.points).items()}
        self._set_levels(resolve_levels(spec, activations, self.points, self.stride_of))
        self.fusion = stages.fusion.build([[self._channels[n] for n in level] for level in self.levels])
        self.control = stages.control.build(spec, pretrained, self.dtype, self.denoiser, self.capture)
        # prune, quantize what is kept, offload, compile; a noise variant that runs the whole denoiser (DDIM
        # inversion) needs the modules pruning would drop
        self.pruned, self.quantized, self.compiled = stages.denoiser.prepare(
            self.denoiser, self.capture, None if stages.noise.runs_denoiser else self.prune_tail, self.dtype,
            channels_last)

        self.vae.requires_grad_(stages.vae.trainable)
        stages.denoiser.set_requires_grad(self.denoiser)  # a trainable LoRA adapter trains on a frozen denoiser
        self.train(False)
        self.register_load_state_dict_pre_hook(_fill_frozen_weights)

    @classmethod
    def from_pipeline(cls, pipeline, activations: ActivationsArg, **options) -> 'DiffusionBackbone':
        """Any diffusers pipeline (object, folder, hub id) as a backbone; no zoo entry (``from_pipeline.py``)."""
        from .from_pipeline import backbone_from_pipeline
        return backbone_from_pipeline(cls, pipeline, activations, **options)

    @property
    def frozen_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of the diffusion parts that are not trained (lean checkpoints leave them out);
        a ControlNet (``control.``) is always frozen. With a trainable LoRA adapter (``lora=dict(...)``) the
        frozen denoiser is covered key by key around the adapter weights, which checkpoints keep."""
        prefixes = [] if self.stages.vae.trainable else ['vae.']
        prefixes += [f'denoiser.{p}' for p in self.stages.denoiser.frozen_prefixes(self.denoiser)]
        if next(self.control.parameters(), None) is not None:
            prefixes.append('control.')
        return tuple(prefixes)

    def _set_levels(self, levels: Levels) -> None:
        self._channels = {name: p.channels for name, p in catalog_index(self.points).items()}
        self.levels = levels
        self.feature_info = [dict(num_chs=sum(self._channels[n] for n in level), reduction=self.stride_of[level[0]],
                                  module=f'levels.{i}') for i, level in enumerate(levels)]
        self.capture = ActivationCapture(self.denoiser, [n for level in levels for n in level], stop_early=True,
                                         catalog=self.points)
        mark_capture_holders(self.denoiser, self.capture.points)  # FSDP's wrap policy leaves these to the root

    def prune_tail(self) -> list[str]:
        """Drop the denoiser modules the activations never need (``DenoiserStage.prune_tail``), by a probe forward."""
        device = next(self.denoiser.parameters()).device
        m, f = self.latent_multiple, self.vae.downsample_factor
        probe = torch.zeros(1, self.vae.latent_channels, m, m, device=device, dtype=self.dtype, requires_grad=True)
        timesteps = torch.full((1,), self.stages.noise.timesteps[0], device=device)
        return self.stages.denoiser.prune_tail(self.denoiser, self.capture, lambda: self.family.inputs(
            self.denoiser, probe, timesteps, self.conditioning, (m * f, m * f)))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute denoiser activations in the backward pass (for a trainable denoiser)."""
        (self.denoiser.enable_gradient_checkpointing if enable else self.denoiser.disable_gradient_checkpointing)()

    def select_levels(self, indices: Sequence[int]) -> None:
        """Keep only the levels at ``indices`` (renumbered 0..k-1, order kept).

        In a UNet the finest levels are computed last, so keeping a prefix would not save anything;
        after selecting, the forward stops right after the last activation the kept levels need.
        """
        indices = sorted(set(int(i) for i in indices))
        if not indices or indices[0] < 0 or indices[-1] >= len(self.levels):
            raise ValueError(f'level indices must be in [0, {len(self.levels)}); got {indices}')
        self._set_levels(tuple(self.levels[i] for i in indices))
        self.control.follow(self.capture)  # a ControlNet whose residuals are no longer consumed stops running
        if self.fusion is not None:
            self.fusion = nn.ModuleList(self.fusion[i] for i in indices)

    def train(self, mode: bool = True) -> 'DiffusionBackbone':
        super().train(mode)
        if not self.stages.vae.trainable:
            self.vae.eval()
        if not self.stages.denoiser.trainable:
            self.denoiser.eval()  # frozen means eval too: no dropout, whatever the caller's mode
            self.stages.denoiser.train_adapters(self.denoiser, mode)  # but a trainable LoRA's dropout follows it
        self.control.eval()  # a ControlNet is always frozen
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
        """Refuse what is not a finite float (B, 3, H, W) batch; warn once outside [-1, 1] (``ImageStage.check``)."""
        self.stages.image.check(images)

    # The data flow, stage by stage.

    @property
    def class_embed_select(self) -> bool:
        """VPD's per-image class context: mmseg's ``DepthEstimator`` then passes ``(images, category ids)``."""
        return self.conditioning.selects_per_image

    def forward(self, images: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        images, class_ids = _split_class_ids(images)  # or (images, class_ids): VPD's per-image class input
        self.check_images(images)
        with self.conditioning.per_image(class_ids, images.shape[0]):
            return self.features(images)

    def features(self, images: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, ...]:
        """The forward after ``check_images``; ``encode`` (resized, padded images -> latents) replaces the VAE step
        (``CombinedDiffusionBackbone`` encodes once for members sharing a VAE)."""
        in_hw = tuple(images.shape[-2:])
        if images.shape[0] == 0:  # an empty batch: empty levels of the shapes a full one would have
            grid_hw = self.stages.image.output_grid(in_hw)
            return tuple(images.new_zeros(0, info['num_chs'], *(math.ceil(s / info['reduction']) for s in grid_hw))
                         for info in self.feature_info)
        acts = self.activations(images, encode)
        outputs = []
        for i, level in enumerate(self.levels):
            parts = [acts[n] for n in level]
            feature = self.fusion[i](parts) if self.fusion is not None else torch.cat(parts, dim=1)
            feature = feature.to(images.dtype)  # the input's dtype: a bf16 denoiser under an fp32 head (no AMP)
            feature = self.stages.image.restore(feature, in_hw, self.feature_info[i]['reduction'])
            # NCHW memory, whatever the denoiser ran in: compiled ops such as mmcv's RoIAlign read memory as NCHW
            # without checking strides, and pooled the wrong cells of channels-last levels (docs/mmdet.md)
            outputs.append(feature.contiguous())
        return tuple(outputs)

    def activations(self, images: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor] | None = None
                    ) -> dict[str, torch.Tensor]:
        """Every requested activation by name, on the working size's grid (ceil(h / stride) for the
        working size h): resize, pad, encode, noise, the denoiser up to the last one, crop."""
        images, work_hw = self.working_input(images)
        acts = self.extract((encode or self.encode)(images), work_hw, images)
        cropped = {}
        for name, value in acts.items():  # the padding's rows and columns go
            h, w = self.grid_of(name, work_hw)
            cropped[name] = value[..., :h, :w]
        return cropped

    def working_input(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images resized to the working size and padded (replicate) to ``pixel_multiple``; and the
        working size itself, which the activations are cropped back to."""
        return self.stages.image.working_input(images, self.pixel_multiple)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Scaled VAE latent of images whose sides are multiples of ``pixel_multiple``."""
        return self.stages.vae(self.vae, images.to(self.vae_dtype), self.stages.noise.seed, self.channels_last)

    def denoiser_inputs(self, latents: torch.Tensor, image_hw: tuple[int, int]) -> dict:
        """Keyword arguments of one batched denoiser call (names by family): noisy latents, timesteps, conditioning;
        a copy of the batch per (timestep, noise sample) member, member-major: ``stages.noise.members * B`` rows."""
        noisy, timesteps = self.stages.noise(latents, functools.partial(self.predict, image_hw=image_hw))
        # Explicit both ways: a channels-last latent from the VAE must not switch the denoiser's format.
        noisy = noisy.to(self.dtype, memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        return self.family.inputs(self.denoiser, noisy, timesteps, self.conditioning, image_hw)

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
        """The whole denoiser's prediction (epsilon, v or velocity, as the model was trained) for noisy
        latents at integer ``timesteps``, in the latents' layout; no capture, no early exit."""
        kwargs = self.family.inputs(self.denoiser, noisy.to(self.dtype), timesteps, self.conditioning, image_hw)
        return self.family.prediction(self.denoiser(**kwargs), noisy)

    def extract(self, latents: torch.Tensor, image_hw: tuple[int, int], images: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        """Run the denoiser on all members up to the last requested activation; member-averaged activations.
        ``images``: the working-size input, for a ControlNet's control image (``control=``)."""
        # a graph when anything upstream of the capture trains: the VAE, the denoiser, or learned conditioning
        trains = (self.stages.denoiser.trains or self.stages.vae.trainable
                  or any(p.requires_grad for p in self.conditioning.parameters()))
        kwargs = self.control(self.denoiser_inputs(latents, image_hw), images)  # + ControlNet residuals, if any
        return self.stages.denoiser(self.denoiser, self.capture, kwargs, self.stages.noise.members, keep_graph=trains)

    def grid_of(self, name: str, work_hw: tuple[int, int]) -> tuple[int, int]:
        """The grid of activation ``name`` for working size ``work_hw``: ceil(h / stride) x ceil(w / stride)."""
        s = self.stride_of[name]
        return math.ceil(work_hw[0] / s), math.ceil(work_hw[1] / s)

    def extra_repr(self) -> str:
        return (f'model={self.spec.name!r}, t={self.stages.noise.t}, levels={[list(level) for level in self.levels]}, '
                f'channels={[i["num_chs"] for i in self.feature_info]}, '
                f'strides={[i["reduction"] for i in self.feature_info]}, dtype={self.dtype}')


def _load_parts(spec: ModelSpec, pretrained, dtype: torch.dtype) -> tuple[Components, Any]:
    """The denoiser, VAE encoder and text-encoder source; ``pretrained`` may already be the parts (from_pipeline)."""
    if isinstance(pretrained, Components):
        return pretrained, pretrained.source
    vae_dtype = torch.float32 if dtype == torch.float16 else dtype  # SDXL's VAE overflows in fp16
    return load_components(spec, pretrained, dtype, vae_dtype=vae_dtype), pretrained


def _warn_if_fp16_overflows(spec: ModelSpec, dtype: torch.dtype) -> None:
    if dtype == torch.float16 and spec.fp16_overflows:
        warnings.warn(f'{spec.name} has activations beyond the float16 range (its blocks clip them, which changes the '
                      "features): use dtype='bf16' for half precision.", stacklevel=3)


def _split_class_ids(inputs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``images`` or ``(images, class_ids)`` (what mmseg's ``DepthEstimator`` passes a class-selecting backbone)."""
    if not isinstance(inputs, (tuple, list)):
        return inputs, None
    if len(inputs) != 2:
        raise ValueError(f'Expected images, or (images, class_ids) with one class id per image; got a '
                         f'{type(inputs).__name__} of {len(inputs)} items.')
    return inputs[0], inputs[1]


def _fill_frozen_weights(module: DiffusionBackbone, state_dict: dict, prefix: str, local_metadata, strict,
                         missing_keys, unexpected_keys, error_msgs) -> None:
    # A checkpoint without the frozen weights loads strictly: they are taken from the live model,
    # which rebuilt them from their pretrained source. Frozen weights a checkpoint does hold win.
    frozen = module.frozen_prefixes  # the hook sits on the backbone: keys relative to it
    if frozen:
        for key, value in module.state_dict(prefix=prefix, keep_vars=True).items():
            if key[len(prefix):].startswith(frozen):
                state_dict.setdefault(key, value)
