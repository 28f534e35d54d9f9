"""HunyuanImage 2.1 (HunyuanImageTransformer2DModel): the family reproduces HunyuanImagePipeline's own denoiser call."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from diffbackbones.backbone.conditioning.byte_tokenizer import byte_tokenizer
from diffbackbones.backbone.denoiser.capture import ActivationCapture, tokens_to_grid
from diffbackbones.models.families.hunyuan_image import HunyuanImageFamily

from pipeline_parity import PROMPT, T, assert_parity, backbone_and_noisy, hooked_call, model_config, rel_l2

FAMILY = HunyuanImageFamily()


def _transformer(name: str = 'test_hunyuan_image_tiny'):
    from diffusers import HunyuanImageTransformer2DModel
    torch.manual_seed(0)
    return HunyuanImageTransformer2DModel.from_config(model_config(name, 'transformer')).eval()


@pytest.fixture(scope='module')
def pipe():
    from diffusers import AutoencoderKLHunyuanImage, FlowMatchEulerDiscreteScheduler, HunyuanImagePipeline
    from transformers import (ByT5Tokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, T5Config,
                              T5EncoderModel)
    name = 'test_hunyuan_image_tiny'
    torch.manual_seed(0)
    text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**model_config(name, 'text_encoder'))).eval()
    text_encoder_2 = T5EncoderModel(T5Config(**model_config(name, 'text_encoder_2'))).eval()
    return HunyuanImagePipeline(  # no guider: AdaptiveProjectedMixGuidance(enabled=False), one denoiser call
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False),
        vae=AutoencoderKLHunyuanImage.from_config(model_config(name, 'vae')).eval(), text_encoder=text_encoder,
        tokenizer=byte_tokenizer(2048), text_encoder_2=text_encoder_2, tokenizer_2=ByT5Tokenizer(),
        transformer=_transformer())


def test_the_family_reproduces_the_pipelines_denoiser_call(pipe):
    transformer = pipe.transformer
    # no quoted text: the glyph (ByT5) stream is zeros with an all-zero mask, as the family passes it
    embeds, mask, embeds_2, mask_2 = pipe.encode_prompt('a red cube on a table', device='cpu')
    assert embeds.shape[1] == 1000 and not embeds_2.any() and not mask_2.any() and 0 < mask.sum() < 1000
    noisy = torch.randn(2, 8, 2, 3, generator=torch.Generator().manual_seed(1))  # a 64 x 96 image at 32x
    grid, n = (2, 3), 6

    hooked = {}
    blocks, singles = transformer.transformer_blocks, transformer.single_transformer_blocks
    modules = {'vit-block1-out': (blocks[1], lambda o: o[0]),
               'vit-block0-self-q': (blocks[0].attn.to_q, lambda o: o),
               'vit-block1-attn-out': (blocks[1].attn, lambda o: o[0]),
               'vit-block2-self-k': (singles[0].attn.to_k, lambda o: o[:, :n]),  # [image; text]
               'vit-block2-attn-out': (singles[0].attn, lambda o: o[0]),
               'vit-block3-ffn-inner': (singles[1].act_mlp, lambda o: o[:, :n]),
               'vit-block3-out': (singles[1], lambda o: o[0])}
    handles = [m.register_forward_hook(lambda m, a, o, k=k, f=f: hooked.__setitem__(k, tokens_to_grid(f(o), grid)))
               for k, (m, f) in modules.items()]
    handles.append(transformer.register_forward_hook(lambda m, a, o: hooked.__setitem__('pred', o[0])))
    try:  # the pipeline's latents are (B, C, h, w) as they are
        pipe(prompt_embeds=embeds, prompt_embeds_mask=mask, prompt_embeds_2=embeds_2, prompt_embeds_mask_2=mask_2,
             latents=noisy, height=64, width=96, num_inference_steps=1, sigmas=[0.7], output_type='latent')
    finally:
        for h in handles:
            h.remove()

    conditioning = SimpleNamespace(prompt_embeds=embeds, attention_mask=mask, pooled_embeds=None, guidance=None)
    kwargs = FAMILY.inputs(transformer, noisy, torch.full((2,), 700), conditioning, (64, 96))
    names = list(modules)
    catalog = FAMILY.walk(transformer, (2, 3), 1000 + 128)
    with torch.no_grad(), ActivationCapture(transformer, names, catalog=catalog) as cap:
        out = transformer(**kwargs)
    for name in names:
        assert cap.activations[name].shape == hooked[name].shape, name
        assert rel_l2(cap.activations[name], hooked[name]) < 1e-5, name
    pred = FAMILY.prediction(out, noisy)
    assert pred.shape == noisy.shape and rel_l2(pred, hooked['pred']) < 1e-5


def test_the_catalog_holds_every_block_in_execution_order():
    with torch.device('meta'):
        transformer = _transformer()
    points = FAMILY.walk(transformer, (2, 3), 1128)
    assert [p.order for p in points] == list(range(len(points)))
    assert [p.name for p in points if p.kind == 'vit-block-out'] == [f'vit-block{k}-out' for k in range(4)]
    assert all(p.size == (2, 3) for p in points) and not any(p.layout == 'attn-map' for p in points)
    by_name = {p.name: p for p in points}
    assert by_name['vit-block2-self-q'].aliases == ('vit-block2-q',) and by_name['vit-block2-self-q'].channels == 32
    assert by_name['vit-block0-ffn-inner'].channels == 128 and by_name['vit-block3-ffn-inner'].channels == 128


def test_the_real_config_builds_at_its_published_size():
    from diffusers import HunyuanImageTransformer2DModel
    with torch.device('meta'):
        transformer = HunyuanImageTransformer2DModel.from_config(model_config('hunyuan_image21', 'transformer'))
    assert sum(p.numel() for p in transformer.parameters()) == 17_425_795_520  # "17B"
    assert FAMILY.token_patch(transformer.config) == 1
    assert FAMILY.walk(transformer, (64, 64), 1128)[-1].name == 'vit-block59-out'


@torch.no_grad()
def test_the_backbone_is_the_hunyuan_image_pipelines_denoiser_call(pipe):
    names = ['vit-block1-out', 'vit-block0-self-q', 'vit-block2-self-k', 'vit-block3-out']
    # 64 x 128 pixels: the VAE's 32x, patch 1, a 2 x 4 latent grid (the pipeline asks for multiples of 64)
    backbone, activations, noisy = backbone_and_noisy('test_hunyuan_image_tiny', names, size=(64, 128))
    pipe.set_progress_bar_config(disable=True)
    embeds, mask, embeds_2, mask_2 = pipe.encode_prompt(PROMPT, device='cpu')
    assert rel_l2(backbone.conditioning.prompt_embeds, embeds) < 1e-6  # Qwen2.5-VL under the pipeline's template
    assert torch.equal(backbone.conditioning.attention_mask, mask.long()) and 0 < int(mask.sum()) < 1000
    assert not embeds_2.any() and not mask_2.any()  # no quoted text: the glyph stream the family passes (zeros)
    b, grid = noisy.shape[0], tuple(noisy.shape[-2:])
    n = grid[0] * grid[1]
    blocks, singles = pipe.transformer.transformer_blocks, pipe.transformer.single_transformer_blocks
    on_grid = lambda pick: lambda out: tokens_to_grid(pick(out), grid)  # noqa: E731
    watch = {'vit-block1-out': (blocks[1], on_grid(lambda o: o[0]), 'output'),  # (image, text)
             'vit-block0-self-q': (blocks[0].attn.to_q, on_grid(lambda o: o), 'output'),
             'vit-block2-self-k': (singles[0].attn.to_k, on_grid(lambda o: o[:, :n]), 'output'),  # [image; text]
             'vit-block3-out': (singles[1], on_grid(lambda o: o[0]), 'output')}
    # no guider: one conditional denoiser call; the latents are (B, C, h, w) as they are
    hooked, _ = hooked_call(watch, lambda: pipe(
        prompt=PROMPT, num_images_per_prompt=b, latents=noisy, sigmas=[T / 1000], num_inference_steps=1,
        height=32 * grid[0], width=32 * grid[1], output_type='latent'))
    assert_parity(activations, hooked)
