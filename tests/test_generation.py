"""Capture while a pipeline generates (``diffbackbones.generation``), on a real diffusers pipeline.

The tiny random-weight SD1.5-topology model (``test_sd_tiny``) runs as a ``StableDiffusionPipeline`` built
from its parts (prompt embeddings passed in: it ships no tokenizer); the end-to-end labelling runs on
the shipped ``shapes_sd_tiny``.
"""
import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
from PIL import Image

from diffbackbones import ActivationCapture, capture_generation
from diffbackbones.commands import main
from diffbackbones.loading import build_denoiser
from diffbackbones.zoo import get_model_spec, load_config

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
    assert Image.open(out / 'pictures' / '00000.png').size == (256, 128)
    saved = json.loads((out / 'labelled.json').read_text())
    scores = saved['held_out']
    # the classifier labels held-out real shapes better than answering the most frequent class everywhere
    assert scores['accuracy'] > scores['majority'] + 0.03 and scores['miou'] > 0.4, scores
    assert saved['settings']['t'] == 1 and saved['settings']['n_classes'] == 4  # DDIM's last step: t=1
    assert sum(saved['pixels_per_class'][0]) == 128 * 128
    with pytest.raises(SystemExit, match='earlier run'):
        main(['generate-labelled', '--out', str(out), '--images', '1'])
