"""Qwen-Image family: parity of its catalog's activations with diffusers' own QwenImagePipeline (tiny model),
and the catalog of the real 20 B architecture on the meta device."""
from types import SimpleNamespace

import torch
from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline,
                       QwenImageTransformer2DModel)
from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

from diffbackbones.backbone.conditioning.byte_tokenizer import byte_tokenizer
from diffbackbones.backbone.denoiser.capture import ActivationCapture, tokens_to_grid
from diffbackbones.models.families.flux import pack_latents, unpack_latents
from diffbackbones.models.families.qwen_image import QwenImageFamily

from pipeline_parity import PROMPT, T, assert_parity, backbone_and_noisy, hooked_call, model_config, rel_l2

FAMILY = QwenImageFamily()


def tiny_pipeline() -> QwenImagePipeline:
    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel.from_config(model_config('test_qwen_image_tiny', 'transformer')).eval()
    torch.manual_seed(0)
    vae = AutoencoderKLQwenImage.from_config(model_config('test_qwen_image_tiny', 'vae')).eval()
    torch.manual_seed(0)
    text_encoder = Qwen2_5_VLForConditionalGeneration(
        AutoConfig.for_model(**model_config('test_qwen_image_tiny', 'text_encoder'))).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    pipe = QwenImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=byte_tokenizer(),
                             transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# module the pipeline run is hooked on -> how its hook reads the image tokens (B, N, C)
HOOKED = {
    'vit-block1-out': ('transformer_blocks.1', 'output', lambda out: out[1]),  # (text, image)
    'vit-block0-self-q': ('transformer_blocks.0.attn.to_q', 'output', lambda out: out),
    'vit-block1-attn-out': ('transformer_blocks.1.attn', 'output', lambda out: out[0]),  # (image, text)
    'vit-block0-norm-out': ('transformer_blocks.0.img_mlp', 'input', lambda args: args[0]),
    'vit-block1-ffn-inner': ('transformer_blocks.1.img_mlp.net.0', 'output', lambda out: out),
}


def test_capture_matches_hooks_on_the_pipelines_own_denoiser_call():
    pipe = tiny_pipeline()
    denoiser = pipe.transformer
    prompts = ['a red cube', 'a small blue sphere on a wooden table']  # unequal lengths: a real padding mask
    b, h, w, t = 2, 8, 12, 700  # latent 8 x 12 (64 x 96 pixels): a 4 x 6 token grid, not square
    grid = (h // 2, w // 2)
    noisy = torch.randn(b, 4, h, w, generator=torch.Generator().manual_seed(1))

    seen, calls = {}, []
    handles = [denoiser.register_forward_pre_hook(lambda m, a, kw: calls.append(kw), with_kwargs=True)]
    for name, (path, where, read) in HOOKED.items():
        module = denoiser.get_submodule(path)
        if where == 'output':
            handles.append(module.register_forward_hook(
                lambda m, a, out, name=name, read=read: seen.__setitem__(name, read(out))))
        else:
            handles.append(module.register_forward_pre_hook(
                lambda m, a, name=name, read=read: seen.__setitem__(name, read(a))))
    handles.append(denoiser.register_forward_hook(lambda m, a, out: seen.__setitem__('prediction', out[0])))
    with torch.no_grad():
        pipe(prompt=prompts, height=h * 8, width=w * 8, num_inference_steps=1, sigmas=[t / 1000],
             latents=pack_latents(noisy), true_cfg_scale=1.0, output_type='latent', max_sequence_length=512)
        embeds, mask = pipe.encode_prompt(prompts, device='cpu', max_sequence_length=512)
    for handle in handles:
        handle.remove()
    assert len(calls) == 1 and calls[0]['img_shapes'] == [[(1, *grid)]] * b
    assert mask is not None and not bool(mask.all())

    conditioning = SimpleNamespace(prompt_embeds=embeds, attention_mask=mask, pooled_embeds=None, guidance=None)
    kwargs = FAMILY.inputs(denoiser, noisy, torch.full((b,), t), conditioning, (h * 8, w * 8))
    assert torch.equal(kwargs['timestep'], calls[0]['timestep'])
    assert torch.equal(kwargs['encoder_hidden_states_mask'], calls[0]['encoder_hidden_states_mask'])
    catalog = FAMILY.walk(denoiser, (h, w), embeds.shape[1])
    with torch.no_grad(), ActivationCapture(denoiser, list(HOOKED), catalog=catalog) as cap:
        output = denoiser(**kwargs)
    for name in HOOKED:
        ours = cap.activations[name]
        assert ours.shape[-2:] == grid, name
        assert rel_l2(ours, tokens_to_grid(seen[name], grid)) < 1e-5, name
    ours = FAMILY.prediction(output, noisy)
    assert rel_l2(ours, unpack_latents(seen['prediction'], noisy.shape)) < 1e-5


def test_the_catalog_walks_every_block_and_the_forward_runs():
    torch.manual_seed(0)
    denoiser = QwenImageTransformer2DModel.from_config(model_config('test_qwen_image_tiny', 'transformer')).eval()
    catalog = FAMILY.walk(denoiser, (8, 8), 16)
    assert [p.order for p in catalog] == list(range(len(catalog)))
    assert {p.name for p in catalog if p.kind == 'vit-block-out'} == {'vit-block0-out', 'vit-block1-out'}
    assert not any(p.layout == 'attn-map' for p in catalog)  # see the module docstring: no explicit map math here
    conditioning = SimpleNamespace(prompt_embeds=torch.randn(1, 16, 32), attention_mask=None, pooled_embeds=None,
                                   guidance=None)
    noisy = torch.randn(1, 4, 8, 8)  # a 64 x 64 image
    kwargs = FAMILY.inputs(denoiser, noisy, torch.tensor([500]), conditioning, (64, 64))
    with torch.no_grad():
        out = denoiser(**kwargs)
    assert FAMILY.prediction(out, noisy).shape == noisy.shape


def test_the_real_architecture_on_the_meta_device():
    with torch.device('meta'):
        denoiser = QwenImageTransformer2DModel.from_config(model_config('qwen_image', 'transformer'))
    assert sum(p.numel() for p in denoiser.parameters()) == 20_430_401_088  # "20 B"
    catalog = FAMILY.walk(denoiser, (128, 128), 512)  # 1024 x 1024 pixels
    blocks = [p for p in catalog if p.kind == 'vit-block-out']
    assert len(blocks) == 60 and blocks[-1].name == 'vit-block59-out'
    assert {p.channels for p in blocks} == {3072} and {p.size for p in catalog} == {(64, 64)}
    assert FAMILY.latent_multiple(denoiser) == 2


@torch.no_grad()
def test_the_backbone_is_the_qwen_image_pipelines_denoiser_call():
    backbone, activations, noisy = backbone_and_noisy('test_qwen_image_tiny', HOOKED)
    pipe = tiny_pipeline()
    length = backbone.spec.prompt_pipeline.max_length
    embeds, mask = pipe.encode_prompt(PROMPT, device='cpu', max_sequence_length=length)
    assert rel_l2(backbone.conditioning.prompt_embeds, embeds) < 1e-6  # the pipeline's own encoding
    assert mask is None and backbone.conditioning.attention_mask is None  # one prompt, unpadded: no mask
    b, grid = noisy.shape[0], (noisy.shape[-2] // 2, noisy.shape[-1] // 2)
    # HOOKED's input readers take the argument tuple; hooked_call hands them the first input alone
    watch = {name: (pipe.transformer.get_submodule(path), lambda x, read=read, where=where: tokens_to_grid(
        read(x if where == 'output' else (x,)), grid), where) for name, (path, where, read) in HOOKED.items()}
    hooked, _ = hooked_call(watch, lambda: pipe(
        prompt=PROMPT, num_images_per_prompt=b, max_sequence_length=length, latents=pack_latents(noisy),
        sigmas=[T / 1000], num_inference_steps=1, true_cfg_scale=1.0, height=8 * noisy.shape[-2],
        width=8 * noisy.shape[-1], output_type='latent'))
    assert_parity(activations, hooked)
