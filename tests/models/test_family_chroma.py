"""Chroma (ChromaTransformer2DModel): the family's denoiser call is ChromaPipeline's own, on the tiny model.

The pipeline runs one denoiser call (one step, guidance off) with plain forward hooks; the family's
``inputs`` then drive the same denoiser under ``ActivationCapture``, and the two must agree.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch

from diffbackbones.backbone.denoiser.capture import ActivationCapture, tokens_to_grid
from diffbackbones.models.families.chroma import ChromaFamily, chroma_attention_mask
from diffbackbones.models.families.flux import pack_latents, unpack_latents

from pipeline_parity import PROMPT, T, assert_parity, backbone_and_noisy, hooked_call, model_config, rel_l2

TOKENS = 48


def _tiny_pipeline():
    from diffusers import AutoencoderKL, ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler
    from transformers import T5Config, T5EncoderModel

    from diffbackbones.backbone.conditioning.byte_tokenizer import byte_tokenizer
    torch.manual_seed(0)
    transformer = ChromaTransformer2DModel.from_config(model_config('test_chroma_tiny', 'transformer')).eval()
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(model_config('test_chroma_tiny', 'vae')).eval()
    torch.manual_seed(0)
    text_encoder = T5EncoderModel(T5Config(**model_config('test_chroma_tiny', 'text_encoder'))).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    return ChromaPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=byte_tokenizer(),
                          transformer=transformer)


@torch.no_grad()
def test_chroma_family_matches_the_pipelines_own_denoiser_call():
    pipe = _tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    denoiser, family = pipe.transformer, ChromaFamily()
    embeds, _, pipe_mask = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False,
                                              max_sequence_length=TOKENS)[:3]
    # the conditioning holds encode_prompt's mask (the prompt and one pad token): it must matter
    assert 0 < pipe_mask.sum() < TOKENS - 1
    assert torch.equal(chroma_attention_mask(pipe_mask, 1, 0), pipe_mask.bool())

    b, latent_hw = 2, (8, 8)  # 64 x 64 pixels: a 4 x 4 grid of packed 2 x 2 patches
    noisy = torch.randn(b, 16, *latent_hw, generator=torch.Generator().manual_seed(1))
    grid = (latent_hw[0] // 2, latent_hw[1] // 2)
    n = grid[0] * grid[1]

    # what the pipeline's denoiser call computes, hooked on the modules behind the captured ids
    hooked: dict[str, torch.Tensor] = {}
    watch = {'vit-block1-out': (denoiser.transformer_blocks[1], lambda out: out[1]),  # (text, image)
             'vit-block0-self-k': (denoiser.transformer_blocks[0].attn.to_k, lambda out: out),  # image only
             'vit-block2-self-q': (denoiser.single_transformer_blocks[0].attn.to_q, lambda out: out[:, -n:]),
             'vit-block3-out': (denoiser.single_transformer_blocks[1], lambda out: out[:, -n:])}  # [text; image]
    handles = [module.register_forward_hook(lambda m, a, out, name=name, pick=pick: hooked.__setitem__(
        name, tokens_to_grid(pick(out), grid))) for name, (module, pick) in watch.items()]
    try:
        stepped = pipe(prompt_embeds=embeds.expand(b, -1, -1), prompt_attention_mask=pipe_mask.bool().expand(b, -1),
                       latents=pack_latents(noisy), sigmas=[T / 1000], num_inference_steps=1, guidance_scale=1.0,
                       height=64, width=64, output_type='latent', return_dict=False)[0]
    finally:
        for handle in handles:
            handle.remove()
    assert set(hooked) == set(watch)

    conditioning = SimpleNamespace(prompt_embeds=embeds, attention_mask=pipe_mask.long(), pooled_embeds=None,
                                   guidance=None)
    catalog = family.walk(denoiser, latent_hw, TOKENS)
    kwargs = family.inputs(denoiser, noisy, torch.full((b,), T), conditioning, (64, 64))
    with ActivationCapture(denoiser, list(watch), catalog=catalog) as cap:
        output = denoiser(**kwargs)
    for name in watch:
        assert cap.activations[name].shape == hooked[name].shape == (b, denoiser.inner_dim, *grid)
        assert rel_l2(cap.activations[name], hooked[name]) < 1e-5, name
    # the prediction is the velocity the pipeline's Euler step took (to sigma 0): x0 = x - sigma v
    velocity = (noisy - unpack_latents(stepped, noisy.shape)) / (T / 1000)
    assert rel_l2(family.prediction(output, noisy), velocity) < 1e-5


def test_the_catalog_runs_in_execution_order_without_maps():
    from diffusers import ChromaTransformer2DModel
    torch.manual_seed(0)
    denoiser = ChromaTransformer2DModel.from_config(model_config('test_chroma_tiny', 'transformer'))
    catalog = ChromaFamily().walk(denoiser, (8, 8), TOKENS)
    blocks = [p.name for p in catalog if p.kind == 'vit-block-out']
    assert blocks == [f'vit-block{k}-out' for k in range(4)]
    assert not [p for p in catalog if p.layout == 'attn-map']  # the map processor ignores Chroma's mask
    assert all(p.size == (4, 4) and p.grid_patch == 2 for p in catalog)


def test_the_chroma1_hd_architecture_on_meta():
    from diffusers import ChromaTransformer2DModel
    with torch.device('meta'):
        denoiser = ChromaTransformer2DModel.from_config(model_config('chroma', 'transformer'))
    assert sum(p.numel() for p in denoiser.parameters()) == 8_899_983_424  # "8.9B" (lodestones/Chroma1-HD)
    catalog = ChromaFamily().walk(denoiser, (128, 128), 512)
    outs = [p for p in catalog if p.kind == 'vit-block-out']
    assert len(outs) == 57 and {p.channels for p in outs} == {3072} and outs[-1].size == (64, 64)


@torch.no_grad()
def test_the_backbone_is_the_chroma_pipelines_denoiser_call():
    names = ['vit-block1-out', 'vit-block0-self-k', 'vit-block2-self-q', 'vit-block3-out']
    backbone, activations, noisy = backbone_and_noisy('test_chroma_tiny', names)
    pipe = _tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    embeds, _, mask = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False,
                                         max_sequence_length=backbone.spec.prompt_pipeline.max_length)[:3]
    assert rel_l2(backbone.conditioning.prompt_embeds, embeds) < 1e-6  # the pipeline's own encoding
    assert torch.equal(backbone.conditioning.attention_mask, mask.long())
    b, grid = noisy.shape[0], (noisy.shape[-2] // 2, noisy.shape[-1] // 2)
    n, denoiser = grid[0] * grid[1], pipe.transformer
    on_grid = lambda pick: lambda out: tokens_to_grid(pick(out), grid)  # noqa: E731
    watch = {'vit-block1-out': (denoiser.transformer_blocks[1], on_grid(lambda out: out[1]), 'output'),
             'vit-block0-self-k': (denoiser.transformer_blocks[0].attn.to_k, on_grid(lambda out: out), 'output'),
             'vit-block2-self-q': (denoiser.single_transformer_blocks[0].attn.to_q, on_grid(lambda o: o[:, -n:]), 'output'),
             'vit-block3-out': (denoiser.single_transformer_blocks[1], on_grid(lambda out: out[:, -n:]), 'output')}
    # the boolean mask (chroma_attention_mask): the pipeline's own float cast would mask nothing
    hooked, _ = hooked_call(watch, lambda: pipe(
        prompt_embeds=embeds.expand(b, -1, -1), prompt_attention_mask=mask.bool().expand(b, -1),
        latents=pack_latents(noisy), sigmas=[T / 1000], num_inference_steps=1, guidance_scale=1.0,
        height=8 * noisy.shape[-2], width=8 * noisy.shape[-1], output_type='latent'))
    assert_parity(activations, hooked)
