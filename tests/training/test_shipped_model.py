"""shapes_sd_tiny, the diffusion model trained here and shipped in the package: it loads offline like real
weights, it denoises, and its features carry shape where random weights do not."""
import json
import sys

import pytest
import torch
import torch.nn.functional as F

from diffbackbones import DiffusionBackbone
from diffbackbones.commands import main as diffbackbones_command
from diffbackbones.training.shapes_sd import texture_energy, train_shapes_model
from diffbackbones.models.zoo import MODELS

from conftest import REPO

sys.path.insert(0, str(REPO / 'tools'))
import linear_probe  # noqa: E402  (tools/linear_probe.py)

SPEC = MODELS['shapes_sd_tiny']
# Measured on the shipped weights (README, "A diffusion model that has learned something"); the bounds
# leave room for noise but fail for an untrained or mis-wired model.
NOISE_RATIO = 0.5
PROBE_MARGIN = 10.0  # the plain linear probe at 128 px: 11.8 measured (the weights before the texture term: 9.8)


@pytest.fixture(scope='module')
def trained():
    return DiffusionBackbone('shapes_sd_tiny', 'practical', pretrained=True)


def test_the_shipped_folder_is_a_complete_diffusers_pipeline_under_10_mb():
    folder = SPEC.weights_dir
    index = json.loads((folder / 'model_index.json').read_text())
    assert index['_class_name'] == 'StableDiffusionPipeline'
    for part in ('unet', 'vae', 'text_encoder', 'tokenizer', 'scheduler'):
        assert (folder / part).is_dir() and part in index, part
    weights = list(folder.rglob('*.safetensors'))
    assert len(weights) == 3 and not list(folder.rglob('*.bin'))
    assert sum(f.stat().st_size for f in folder.rglob('*') if f.is_file()) < 10e6
    assert 'python tools/train_diffusion.py' in (folder / 'README.md').read_text()


def test_pretrained_loads_the_shipped_weights_and_false_is_the_same_architecture_random(trained):
    from diffusers import UNet2DConditionModel
    shipped = UNet2DConditionModel.from_pretrained(SPEC.weights_dir, subfolder='unet')
    mine = trained.denoiser.state_dict()
    assert torch.equal(mine['conv_in.weight'], shipped.state_dict()['conv_in.weight'].float())
    random = DiffusionBackbone('shapes_sd_tiny', 'practical', pretrained=False)
    assert [i['num_chs'] for i in random.feature_info] == [i['num_chs'] for i in trained.feature_info]
    assert not torch.equal(random.denoiser.state_dict()['conv_in.weight'], mine['conv_in.weight'])


@torch.no_grad()
def test_the_shipped_unet_predicts_noise_far_better_than_zeros(trained):
    from diffusers import UNet2DConditionModel
    unet = UNet2DConditionModel.from_pretrained(SPEC.weights_dir, subfolder='unet').float().eval()  # unpruned
    images, _ = linear_probe.shapes_split(8, seed=1000)  # not among the training renders (seed 0)
    latents = trained.encode(images)
    kwargs = dict(encoder_hidden_states=trained.conditioning.prompt_embeds.expand(len(images), -1, -1))
    g = torch.Generator().manual_seed(0)
    for t in (50, 250, 500):
        noise = torch.randn(latents.shape, generator=g)
        abar = trained.stages.noise.schedule.alphas_cumprod[t]
        pred = unet(abar.sqrt() * latents + (1 - abar).sqrt() * noise, torch.full((len(images),), t), **kwargs).sample
        mse, zero = F.mse_loss(pred, noise).item(), noise.square().mean().item()
        assert mse < NOISE_RATIO * zero, (t, mse, zero)


def test_learned_features_separate_shapes_that_random_ones_cannot(trained):
    """Geometry variant: colour and texture say nothing about the class, only the outline does. The plain
    linear probe of tools/linear_probe.py (standardised levels, one 1x1 layer, class-weighted cross-entropy),
    at the model's own size, as the README reports it."""
    train, test = linear_probe.shapes_split(64, 2000), linear_probe.shapes_split(32, 3000)
    random = DiffusionBackbone('shapes_sd_tiny', 'practical', pretrained=False)
    learned = linear_probe.probe_backbone(trained, train, test)['miou']
    baseline = linear_probe.probe_backbone(random, train, test)['miou']
    print(f'linear probe mIoU on geometry: trained {learned:.1f}, random {baseline:.1f}')
    assert learned > baseline + PROBE_MARGIN, (learned, baseline)


@pytest.mark.slow
def test_train_diffusion_writes_a_loadable_folder_reproducibly_and_never_overwrites(tmp_path):
    """A smoke run of the recipe (a few steps, in this process), once through the `diffbackbones train-diffusion`
    command and once through the library call: the folder loads as the backbone's weights, the two give the
    same losses, the README's command is complete, and an existing folder is refused without --overwrite."""
    args = ['--vae-steps', '4', '--unet-steps', '3', '--images', '16', '--samples', '2', '--sample-steps', '3']
    assert diffbackbones_command(['train-diffusion', '--out', str(tmp_path / 'a'), *args]) == 0
    first = json.loads((tmp_path / 'a' / 'training' / 'train_log.json').read_text())
    second = train_shapes_model(tmp_path / 'b', vae_steps=4, unet_steps=3, images=16, samples=2, sample_steps=3)
    for key in ('vae_l1', 'vae_texture', 'unet_mse'):
        assert first[key] == second[key] and len(first[key]) > 0, key
    for name in ('losses.png', 'samples.png', 'reconstructions.png'):
        assert (tmp_path / 'a' / 'training' / name).stat().st_size > 0
    readme = (tmp_path / 'a' / 'README.md').read_text()
    assert f'diffbackbones train-diffusion --out {tmp_path / "a"} --variant both --images 16 --vae-steps 4' in readme
    backbone = DiffusionBackbone('shapes_sd_tiny', 'practical', pretrained=str(tmp_path / 'a'))
    assert backbone.denoiser.dtype == torch.float32
    with torch.no_grad():
        assert all(torch.isfinite(f).all() for f in backbone(linear_probe.shapes_split(1, seed=5)[0]))
    with pytest.raises(SystemExit, match='--overwrite'):
        diffbackbones_command(['train-diffusion', '--out', str(tmp_path / 'a'), *args])
    assert (tmp_path / 'a' / 'README.md').read_text() == readme  # nothing a user wrote is lost


def test_the_texture_term_is_phase_free_and_sees_what_l1_averages_away():
    """A stripe pattern and the same stripes shifted by half a period have equal texture energy (so the VAE
    may draw stripes it cannot place exactly), and a flat image of the same mean does not."""
    rows = torch.arange(65.0)[:, None].expand(65, 65) + 0.5  # 64 differences: whole periods, for any phase
    stripes = torch.sign(torch.sin(2 * torch.pi * rows / 8))[None, None]
    shifted = torch.sign(torch.sin(2 * torch.pi * (rows + 4) / 8))[None, None]
    flat = torch.full_like(stripes, float(stripes.mean()))
    energy = lambda x: torch.cat([e.flatten() for e in texture_energy(x)])  # noqa: E731
    assert torch.allclose(energy(stripes).mean(), energy(shifted).mean())
    assert (stripes - shifted).abs().mean() > (stripes - flat).abs().mean()  # L1 prefers the flat image...
    assert energy(flat).abs().max() == 0 and energy(stripes).mean() > 0.2      # ...which has no texture at all
    dx, dy = texture_energy(stripes)
    assert dx.abs().max() == 0 and dy.mean() > 0  # horizontal stripes: vertical differences only
