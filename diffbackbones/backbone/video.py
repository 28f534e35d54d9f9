"""Video features: a clip through a video denoiser (Wan), one feature pyramid per latent frame.

    levels = video_features(backbone, videos)     # videos (B, T, 3, H, W) in [-1, 1], T = 1 + 4k
    levels[i].shape == (B, 1 + k, C_i, ceil(H / s_i), ceil(W / s_i))

The tensor layout: frames on dimension 1, as torchvision's video models take them per clip. Wan's VAE is causal and
compresses time 4x after the first frame: latent frame 0 is input frame 0 alone, latent frame j >= 1 summarises input
frames 4j - 3 .. 4j (and sees every earlier frame). So a clip of T = 1 + 4k frames gives 1 + k pyramids, and other
lengths are refused (the VAE would drop the frames past the last group of four). The denoiser attends across all
latent frames at once. An image is the one-frame case: ``video_features(backbone, images[:, None])[i][:, 0]`` is
``backbone(images)[i]``. timm and mmseg see the image path only; this is a library call.
"""
from __future__ import annotations

import torch

__all__ = ['video_features', 'latent_frames']

TIME_COMPRESSION = 4


def latent_frames(n_frames: int) -> int:
    """Latent frames of a clip of ``n_frames`` (1 + 4k) frames."""
    return 1 + (n_frames - 1) // TIME_COMPRESSION


def video_features(backbone, videos: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The backbone's levels for each latent frame of ``videos`` (B, T, 3, H, W): (B, T', C_i, h_i, w_i) each."""
    family, encoder = backbone.family, backbone.vae
    if not (hasattr(family, 'video_inputs') and hasattr(encoder, 'encode_video')):
        raise TypeError(f'{backbone.spec.name!r} is an image model; video features need a video denoiser and VAE '
                        '(Wan: wan21_t2v_1_3b, wan21_t2v_14b).')
    if not (torch.is_tensor(videos) and videos.ndim == 5 and videos.shape[2] == 3):
        raise ValueError(f'Expected videos as a (B, T, 3, H, W) tensor in [-1, 1]; got '
                         f'{tuple(videos.shape) if torch.is_tensor(videos) else type(videos).__name__}.')
    b, t = videos.shape[:2]
    if (t - 1) % TIME_COMPRESSION:
        raise ValueError(f'a clip needs 1 + 4k frames (the VAE encodes the first frame alone, then groups of '
                         f'{TIME_COMPRESSION}); got {t}: trim it to {t - (t - 1) % TIME_COMPRESSION} frames.')
    frames = videos.flatten(0, 1)
    backbone.check_images(frames)
    in_hw = tuple(frames.shape[-2:])
    working, work_hw = backbone.working_input(frames)
    clip = working.unflatten(0, (b, t)).transpose(1, 2).to(backbone.vae_dtype)  # (B, 3, T, H', W')
    with torch.set_grad_enabled(backbone.stages.vae.trainable and torch.is_grad_enabled()):
        latents = encoder.encode_video(clip)  # (B, C, T', h, w)
    _, c, n, h, w = latents.shape
    # the noise is drawn per element: the stage sees the latent frames as channels, frame-major, so that frame 0 draws
    # the noise of the same image alone
    noisy, timesteps = backbone.stages.noise(latents.transpose(1, 2).reshape(b, n * c, h, w))
    noisy = noisy.reshape(-1, n, c, h, w).transpose(1, 2).to(backbone.dtype)
    kwargs = family.video_inputs(backbone.denoiser, noisy, timesteps, backbone.conditioning)
    acts = backbone.stages.denoiser(backbone.denoiser, backbone.capture, kwargs, backbone.stages.noise.members,
                                    keep_graph=backbone.stages.denoiser.trains)
    per_frame = {}
    for name, value in acts.items():  # (B, C, T' * h', w'): the frames stacked along rows, cut apart and cropped
        rows, cols = backbone.grid_of(name, work_hw)
        value = value.unflatten(2, (n, -1))[..., :rows, :cols]  # (B, C, T', rows, cols)
        per_frame[name] = value.transpose(1, 2).flatten(0, 1)  # (B * T', C, rows, cols)
    levels = []
    for i, level in enumerate(backbone.levels):
        parts = [per_frame[name] for name in level]
        feature = backbone.fusion[i](parts) if backbone.fusion is not None else torch.cat(parts, dim=1)
        feature = backbone.stages.image.restore(feature.to(videos.dtype), in_hw, backbone.feature_info[i]['reduction'])
        levels.append(feature.unflatten(0, (b, n)).contiguous())
    return tuple(levels)
