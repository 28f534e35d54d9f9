"""shapes_flux_tiny, the Flux-topology flow-matching transformer trained here and shipped in the package: it
loads offline like real weights, shares shapes_sd_tiny's VAE, and predicts the velocity under the backbone's own
conventions (t / 1000, x_t = (1 - s) z + s eps, [0, row, col] image ids) far better than under wrong ones."""
import json
import sys

import pytest
import torch

from diffbackbones import DiffusionBackbone
from diffbackbones.training.shapes_sd import PROMPT
from diffbackbones.models.zoo import MODELS

from conftest import REPO

sys.path.insert(0, str(REPO / 'tools'))
import linear_probe  # noqa: E402  (tools/linear_probe.py)

SPEC = MODELS['shapes_flux_tiny']
TIMESTEPS = (100, 300, 700, 900)  # not 500: there, swapping noise and latent changes nothing
# Measured on the shipped weights (docs/shapes-flux-tiny.md); the bounds leave room for noise but fail for an
# untrained or mis-wired model.
VELOCITY_RATIO = 0.5   # velocity MSE over predicting zeros, at every t
WRONG_MARGIN = 1.5     # a wrong convention's MSE over the right one's (averaged over TIMESTEPS)


@pytest.fixture(scope='module')
def trained():
    return DiffusionBackbone('shapes_flux_tiny', 'default', pretrained=True)


@pytest.fixture(scope='module')
def velocity():
    """The whole transformer (no pruning), the fixed prompt, every t of TIMESTEPS in one batch; real shapes
    images (not among the training renders), their latents, the backbone's own noisy inputs and the noise."""
    backbone = DiffusionBackbone('shapes_flux_tiny', 'default', pretrained=True, noise=dict(t=list(TIMESTEPS), seed=0),
                                 denoiser=dict(prune=False), conditioning=dict(prompt=PROMPT)).eval()
    images, _ = linear_probe.shapes_split(8, seed=1000)
    with torch.no_grad():
        latents = backbone.encode(images)
    noisy, timesteps = backbone.stages.noise(latents)
    noise = backbone.stages.noise.sample(latents.shape, latents.device)
    clean = latents.float().repeat(len(TIMESTEPS), 1, 1, 1)
    return backbone, clean, noise, noisy, timesteps


def per_t(error: torch.Tensor) -> torch.Tensor:
    """Mean squared error per timestep of TIMESTEPS (rows are timestep-major)."""
    return error.square().reshape(len(TIMESTEPS), -1).mean(1)


def test_the_shipped_folder_is_a_complete_flux_pipeline_under_10_mb_sharing_the_sd_vae():
    folder = SPEC.weights_dir
    index = json.loads((folder / 'model_index.json').read_text())
    assert index['_class_name'] == 'FluxPipeline'
    for part in ('transformer', 'vae', 'text_encoder', 'tokenizer', 'text_encoder_2', 'tokenizer_2', 'scheduler'):
        assert (folder / part).is_dir() and part in index, part
    assert index['tokenizer_2'] == ['transformers', 'T5Tokenizer'] and index['text_encoder_2'][1] == 'T5EncoderModel'
    weights = list(folder.rglob('*.safetensors'))
    assert len(weights) == 4 and not list(folder.rglob('*.bin'))
    assert sum(f.stat().st_size for f in folder.rglob('*') if f.is_file()) < 10e6
    vae = 'vae/diffusion_pytorch_model.safetensors'
    assert (folder / vae).read_bytes() == (MODELS['shapes_sd_tiny'].weights_dir / vae).read_bytes()
    config = json.loads((folder / 'vae' / 'config.json').read_text())
    assert config['shift_factor'] == 0.0  # FluxPipeline adds it when it decodes; shapes_sd_tiny's is null
    readme = (folder / 'README.md').read_text()
    assert 'python tools/train_diffusion.py --arch flux' in readme
    for name in ('losses.png', 'samples.png', 'train_log.json'):
        assert (folder / 'training' / name).stat().st_size > 0


def test_pretrained_loads_the_shipped_weights_and_false_is_the_same_architecture_random(trained):
    from diffusers import FluxTransformer2DModel
    shipped = FluxTransformer2DModel.from_pretrained(SPEC.weights_dir, subfolder='transformer').state_dict()
    mine = trained.denoiser.state_dict()
    assert torch.equal(mine['x_embedder.weight'], shipped['x_embedder.weight'].float())
    assert trained.levels == tuple((f'vit-block{k}-out',) for k in (2, 3, 4, 5))  # mid-depth of 8 blocks
    assert {(i['num_chs'], i['reduction']) for i in trained.feature_info} == {(96, 16)}
    random = DiffusionBackbone('shapes_flux_tiny', 'default', pretrained=False)
    theirs = random.denoiser.state_dict()
    assert {k: v.shape for k, v in theirs.items()} == {k: v.shape for k, v in mine.items()}
    assert [i['num_chs'] for i in random.feature_info] == [i['num_chs'] for i in trained.feature_info]
    assert not torch.equal(theirs['x_embedder.weight'], mine['x_embedder.weight'])
    with torch.no_grad():
        features = trained(linear_probe.shapes_split(2, seed=5)[0])
    assert [tuple(f.shape) for f in features] == [(2, 96, 8, 8)] * 4
    assert all(torch.isfinite(f).all() for f in features)


@torch.no_grad()
def test_the_shipped_transformer_predicts_the_velocity_far_better_than_zeros(velocity):
    backbone, clean, noise, noisy, timesteps = velocity
    assert torch.allclose(noisy, (1 - timesteps.view(-1, 1, 1, 1) / 1000) * clean + timesteps.view(-1, 1, 1, 1) / 1000 * noise)
    target = noise - clean
    pred = backbone.predict(noisy, timesteps, (128, 128))
    mse, zero = per_t(pred - target), per_t(target)
    print('velocity MSE', dict(zip(TIMESTEPS, mse.tolist())), 'zeros', dict(zip(TIMESTEPS, zero.tolist())))
    assert (mse < VELOCITY_RATIO * zero).all(), (mse, zero)


@torch.no_grad()
def test_wrong_conventions_predict_clearly_worse(velocity):
    """t not divided by 1000, noise and latent swapped in the input, img_ids transposed: each is clearly worse."""
    backbone, clean, noise, noisy, timesteps = velocity
    family, denoiser, target = backbone.family, backbone.denoiser, noise - clean

    def mse(x, edit=None):
        kwargs = family.inputs(denoiser, x, timesteps, backbone.conditioning, (128, 128))
        if edit is not None:
            edit(kwargs)
        return per_t(family.prediction(denoiser(**kwargs), x) - target).mean().item()

    s = timesteps.view(-1, 1, 1, 1).float() / 1000
    right = mse(noisy)
    wrong = {'t not / 1000': mse(noisy, lambda k: k.update(timestep=k['timestep'] * 1000)),
             'noise and latent swapped': mse((1 - s) * noise + s * clean),
             'img_ids transposed': mse(noisy, lambda k: k.update(img_ids=k['img_ids'][:, [0, 2, 1]]))}
    print('velocity MSE, right', right, 'wrong', wrong)
    for name, value in wrong.items():
        assert value > WRONG_MARGIN * right, (name, value, right)


def test_learned_transformer_features_separate_shapes_that_random_ones_cannot(trained):
    """As shapes_sd_tiny's test: the geometry variant (only the outline names the class), the plain linear probe of
    tools/linear_probe.py on the default preset. Measured: trained 35.0 mIoU, random 20.9."""
    train, test = linear_probe.shapes_split(64, 2000), linear_probe.shapes_split(32, 3000)
    random = DiffusionBackbone('shapes_flux_tiny', 'default', pretrained=False)
    learned = linear_probe.probe_backbone(trained, train, test)['miou']
    baseline = linear_probe.probe_backbone(random, train, test)['miou']
    print(f'linear probe mIoU on geometry: trained {learned:.1f}, random {baseline:.1f}')
    assert learned > baseline + 10, (learned, baseline)  # shapes_sd_tiny's margin (14.1 measured here)


def test_the_shipped_screen_names_every_activation_and_its_preset_builds():
    """screening/ (tools/screen.py --rank --validate on this model): its rows are the catalog's activations and its
    preset.json is a preset of this model that the backbone takes, so a renamed layer id shows up here."""
    import csv

    from diffbackbones import Preset
    folder = SPEC.weights_dir / 'screening'
    preset = Preset.load(folder)
    assert preset.model == 'shapes_flux_tiny' and preset.info['ranking'][0]['name'] in preset.names
    backbone = DiffusionBackbone('shapes_flux_tiny', preset, pretrained=False)
    with open(folder / 'screen.csv') as f:
        screened = [row['name'] for row in csv.DictReader(f)]
    assert sorted(screened) == sorted(point.name for point in backbone.points)
    assert backbone.levels == preset.levels and [i['num_chs'] for i in backbone.feature_info] == [96 * len(preset.names)]
    assert json.loads((folder / 'validation.json').read_text())['choices']['preset.json'] == preset.names
