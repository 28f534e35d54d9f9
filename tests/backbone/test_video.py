"""The video path (backbone/video.py): a (B, T, 3, H, W) clip through Wan, one pyramid per latent frame."""
from __future__ import annotations

import pytest
import torch

from diffbackbones import DiffusionBackbone, video_features

from diffbackbones.backbone.video import latent_frames

from pipeline_parity import PROMPT, T, assert_parity, hooked_call, pin_sigma, rel_l2, tiny_pipeline

IDS = ['vit-block0-self-q', 'vit-block1-out']


@pytest.fixture(scope='module')
def wan():
    return DiffusionBackbone('test_wan_tiny', [IDS], pretrained=False, noise=dict(t=T), prompt=PROMPT,
                             prompt_cache=False)


def _clip(frames: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(2, frames, 3, 64, 48, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@torch.no_grad()
def test_a_clip_gives_one_pyramid_per_latent_frame(wan):
    (level,) = video_features(wan, _clip(5))  # 5 frames: frame 0, then one group of 4
    assert level.shape == (2, 2, wan.feature_info[0]['num_chs'], 4, 3)
    assert video_features(wan, _clip(5)[:, :1])[0].shape == (2, 1, *level.shape[2:])


@torch.no_grad()
def test_the_denoiser_attends_across_frames_the_vae_is_causal(wan):
    # two clips that differ in frames 1-4 only: the causal VAE gives the same latent frame 0, so a change in frame 0's
    # features can only come from the denoiser's attention across latent frames
    first, second = _clip(5, seed=0), _clip(5, seed=1)
    second[:, 0] = first[:, 0]
    working = [wan.working_input(clip.flatten(0, 1))[0].unflatten(0, (2, 5)).transpose(1, 2) for clip in (first, second)]
    latent_a, latent_b = (wan.vae.encode_video(w) for w in working)
    assert torch.equal(latent_a[:, :, 0], latent_b[:, :, 0]) and not torch.allclose(latent_a[:, :, 1], latent_b[:, :, 1])
    assert not torch.allclose(video_features(wan, first)[0][:, 0], video_features(wan, second)[0][:, 0], atol=1e-4)


@torch.no_grad()
def test_an_image_is_the_one_frame_clip(wan):
    images = _clip(1)[:, 0]
    assert torch.allclose(video_features(wan, images[:, None])[0][:, 0], wan(images)[0], atol=1e-6)


@torch.no_grad()
def test_the_clip_latent_is_the_vaes_and_the_features_the_wan_pipelines_own_denoiser_call(wan):
    videos = _clip(5)
    pipe = tiny_pipeline('test_wan_tiny')
    # the clean latent, as diffusers' Wan video-to-video pipeline makes it: the VAE's mode, normalised per channel
    frames = wan.working_input(videos.flatten(0, 1))[0].unflatten(0, videos.shape[:2]).transpose(1, 2)
    mean = torch.tensor(pipe.vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(pipe.vae.config.latents_std).view(1, -1, 1, 1, 1)
    expected = (pipe.vae.encode(frames).latent_dist.mode() - mean) / std
    assert rel_l2(wan.vae.encode_video(frames), expected) < 1e-6 and expected.shape[2] == latent_frames(5) == 2
    # the noisy latent the backbone hands its denoiser, given to the pipeline as its latents
    seen = {}

    def keep(module, args, kwargs):  # (returns None: a pre-hook's value would replace the inputs)
        seen.setdefault('latents', kwargs['hidden_states'])
    hook = wan.denoiser.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        (level,) = video_features(wan, videos)
    finally:
        hook.remove()
    noisy = seen['latents']
    b, _, n, h, w = noisy.shape
    pin_sigma(pipe.scheduler, T / 1000)  # WanPipeline takes no sigmas: its one step at the backbone's noise level
    grid = (h // 2, w // 2)

    def frames_of(tokens):  # (B, F * h' * w', C) -> (B, F, C, h', w')
        return tokens.unflatten(1, (n, *grid)).permute(0, 1, 4, 2, 3)
    denoiser = pipe.transformer
    watch = {IDS[0]: (denoiser.blocks[0].attn1.to_q, frames_of, 'output'),
             IDS[1]: (denoiser.blocks[1], frames_of, 'output')}
    hooked, _ = hooked_call(watch, lambda: pipe(
        prompt=PROMPT, num_videos_per_prompt=b, latents=noisy, num_inference_steps=1, guidance_scale=1.0,
        max_sequence_length=wan.spec.prompt_pipeline.max_length, height=8 * h, width=8 * w, num_frames=5,
        output_type='latent'))
    channels = [wan._channels[name] for name in IDS]
    assert_parity(dict(zip(IDS, level.split(channels, dim=2))), hooked)


def test_clips_of_another_length_and_image_models_are_refused(wan):
    with pytest.raises(ValueError, match='1 \\+ 4k frames .* trim it to 5 frames'):
        video_features(wan, _clip(6))
    with pytest.raises(ValueError, match='Expected videos as a \\(B, T, 3, H, W\\)'):
        video_features(wan, _clip(1)[:, 0])
    image_model = DiffusionBackbone('test_chroma_tiny', 'default', pretrained=False, prompt_cache=False)
    with pytest.raises(TypeError, match='is an image model'):
        video_features(image_model, _clip(5))
