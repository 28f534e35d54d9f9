"""The catalog on the real SD1.5 / SDXL architectures (meta device) and on the fixture models."""
import json

import pytest
import timm
import torch
from diffusers import UNet2DConditionModel

from diffbackbones import list_activations
from diffbackbones.backbone.presets import resolve_levels
from diffbackbones.models.catalog import activation_points
from diffbackbones.models.loading import build_denoiser
from diffbackbones.models.zoo import MODELS, layer_stride, load_config

from conftest import reference_fixture


def meta_unet(model: str) -> UNet2DConditionModel:
    with torch.device('meta'):
        return UNet2DConditionModel.from_config(load_config(MODELS[model], 'unet'))


def level_summary(model: str, preset: str, latent: int):
    unet = meta_unet(model)
    points = activation_points(unet, (latent, latent))
    stride_of = {p.name: 8 * latent // p.size[0] for p in points}
    channels = {p.name: p.channels for p in points}
    levels = resolve_levels(MODELS[model], preset, points, stride_of)
    return [(stride_of[level[0]], sum(channels[n] for n in level)) for level in levels]


@pytest.mark.parametrize('model,preset,latent,expected', [
    ('sd15', 'practical', 64, [(8, 320), (16, 640), (32, 2560)]),
    ('sd15', 'legacy', 64, [(8, 960), (16, 1280), (32, 1280)]),
    ('sd21', 'practical', 64, [(8, 320), (16, 640), (32, 2560)]),
    ('sdxl', 'practical', 128, [(16, 1280), (32, 2560)]),
    ('sdxl', 'legacy', 128, [(8, 960), (16, 1280)]),
    ('pgv2', 'practical', 128, [(8, 640), (16, 640), (32, 1280)]),
])
def test_paper_presets_on_real_architectures(model, preset, latent, expected):
    assert level_summary(model, preset, latent) == expected


def test_practical_totals_match_the_paper():
    assert sum(c for _, c in level_summary('sd15', 'practical', 64)) == 3520
    assert sum(c for _, c in level_summary('sdxl', 'practical', 128)) == 3840


def test_sd15_catalog_names_channels_and_sizes():
    cat = {a.name: a for a in list_activations(meta_unet('sd15'), (64, 64))}
    assert cat['unet-in'].channels == 4 and cat['unet-out'].size == (64, 64)
    assert cat['down-level0-repeat0-vit-block0-self-q'].channels == 320
    assert cat['down-level0-repeat0-vit-block0-ffn-inner'].channels == 1280  # GEGLU: 4 x 320 after gating
    assert cat['down-level0-downsampler-out'].size == (32, 32)
    assert cat['mid-vit-block0-cross-q'].size == (8, 8) and cat['mid-vit-block0-cross-q'].channels == 1280
    assert cat['up-level0-upsampler-out'].size == (16, 16)
    assert cat['up-level3-repeat2-vit-out'].size == (64, 64) and cat['up-level3-repeat2-vit-out'].channels == 320
    assert cat['up-level1-repeat0-vit-block0-cross-map'].channels == 77
    assert cat['up-level3-repeat0-vit-block0-self-map'].channels == 64 * 64
    assert 'down-level3-downsampler-out' not in cat and 'up-level3-upsampler-out' not in cat
    assert not any('cross-k' in n or 'cross-v' in n for n in cat)  # text-side: not spatial


def test_sdxl_catalog_has_ten_blocks_in_the_deepest_level_and_non_square_sizes():
    cat = {a.name: a for a in list_activations(meta_unet('sdxl'), (128, 96))}
    assert 'up-level0-repeat0-vit-block9-out' in cat and 'up-level0-repeat0-vit-block10-out' not in cat
    assert 'down-level0-repeat0-vit-out' not in cat  # SDXL's first level has no attention
    assert cat['up-level0-repeat0-vit-block7-out'].size == (32, 24)
    assert cat['up-level1-upsampler-out'].size == (128, 96)


@pytest.mark.parametrize('topology', ['sd', 'sdxl'])
def test_catalog_matches_reference_names_order_and_shapes(topology):
    reference = json.loads((reference_fixture(topology) / 'activations.json').read_text())
    unet = UNet2DConditionModel.from_config(json.loads((reference_fixture(topology) / 'unet' / 'config.json').read_text()))
    catalog = [a for a in list_activations(unet, (16, 16), n_text_tokens=8) if not a.kind.endswith('map')]
    expected = [n for n in reference if not n.endswith('noise-pred')]
    assert [a.name for a in catalog] == expected  # same ids, same (execution) order
    for a in catalog:
        assert [2, a.channels, *a.size] == reference[a.name], a.name


@pytest.mark.parametrize('model', sorted(MODELS))
def test_layer_stride_from_configs_agrees_with_the_catalog(model):
    # layer_stride gives timm's pool_size without building a model; the catalog is the authority
    spec = MODELS[model]
    vae_factor = 1
    if not spec.pixel_space:  # measured: the latent the VAE's encoder gives a 256 px image, on the meta device
        from diffbackbones.models.latents import latent_encoder
        from diffbackbones.models.loading import vae_class
        with torch.device('meta'):
            encoder = latent_encoder(vae_class(spec).from_config(load_config(spec, 'vae')))
            vae_factor = 256 // encoder(torch.zeros(1, 3, 256, 256)).shape[-1]
    assert spec.vae_factor == vae_factor
    for p in activation_points(build_denoiser(spec, 'meta'), (64, 64)):
        assert layer_stride(spec, p.name) == vae_factor * p.stride((64, 64)), p.name
    for preset, levels in spec.presets.items():
        cfg = timm.models.get_pretrained_cfg(f'{model}_{preset}').to_dict()
        assert cfg['pool_size'] == (spec.image_size // layer_stride(spec, levels[-1][0]),) * 2


@pytest.mark.parametrize('topology', ['sd', 'pixart', 'flux'])
def test_the_shipped_reference_fixtures_are_a_faithful_copy_of_the_full_set(topology):
    # a user's clone runs the parity tests on tests/fixtures' shrunk copy: it must hold the very weights,
    # inputs and values of the full set (here, where both exist), a subset of the activations only
    from safetensors.torch import load_file

    from conftest import FIXTURES, SHIPPED_FIXTURES
    full, shipped = FIXTURES / topology, SHIPPED_FIXTURES / topology
    if not (full / 'activations.json').is_file():
        pytest.skip(f'the full reference set is not at {full}: nothing to compare the shipped copy with')
    for path in sorted(p for p in shipped.rglob('*') if p.is_file() and p.name != 'activations.safetensors'):
        assert path.read_bytes() == (full / path.relative_to(shipped)).read_bytes(), path
    kept, reference = load_file(shipped / 'activations.safetensors'), load_file(full / 'activations.safetensors')
    assert len(kept) >= min(25, len(reference)) and any(n.endswith('noise-pred') for n in kept)
    for name, value in kept.items():
        assert torch.equal(value, reference[name]), name
