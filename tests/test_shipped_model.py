"""shapes_sd_tiny, the diffusion model trained here and shipped in the package: it loads offline like real
weights, it denoises, and its features carry shape where random weights do not."""
import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffbackbones import DiffusionBackbone
from diffbackbones.backbone import pixels_to_input
from diffbackbones.segmentation.shapes import render_sample
from diffbackbones.zoo import MODELS

from conftest import REPO

sys.path.insert(0, str(REPO / 'tools'))
import train_diffusion  # noqa: E402  (tools/train_diffusion.py)

SPEC = MODELS['shapes_sd_tiny']
# Measured on the shipped weights (README, "A diffusion model that has learned something"); the bounds
# leave room for noise but fail for an untrained or mis-wired model.
NOISE_RATIO = 0.5
PROBE_MARGIN = 5.0


def geometry_set(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, 128, 128) images in [-1, 1] and (n, 128, 128) labels of the geometry variant."""
    rng = np.random.default_rng(seed)
    images, labels = zip(*(render_sample(rng, 128, 'geometry') for _ in range(n)))
    return (pixels_to_input(np.stack(images)),
            torch.from_numpy(np.stack(labels)).long())


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
    images, _ = geometry_set(8, seed=1000)  # not among the training renders (seed 0)
    latents = trained.encode(images)
    kwargs = dict(encoder_hidden_states=trained.conditioning.prompt_embeds.expand(len(images), -1, -1))
    g = torch.Generator().manual_seed(0)
    for t in (50, 250, 500):
        noise = torch.randn(latents.shape, generator=g)
        abar = trained.schedule.alphas_cumprod[t]
        pred = unet(abar.sqrt() * latents + (1 - abar).sqrt() * noise, torch.full((len(images),), t), **kwargs).sample
        mse, zero = F.mse_loss(pred, noise).item(), noise.square().mean().item()
        assert mse < NOISE_RATIO * zero, (t, mse, zero)


def probe_miou(backbone: DiffusionBackbone, train, test, n_classes: int = 4) -> float:
    """mIoU of a least-squares linear pixel probe on all levels at stride 8 (ridge, closed form)."""
    def features(images):
        with torch.no_grad():
            levels = backbone(images)
        size = levels[0].shape[-2:]
        feats = torch.cat([F.interpolate(f.float(), size=size, mode='bilinear', align_corners=False) for f in levels], 1)
        feats = (feats - feats.mean((0, 2, 3), keepdim=True)) / (feats.std((0, 2, 3), keepdim=True) + 1e-6)
        return feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]), size

    def labels(maps, size):  # the label at each feature cell's centre
        s = maps.shape[-1] // size[-1]
        return maps[:, s // 2::s, s // 2::s].reshape(-1)

    x_train, size = features(train[0])
    x_test, _ = features(test[0])
    y_train, y_test = labels(train[1], size), labels(test[1], size)
    x_train = torch.cat([x_train, torch.ones(len(x_train), 1)], 1)
    x_test = torch.cat([x_test, torch.ones(len(x_test), 1)], 1)
    targets = F.one_hot(y_train, n_classes).float()
    w = torch.linalg.solve(x_train.T @ x_train + 1.0 * torch.eye(x_train.shape[1]), x_train.T @ targets)
    pred = (x_test @ w).argmax(1)
    ious = [((pred == c) & (y_test == c)).sum() / ((pred == c) | (y_test == c)).sum().clamp(min=1)
            for c in range(n_classes)]
    return 100 * torch.stack(ious).mean().item()


def test_learned_features_separate_shapes_that_random_ones_cannot(trained):
    """Geometry variant: colour and texture say nothing about the class, only the outline does."""
    train, test = geometry_set(48, seed=2000), geometry_set(24, seed=3000)
    random = DiffusionBackbone('shapes_sd_tiny', 'practical', pretrained=False)
    learned, baseline = probe_miou(trained, train, test), probe_miou(random, train, test)
    print(f'linear probe mIoU on geometry: trained {learned:.1f}, random {baseline:.1f}')
    assert learned > baseline + PROBE_MARGIN, (learned, baseline)




@pytest.mark.slow
def test_train_diffusion_writes_a_loadable_folder_reproducibly_and_never_overwrites(tmp_path):
    """A smoke run of the recipe (a few steps, in this process): the folder loads as the backbone's weights,
    the same command gives the same losses, and an existing folder is refused without --overwrite."""
    args = ['--vae-steps', '4', '--unet-steps', '3', '--images', '16', '--samples', '2', '--sample-steps', '3']
    first, second = (train_diffusion.main(['--out', str(tmp_path / x), *args]) for x in 'ab')
    for key in ('vae_l1', 'vae_texture', 'unet_mse'):
        assert first[key] == second[key] and len(first[key]) > 0, key
    logs = [json.loads((tmp_path / x / 'training' / 'train_log.json').read_text()) for x in 'ab']
    assert logs[0]['vae_l1'] == logs[1]['vae_l1'] and logs[0]['unet_mse'] == logs[1]['unet_mse']
    for name in ('losses.png', 'samples.png', 'reconstructions.png'):
        assert (tmp_path / 'a' / 'training' / name).stat().st_size > 0
    readme = (tmp_path / 'a' / 'README.md').read_text()
    assert 'python tools/train_diffusion.py --out ' + str(tmp_path / 'a') + ' --vae-steps 4' in readme
    backbone = DiffusionBackbone('shapes_sd_tiny', 'practical', pretrained=str(tmp_path / 'a'))
    assert backbone.denoiser.dtype == torch.float32
    with torch.no_grad():
        assert all(torch.isfinite(f).all() for f in backbone(geometry_set(1, seed=5)[0]))
    with pytest.raises(SystemExit, match='--overwrite'):
        train_diffusion.main(['--out', str(tmp_path / 'a'), *args])
    assert (tmp_path / 'a' / 'README.md').read_text() == readme  # nothing a user wrote is lost


def test_the_texture_term_is_phase_free_and_sees_what_l1_averages_away():
    """A stripe pattern and the same stripes shifted by half a period have equal texture energy (so the VAE
    may draw stripes it cannot place exactly), and a flat image of the same mean does not."""
    rows = torch.arange(65.0)[:, None].expand(65, 65) + 0.5  # 64 differences: whole periods, for any phase
    stripes = torch.sign(torch.sin(2 * torch.pi * rows / 8))[None, None]
    shifted = torch.sign(torch.sin(2 * torch.pi * (rows + 4) / 8))[None, None]
    flat = torch.full_like(stripes, float(stripes.mean()))
    energy = lambda x: torch.cat([e.flatten() for e in train_diffusion.texture_energy(x)])  # noqa: E731
    assert torch.allclose(energy(stripes).mean(), energy(shifted).mean())
    assert (stripes - shifted).abs().mean() > (stripes - flat).abs().mean()  # L1 prefers the flat image...
    assert energy(flat).abs().max() == 0 and energy(stripes).mean() > 0.2      # ...which has no texture at all
    dx, dy = train_diffusion.texture_energy(stripes)
    assert dx.abs().max() == 0 and dy.mean() > 0  # horizontal stripes: vertical differences only
