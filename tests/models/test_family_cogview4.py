"""CogView4 family: the captured activations equal those of CogView4Pipeline's own denoiser call (tiny random
model, the real scheduler's resolution-dependent shift), and the real architecture's catalog on the meta device."""
from types import SimpleNamespace

import torch
from diffusers import CogView4Pipeline, FlowMatchEulerDiscreteScheduler

from diffbackbones.backbone.conditioning.byte_tokenizer import byte_tokenizer
from diffbackbones.backbone.denoiser.capture import ActivationCapture, tokens_to_grid
from diffbackbones.models.families.cogview4 import CogView4Family

from pipeline_parity import (PROMPT, assert_parity, backbone_and_noisy, diffusers_model, hooked_call, rel_l2,
                             transformers_model)


def _pipeline(name='test_cogview4_tiny'):
    # CogView4-6B's scheduler: the shift depends on the image's token count (the pipeline always passes mu)
    scheduler = FlowMatchEulerDiscreteScheduler(base_shift=0.25, max_shift=0.75, base_image_seq_len=256,
                                                use_dynamic_shifting=True, time_shift_type='linear')
    return CogView4Pipeline(tokenizer=byte_tokenizer(), text_encoder=transformers_model(name),
                            vae=diffusers_model(name, 'vae'), transformer=diffusers_model(name, 'transformer'),
                            scheduler=scheduler)


def test_cogview4_activations_match_the_pipelines_denoiser_call():
    family = CogView4Family()
    pipe = _pipeline()
    denoiser = pipe.transformer
    with torch.no_grad():  # the pipeline's own prompt path: GLM's penultimate layer, left-padded to 16k tokens
        embeds, _ = pipe.encode_prompt('a red cube on a table', do_classifier_free_guidance=False)
    n_text = embeds.shape[1]
    assert embeds.shape[2] == 32 and n_text % 16 == 0

    # 4 x 9 = 36 image tokens: mu = 17/32, and the pipeline's timestep 800 is sigma 0.68 exactly, our t = 680
    b, (h, w), t, p = 2, (8, 18), 680, 2
    torch.manual_seed(1)
    noisy = torch.randn(b, 4, h, w)
    paths = {'out': 'transformer_blocks.1', 'q': 'transformer_blocks.0.attn1.to_q'}
    seen = {}
    handles = [denoiser.get_submodule(q).register_forward_hook(lambda m, a, out, k=k: seen.setdefault(k, out))
               for k, q in paths.items()]
    with torch.no_grad():
        stepped = pipe(prompt_embeds=embeds, num_images_per_prompt=b, latents=noisy, timesteps=[800],
                       num_inference_steps=1, guidance_scale=1.0, height=8 * h, width=8 * w,
                       output_type='latent').images
    for handle in handles:
        handle.remove()
    assert abs(float(pipe.scheduler.sigmas[0]) - t / 1000) < 1e-6  # the noise level the pipeline assumed

    conditioning = SimpleNamespace(prompt_embeds=embeds, attention_mask=None, pooled_embeds=None, guidance=None)
    names = ['vit-block1-out', 'vit-block0-q', 'vit-block0-attn-out']
    with torch.no_grad(), ActivationCapture(denoiser, names, catalog=family.walk(denoiser, (h, w), n_text)) as cap:
        output = denoiser(**family.inputs(denoiser, noisy, torch.full((b,), t), conditioning, (8 * h, 8 * w)))
    grid = lambda tokens: tokens_to_grid(tokens, (h // p, w // p))  # noqa: E731  row-major image tokens
    assert rel_l2(cap.activations['vit-block1-out'], grid(seen['out'][0])) < 1e-5  # blocks return (image, text)
    assert rel_l2(cap.activations['vit-block0-q'], grid(seen['q'][:, n_text:])) < 1e-5  # [text; image]
    assert cap.activations['vit-block0-attn-out'].shape == (b, 32, h // p, w // p)
    assert rel_l2(family.prediction(output, noisy), (noisy - stepped) / (t / 1000)) < 1e-5


def test_cogview4_catalog_on_the_meta_device():
    denoiser = diffusers_model('cogview4', 'transformer', 'meta')
    assert sum(p.numel() for p in denoiser.parameters()) == 6_369_118_272
    catalog = CogView4Family().walk(denoiser, (48, 80), 1024)  # a 384 x 640 image: 8x VAE, patch 2
    outs = [a for a in catalog if a.kind == 'vit-block-out']
    assert [a.name for a in outs] == [f'vit-block{k}-out' for k in range(28)]
    assert {a.channels for a in outs} == {4096} and {a.size for a in catalog} == {(24, 40)}
    # the shared feed-forward runs on the text too, and no map: q / k / v, attention and block outputs only
    assert {a.kind for a in catalog} == {'self-q', 'self-k', 'self-v', 'attn-out', 'vit-block-out'}


@torch.no_grad()
def test_the_backbone_is_the_cogview4_pipelines_denoiser_call():
    # 64 x 144 pixels: 8x VAE, patch 2, 4 x 9 = 36 image tokens, so mu = 17/32 and the pipeline's unshifted
    # timestep 800 is the shifted sigma 0.68: the backbone's t = 680 (noised at 0.68, fed timestep 800)
    t, timestep = 680, 800
    names = ['vit-block1-out', 'vit-block0-q', 'vit-block1-k', 'vit-block0-out']
    backbone, activations, noisy = backbone_and_noisy('test_cogview4_tiny', names, t=t, size=(64, 144))
    length = backbone.spec.prompt_pipeline.max_length
    pipe = _pipeline()
    pipe.set_progress_bar_config(disable=True)
    embeds = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=length)[0]
    assert rel_l2(backbone.conditioning.prompt_embeds, embeds) < 1e-6  # GLM's penultimate layer, left-padded
    assert backbone.conditioning.attention_mask is None  # as the pipeline: no mask, the padding is attended
    b, (h, w), p, n_text = noisy.shape[0], noisy.shape[-2:], 2, embeds.shape[1]
    on_grid = lambda out: tokens_to_grid(out, (h // p, w // p))  # noqa: E731  row-major tokens
    blocks = pipe.transformer.transformer_blocks
    watch = {'vit-block1-out': (blocks[1], lambda out: on_grid(out[0]), 'output'),  # blocks return (image, text)
             'vit-block0-out': (blocks[0], lambda out: on_grid(out[0]), 'output'),
             'vit-block0-q': (blocks[0].attn1.to_q, lambda out: on_grid(out[:, n_text:]), 'output'),  # [text; image]
             'vit-block1-k': (blocks[1].attn1.to_k, lambda out: on_grid(out[:, n_text:]), 'output')}
    hooked, _ = hooked_call(watch, lambda: pipe(
        prompt=PROMPT, max_sequence_length=length, num_images_per_prompt=b, latents=noisy, timesteps=[timestep],
        num_inference_steps=1, guidance_scale=1.0, height=8 * h, width=8 * w, output_type='latent'))
    assert abs(float(pipe.scheduler.sigmas[0]) - t / 1000) < 1e-6  # the pipeline assumed the backbone's noise level
    assert_parity(activations, hooked)
