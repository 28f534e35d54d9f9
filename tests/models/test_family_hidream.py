"""HiDream-I1 (HiDreamImageTransformer2DModel): the family's denoiser call is HiDreamImagePipeline's own, on the tiny
model (2 double + 2 single MoE blocks; two tiny CLIPs, a tiny T5 and a tiny two-layer Llama, byte tokenizers).

The pipeline runs one denoiser call (one step, guidance off) with plain forward hooks; the family's ``inputs`` (and,
in the last test, the whole backbone) then drive the same denoiser, and the two must agree.

HiDream's pipeline rescales every requested (height, width) to the area of ``default_sample_size * 8`` squared (1024 px
squared) before it checks ``latents=``; the backbone works at the input's own size, so the tests give the pipeline the
area of the test image (``default_sample_size = 8``: 64 x 64 px; 64 x 48 rescales back to 64 x 48).
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from diffbackbones.backbone.denoiser.capture import ActivationCapture, tokens_to_grid
from diffbackbones.models.families.hidream import HiDreamFamily

from pipeline_parity import PROMPT, T, assert_parity, backbone_and_noisy, hooked_call, model_config, rel_l2

TOKENS = 32
FAMILY = HiDreamFamily()


def _tiny_pipeline():
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, HiDreamImagePipeline, \
        HiDreamImageTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, LlamaConfig, LlamaForCausalLM, T5Config, \
        T5EncoderModel

    from diffbackbones.backbone.conditioning.byte_tokenizer import byte_tokenizer
    encoders = {}
    for name, (cls, config) in dict(text_encoder=(CLIPTextModelWithProjection, CLIPTextConfig),
                                    text_encoder_2=(CLIPTextModelWithProjection, CLIPTextConfig),
                                    text_encoder_3=(T5EncoderModel, T5Config),
                                    text_encoder_4=(LlamaForCausalLM, LlamaConfig)).items():
        torch.manual_seed(0)  # each encoder seeded as pipeline_prompt.py builds it
        encoders[name] = cls(config(**model_config('test_hidream_tiny', name))).eval()
    torch.manual_seed(0)
    transformer = HiDreamImageTransformer2DModel.from_config(model_config('test_hidream_tiny', 'transformer')).eval()
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(model_config('test_hidream_tiny', 'vae')).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    tokenizers = {name: byte_tokenizer() for name in ('tokenizer', 'tokenizer_2', 'tokenizer_3', 'tokenizer_4')}
    pipe = HiDreamImagePipeline(scheduler=scheduler, vae=vae, transformer=transformer, **encoders, **tokenizers)
    pipe.default_sample_size = 8  # the pipeline's target area: 64 x 64 px (see the module docstring)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _watch(denoiser, grid):
    """The hooked modules behind the compared ids, and how each output (or input) becomes (B, C, h, w): image tokens
    come first everywhere (the double blocks return (image, text); a non-square latent pads the image tokens)."""
    n = grid[0] * grid[1]
    first = lambda pick: lambda out: tokens_to_grid(pick(out)[:, :n], grid)  # noqa: E731
    double, single = denoiser.double_stream_blocks, denoiser.single_stream_blocks
    return {'vit-block0-self-k': (double[0].block.attn1.to_k, first(lambda out: out), 'output'),
            'vit-block1-out': (double[1], first(lambda out: out[0]), 'output'),
            'vit-block1-ffn-inner': (double[1].block.ff_i.shared_experts.w2, first(lambda x: x), 'input'),
            'vit-block2-self-q': (single[0].block.attn1.to_q, first(lambda out: out), 'output'),
            'vit-block3-out': (single[1], first(lambda out: out), 'output')}


@torch.no_grad()
def test_hidream_family_matches_the_pipelines_own_denoiser_call():
    pipe = _tiny_pipeline()
    denoiser = pipe.transformer
    encoded = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=TOKENS)
    t5, llama, pooled = encoded[0], encoded[2], encoded[4]
    embeds, mask, read_pooled = FAMILY.read_prompt(encoded)
    # [T5; Llama layer 1; layer 2] along tokens: the tiny Llama has max(llama_layers) + 1 = 2 layers
    assert embeds.shape == (1, 3 * TOKENS, 32) and mask is None and torch.equal(read_pooled, pooled)
    assert torch.equal(embeds[:, :TOKENS], t5) and torch.equal(embeds[:, 2 * TOKENS:], llama[1])

    b, latent_hw = 2, (8, 8)  # 64 x 64 pixels: a 4 x 4 grid of 2 x 2 patches
    noisy = torch.randn(b, 16, *latent_hw, generator=torch.Generator().manual_seed(1))
    grid = (latent_hw[0] // 2, latent_hw[1] // 2)
    watch = _watch(denoiser, grid)
    hooked, stepped = hooked_call(watch, lambda: pipe(
        prompt_embeds_t5=t5.expand(b, -1, -1), prompt_embeds_llama3=llama.expand(-1, b, -1, -1),
        pooled_prompt_embeds=pooled.expand(b, -1), latents=noisy, sigmas=[T / 1000], num_inference_steps=1,
        guidance_scale=1.0, height=64, width=64, output_type='latent', return_dict=False)[0])

    conditioning = SimpleNamespace(prompt_embeds=embeds, attention_mask=None, pooled_embeds=pooled, guidance=None)
    catalog = FAMILY.walk(denoiser, latent_hw, TOKENS)
    kwargs = FAMILY.inputs(denoiser, noisy, torch.full((b,), T), conditioning, (64, 64))
    with ActivationCapture(denoiser, list(watch), catalog=catalog) as cap:
        output = denoiser(**kwargs)
    for name in watch:
        assert cap.activations[name].shape == hooked[name].shape, name
        assert cap.activations[name].shape[-2:] == grid, name
        assert rel_l2(cap.activations[name], hooked[name]) < 1e-5, name
    # the prediction is the velocity the pipeline's Euler step took (to sigma 0): x0 = x - sigma v
    velocity = (noisy - stepped) / (T / 1000)
    assert rel_l2(FAMILY.prediction(output, noisy), velocity) < 1e-5


def test_the_catalog_runs_in_execution_order_without_maps():
    from diffusers import HiDreamImageTransformer2DModel
    torch.manual_seed(0)
    denoiser = HiDreamImageTransformer2DModel.from_config(model_config('test_hidream_tiny', 'transformer'))
    catalog = FAMILY.walk(denoiser, (8, 6), TOKENS)
    assert [p.name for p in catalog if p.kind == 'vit-block-out'] == [f'vit-block{k}-out' for k in range(4)]
    assert not [p for p in catalog if p.layout == 'attn-map']
    assert all(p.size == (4, 3) and p.grid_patch == 2 for p in catalog)


def test_the_prompt_must_split_into_the_llama_layers_the_denoiser_reads():
    from diffusers import HiDreamImageTransformer2DModel
    denoiser = HiDreamImageTransformer2DModel.from_config(model_config('test_hidream_tiny', 'transformer'))
    conditioning = SimpleNamespace(prompt_embeds=torch.zeros(1, 4 * TOKENS, 32), pooled_embeds=torch.zeros(1, 32))
    with pytest.raises(ValueError, match='1 \\+ 2 equal-length token blocks'):
        FAMILY.inputs(denoiser, torch.zeros(1, 16, 8, 8), torch.full((1,), T), conditioning, (64, 64))
    # where no text encoder is built (meta device, HiDream-I1's 8 B Llama), stand-ins of read_prompt's shapes
    full = model_config('hidream_i1_full', 'transformer')
    embeds, mask, pooled = FAMILY.placeholder_prompt(full, 128, torch.Generator().manual_seed(0))
    assert embeds.shape == (1, 33 * 128, 4096) and mask is None and pooled.shape == (1, 2048)
    assert FAMILY.text_channels(full) == 4096
    embeds, _, pooled = FAMILY.placeholder_prompt(denoiser.config, TOKENS, torch.Generator().manual_seed(0))
    kwargs = FAMILY.inputs(denoiser, torch.zeros(1, 16, 8, 8), torch.full((1,), T),
                           SimpleNamespace(prompt_embeds=embeds, pooled_embeds=pooled), (64, 64))
    assert kwargs['encoder_hidden_states_llama3'].shape == (2, 1, TOKENS, 32)


def test_the_hidream_i1_full_architecture_on_meta():
    from diffusers import HiDreamImageTransformer2DModel
    with torch.device('meta'):
        denoiser = HiDreamImageTransformer2DModel.from_config(model_config('hidream_i1_full', 'transformer'))
    # "17B": HiDream-I1-Full's transformer is 34_211_466_368 bytes of bf16
    assert sum(p.numel() for p in denoiser.parameters()) == 17_105_733_184
    llama = model_config('hidream_i1_full', 'text_encoder_4')
    assert max(denoiser.config.llama_layers) + 1 == llama['num_hidden_layers']
    catalog = FAMILY.walk(denoiser, (128, 128), 128)
    outs = [p for p in catalog if p.kind == 'vit-block-out']
    assert len(outs) == 48 and {p.channels for p in outs} == {2560} and outs[-1].size == (64, 64)


@torch.no_grad()
def test_the_backbone_is_the_hidream_pipelines_denoiser_call():
    pipe = _tiny_pipeline()
    names = list(_watch(pipe.transformer, (1, 1)))
    backbone, activations, noisy = backbone_and_noisy('test_hidream_tiny', names)  # 64 x 48 px: a 4 x 3 grid
    length = backbone.spec.prompt_pipeline.max_length
    embeds, _, pooled = FAMILY.read_prompt(pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False,
                                                                   max_sequence_length=length))
    assert rel_l2(backbone.conditioning.prompt_embeds, embeds) < 1e-6  # the pipeline's own encoding
    assert rel_l2(backbone.conditioning.pooled_embeds, pooled) < 1e-6
    assert backbone.conditioning.attention_mask is None  # HiDream attends every (padded) text token
    b, grid = noisy.shape[0], (noisy.shape[-2] // 2, noisy.shape[-1] // 2)
    watch = _watch(pipe.transformer, grid)
    # the pipeline encodes the prompt itself (num_images_per_prompt copies it to the batch); a non-square latent
    # is padded to max_seq image tokens inside the denoiser, as in the backbone
    hooked, _ = hooked_call(watch, lambda: pipe(
        prompt=PROMPT, num_images_per_prompt=b, max_sequence_length=length, latents=noisy, sigmas=[T / 1000],
        num_inference_steps=1, guidance_scale=1.0, height=8 * noisy.shape[-2], width=8 * noisy.shape[-1],
        output_type='latent'))
    assert_parity(activations, hooked)
