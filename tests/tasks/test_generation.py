"""Capture while a pipeline generates (``diffbackbones.tasks.generation``), on a real diffusers pipeline.

The tiny random-weight SD1.5-topology model (``test_sd_tiny``) runs as a ``StableDiffusionPipeline`` built
from its parts (prompt embeddings passed in: it ships no tokenizer), and so do the SDXL, PixArt, SD3 and
Flux ones in their own pipelines; the end-to-end labelling runs on the shipped ``shapes_sd_tiny``.
"""
import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
from PIL import Image

from diffbackbones import ActivationCapture, capture_generation
from diffbackbones.commands import main
from diffbackbones.models.loading import build_denoiser
from diffbackbones.models.zoo import get_model_spec, load_config

MAP = 'up-level1-repeat0-vit-block0-cross-map'   # an attention map: its processor is swapped in and back
IDS = ['up-level1-repeat1-vit-block0-cross-q', 'up-level2-repeat1-vit-block0-cross-q', 'up-level1-repeat2-res-out']


@pytest.fixture(scope='module')
def pipe():
    spec = get_model_spec('test_sd_tiny')
    unet = build_denoiser(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = AutoencoderKL.from_config(load_config(spec, 'vae'))
    scheduler = DDIMScheduler(beta_schedule='scaled_linear', beta_start=0.00085, beta_end=0.012, steps_offset=1,
                              clip_sample=False, set_alpha_to_one=False)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, guidance_scale=1.0, steps=4, callback=None, seed=0):
    """Run the pipeline on fixed latents and embeddings; returns (images, embeddings, per-step input latents)."""
    g = torch.Generator().manual_seed(seed)
    cond, uncond = torch.randn(2, 1, 77, 32, generator=g)
    latents = torch.randn(1, 4, 8, 8, generator=g)
    inputs = {0: latents.clone()}

    def on_step_end(p, i, t, kwargs):
        inputs[i + 1] = kwargs['latents'].clone()  # what step i + 1 starts from
        if callback is not None:
            callback(i)
        return kwargs
    out = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, num_inference_steps=steps,
               guidance_scale=guidance_scale, height=64, width=64, latents=latents, output_type='pt',
               callback_on_step_end=on_step_end)
    return out.images, (cond, uncond), inputs


def direct(pipe, names, latents, t, embedding):
    """The activations of one direct UNet call."""
    with torch.no_grad(), ActivationCapture(pipe.unet, names, detach=True) as cap:
        pipe.unet(latents, t, encoder_hidden_states=embedding)
    return cap.activations


def no_hooks(unet) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in unet.modules())


def test_capture_at_chosen_steps_equals_a_direct_unet_call_and_changes_nothing(pipe):
    reference, _, _ = generate(pipe)
    with capture_generation(pipe, IDS, steps=[0, 2]):
        images, _, _ = generate(pipe)
    assert torch.equal(images, reference)  # hooks only read: the generation is the pipeline's own, exactly
    processors = dict(pipe.unet.attn_processors)
    with capture_generation(pipe, IDS + [MAP], steps=[0, 2, -1]) as run:
        images, (cond, _), inputs = generate(pipe)
    # a map's explicit attention (chosen calls only) rounds differently from the fused kernel
    torch.testing.assert_close(images, reference, rtol=0, atol=1e-4)
    assert run.steps == [0, 2, 3] and run.calls == 4 and run.kept[2] == 'all'
    assert no_hooks(pipe.unet) and dict(pipe.unet.attn_processors) == processors
    timesteps = pipe.scheduler.timesteps
    for step in (0, 2, 3):
        assert run.timesteps[step] == float(timesteps[step])
        expected = direct(pipe, IDS + [MAP], inputs[step], timesteps[step], cond)
        for name in IDS + [MAP]:
            got = run.activations[step][name]
            assert got.device.type == 'cpu' and not got.requires_grad
            torch.testing.assert_close(got, expected[name], rtol=0, atol=1e-6)
    assert run.activations[-1] is run.activations[3]
    # levels: grouped by stride, fine to coarse, as the backbone's
    assert [list(level) for level in run.levels_ids] == [[IDS[1]], [IDS[0], IDS[2], MAP]]
    assert [info['reduction'] for info in run.feature_info] == [16, 32]
    levels = run[2]
    assert [tuple(level.shape) for level in levels] == [(1, 64, 4, 4), (1, run.feature_info[1]['num_chs'], 2, 2)]
    torch.testing.assert_close(levels[1][:, :64], run.activations[2][IDS[0]])


def test_preset_names_need_a_model_and_resolve_like_the_backbone(pipe):
    with pytest.raises(ValueError, match='model='):
        capture_generation(pipe, 'practical', steps=[0])
    run = capture_generation(pipe, 'practical', steps=[0], model='test_sd_tiny')
    assert [list(level) for level in run.levels_ids] == [list(level) for level in get_model_spec('test_sd_tiny').presets['practical']]
    assert capture_generation(pipe, 'test_sd_tiny_practical', steps=[0]).levels_ids == run.levels_ids
    with pytest.raises(ValueError, match='closest valid ids'):
        capture_generation(pipe, ['up-level1-repeat1-vit-block0-cross-qq'], steps=[0])
    with pytest.raises(ValueError, match="keep must be"):
        capture_generation(pipe, IDS, steps=[0], keep='negative')
    with pytest.raises(ValueError, match='non-empty list'):
        capture_generation(pipe, IDS, steps=[])


def test_guidance_keeps_the_conditional_half_by_default(pipe):
    runs = {}
    for keep in ('cond', 'uncond', 'both'):
        with capture_generation(pipe, IDS, steps=[1], keep=keep) as runs[keep]:
            _, (cond, uncond), inputs = generate(pipe, guidance_scale=3.0, steps=2)
    assert pipe.do_classifier_free_guidance  # the call did batch [uncond; cond]
    t = pipe.scheduler.timesteps[1]
    for keep, embedding in (('cond', cond), ('uncond', uncond)):
        run = runs[keep]
        assert run.kept[1] == keep
        expected = direct(pipe, IDS, inputs[1], t, embedding)
        for name in IDS:
            assert run.activations[1][name].shape[0] == 1
            torch.testing.assert_close(run.activations[1][name], expected[name], rtol=1e-5, atol=1e-5)
    both = runs['both'].activations[1][IDS[0]]
    assert runs['both'].kept[1] == 'both' and both.shape[0] == 2
    torch.testing.assert_close(both[1:], runs['cond'].activations[1][IDS[0]], rtol=0, atol=0)
    torch.testing.assert_close(both[:1], runs['uncond'].activations[1][IDS[0]], rtol=0, atol=0)
    with pytest.raises(ValueError, match='without classifier-free guidance'):
        with capture_generation(pipe, IDS, steps=[0], keep='uncond'):
            generate(pipe, guidance_scale=1.0, steps=1)
    assert no_hooks(pipe.unet)


def test_a_step_that_never_runs_is_a_clear_error_and_hooks_go_on_any_exit(pipe):
    processors = dict(pipe.unet.attn_processors)
    with pytest.raises(ValueError, match=r'step\(s\) \[4\] never run: this generation calls the denoiser 4 times'):
        with capture_generation(pipe, IDS, steps=[1, 4]):
            generate(pipe, steps=4)
    assert no_hooks(pipe.unet)
    with pytest.raises(ValueError, match=r'step\(s\) \[0\] never ran: the denoiser was called 0 time'):
        with capture_generation(pipe, IDS, steps=[0]):
            pass
    assert no_hooks(pipe.unet)

    def fail(i):
        if i == 1:  # the capture is armed for step 2 by now, map processor installed
            raise RuntimeError('stopped by the user')
    with pytest.raises(RuntimeError, match='stopped by the user'):
        with capture_generation(pipe, IDS + [MAP], steps=[2]) as run:
            generate(pipe, callback=fail)
    assert no_hooks(pipe.unet) and dict(pipe.unet.attn_processors) == processors
    assert run.calls == 2 and not run.activations


def test_generate_labelled_command_labels_generated_shapes(tmp_path, capsys):
    out = tmp_path / 'labelled'
    assert main(['generate-labelled', '--out', str(out), '--images', '2', '--steps', '2', '--real', '6',
                 '--held-out', '3', '--pixels-per-image', '400', '--classifiers', '1', '--max-epochs', '6']) == 0
    printed = capsys.readouterr().out
    assert 'held-out real images: pixel accuracy' in printed
    for sub in ('images', 'masks', 'pictures'):
        assert sorted(p.name for p in (out / sub).iterdir()) == ['00000.png', '00001.png']
    masks = [np.asarray(Image.open(out / 'masks' / f'0000{i}.png')) for i in range(2)]
    assert all(m.shape == (128, 128) and m.dtype == np.uint8 and m.max() <= 3 for m in masks)
    # generated shapes pictures get labelled as such: mostly background, and shapes found on each
    # (a labeller that answers one class everywhere, or garbage, fails this)
    for mask in masks:
        counts = np.bincount(mask.ravel(), minlength=4)
        assert counts.argmax() == 0 and 0.03 < 1 - counts[0] / mask.size < 0.6, counts
    assert Image.open(out / 'pictures' / '00000.png').size == (256, 128)
    saved = json.loads((out / 'labelled.json').read_text())
    scores = saved['held_out']
    # the classifier labels held-out real shapes better than answering the most frequent class everywhere
    assert scores['accuracy'] > scores['majority'] + 0.03 and scores['miou'] > 0.4, scores
    assert saved['settings']['t'] == 1 and saved['settings']['n_classes'] == 4  # DDIM's last step: t=1
    assert sum(saved['pixels_per_class'][0]) == 128 * 128
    with pytest.raises(SystemExit, match='earlier run'):
        main(['generate-labelled', '--out', str(out), '--images', '1'])


# --- the other families: SDXL, PixArt, SD3, Flux, DiT pipelines on their tiny random-weight denoisers --

def _family_pipe(model):
    """The diffusers pipeline of a tiny zoo model, from its denoiser and VAE only (prompt embeddings are
    passed in: no text encoders, no tokenizers)."""
    from diffusers import (DiTPipeline, FlowMatchEulerDiscreteScheduler, FluxPipeline, PixArtAlphaPipeline,
                           StableDiffusion3Pipeline, StableDiffusionXLPipeline)
    spec = get_model_spec(model)
    denoiser = build_denoiser(spec).eval()  # as from_pretrained gives it (built from its config, it trains)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = AutoencoderKL.from_config(load_config(spec, 'vae'))
    ddim = dict(clip_sample=False, set_alpha_to_one=False, steps_offset=1, beta_start=spec.beta_start,
                beta_end=spec.beta_end, beta_schedule='scaled_linear' if model == 'test_sdxl_tiny' else 'linear')
    no_text = dict(text_encoder=None, tokenizer=None)
    if model == 'test_sdxl_tiny':
        pipe = StableDiffusionXLPipeline(vae=vae, unet=denoiser, scheduler=DDIMScheduler(**ddim), text_encoder_2=None,
                                         tokenizer_2=None, add_watermarker=False, **no_text)
    elif model == 'test_dit_tiny':
        pipe = DiTPipeline(transformer=denoiser, vae=vae, scheduler=DDIMScheduler(**ddim))
    elif model == 'test_pixart_tiny':
        pipe = PixArtAlphaPipeline(vae=vae, transformer=denoiser, scheduler=DDIMScheduler(**ddim), **no_text)
    elif model == 'test_sd3_tiny':
        pipe = StableDiffusion3Pipeline(transformer=denoiser, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                        vae=vae, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
                                        tokenizer_3=None, **no_text)
    else:
        pipe = FluxPipeline(transformer=denoiser, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
                            text_encoder_2=None, tokenizer_2=None, **no_text)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# model: (layer ids of its catalog, text tokens, text width, pooled width, guidance scale, batched CFG)
FAMILIES = {
    'test_sdxl_tiny': (['up-level1-repeat1-vit-block0-cross-q', 'up-level1-repeat0-vit-block0-cross-map',
                        'up-level2-repeat1-res-out'], 77, 32, 32, 3.0, True),
    'test_pixart_tiny': (['vit-block1-out', 'vit-block2-cross-q', 'vit-block1-cross-map'], 16, 32, None, 3.0, True),
    'test_sd3_tiny': (['vit-block0-out', 'vit-block0-self2-q', 'vit-block1-cross-map'], 24, 32, 64, 3.0, True),
    'test_flux_tiny': (['vit-block1-out', 'vit-block2-self-q', 'vit-block3-cross-map'], 16, 32, 24, 3.5, False),
}


def _family_generate(model, pipe, steps=3):
    """Fixed latents and embeddings; returns (latents out, embeddings, per-step input latents)."""
    _, n, width, pooled, guidance, _ = FAMILIES[model]
    g = torch.Generator().manual_seed(0)
    text = dict(zip(('cond', 'uncond'), torch.randn(2, 1, n, width, generator=g)))
    if pooled:
        text.update(zip(('cond_pooled', 'uncond_pooled'), torch.randn(2, 1, pooled, generator=g)))
    # Flux's latents are packed: 2x2 patches of a (4, 8, 8) latent as (16 tokens, 16 channels)
    latents = torch.randn(*((1, 16, 16) if model == 'test_flux_tiny' else (1, 4, 8, 8)), generator=g)
    inputs = {0: latents.clone()}
    kwargs = dict(prompt_embeds=text['cond'], num_inference_steps=steps, guidance_scale=guidance, height=64, width=64,
                  latents=latents, output_type='latent')
    if model == 'test_pixart_tiny':  # old-style callback; no resolution bins at this size
        mask = torch.ones(1, n)
        kwargs.update(negative_prompt=None, negative_prompt_embeds=text['uncond'], prompt_attention_mask=mask,
                      negative_prompt_attention_mask=mask, use_resolution_binning=False,
                      callback=lambda i, t, x: inputs.__setitem__(i + 1, x.clone()))
    else:
        def on_step_end(p, i, t, kw):
            inputs[i + 1] = kw['latents'].clone()
            return kw
        kwargs.update(pooled_prompt_embeds=text['cond_pooled'], callback_on_step_end=on_step_end)
        if model != 'test_flux_tiny':  # Flux: guidance distilled into an embedding, no unconditional half
            kwargs.update(negative_prompt_embeds=text['uncond'], negative_pooled_prompt_embeds=text['uncond_pooled'])
    return pipe(**kwargs).images, text, inputs


def _family_direct(model, pipe, names, latents, t, text, half):
    """The activations of one direct denoiser call, on one half's conditioning."""
    emb, pooled = text[half], text.get(f'{half}_pooled')
    t = torch.as_tensor(t).reshape(1)
    if model == 'test_sdxl_tiny':
        denoiser = pipe.unet
        kwargs = dict(sample=latents, timestep=t, encoder_hidden_states=emb,
                      added_cond_kwargs=dict(text_embeds=pooled, time_ids=torch.tensor([[64., 64, 0, 0, 64, 64]])))
    elif model == 'test_pixart_tiny':
        denoiser = pipe.transformer
        kwargs = dict(hidden_states=latents, timestep=t, encoder_hidden_states=emb,
                      encoder_attention_mask=torch.ones(1, emb.shape[1]),
                      added_cond_kwargs=dict(resolution=None, aspect_ratio=None))
    elif model == 'test_sd3_tiny':
        denoiser = pipe.transformer
        kwargs = dict(hidden_states=latents, timestep=t, encoder_hidden_states=emb, pooled_projections=pooled)
    else:
        from diffbackbones.models.families import image_ids
        denoiser = pipe.transformer
        kwargs = dict(hidden_states=latents, timestep=t, encoder_hidden_states=emb, pooled_projections=pooled,
                      img_ids=image_ids((4, 4), 'cpu', torch.float32), txt_ids=torch.zeros(emb.shape[1], 3),
                      guidance=torch.full((1,), FAMILIES[model][4]))
    with torch.no_grad(), ActivationCapture(denoiser, names, detach=True) as cap:
        denoiser(**kwargs)
    return cap.activations


@pytest.mark.parametrize('model', list(FAMILIES))
def test_capture_on_the_other_families_pipelines(model):
    ids, n_text, *_, guided = FAMILIES[model]
    pipe = _family_pipe(model)
    denoiser = pipe.unet if model == 'test_sdxl_tiny' else pipe.transformer
    reference, _, _ = _family_generate(model, pipe)
    # steps [1, -1]: armed on entering (a negative step might be 0), disarmed at call 0 (before any hook ran late)
    with capture_generation(pipe, ids, steps=[1, -1]) as run:
        latents, text, inputs = _family_generate(model, pipe)
    torch.testing.assert_close(latents, reference, rtol=0, atol=1e-4)  # maps: explicit attention, else exact
    assert run.steps == [1, 2] and run.calls == 3 and no_hooks(denoiser) and 'encode_prompt' not in vars(pipe)
    timesteps = pipe.scheduler.timesteps / 1000 if model == 'test_flux_tiny' else pipe.scheduler.timesteps  # Flux: sigma
    for step in (1, 2):
        assert run.kept[step] == ('cond' if guided else 'all')
        assert run.timesteps[step] == float(timesteps[step])
        expected = _family_direct(model, pipe, ids, inputs[step], timesteps[step], text, 'cond')
        for name in ids:
            assert run.activations[step][name].shape[0] == 1
            torch.testing.assert_close(run.activations[step][name], expected[name], rtol=1e-5, atol=1e-5)
    # levels: every id here at stride 16 (transformers: VAE 8 x patch 2), but SDXL's res-out at 8
    strides = [8, 16] if model == 'test_sdxl_tiny' else [16]
    assert [info['reduction'] for info in run.feature_info] == strides
    levels = run[-1]
    assert [tuple(level.shape) for level in levels] == [(1, info['num_chs'], 64 // r, 64 // r)
                                                         for info, r in zip(run.feature_info, strides)]
    assert levels[-1].shape[1] == sum(run.activations[2][n].shape[1] for n in run.levels_ids[-1])
    cross_map = [n for n in ids if n.endswith('cross-map')][0]
    assert run.activations[2][cross_map].shape[1] == n_text  # the tokens the pipeline passed, not 77
    if guided:  # the unconditional half, from the pipeline's own batch
        with capture_generation(pipe, ids, steps=[0], keep='uncond') as run:
            _family_generate(model, pipe, steps=1)
        expected = _family_direct(model, pipe, ids, inputs[0], pipe.scheduler.timesteps[0], text, 'uncond')
        assert run.kept[0] == 'uncond'
        for name in ids:
            torch.testing.assert_close(run.activations[0][name], expected[name], rtol=1e-5, atol=1e-5)
    else:
        with pytest.raises(ValueError, match='without classifier-free guidance'):
            with capture_generation(pipe, ids, steps=[0], keep='uncond'):
                _family_generate(model, pipe, steps=1)
    assert no_hooks(denoiser) and 'encode_prompt' not in vars(pipe)


@pytest.mark.parametrize('keep', ['cond', 'uncond'])
def test_dit_guidance_keeps_the_right_half_of_its_conditional_first_batch(keep):
    """DiTPipeline batches [class labels; null class 1000] under guidance, the conditional half first, and
    says so nowhere but in the labels: the kept half must equal a direct call on that half's labels."""
    from diffusers.utils.torch_utils import randn_tensor
    pipe = _family_pipe('test_dit_tiny')  # in eval mode: no label dropout
    ids = ['vit-block1-out', 'vit-block2-self-q']
    with capture_generation(pipe, ids, steps=[0], keep=keep) as run:
        pipe(class_labels=[3], num_inference_steps=2, guidance_scale=4.0, generator=torch.Generator().manual_seed(0),
             output_type='np')
    assert run.kept[0] == keep
    latents = randn_tensor((1, 4, 8, 8), generator=torch.Generator().manual_seed(0))  # the pipeline's first draw
    label = 3 if keep == 'cond' else 1000
    with torch.no_grad(), ActivationCapture(pipe.transformer, ids, detach=True) as cap:
        t = torch.tensor([run.timesteps[0]]).long()
        pipe.transformer(latents, timestep=t, class_labels=torch.tensor([label]))
    for name in ids:
        assert run.activations[0][name].shape[0] == 1
        torch.testing.assert_close(run.activations[0][name], cap.activations[name], rtol=1e-5, atol=1e-5, msg=name)
