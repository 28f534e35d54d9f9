"""Z-Image (ZImageTransformer2DModel): the family's denoiser call is ZImagePipeline's own, on the tiny model.

The pipeline runs one denoiser call (one step, guidance off) with plain forward hooks; the family's
``inputs`` then drive the same denoiser, read once by hooks placed from the catalog's own points and once
under ``ActivationCapture``, and all must agree.

Z-Image's forward takes lists (``x``: per-sample (C, 1, h, w) latents); capture reads their token grid through
``ZImageFamily.token_grid``.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch

from diffbackbones.backbone.denoiser.capture import ActivationCapture, tokens_to_grid
from diffbackbones.models.families.zimage import ZImageFamily

from pipeline_parity import PROMPT, T, assert_parity, backbone_and_noisy, hooked_call, model_config, rel_l2

TOKENS = 96


def _tiny_pipeline():
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    from diffbackbones.backbone.conditioning.byte_tokenizer import byte_tokenizer
    torch.manual_seed(0)
    transformer = ZImageTransformer2DModel.from_config(model_config('test_zimage_tiny', 'transformer')).eval()
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(model_config('test_zimage_tiny', 'vae')).eval()
    torch.manual_seed(0)
    text_encoder = Qwen3Model(Qwen3Config(**model_config('test_zimage_tiny', 'text_encoder'))).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    return ZImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=byte_tokenizer(),
                          transformer=transformer)


def _encode_as_diffbackbones(pipe, prompt: str):
    """(1, L, D) padded states and the (1, L) tokenizer mask, as a conditioning stores them: the chat template,
    the mask into the encoder, its second-to-last hidden states (ZImagePipeline._encode_prompt's recipe)."""
    text = pipe.tokenizer.apply_chat_template([{'role': 'user', 'content': prompt}], tokenize=False,
                                              add_generation_prompt=True, enable_thinking=True)
    tokens = pipe.tokenizer(text, padding='max_length', max_length=TOKENS, truncation=True, return_tensors='pt')
    states = pipe.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask.bool(),
                               output_hidden_states=True).hidden_states[-2]
    return states, tokens.attention_mask


@torch.no_grad()
def test_zimage_family_matches_the_pipelines_own_denoiser_call():
    pipe = _tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    denoiser, family = pipe.transformer, ZImageFamily()
    captions = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=TOKENS)[0]
    states, mask = _encode_as_diffbackbones(pipe, PROMPT)
    assert 0 < mask.sum() < TOKENS  # padded: the family must drop the padding as the pipeline does
    assert rel_l2(states[0][mask[0].bool()], captions[0]) < 1e-6

    b, latent_hw = 2, (8, 8)  # 64 x 64 pixels: a 4 x 4 grid of 2 x 2 patches
    noisy = torch.randn(b, 16, *latent_hw, generator=torch.Generator().manual_seed(1))
    grid = (latent_hw[0] // 2, latent_hw[1] // 2)
    n = grid[0] * grid[1]

    # the image tokens come first in every sequence that holds them: [image; pad] or [image; pad; caption; pad]
    watch = {'vit-block0-self-q': 'noise_refiner.0.attention.to_q', 'vit-block0-out': 'noise_refiner.0',
             'vit-block1-ffn-inner': 'layers.0.feed_forward.w2', 'vit-block2-self-k': 'layers.1.attention.to_k',
             'vit-block2-out': 'layers.1'}

    def hook_all(store: dict) -> list:
        handles = []
        for name, path in watch.items():
            module = denoiser.get_submodule(path)
            if path.endswith('w2'):  # the feed-forward's gated product is w2's input
                handles.append(module.register_forward_pre_hook(
                    lambda m, args, name=name: store.__setitem__(name, tokens_to_grid(args[0][:, :n], grid))))
            else:
                handles.append(module.register_forward_hook(
                    lambda m, args, out, name=name: store.__setitem__(name, tokens_to_grid(out[:, :n], grid))))
        return handles

    hooked: dict[str, torch.Tensor] = {}
    handles = hook_all(hooked)
    try:
        stepped = pipe(prompt_embeds=captions * b, latents=noisy, sigmas=[T / 1000], num_inference_steps=1,
                       guidance_scale=0.0, height=64, width=64, output_type='latent', return_dict=False)[0]
    finally:
        for handle in handles:
            handle.remove()
    assert set(hooked) == set(watch)

    conditioning = SimpleNamespace(prompt_embeds=states, attention_mask=mask, pooled_embeds=None, guidance=None)
    catalog = {p.name: p for p in family.walk(denoiser, latent_hw, TOKENS)}
    assert all(catalog[name].module == path for name, path in watch.items())
    kwargs = family.inputs(denoiser, noisy, torch.full((b,), T), conditioning, (64, 64))

    # the family's own call, rearranged by the same hooks
    ours: dict[str, torch.Tensor] = {}
    handles = hook_all(ours)
    try:
        output = denoiser(**kwargs)
    finally:
        for handle in handles:
            handle.remove()
    # ... and under ActivationCapture, driven by the catalog alone
    with ActivationCapture(denoiser, list(watch), catalog=list(catalog.values())) as cap:
        denoiser(**kwargs)
    for name in watch:
        expected = catalog[name].channels
        assert hooked[name].shape == ours[name].shape == cap.activations[name].shape == (b, expected, *grid)
        assert rel_l2(ours[name], hooked[name]) < 1e-5, name
        assert rel_l2(cap.activations[name], hooked[name]) < 1e-5, name
    # the prediction is the velocity the pipeline's Euler step took (to sigma 0): x0 = x - sigma v
    velocity = (noisy - stepped) / (T / 1000)
    assert rel_l2(family.prediction(output, noisy), velocity) < 1e-5


def test_the_catalog_numbers_the_image_blocks_in_execution_order():
    from diffusers import ZImageTransformer2DModel
    torch.manual_seed(0)
    denoiser = ZImageTransformer2DModel.from_config(model_config('test_zimage_tiny', 'transformer'))
    catalog = ZImageFamily().walk(denoiser, (8, 8), TOKENS)
    outs = [(p.name, p.module) for p in catalog if p.kind == 'vit-block-out']
    assert outs == [('vit-block0-out', 'noise_refiner.0'), ('vit-block1-out', 'layers.0'),
                    ('vit-block2-out', 'layers.1')]  # the caption-only context refiner has no image tokens
    assert not [p for p in catalog if p.layout == 'attn-map']
    assert all(p.image_tokens == 'first' and p.size == (4, 4) for p in catalog)


def test_the_z_image_turbo_architecture_on_meta():
    from diffusers import ZImageTransformer2DModel
    with torch.device('meta'):
        denoiser = ZImageTransformer2DModel.from_config(model_config('z_image_turbo', 'transformer'))
    assert sum(p.numel() for p in denoiser.parameters()) == 6_154_908_736  # "6B" (Tongyi-MAI/Z-Image-Turbo)
    catalog = ZImageFamily().walk(denoiser, (128, 128), 512)
    outs = [p for p in catalog if p.kind == 'vit-block-out']
    assert len(outs) == 32 and {p.channels for p in outs} == {3840} and outs[-1].size == (64, 64)
    assert {p.channels for p in catalog if p.kind == 'ffn-inner'} == {10240}


@torch.no_grad()
def test_the_backbone_is_the_zimage_pipelines_denoiser_call():
    names = ['vit-block0-self-q', 'vit-block0-out', 'vit-block1-ffn-inner', 'vit-block2-self-k', 'vit-block2-out']
    backbone, activations, noisy = backbone_and_noisy('test_zimage_tiny', names)
    pipe = _tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    length = backbone.spec.prompt_pipeline.max_length
    captions = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=length)[0]
    assert backbone.conditioning.prompt_embeds.shape == captions[0][None].shape  # the unpadded prompt tokens
    assert rel_l2(backbone.conditioning.prompt_embeds, captions[0][None]) < 1e-6
    b, grid = noisy.shape[0], (noisy.shape[-2] // 2, noisy.shape[-1] // 2)
    n, denoiser = grid[0] * grid[1], pipe.transformer
    image = lambda out: tokens_to_grid(out[:, :n], grid)  # noqa: E731  (the image tokens come first)
    watch = {'vit-block0-self-q': (denoiser.noise_refiner[0].attention.to_q, image, 'output'),
             'vit-block0-out': (denoiser.noise_refiner[0], image, 'output'),
             'vit-block1-ffn-inner': (denoiser.layers[0].feed_forward.w2, image, 'input'),  # the gated product
             'vit-block2-self-k': (denoiser.layers[1].attention.to_k, image, 'output'),
             'vit-block2-out': (denoiser.layers[1], image, 'output')}
    # the pipeline encodes the prompt itself; the latent is already its layout, (B, C, h, w)
    hooked, _ = hooked_call(watch, lambda: pipe(
        prompt=PROMPT, num_images_per_prompt=b, max_sequence_length=length, latents=noisy, sigmas=[T / 1000],
        num_inference_steps=1, guidance_scale=0.0, height=8 * noisy.shape[-2], width=8 * noisy.shape[-1],
        output_type='latent'))
    assert_parity(activations, hooked)
