"""Lumina 2 family: the captured activations equal those of Lumina2Pipeline's own denoiser call (tiny random model),
and the real architecture's catalog on the meta device."""
from types import SimpleNamespace

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline

from diffbackbones.backbone.conditioning.byte_tokenizer import byte_tokenizer
from diffbackbones.backbone.denoiser.capture import ActivationCapture, tokens_to_grid
from diffbackbones.models.families.lumina2 import Lumina2Family

from pipeline_parity import (PROMPT, T, assert_parity, backbone_and_noisy, diffusers_model, hooked_call, rel_l2,
                             transformers_model)


def test_lumina2_activations_match_the_pipelines_denoiser_call():
    family, name = Lumina2Family(), 'test_lumina2_tiny'
    denoiser = diffusers_model(name, 'transformer')
    pipe = Lumina2Pipeline(transformer=denoiser, scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
                           vae=diffusers_model(name, 'vae'), text_encoder=transformers_model(name),
                           tokenizer=byte_tokenizer())
    with torch.no_grad():  # the pipeline's own prompt path: system prompt, Gemma's penultimate layer
        embeds, mask, _, _ = pipe.encode_prompt('a red cube on a table', do_classifier_free_guidance=False)
    n_caption = int(mask.sum())
    assert embeds.shape == (1, 256, 32) and 0 < n_caption < 256  # right-padded to 256 tokens

    b, (h, w), t, p = 2, (4, 6), 600, 2  # a non-square latent grid (2 x 3 tokens), two images
    torch.manual_seed(1)
    noisy = torch.randn(b, 4, h, w)
    paths = {'refiner': 'noise_refiner.0', 'out': 'layers.1', 'q': 'layers.0.attn.to_q'}
    seen = {}
    handles = [denoiser.get_submodule(q).register_forward_hook(lambda m, a, out, k=k: seen.setdefault(k, out))
               for k, q in paths.items()]
    with torch.no_grad():
        stepped = pipe(prompt_embeds=embeds, prompt_attention_mask=mask, num_images_per_prompt=b, latents=noisy,
                       sigmas=[t / 1000], guidance_scale=1.0, height=8 * h, width=8 * w, output_type='latent').images
    for handle in handles:
        handle.remove()
    n = (h // p) * (w // p)
    assert seen['out'].shape[1] == n_caption + n  # the joint sequence: [unpadded caption; image]

    conditioning = SimpleNamespace(prompt_embeds=embeds, attention_mask=mask, pooled_embeds=None, guidance=None)
    # blocks: noise refiner 0 is vit-block0, the joint layers 0 and 1 are vit-block1 and vit-block2
    names = ['vit-block0-out', 'vit-block2-out', 'vit-block1-q', 'vit-block1-k', 'vit-block2-ffn-inner']
    with torch.no_grad(), ActivationCapture(denoiser, names, catalog=family.walk(denoiser, (h, w), 256)) as cap:
        output = denoiser(**family.inputs(denoiser, noisy, torch.full((b,), t), conditioning, (8 * h, 8 * w)))
    grid = lambda tokens: tokens_to_grid(tokens[:, -n:], (h // p, w // p))  # noqa: E731  image tokens are last
    assert rel_l2(cap.activations['vit-block0-out'], grid(seen['refiner'])) < 1e-5
    assert rel_l2(cap.activations['vit-block2-out'], grid(seen['out'])) < 1e-5
    assert rel_l2(cap.activations['vit-block1-q'], grid(seen['q'])) < 1e-5
    assert cap.activations['vit-block1-k'].shape == (b, 16, 2, 3)  # one kv head of 16: grouped-query attention
    assert cap.activations['vit-block2-ffn-inner'].shape == (b, 128, 2, 3)
    # the pipeline steps with the negated output: the family's prediction is the usual velocity noise - x0
    assert rel_l2(family.prediction(output, noisy), (noisy - stepped) / (t / 1000)) < 1e-5


def test_lumina2_refuses_captions_of_different_lengths():
    family, denoiser = Lumina2Family(), diffusers_model('test_lumina2_tiny', 'transformer')
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])  # one caption per image (VPD), of different lengths
    conditioning = SimpleNamespace(prompt_embeds=torch.zeros(2, 4, 32), attention_mask=mask)
    with pytest.raises(ValueError, match='different token lengths'):
        family.inputs(denoiser, torch.zeros(2, 4, 4, 4), torch.full((2,), 500), conditioning, (32, 32))


def test_lumina2_catalog_on_the_meta_device():
    denoiser = diffusers_model('lumina2', 'transformer', 'meta')
    assert sum(p.numel() for p in denoiser.parameters()) == 2_609_769_152
    catalog = Lumina2Family().walk(denoiser, (48, 80), 256)  # a 384 x 640 image: 8x VAE, patch 2
    outs = [a for a in catalog if a.kind == 'vit-block-out']
    assert [a.name for a in outs] == [f'vit-block{k}-out' for k in range(2 + 26)]  # noise refiners, joint layers
    assert [a.module for a in outs[1:3]] == ['noise_refiner.1', 'layers.0']
    assert [a.image_tokens for a in outs[1:3]] == ['all', 'last']
    assert {a.channels for a in outs} == {2304} and {a.size for a in catalog} == {(24, 40)}
    assert not any(a.layout == 'attn-map' for a in catalog)
    by_name = {a.name: a for a in catalog}
    assert (by_name['vit-block5-self-q'].channels, by_name['vit-block5-self-k'].channels) == (2304, 768)


def _pipeline(name='test_lumina2_tiny'):
    return Lumina2Pipeline(transformer=diffusers_model(name, 'transformer'),
                           scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0), vae=diffusers_model(name, 'vae'),
                           text_encoder=transformers_model(name), tokenizer=byte_tokenizer())


@torch.no_grad()
def test_the_backbone_is_the_lumina2_pipelines_denoiser_call():
    names = ['vit-block0-out', 'vit-block2-out', 'vit-block1-q', 'vit-block2-k']
    # 64 x 48 pixels: 8x VAE, patch 2, a 4 x 3 token grid
    backbone, activations, noisy = backbone_and_noisy('test_lumina2_tiny', names)
    length = backbone.spec.prompt_pipeline.max_length
    pipe = _pipeline()
    pipe.set_progress_bar_config(disable=True)
    embeds, mask = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=length)[:2]
    assert rel_l2(backbone.conditioning.prompt_embeds, embeds) < 1e-6  # system prompt, Gemma's penultimate layer
    # the system prompt and the prompt (~190 byte tokens) padded to the entry's 256: the mask must matter
    assert 0 < int(mask.sum()) < length
    assert torch.equal(backbone.conditioning.attention_mask, mask.long())
    b, (h, w), p = noisy.shape[0], noisy.shape[-2:], 2
    n = (h // p) * (w // p)
    on_grid = lambda out: tokens_to_grid(out[:, -n:], (h // p, w // p))  # noqa: E731  image last
    denoiser = pipe.transformer
    watch = {'vit-block0-out': (denoiser.noise_refiner[0], on_grid, 'output'),  # image tokens only
             'vit-block2-out': (denoiser.layers[1], on_grid, 'output'),  # [unpadded caption; image]
             'vit-block1-q': (denoiser.layers[0].attn.to_q, on_grid, 'output'),
             'vit-block2-k': (denoiser.layers[1].attn.to_k, on_grid, 'output')}  # grouped-query: one kv head
    hooked, _ = hooked_call(watch, lambda: pipe(
        prompt=PROMPT, max_sequence_length=length, num_images_per_prompt=b, latents=noisy, sigmas=[T / 1000],
        num_inference_steps=1, guidance_scale=1.0, height=8 * h, width=8 * w, output_type='latent'))
    assert_parity(activations, hooked)
