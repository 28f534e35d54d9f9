"""HiDreamImageTransformer2DModel (HiDream-I1): 2x2 patches, double- then single-stream blocks with MoE
feed-forwards."""
from __future__ import annotations

import torch

from ..points import _Points
from .base import DenoiserFamily, ceil_div, pooled_text, text_context

__all__ = ['HiDreamFamily']


class HiDreamFamily(DenoiserFamily):
    """HiDreamImageTransformer2DModel: double-stream blocks, then single-stream blocks, counted on in one sequence.

    Image tokens come first everywhere: in the image stream of the double blocks and in the [image; text] sequence of
    the single blocks. A non-square latent is padded to ``max_seq`` image tokens (the first h*w are real), so every
    point reads the first h*w tokens (``image_tokens='first'``), which is also right for square latents.

    Each feed-forward is a mixture of experts: routed experts see only their tokens, so the dense activation offered
    as ``ffn-inner`` is the shared expert's gated SwiGLU (the input of its ``w2``). Attention maps are not offered:
    HiDream's processor (full-width RMS qk-norm, its own RoPE layout, keys zeroed by the padding mask) is not one the
    explicit map path computes.

    Conditioning (``read_prompt``): ``prompt_embeds`` holds the T5 tokens, then the Llama 3.1 hidden states of
    layers 1..K (the pipeline's ``hidden_states[1:]``), end to end along the token axis, each block of one length
    (the pipeline's ``max_sequence_length``, 128), each zero-padded to the wider of the two widths (4096 both in
    HiDream-I1). ``inputs`` splits it back into K + 1 equal blocks with K = max(``llama_layers``) + 1, the Llama
    layers the denoiser reads: so the Llama must have exactly that many layers (HiDream-I1: Llama 3.1 8B, 32 layers,
    ``llama_layers`` up to 31). ``pooled_embeds`` is [CLIP-L; CLIP-G] text_embeds (768 + 1280). No text mask: the
    pipeline attends every (padded) text token.
    """

    name, class_name = 'hidream', 'HiDreamImageTransformer2DModel'

    def walk(self, denoiser, latent_hw, n_text_tokens):
        p = self.latent_multiple(denoiser)
        grid = ceil_div(latent_hw, p)
        pts = _Points(n_text_tokens)
        first = dict(grid_module='', grid_patch=p, image_tokens='first')  # the (B, C, h, w) input gives the grid
        double = len(denoiser.double_stream_blocks)
        blocks = [(f'double_stream_blocks.{k}', b.block) for k, b in enumerate(denoiser.double_stream_blocks)]
        blocks += [(f'single_stream_blocks.{j}', b.block) for j, b in enumerate(denoiser.single_stream_blocks)]
        for k, (path, block) in enumerate(blocks):
            prefix, attn, is_double = f'vit-block{k}', block.attn1, k < double
            inner = f'{path}.block'
            # double: the image stream's projections; single: the whole [image; text] sequence
            pts.self_projections(prefix, f'{inner}.attn1', attn, grid, **first)
            pts.add(f'{prefix}-attn-out', 'attn-out', attn.to_out.out_features, grid, f'{inner}.attn1', 'tokens',
                    pick=0 if is_double else None, **first)  # double: (image, text)
            ff = block.ff_i
            dim = ff.shared_experts.w2.out_features if hasattr(ff, 'shared_experts') else ff.w2.out_features
            pts.add(f'{prefix}-norm-out', 'norm-out', dim, grid, f'{inner}.ff_i', 'tokens-input', **first)
            dense = (f'{inner}.ff_i.shared_experts.w2', ff.shared_experts.w2) if hasattr(ff, 'shared_experts') \
                else (f'{inner}.ff_i.w2', ff.w2)
            pts.add(f'{prefix}-ffn-inner', 'ffn-inner', dense[1].in_features, grid, dense[0], 'tokens-input', **first)
            pts.add(f'{prefix}-out', 'vit-block-out', dim, grid, path, 'tokens', pick=0 if is_double else None,
                    **first)  # double: (image, text); single: [image; text; this block's Llama tokens]
        return pts.points

    def text_channels(self, config) -> int:
        """The width of ``prompt_embeds``: the wider of T5's and Llama's (``caption_channels``, 4096 both)."""
        return max(config['caption_channels'])

    def read_prompt(self, output):
        """``encode_prompt``'s (t5 (1, S, D), -, llama (K, 1, S, D'), -, pooled (1, P), -) for one prompt as
        (embeds (1, (K + 1) S, max(D, D')): [T5; Llama layer 1; ...; layer K], None, pooled)."""
        t5, _, llama, _, pooled = output[:5]
        blocks = [t5, *llama.unbind(0)]
        width = max(b.shape[-1] for b in blocks)
        blocks = [torch.nn.functional.pad(b, (0, width - b.shape[-1])) for b in blocks]
        return torch.cat(blocks, dim=1), None, pooled

    def placeholder_prompt(self, config, length: int, generator: torch.Generator):
        """As ``read_prompt`` packs them: embeds (1, (K + 1) * length, width) and a (1, text_emb_dim) pooled."""
        n_llama = max(config['llama_layers']) + 1
        return (torch.randn(1, (n_llama + 1) * length, self.text_channels(config), generator=generator), None,
                torch.randn(1, config['text_emb_dim'], generator=generator))

    def inputs(self, denoiser, noisy, timesteps, conditioning, image_hw):
        b, dtype = noisy.shape[0], noisy.dtype
        text = text_context(conditioning, b, dtype)
        n_llama = max(denoiser.config.llama_layers) + 1
        if text.shape[1] % (n_llama + 1):
            raise ValueError(f'HiDream prompt_embeds must hold 1 + {n_llama} equal-length token blocks '
                             f'(T5, then the Llama layers 1..{n_llama}; see read_prompt), got {text.shape[1]} tokens')
        chunks = text.chunk(n_llama + 1, dim=1)  # [T5; Llama layer 1; ...; Llama layer n], one length each
        t5_width, llama_width = denoiser.config.caption_channels
        return dict(hidden_states=noisy, timesteps=timesteps.float(),  # t = sigma * 1000, as the pipeline passes
                    encoder_hidden_states_t5=chunks[0][..., :t5_width],
                    encoder_hidden_states_llama3=torch.stack(chunks[1:])[..., :llama_width],
                    pooled_embeds=pooled_text(conditioning, b, dtype))

    def prediction(self, output, noisy):
        sample = output.sample if hasattr(output, 'sample') else output[0]
        b, c, h, w = noisy.shape
        if sample.shape[-2:] != (h, w):  # train() mode: (B, C, S, p*p) patches (S padded for non-square latents)
            p = int(round(sample.shape[-1] ** 0.5))
            sample = sample[:, :, :(h // p) * (w // p)].reshape(b, c, h // p, w // p, p, p)
            sample = sample.permute(0, 1, 2, 4, 3, 5).reshape(b, c, h, w)
        return -sample  # HiDream predicts x0 - noise; its pipeline negates it into the usual flow velocity
