"""Latent conventions (models/latents.py) against each pipeline's own encoding of an image, on the tiny VAEs."""
from __future__ import annotations

import pytest
import torch

from diffbackbones.models.latents import latent_encoder
from diffbackbones.models.loading import vae_class
from diffbackbones.models.zoo import MODELS, load_config

from pipeline_parity import rel_l2


def _vae(model: str):
    torch.manual_seed(0)
    return vae_class(MODELS[model]).from_config(load_config(MODELS[model], 'vae')).eval()


def _images(size=(64, 96)) -> torch.Tensor:
    return torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _only_vae(pipeline_class, vae):
    import inspect
    names = [n for n in inspect.signature(pipeline_class.__init__).parameters if n != 'self']
    params = inspect.signature(pipeline_class.__init__).parameters
    return pipeline_class(**{n: vae if n == 'vae' else None for n in names if params[n].default is inspect._empty})


@torch.no_grad()
@pytest.mark.parametrize('model, pipeline', [('test_chroma_tiny', 'FluxImg2ImgPipeline'),
                                             ('test_qwen_image_tiny', 'QwenImageImg2ImgPipeline')])
def test_a_sampled_latent_is_the_img2img_pipelines(model, pipeline):
    # the img2img pipelines sample the posterior: the same generator must give the same latent
    import diffusers
    vae = _vae(model)
    pipe = _only_vae(getattr(diffusers, pipeline), vae)
    images = _images()
    frames = images.unsqueeze(2) if 'Qwen' in pipeline else images  # Qwen-Image's VAE takes one-frame videos
    expected = pipe._encode_vae_image(frames, torch.Generator().manual_seed(3))
    ours = latent_encoder(vae)(images, sample=True, generator=torch.Generator().manual_seed(3))
    assert rel_l2(ours, expected.squeeze(2)) < 1e-6


@torch.no_grad()
def test_flux2s_latent_is_its_pipelines_with_non_trivial_batch_norm_statistics():
    from diffusers import Flux2Pipeline
    vae = _vae('test_flux2_tiny')
    vae.bn.running_mean.uniform_(-1, 1)  # the tiny VAE's are 0 and 1: a missing normalisation would pass unseen
    vae.bn.running_var.uniform_(0.5, 2)
    pipe = _only_vae(Flux2Pipeline, vae)
    images = _images()
    expected = pipe._encode_vae_image(images, None)  # the posterior mode, 2x2-patchified, normalised
    ours = latent_encoder(vae)(images)  # the same, unpatchified back: (B, 32, H / 8, W / 8)
    assert ours.shape == (2, vae.config.latent_channels, 8, 12)
    assert rel_l2(pipe._patchify_latents(ours), expected) < 1e-6


@torch.no_grad()
def test_sanas_dc_ae_latent_is_its_latent_times_the_scale_and_refuses_sampling():
    vae = _vae('test_sana_tiny')
    images = _images()
    expected = vae.encode(images).latent * vae.config.scaling_factor  # what SANA's pipelines feed their denoiser
    encoder = latent_encoder(vae)
    assert rel_l2(encoder(images), expected) < 1e-6 and encoder.downsample_factor == 32
    with pytest.raises(ValueError, match='no posterior to sample'):
        encoder(images, sample=True)


def test_the_callers_video_vae_keeps_its_decoder():
    vae = _vae('test_qwen_image_tiny')
    decoder = vae.decoder
    latent_encoder(vae)
    assert vae.decoder is decoder


def test_an_unknown_vae_class_names_the_known_ones():
    with pytest.raises(TypeError, match='no latent convention.*AutoencoderKL'):
        latent_encoder(torch.nn.Linear(1, 1))
