"""The video path (backbone/video.py): a (B, T, 3, H, W) clip through Wan, one pyramid per latent frame."""
from __future__ import annotations

import pytest
import torch

from diffbackbones import DiffusionBackbone, video_features

from pipeline_parity import PROMPT, T, assert_parity, tiny_pipeline

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
    one_frame = video_features(wan, _clip(5)[:, :1])[0]
    assert one_frame.shape == (2, 1, *level.shape[2:])
    # the denoiser attends across frames: frame 0's features depend on the frames after it
    assert not torch.allclose(one_frame[:, 0], level[:, 0], atol=1e-4)


@torch.no_grad()
def test_an_image_is_the_one_frame_clip(wan):
    images = _clip(1)[:, 0]
    assert torch.allclose(video_features(wan, images[:, None])[0][:, 0], wan(images)[0], atol=1e-6)


@torch.no_grad()
def test_the_clip_features_are_the_wan_pipelines_own_denoiser_call(wan):
    # WanPipeline on the backbone's own noisy clip latent (B, C, F, h, w): hooks read the same modules
    from diffbackbones.backbone.video import latent_frames
    videos = _clip(5)
    ours = {}
    frames = videos.flatten(0, 1)
    working, _ = wan.working_input(frames)
    latents = wan.vae.encode_video(working.unflatten(0, videos.shape[:2]).transpose(1, 2))
    b, c, n, h, w = latents.shape
    assert n == latent_frames(5) == 2
    noisy = wan.stages.noise(latents.reshape(b, c * n, h, w))[0].reshape(b, c, n, h, w)
    pipe = tiny_pipeline('test_wan_tiny')
    set_timesteps = pipe.scheduler.set_timesteps  # WanPipeline takes no sigmas: pin its one step at t / 1000
    pipe.scheduler.set_timesteps = lambda *a, device=None, **k: set_timesteps(sigmas=[T / 1000], device=device)
    grid = (h // 2, w // 2)

    def frames_of(tokens):  # (B, F * h' * w', C) -> (B, F, C, h', w')
        return tokens.unflatten(1, (n, *grid)).permute(0, 1, 4, 2, 3)
    denoiser = pipe.transformer
    hooks = [denoiser.blocks[0].attn1.to_q.register_forward_hook(lambda m, a, o: ours.__setitem__(IDS[0], frames_of(o))),
             denoiser.blocks[1].register_forward_hook(lambda m, a, o: ours.__setitem__(IDS[1], frames_of(o)))]
    try:
        pipe(prompt=PROMPT, num_videos_per_prompt=b, latents=noisy, num_inference_steps=1, guidance_scale=1.0,
             max_sequence_length=wan.spec.prompt_pipeline.max_length, height=8 * h, width=8 * w, num_frames=5,
             output_type='latent')
    finally:
        for hook in hooks:
            hook.remove()
    (level,) = video_features(wan, videos)
    channels = [wan._channels[name] for name in IDS]
    assert_parity({name: part for name, part in zip(IDS, level.split(channels, dim=2))}, ours)


def test_clips_of_another_length_and_image_models_are_refused(wan):
    with pytest.raises(ValueError, match='1 \\+ 4k frames .* trim it to 5 frames'):
        video_features(wan, _clip(6))
    with pytest.raises(ValueError, match='Expected videos as a \\(B, T, 3, H, W\\)'):
        video_features(wan, _clip(1)[:, 0])
    image_model = DiffusionBackbone('test_chroma_tiny', 'default', pretrained=False, prompt_cache=False)
    with pytest.raises(TypeError, match='is an image model'):
        video_features(image_model, _clip(5))
