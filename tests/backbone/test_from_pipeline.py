"""The generic path: DiffusionBackbone.from_pipeline on a diffusers pipeline, with no family module in use."""
from __future__ import annotations

import pytest
import torch

from diffbackbones import DiffusionBackbone
from diffbackbones.models.zoo import MODELS

from pipeline_parity import PROMPT, T, rel_l2, tiny_pipeline

IDS = ['vit-block0-self-q', 'vit-block0-out', 'vit-block1-out']


@pytest.mark.parametrize('model', ['test_qwen_image_tiny', 'test_sana_tiny', 'test_flux2_tiny'])
def test_the_generic_path_gives_the_hand_written_familys_features(model):
    # routed through the generic path on purpose: catalog measured from the module tree and two probe forwards,
    # inputs recorded from the pipeline's own call; same ids, same activations as the family module's
    generic = DiffusionBackbone.from_pipeline(tiny_pipeline(model), IDS, family='generic', noise=dict(t=T),
                                              prompt_length=MODELS[model].prompt_pipeline.max_length,
                                              conditioning=dict(prompt=PROMPT))
    assert generic.family.name == 'generic'
    reference = DiffusionBackbone(model, IDS, pretrained=False, noise=dict(t=T), conditioning=dict(prompt=PROMPT))
    assert reference.family.name != 'generic'
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ours, theirs = generic.activations(images), reference.activations(images)
    for name in IDS:
        assert ours[name].shape == theirs[name].shape, name
        assert rel_l2(ours[name], theirs[name]) < 1e-5, name
    assert [f['num_chs'] for f in generic.feature_info] == [f['num_chs'] for f in reference.feature_info]


def test_a_pipeline_whose_denoiser_has_a_family_keeps_it():
    backbone = DiffusionBackbone.from_pipeline(tiny_pipeline('test_qwen_image_tiny'), ['vit-block1-out'])
    assert backbone.family.name == 'qwen_image'
    assert backbone(torch.zeros(1, 3, 32, 32))[0].shape == (1, 32, 2, 2)  # stride 16


def test_the_callers_pipeline_still_generates_afterwards():
    # its scheduler is not replaced (calls are recorded on a copy), its VAE keeps its decoder, nothing is pruned
    pipe = tiny_pipeline('test_qwen_image_tiny')
    scheduler, decoder = pipe.scheduler, pipe.vae.decoder
    backbone = DiffusionBackbone.from_pipeline(pipe, ['vit-block0-out'], family='generic')
    backbone(torch.zeros(1, 3, 32, 32))
    assert pipe.scheduler is scheduler and pipe.vae.decoder is decoder and not backbone.pruned
    image = pipe(PROMPT, num_inference_steps=1, height=32, width=32, output_type='pt').images
    assert image.shape == (1, 3, 32, 32) and image.isfinite().all()


def test_a_dtype_other_than_the_pipelines_is_refused_with_the_fix():
    with pytest.raises(ValueError, match='denoiser is torch.float32, the backbone was asked for torch.bfloat16'):
        DiffusionBackbone.from_pipeline(tiny_pipeline('test_qwen_image_tiny'), ['vit-block0-out'], dtype='bf16')


def test_what_the_generic_path_cannot_read_is_refused_with_what_to_provide():
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
    unconditional = DDPMPipeline(unet=UNet2DModel(sample_size=8, block_out_channels=(8, 8), norm_num_groups=4,
                                                  down_block_types=('DownBlock2D',) * 2, up_block_types=('UpBlock2D',) * 2),
                                 scheduler=DDPMScheduler())
    with pytest.raises(TypeError, match='needs a VAE, `encode_prompt` and a `latents=` argument'):
        DiffusionBackbone.from_pipeline(unconditional, ['vit-block0-out'])
    with pytest.raises(TypeError, match='takes no `sigmas=`'):  # Wan's pipeline sets its own timesteps
        DiffusionBackbone.from_pipeline(tiny_pipeline('test_wan_tiny'), ['vit-block0-out'], family='generic')
    with pytest.raises(TypeError, match='holds no denoiser'):
        DiffusionBackbone.from_pipeline(object(), ['vit-block0-out'])
