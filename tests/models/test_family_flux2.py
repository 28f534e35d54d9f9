"""FLUX.2 (Flux2Transformer2DModel): the family's inputs and catalog reproduce Flux2Pipeline's own denoiser call."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from diffbackbones.backbone.conditioning.byte_tokenizer import byte_tokenizer
from diffbackbones.backbone.denoiser.capture import ActivationCapture, tokens_to_grid
from diffbackbones.models.families.flux2 import Flux2Family

from pipeline_parity import PROMPT, T, assert_parity, backbone_and_noisy, hooked_call, model_config, rel_l2

FAMILY = Flux2Family()


def _transformer(name: str = 'test_flux2_tiny', device: str = 'cpu'):
    from diffusers import Flux2Transformer2DModel
    torch.manual_seed(0)
    with torch.device(device):
        return Flux2Transformer2DModel.from_config(model_config(name, 'transformer')).eval()


@pytest.fixture(scope='module')
def pipe():
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Pipeline
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration
    torch.manual_seed(0)
    text_encoder = Mistral3ForConditionalGeneration(
        Mistral3Config(**model_config('test_flux2_tiny', 'text_encoder'))).eval()
    vae = AutoencoderKLFlux2.from_config(model_config('test_flux2_tiny', 'vae')).eval()
    return Flux2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False),
                         vae=vae, text_encoder=text_encoder,
                         tokenizer=byte_tokenizer(), transformer=_transformer())


def test_the_family_reproduces_the_pipelines_denoiser_call(pipe):
    transformer = pipe.transformer
    prompt_embeds, _ = pipe.encode_prompt('a red cube on a table', device='cpu')  # (1, 512, 3 * 32)
    g = torch.Generator().manual_seed(1)
    noisy = torch.randn(2, 4, 8, 12, generator=g)  # (B, C, h, w): a 64 x 96 image, 4 x 6 tokens
    grid = (4, 6)

    # plain hooks on the modules behind the ids: the image part of each, as the pipeline's call computes it
    hooked = {}
    modules = {'vit-block1-out': (transformer.transformer_blocks[1], lambda o: o[1]),
               'vit-block0-self-q': (transformer.transformer_blocks[0].attn.to_q, lambda o: o),
               'vit-block0-attn-out': (transformer.transformer_blocks[0].attn, lambda o: o[0]),  # (image, text)
               'vit-block1-ffn-inner': (transformer.transformer_blocks[1].ff.act_fn, lambda o: o),
               'vit-block2-ffn-inner': (transformer.single_transformer_blocks[0].attn.mlp_act_fn, lambda o: o[:, -24:]),
               'vit-block3-out': (transformer.single_transformer_blocks[1], lambda o: o[:, -24:])}
    handles = [m.register_forward_hook(lambda m, a, o, k=k, f=f: hooked.__setitem__(k, tokens_to_grid(f(o), grid)))
               for k, (m, f) in modules.items()]
    handles.append(transformer.register_forward_hook(lambda m, a, o: hooked.__setitem__('pred', o[0])))
    try:
        # the pipeline's latent layout: the 2x2-patchified (B, 4C, h/2, w/2) it packs by flattening
        pipe(prompt_embeds=prompt_embeds, latents=pipe._patchify_latents(noisy), height=64, width=96,
             num_inference_steps=1, sigmas=[0.7], guidance_scale=4.0, output_type='latent')
    finally:
        for h in handles:
            h.remove()

    conditioning = SimpleNamespace(prompt_embeds=prompt_embeds, attention_mask=None, pooled_embeds=None, guidance=4.0)
    kwargs = FAMILY.inputs(transformer, noisy, torch.full((2,), 700), conditioning, (64, 96))
    names = [k for k in modules]
    catalog = FAMILY.walk(transformer, (8, 12), prompt_embeds.shape[1])
    with torch.no_grad(), ActivationCapture(transformer, names, catalog=catalog) as cap:
        out = transformer(**kwargs)
    for name in names:
        assert cap.activations[name].shape == hooked[name].shape, name
        assert rel_l2(cap.activations[name], hooked[name]) < 1e-5, name
    # the prediction in the latent layout is the pipeline's, patchified (its scheduler steps on that)
    pred = FAMILY.prediction(out, noisy)
    assert pred.shape == noisy.shape
    assert rel_l2(pipe._patchify_latents(pred).flatten(2).transpose(1, 2), hooked['pred']) < 1e-5


def test_the_catalog_holds_every_block_in_execution_order():
    with torch.device('meta'):
        transformer = _transformer()
    points = FAMILY.walk(transformer, (8, 12), 512)
    assert [p.order for p in points] == list(range(len(points)))
    outs = [p.name for p in points if p.kind == 'vit-block-out']
    assert outs == ['vit-block0-out', 'vit-block1-out', 'vit-block2-out', 'vit-block3-out']
    by_name = {p.name: p for p in points}
    assert all(p.size == (4, 6) for p in points)
    assert by_name['vit-block0-self-q'].aliases == ('vit-block0-q',) and by_name['vit-block0-self-q'].channels == 32
    assert by_name['vit-block1-ffn-inner'].channels == 96 and by_name['vit-block2-ffn-inner'].channels == 96
    assert by_name['vit-block0-cross-map'].channels == 512 and by_name['vit-block0-self-map'].channels == 24
    assert 'vit-block2-self-q' not in by_name and 'vit-block2-self-map' not in by_name  # fused single blocks


def test_attention_maps_of_a_double_block_are_distributions_and_change_nothing(pipe):
    transformer = pipe.transformer
    text = torch.randn(1, 16, transformer.config.joint_attention_dim, generator=torch.Generator().manual_seed(2))
    noisy = torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(3))
    conditioning = SimpleNamespace(prompt_embeds=text, attention_mask=None, pooled_embeds=None, guidance=4.0)
    kwargs = FAMILY.inputs(transformer, noisy, torch.tensor([500]), conditioning, (64, 96))
    with torch.no_grad():
        plain = transformer(**kwargs).sample
        names = ['vit-block1-self-map', 'vit-block1-cross-map']
        with ActivationCapture(transformer, names, catalog=FAMILY.walk(transformer, (8, 12), 16)) as cap:
            mapped = transformer(**kwargs).sample
    torch.testing.assert_close(mapped, plain, rtol=0, atol=0)
    self_map, cross_map = cap.activations[names[0]], cap.activations[names[1]]
    assert self_map.shape == (1, 24, 4, 6) and cross_map.shape == (1, 16, 4, 6)
    torch.testing.assert_close(self_map.sum(1) + cross_map.sum(1), torch.ones(1, 4, 6))


@pytest.mark.parametrize('name, count, last', [('flux2_dev', 32_223_281_152, 'vit-block55-out'),  # "32B": 8 + 48
                                               ('flux2_klein_4b', 3_875_544_576, 'vit-block24-out')])  # "4B": 5 + 20
def test_the_real_configs_build_at_their_published_size(name, count, last):
    with torch.device('meta'):
        transformer = _transformer(name, 'meta')
    assert sum(p.numel() for p in transformer.parameters()) == count
    assert FAMILY.walk(transformer, (64, 64), 512)[-1].name == last


@torch.no_grad()
def test_the_backbone_is_the_flux2_pipelines_denoiser_call(pipe):
    names = ['vit-block1-out', 'vit-block0-self-q', 'vit-block0-attn-out', 'vit-block1-ffn-inner',
             'vit-block2-ffn-inner', 'vit-block3-out']
    backbone, activations, noisy = backbone_and_noisy('test_flux2_tiny', names)
    length = backbone.spec.prompt_pipeline.max_length
    embeds, _ = pipe.encode_prompt(PROMPT, device='cpu', max_sequence_length=length)
    assert rel_l2(backbone.conditioning.prompt_embeds, embeds) < 1e-6  # the pipeline's own encoding
    b, grid = noisy.shape[0], (noisy.shape[-2] // 2, noisy.shape[-1] // 2)
    n, transformer = grid[0] * grid[1], pipe.transformer
    on_grid = lambda pick: lambda out: tokens_to_grid(pick(out), grid)  # noqa: E731
    watch = {'vit-block1-out': (transformer.transformer_blocks[1], on_grid(lambda o: o[1]), 'output'),
             'vit-block0-self-q': (transformer.transformer_blocks[0].attn.to_q, on_grid(lambda o: o), 'output'),
             'vit-block0-attn-out': (transformer.transformer_blocks[0].attn, on_grid(lambda o: o[0]), 'output'),
             'vit-block1-ffn-inner': (transformer.transformer_blocks[1].ff.act_fn, on_grid(lambda o: o), 'output'),
             'vit-block2-ffn-inner': (transformer.single_transformer_blocks[0].attn.mlp_act_fn,
                                      on_grid(lambda o: o[:, -n:]), 'output'),
             'vit-block3-out': (transformer.single_transformer_blocks[1], on_grid(lambda o: o[:, -n:]), 'output')}
    # the backbone's (B, C, h, w) latent in the pipeline's layout: 2x2-patchified (B, 4C, h/2, w/2), which it packs
    hooked, _ = hooked_call(watch, lambda: pipe(
        prompt=PROMPT, num_images_per_prompt=b, max_sequence_length=length, latents=pipe._patchify_latents(noisy),
        sigmas=[T / 1000], num_inference_steps=1, guidance_scale=backbone.spec.guidance,
        height=8 * noisy.shape[-2], width=8 * noisy.shape[-1], output_type='latent'))
    assert_parity(activations, hooked)
