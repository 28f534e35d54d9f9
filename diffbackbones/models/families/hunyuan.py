"""HunyuanDiT2DModel (Hunyuan-DiT): qk-norm and RoPE inside attention, long skips, [BERT; mT5] text."""
from __future__ import annotations

import functools

import torch

from .base import text_context
from .pixart import PixArtFamily

__all__ = ['HunyuanFamily']


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
        text = text_context(conditioning, b, dtype)
        mask = conditioning.attention_mask.expand(b, -1)
        n_bert, bert_width = config.text_len, config.cross_attention_dim  # [BERT; mT5] joined by text.py
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
