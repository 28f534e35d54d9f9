"""Wan family: parity of its catalog's activations with diffusers' own WanPipeline (tiny model; an image is a
one-frame video), and the catalogs of the real 1.3 B and 14 B architectures on the meta device."""
from types import SimpleNamespace

import pytest
import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
from transformers import UMT5Config, UMT5EncoderModel

from diffbackbones.backbone.conditioning.byte_tokenizer import byte_tokenizer
from diffbackbones.backbone.denoiser.capture import ActivationCapture, tokens_to_grid
from diffbackbones.models.families.wan import WanFamily

from pipeline_parity import (PROMPT, T, assert_parity, backbone_and_noisy, hooked_call, model_config, pin_sigma,
                             rel_l2)

FAMILY = WanFamily()


def tiny_pipeline(sigma: float) -> WanPipeline:
    torch.manual_seed(0)
    transformer = WanTransformer3DModel.from_config(model_config('test_wan_tiny', 'transformer')).eval()
    torch.manual_seed(0)
    vae = AutoencoderKLWan.from_config(model_config('test_wan_tiny', 'vae')).eval()
    torch.manual_seed(0)
    text_encoder = UMT5EncoderModel(UMT5Config(**model_config('test_wan_tiny', 'text_encoder'))).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    pin_sigma(scheduler, sigma)  # WanPipeline passes the scheduler no sigmas (one step would be sigma = 1)
    pipe = WanPipeline(tokenizer=byte_tokenizer(), text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                       transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# module the pipeline run is hooked on -> how its hook reads the image tokens (B, N, C)
HOOKED = {
    'vit-block1-out': ('blocks.1', 'output'),
    'vit-block0-self-q': ('blocks.0.attn1.to_q', 'output'),
    'vit-block1-attn-out': ('blocks.1.attn1', 'output'),
    'vit-block0-cross-q': ('blocks.0.attn2.to_q', 'output'),
    'vit-block0-norm-out': ('blocks.0.ffn', 'input'),
    'vit-block1-ffn-inner': ('blocks.1.ffn.net.0', 'output'),
}


def test_capture_matches_hooks_on_the_pipelines_own_denoiser_call():
    b, h, w, t, length = 2, 8, 12, 700, 32  # latent 8 x 12 (64 x 96 pixels): a 4 x 6 token grid, not square
    pipe = tiny_pipeline(t / 1000)
    denoiser = pipe.transformer
    prompts = ['a red cube', 'a small blue sphere on a wooden table']
    grid = (h // 2, w // 2)
    noisy = torch.randn(b, 4, h, w, generator=torch.Generator().manual_seed(1))

    seen, calls = {}, []
    handles = [denoiser.register_forward_pre_hook(lambda m, a, kw: calls.append(kw), with_kwargs=True)]
    for name, (path, where) in HOOKED.items():
        module = denoiser.get_submodule(path)
        if where == 'output':
            handles.append(module.register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, out)))
        else:
            handles.append(module.register_forward_pre_hook(lambda m, a, name=name: seen.__setitem__(name, a[0])))
    handles.append(denoiser.register_forward_hook(lambda m, a, out: seen.__setitem__('prediction', out[0])))
    with torch.no_grad():
        # the pipeline's own latent layout: (B, C, F, h, w), one frame
        pipe(prompt=prompts, height=h * 8, width=w * 8, num_frames=1, num_inference_steps=1, guidance_scale=1.0,
             latents=noisy.unsqueeze(2), output_type='latent', max_sequence_length=length)
        embeds, negative = pipe.encode_prompt(prompts, do_classifier_free_guidance=False,
                                              max_sequence_length=length, device='cpu')
        # the encoder's raw states and the tokenizer's mask: the family zeroes the padding as the pipeline does
        tokens = pipe.tokenizer(prompts, padding='max_length', max_length=length, truncation=True,
                                return_tensors='pt')
        raw = pipe.text_encoder(tokens.input_ids, tokens.attention_mask).last_hidden_state
    for handle in handles:
        handle.remove()
    assert len(calls) == 1 and negative is None and calls[0]['hidden_states'].shape == (b, 4, 1, h, w)

    with_mask = SimpleNamespace(prompt_embeds=raw, attention_mask=tokens.attention_mask, pooled_embeds=None,
                                guidance=None)
    kwargs = FAMILY.inputs(denoiser, noisy, torch.full((b,), t), with_mask, (h * 8, w * 8))
    assert not torch.equal(raw, embeds) and torch.allclose(kwargs['encoder_hidden_states'], embeds)
    conditioning = SimpleNamespace(prompt_embeds=embeds, attention_mask=None, pooled_embeds=None, guidance=None)
    kwargs = FAMILY.inputs(denoiser, noisy, torch.full((b,), t), conditioning, (h * 8, w * 8))
    assert torch.equal(kwargs['timestep'], calls[0]['timestep'].to(kwargs['timestep'].dtype))
    catalog = FAMILY.walk(denoiser, (h, w), length)
    with torch.no_grad(), ActivationCapture(denoiser, list(HOOKED), catalog=catalog) as cap:
        output = denoiser(**kwargs)
    for name in HOOKED:
        ours = cap.activations[name]
        assert ours.shape[-2:] == grid, name
        assert rel_l2(ours, tokens_to_grid(seen[name], grid)) < 1e-5, name
    assert rel_l2(FAMILY.prediction(output, noisy), seen['prediction'][:, :, 0]) < 1e-5


def test_the_catalog_walks_every_block_and_the_forward_runs():
    torch.manual_seed(0)
    denoiser = WanTransformer3DModel.from_config(model_config('test_wan_tiny', 'transformer')).eval()
    catalog = FAMILY.walk(denoiser, (8, 8), 16)
    assert [p.order for p in catalog] == list(range(len(catalog)))
    assert {p.name for p in catalog if p.kind == 'vit-block-out'} == {'vit-block0-out', 'vit-block1-out'}
    assert not any(p.layout == 'attn-map' for p in catalog)  # see the family's docstring
    conditioning = SimpleNamespace(prompt_embeds=torch.randn(1, 16, 32), attention_mask=None, pooled_embeds=None,
                                   guidance=None)
    noisy = torch.randn(1, 4, 8, 8)  # a 64 x 64 image
    kwargs = FAMILY.inputs(denoiser, noisy, torch.tensor([500]), conditioning, (64, 64))
    with torch.no_grad():
        out = denoiser(**kwargs)
    assert FAMILY.prediction(out, noisy).shape == noisy.shape
    # a clip's tokens are frame-major, F x h x w: one grid of F * h rows (backbone/video.py cuts it into frames)
    assert FAMILY.token_grid((), {'hidden_states': torch.zeros(1, 4, 3, 8, 6)}, 2) == (12, 3)


@pytest.mark.parametrize('model, layers, width, count', [('wan21_t2v_1_3b', 30, 1536, 1_418_996_800),
                                                          ('wan21_t2v_14b', 40, 5120, 14_288_491_584)])
def test_the_real_architectures_on_the_meta_device(model, layers, width, count):
    with torch.device('meta'):
        denoiser = WanTransformer3DModel.from_config(model_config(model, 'transformer'))
    assert sum(p.numel() for p in denoiser.parameters()) == count
    catalog = FAMILY.walk(denoiser, (60, 104), 512)  # 480 x 832 pixels, the 1.3 B model's size
    blocks = [p for p in catalog if p.kind == 'vit-block-out']
    assert len(blocks) == layers and blocks[-1].name == f'vit-block{layers - 1}-out'
    assert {p.channels for p in blocks} == {width} and {p.size for p in catalog} == {(30, 52)}
    assert FAMILY.latent_multiple(denoiser) == 2


@torch.no_grad()
def test_the_backbone_is_the_wan_pipelines_denoiser_call():
    backbone, activations, noisy = backbone_and_noisy('test_wan_tiny', HOOKED)
    pipe = tiny_pipeline(T / 1000)
    length = backbone.spec.prompt_pipeline.max_length
    embeds, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=length, device='cpu')
    assert rel_l2(backbone.conditioning.prompt_embeds, embeds) < 1e-6  # the pipeline's own encoding
    b, grid = noisy.shape[0], (noisy.shape[-2] // 2, noisy.shape[-1] // 2)
    on_grid = lambda tokens: tokens_to_grid(tokens, grid)  # noqa: E731
    watch = {name: (pipe.transformer.get_submodule(path), on_grid, where) for name, (path, where) in HOOKED.items()}
    # the pipeline's own latent layout: (B, C, F, h, w), one frame
    hooked, _ = hooked_call(watch, lambda: pipe(
        prompt=PROMPT, num_videos_per_prompt=b, max_sequence_length=length, latents=noisy.unsqueeze(2), num_frames=1,
        num_inference_steps=1, guidance_scale=1.0, height=8 * noisy.shape[-2], width=8 * noisy.shape[-1],
        output_type='latent'))
    assert_parity(activations, hooked)
