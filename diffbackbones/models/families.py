"""Denoiser families: what differs between a UNet (SD, SDXL, DeepFloyd IF), PixArt, DiT, Hunyuan-DiT, SD3
and Flux, in one small object each.

A family knows three things about its denoiser class and nothing else:

- ``walk``: the activation catalog (names, channels, token grids, where each hook sits), in execution
  order, derived from the module tree alone (works on the meta device);
- ``latent_multiple``: what every latent side must divide by (UNet downsamplings, patch size, packing);
- ``inputs``: the denoiser's keyword arguments for a batch of noisy latents, timesteps and cached
  conditioning (Flux packs 2x2 latent patches into tokens and passes their grid as ``img_ids``).

The backbone, capture and pruning code never ask which model they hold. A new family is a subclass
here (a walker plus its inputs) and its zoo entries as data.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn

from .points import ActivationPoint, _Points, walk_unet

__all__ = ['DenoiserFamily', 'FAMILIES', 'family_of', 'family_by_class', 'pack_latents', 'unpack_latents', 'image_ids']


def _ceil_div(hw: tuple[int, int], p: int) -> tuple[int, int]:
    return math.ceil(hw[0] / p), math.ceil(hw[1] / p)


class DenoiserFamily:
    """Base class: a family is identified by its diffusers class name."""

    name = ''
    class_name = ''

    def matches(self, denoiser: nn.Module) -> bool:
        return type(denoiser).__name__ == self.class_name

    def walk(self, denoiser: nn.Module, latent_hw: tuple[int, int], n_text_tokens: int) -> list[ActivationPoint]:
        raise NotImplementedError

    def latent_multiple(self, denoiser: nn.Module) -> int:
        return self.token_patch(denoiser.config)

    def token_patch(self, config) -> int:
        """Latent pixels per token side (transformers), from the denoiser's config."""
        return config['patch_size']

    def inputs(self, denoiser: nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, conditioning,
               image_hw: tuple[int, int]) -> dict:
        """Keyword arguments of one denoiser call on ``noisy`` (B, C, h, w) at integer ``timesteps`` (B,)."""
        raise NotImplementedError

    def prediction(self, output, noisy: torch.Tensor) -> torch.Tensor:
        """The model's prediction from a whole forward's ``output``, in the layout of ``noisy`` (B, C, h, w)."""
        sample = output.sample if hasattr(output, 'sample') else output[0]
        return sample[:, :noisy.shape[1]]  # learned-sigma models (PixArt, DiT, IF) append a variance


def _text(conditioning, batch: int, dtype: torch.dtype) -> torch.Tensor:
    text = conditioning.prompt_embeds.to(dtype)
    if text.shape[0] == 1:
        return text.expand(batch, -1, -1)
    # one context per image (VPD's class_embed_select): the rows are member-major (every noise member
    # holds a copy of the batch), so the B contexts tile
    return text.repeat(batch // text.shape[0], 1, 1)


def _pooled(conditioning, batch: int, dtype: torch.dtype) -> torch.Tensor:
    return conditioning.pooled_embeds.to(dtype).expand(batch, -1)


class UNetFamily(DenoiserFamily):
    """UNet2DConditionModel: SD1.x, SD2.x, SDXL, Playground v2 (walker in ``catalog.py``)."""

    name, class_name = 'unet', 'UNet2DConditionModel'

    def walk(self, denoiser, latent_hw, n_text_tokens):
        return walk_unet(denoiser, latent_hw, n_text_tokens)

    def latent_multiple(self, denoiser):
        return 2 ** sum(1 for b in denoiser.down_blocks if getattr(b, 'downsamplers', None))

    def inputs(self, denoiser, noisy, timesteps, conditioning, image_hw):
        b, dtype = noisy.shape[0], noisy.dtype
        kwargs = dict(sample=noisy, timestep=timesteps, encoder_hidden_states=_text(conditioning, b, dtype))
        added = {}
        if conditioning.pooled_embeds is not None:
            added['text_embeds'] = _pooled(conditioning, b, dtype)
        if conditioning.time_ids:
            h, w = image_hw  # original size, crop (0, 0), target size: the working size itself
            added['time_ids'] = torch.tensor([h, w, 0, 0, h, w], device=noisy.device, dtype=dtype).expand(b, -1)
        if added:
            kwargs['added_cond_kwargs'] = added
        return kwargs


class PixArtFamily(DenoiserFamily):
    """PixArtTransformer2DModel (PixArt-alpha / Sigma): BasicTransformerBlocks on patch tokens, T5 text."""

    name, class_name = 'pixart', 'PixArtTransformer2DModel'
    blocks = 'transformer_blocks'
    maps = 'standard'  # diffusers' reference attention math holds

    def walk(self, denoiser, latent_hw, n_text_tokens):
        p = self.latent_multiple(denoiser)
        grid = _ceil_div(latent_hw, p)
        pts = _Points(n_text_tokens)
        for k, block in enumerate(getattr(denoiser, self.blocks)):
            pts.transformer_block(f'vit-block{k}', f'{self.blocks}.{k}', block, grid, grid='', grid_patch=p,
                                  attn_out=True, maps=self.maps)
        return pts.points

    def inputs(self, denoiser, noisy, timesteps, conditioning, image_hw):
        b, dtype = noisy.shape[0], noisy.dtype
        added = {'resolution': None, 'aspect_ratio': None}
        if denoiser.use_additional_conditions:  # the 1024-MS checkpoints condition on size and aspect
            h, w = image_hw
            added = {'resolution': torch.tensor([[h, w]], device=noisy.device, dtype=dtype).expand(b, -1),
                     'aspect_ratio': torch.tensor([[h / w]], device=noisy.device, dtype=dtype).expand(b, -1)}
        kwargs = dict(hidden_states=noisy, encoder_hidden_states=_text(conditioning, b, dtype), timestep=timesteps,
                      added_cond_kwargs=added)
        if conditioning.attention_mask is not None:
            kwargs['encoder_attention_mask'] = conditioning.attention_mask.expand(b, -1)
        return kwargs


class DiTFamily(PixArtFamily):
    """DiTTransformer2DModel: class-conditioned, no cross-attention (its label is the 'prompt')."""

    name, class_name = 'dit', 'DiTTransformer2DModel'

    def inputs(self, denoiser, noisy, timesteps, conditioning, image_hw):
        labels = torch.full((noisy.shape[0],), conditioning.class_label, device=noisy.device, dtype=torch.long)
        return dict(hidden_states=noisy, timestep=timesteps, class_labels=labels)


class HunyuanFamily(PixArtFamily):
    """HunyuanDiT2DModel: BasicTransformerBlock-like ``blocks`` (LayerNorm qk-norm, RoPE; blocks of the
    second half also take a long skip from the first), cross-attention on [BERT; mT5] tokens."""

    name, class_name = 'hunyuan', 'HunyuanDiT2DModel'
    blocks = 'blocks'
    maps = 'explicit'  # qk-norm and RoPE inside the processor

    @staticmethod
    @functools.lru_cache(maxsize=8)
    def rotary_embedding(grid: tuple[int, int], head_dim: int, patch_size: int) -> tuple[torch.Tensor, ...]:
        """RoPE of a token grid as the pipeline builds it (positions of its 512 px base grid, resized and
        cropped to this one); cached: it depends on the grid only, not on the batch."""
        from diffusers.models.embeddings import get_2d_rotary_pos_embed
        from diffusers.pipelines.hunyuandit.pipeline_hunyuandit import get_resize_crop_region_for_grid
        base = 512 // 8 // patch_size
        return tuple(get_2d_rotary_pos_embed(head_dim, get_resize_crop_region_for_grid(grid, base), grid,
                                             output_type='pt'))

    def inputs(self, denoiser, noisy, timesteps, conditioning, image_hw):
        b, dtype, config = noisy.shape[0], noisy.dtype, denoiser.config
        text = _text(conditioning, b, dtype)
        mask = conditioning.attention_mask.expand(b, -1)
        n_bert, bert_width = config.text_len, config.cross_attention_dim  # [BERT; mT5] joined by text_encoders.py
        grid = (noisy.shape[-2] // config.patch_size, noisy.shape[-1] // config.patch_size)
        rope = self.rotary_embedding(grid, denoiser.inner_dim // config.num_attention_heads, config.patch_size)
        h, w = image_hw
        return dict(hidden_states=noisy, timestep=timesteps.to(dtype),
                    encoder_hidden_states=text[:, :n_bert, :bert_width].contiguous(),
                    text_embedding_mask=mask[:, :n_bert],
                    encoder_hidden_states_t5=text[:, n_bert:].contiguous(),  # the model views it flat
                    text_embedding_mask_t5=mask[:, n_bert:],
                    image_meta_size=torch.tensor([[h, w, h, w, 0, 0]], device=noisy.device, dtype=dtype).expand(b, -1),
                    style=torch.zeros(b, device=noisy.device, dtype=torch.long),
                    image_rotary_emb=tuple(r.to(noisy.device) for r in rope))


class SD3Family(DenoiserFamily):
    """SD3Transformer2DModel (SD3, SD3.5): joint attention, image tokens first; SD3.5 dual layers."""

    name, class_name = 'sd3', 'SD3Transformer2DModel'

    def walk(self, denoiser, latent_hw, n_text_tokens):
        p = self.latent_multiple(denoiser)
        grid = _ceil_div(latent_hw, p)
        n = grid[0] * grid[1]
        pts = _Points(n_text_tokens)
        on_grid = dict(grid_module='', grid_patch=p)
        for k, block in enumerate(denoiser.transformer_blocks):
            path, prefix, attn = f'transformer_blocks.{k}', f'vit-block{k}', block.attn
            for proj in 'qkv':
                pts.add(f'{prefix}-self-{proj}', f'self-{proj}', getattr(attn, f'to_{proj}').out_features, grid,
                        f'{path}.attn.to_{proj}', 'tokens', aliases=(f'{prefix}-{proj}',), **on_grid)
            pts.add(f'{prefix}-attn-out', 'attn-out', attn.to_out[0].out_features, grid, f'{path}.attn', 'tokens',
                    pick=0, **on_grid)
            joint = dict(image_tokens='first', attention='explicit', **on_grid)
            pts.add(f'{prefix}-self-map', 'self-map', n, grid, f'{path}.attn', 'attn-map', **joint)
            pts.add(f'{prefix}-cross-map', 'cross-map', n_text_tokens, grid, f'{path}.attn', 'attn-map', **joint)
            if block.attn2 is not None:  # SD3.5 dual-attention layers: a second, image-only self-attention
                attn2 = block.attn2
                for proj in 'qkv':
                    pts.add(f'{prefix}-self2-{proj}', f'self-{proj}', getattr(attn2, f'to_{proj}').out_features, grid,
                            f'{path}.attn2.to_{proj}', 'tokens', **on_grid)
                pts.add(f'{prefix}-self2-map', 'self-map', n, grid, f'{path}.attn2', 'attn-map',
                        image_tokens='all', attention='explicit', **on_grid)
            dim = block.ff.net[-1].out_features
            pts.add(f'{prefix}-norm-out', 'norm-out', dim, grid, f'{path}.ff', 'tokens-input', **on_grid)
            pts.add(f'{prefix}-ffn-inner', 'ffn-inner', block.ff.net[0].proj.out_features, grid, f'{path}.ff.net.0',
                    'tokens', **on_grid)
            pts.add(f'{prefix}-out', 'vit-block-out', dim, grid, path, 'tokens', pick=1, **on_grid)
        return pts.points

    def inputs(self, denoiser, noisy, timesteps, conditioning, image_hw):
        b, dtype = noisy.shape[0], noisy.dtype
        # SD3's timestep input is sigma * 1000: our integer t is exactly that (s = t / 1000).
        return dict(hidden_states=noisy, encoder_hidden_states=_text(conditioning, b, dtype),
                    pooled_projections=_pooled(conditioning, b, dtype), timestep=timesteps.to(dtype))


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C): Flux's 2x2 patches, row-major (as its pipeline packs them)."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """(B, h/2 * w/2, 4C) -> (B, C, h, w) of ``shape``: the inverse of ``pack_latents``."""
    b, c, h, w = shape
    x = tokens.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


def image_ids(grid: tuple[int, int], device, dtype) -> torch.Tensor:
    """(h*w, 3) position ids [0, row, col] of a row-major token grid (Flux's ``img_ids``)."""
    rows = torch.arange(grid[0], device=device, dtype=dtype).repeat_interleave(grid[1])
    cols = torch.arange(grid[1], device=device, dtype=dtype).repeat(grid[0])
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=1)


class FluxFamily(DenoiserFamily):
    """FluxTransformer2DModel: double-stream blocks, then single-stream blocks, counted on in one sequence.

    Single blocks see [text; image] tokens in every projection: the first T (text) tokens are sliced off.
    """

    name, class_name = 'flux', 'FluxTransformer2DModel'

    def token_patch(self, config):
        return 2  # the pipeline packs 2x2 latent patches into one token (the model's patch_size is 1)

    def walk(self, denoiser, latent_hw, n_text_tokens):
        grid = _ceil_div(latent_hw, 2)
        n = grid[0] * grid[1]
        pts = _Points(n_text_tokens)
        on_grid = dict(grid_module='', grid_patch=2)
        double = len(denoiser.transformer_blocks)

        def attention(prefix, path, attn, image_tokens, out_pick):
            for proj in 'qkv':
                pts.add(f'{prefix}-self-{proj}', f'self-{proj}', getattr(attn, f'to_{proj}').out_features, grid,
                        f'{path}.attn.to_{proj}', 'tokens', image_tokens=image_tokens, aliases=(f'{prefix}-{proj}',),
                        **on_grid)
            pts.add(f'{prefix}-attn-out', 'attn-out', attn.inner_dim, grid, f'{path}.attn', 'tokens', pick=out_pick,
                    image_tokens=image_tokens, **on_grid)
            joint = dict(image_tokens='last', attention='explicit', **on_grid)
            pts.add(f'{prefix}-self-map', 'self-map', n, grid, f'{path}.attn', 'attn-map', **joint)
            pts.add(f'{prefix}-cross-map', 'cross-map', n_text_tokens, grid, f'{path}.attn', 'attn-map', **joint)

        for k, block in enumerate(denoiser.transformer_blocks):
            path, prefix = f'transformer_blocks.{k}', f'vit-block{k}'
            attention(prefix, path, block.attn, 'all', 0)  # the processor returns (image, text)
            dim = block.ff.net[-1].out_features
            pts.add(f'{prefix}-norm-out', 'norm-out', dim, grid, f'{path}.ff', 'tokens-input', **on_grid)
            pts.add(f'{prefix}-ffn-inner', 'ffn-inner', block.ff.net[0].proj.out_features, grid, f'{path}.ff.net.0',
                    'tokens', **on_grid)
            pts.add(f'{prefix}-out', 'vit-block-out', dim, grid, path, 'tokens', pick=1, **on_grid)
        for j, block in enumerate(denoiser.single_transformer_blocks):
            path, prefix = f'single_transformer_blocks.{j}', f'vit-block{double + j}'
            attention(prefix, path, block.attn, 'last', None)
            pts.add(f'{prefix}-ffn-inner', 'ffn-inner', block.proj_mlp.out_features, grid, f'{path}.act_mlp', 'tokens',
                    image_tokens='last', **on_grid)
            pts.add(f'{prefix}-out', 'vit-block-out', block.proj_out.out_features, grid, path, 'tokens', pick=1,
                    **on_grid)
        return pts.points

    def inputs(self, denoiser, noisy, timesteps, conditioning, image_hw):
        b, dtype = noisy.shape[0], noisy.dtype
        grid = (noisy.shape[-2] // 2, noisy.shape[-1] // 2)
        text = _text(conditioning, b, dtype)
        kwargs = dict(hidden_states=pack_latents(noisy), encoder_hidden_states=text,
                      pooled_projections=_pooled(conditioning, b, dtype),
                      timestep=timesteps.to(dtype) / 1000,  # Flux takes sigma itself, in [0, 1]
                      img_ids=image_ids(grid, noisy.device, dtype),
                      txt_ids=torch.zeros(text.shape[1], 3, device=noisy.device, dtype=dtype))
        if denoiser.config.guidance_embeds:
            kwargs['guidance'] = torch.full((b,), conditioning.guidance, device=noisy.device, dtype=dtype)
        return kwargs

    def prediction(self, output, noisy):
        return unpack_latents(output.sample if hasattr(output, 'sample') else output[0], noisy.shape)


FAMILIES: dict[str, DenoiserFamily] = {f.name: f for f in (UNetFamily(), PixArtFamily(), DiTFamily(), HunyuanFamily(),
                                                            SD3Family(), FluxFamily())}


def family_by_class(class_name: str) -> DenoiserFamily:
    for family in FAMILIES.values():
        if family.class_name == class_name:
            return family
    raise TypeError(f'{class_name} is not a supported denoiser; supported diffusers classes: '
                    f'{sorted(f.class_name for f in FAMILIES.values())}.')


def family_of(denoiser: nn.Module) -> DenoiserFamily:
    """The family of a diffusers denoiser; unsupported classes raise ``TypeError`` listing the supported ones."""
    for family in FAMILIES.values():
        if family.matches(denoiser):
            return family
    raise TypeError(f'{type(denoiser).__name__} is not a supported denoiser; supported diffusers classes: '
                    f'{sorted(f.class_name for f in FAMILIES.values())}.')
