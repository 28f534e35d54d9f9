"""SANA family: the captured activations equal those of SanaPipeline's own denoiser call (tiny random model),
and the real architecture's catalog on the meta device."""
import inspect
from types import SimpleNamespace

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SanaPipeline

from diffbackbones.backbone.conditioning.byte_tokenizer import byte_tokenizer
from diffbackbones.backbone.denoiser.capture import ActivationCapture, tokens_to_grid
from diffbackbones.models.families.sana import SanaFamily

from pipeline_parity import (PROMPT, T, assert_parity, backbone_and_noisy, diffusers_model, hooked_call, rel_l2,
                             transformers_model)


def test_sana_activations_match_the_pipelines_denoiser_call():
    family, name = SanaFamily(), 'test_sana_tiny'
    denoiser = diffusers_model(name, 'transformer')
    pipe = SanaPipeline(tokenizer=byte_tokenizer(), text_encoder=transformers_model(name),
                        vae=diffusers_model(name, 'vae'), transformer=denoiser,
                        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0))
    chi = inspect.signature(SanaPipeline.__call__).parameters['complex_human_instruction'].default
    with torch.no_grad():  # the pipeline's own prompt path: complex human instruction, Gemma, token selection
        embeds, mask, _, _ = pipe.encode_prompt('a red cube on a table', do_classifier_free_guidance=False,
                                                clean_caption=False, complex_human_instruction=chi)
    assert embeds.shape == (1, 300, 32) and 0 < int(mask.sum()) < 300  # the padding is masked

    b, (h, w), t = 2, (4, 6), 600  # non-square latent grid, two images
    torch.manual_seed(1)
    noisy = torch.randn(b, 8, h, w)
    paths = {'out': 'transformer_blocks.1', 'q': 'transformer_blocks.0.attn1.to_q'}
    seen = {}
    handles = [denoiser.get_submodule(p).register_forward_hook(lambda m, a, out, k=k: seen.setdefault(k, out))
               for k, p in paths.items()]
    with torch.no_grad():
        stepped = pipe(prompt_embeds=embeds, prompt_attention_mask=mask, num_images_per_prompt=b, latents=noisy,
                       sigmas=[t / 1000], guidance_scale=1.0, height=32 * h, width=32 * w,
                       use_resolution_binning=False, output_type='latent').images
    for handle in handles:
        handle.remove()
    assert set(seen) == set(paths)  # one denoiser call, no CFG

    conditioning = SimpleNamespace(prompt_embeds=embeds, attention_mask=mask, pooled_embeds=None, guidance=None)
    names = ['vit-block1-out', 'vit-block0-q', 'vit-block1-cross-map', 'vit-block0-ffn-inner']
    with torch.no_grad(), ActivationCapture(denoiser, names, catalog=family.walk(denoiser, (h, w), 300)) as cap:
        output = denoiser(**family.inputs(denoiser, noisy, torch.full((b,), t), conditioning, (32 * h, 32 * w)))
    grid = lambda tokens: tokens_to_grid(tokens, (h, w))  # noqa: E731  row-major image tokens (patch 1)
    assert rel_l2(cap.activations['vit-block1-out'], grid(seen['out'])) < 1e-5
    assert rel_l2(cap.activations['vit-block0-q'], grid(seen['q'])) < 1e-5
    # the Euler step to sigma 0 gives the velocity back: x0 = x - s * v
    assert rel_l2(family.prediction(output, noisy), (noisy - stepped) / (t / 1000)) < 1e-5
    cross = cap.activations['vit-block1-cross-map']  # each image token's distribution over the text tokens
    assert cross.shape == (b, 300, h, w) and torch.allclose(cross.sum(1), torch.ones(b, h, w), atol=1e-5)
    assert float(cross[:, mask[0] == 0].abs().max()) < 1e-6  # padding gets no attention
    assert cap.activations['vit-block0-ffn-inner'].shape == (b, 80, h, w)  # GLUMBConv: 2.5 x 32, after the gate


def test_sana_1600m_catalog_on_the_meta_device():
    denoiser = diffusers_model('sana_1600m', 'transformer', 'meta')
    assert sum(p.numel() for p in denoiser.parameters()) == 1_604_462_752
    catalog = SanaFamily().walk(denoiser, (12, 20), 300)  # a 384 x 640 image: 32x VAE, patch 1
    outs = [a for a in catalog if a.kind == 'vit-block-out']
    assert [a.name for a in outs] == [f'vit-block{k}-out' for k in range(20)]
    assert {a.channels for a in outs} == {2240} and {a.size for a in catalog} == {(12, 20)}
    assert [a.order for a in catalog] == list(range(len(catalog)))
    kinds = {a.kind for a in catalog}
    assert 'self-map' not in kinds and {'cross-map', 'self-k', 'ffn-inner', 'norm-out', 'attn-out'} <= kinds
    assert next(a for a in catalog if a.name == 'vit-block19-ffn-inner').channels == 5600


def _pipeline(name='test_sana_tiny'):
    return SanaPipeline(tokenizer=byte_tokenizer(300), text_encoder=transformers_model(name),
                        vae=diffusers_model(name, 'vae'), transformer=diffusers_model(name, 'transformer'),
                        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0))


@torch.no_grad()
def test_the_backbone_is_the_sana_pipelines_denoiser_call():
    names = ['vit-block1-out', 'vit-block0-q', 'vit-block1-cross-q', 'vit-block0-out']
    # 64 x 96 pixels: the DC-AE's 32x, patch 1, a 2 x 3 latent grid
    backbone, activations, noisy = backbone_and_noisy('test_sana_tiny', names, size=(64, 96))
    length = backbone.spec.prompt_pipeline.max_length
    pipe = _pipeline()
    pipe.set_progress_bar_config(disable=True)
    chi = inspect.signature(SanaPipeline.__call__).parameters['complex_human_instruction'].default
    embeds, mask = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=length,
                                      complex_human_instruction=chi)[:2]
    assert rel_l2(backbone.conditioning.prompt_embeds, embeds) < 1e-6  # __call__'s instruction, Gemma, selection
    assert torch.equal(backbone.conditioning.attention_mask, mask.long()) and 0 < int(mask.sum()) < length
    b, (h, w) = noisy.shape[0], noisy.shape[-2:]
    on_grid = lambda out: tokens_to_grid(out, (h, w))  # noqa: E731  row-major tokens, patch 1
    blocks = pipe.transformer.transformer_blocks
    watch = {'vit-block1-out': (blocks[1], on_grid, 'output'), 'vit-block0-out': (blocks[0], on_grid, 'output'),
             'vit-block0-q': (blocks[0].attn1.to_q, on_grid, 'output'),
             'vit-block1-cross-q': (blocks[1].attn2.to_q, on_grid, 'output')}
    # the pipeline encodes the prompt itself, as its __call__ does (clean_caption off: its default)
    hooked, _ = hooked_call(watch, lambda: pipe(
        prompt=PROMPT, max_sequence_length=length, num_images_per_prompt=b, latents=noisy, sigmas=[T / 1000],
        num_inference_steps=1, guidance_scale=1.0, height=32 * h, width=32 * w, use_resolution_binning=False,
        output_type='latent'))
    assert_parity(activations, hooked)
