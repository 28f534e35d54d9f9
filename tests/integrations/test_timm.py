"""timm registry: features_only, out_indices, forward_intermediates, classifier, pretrained_cfg."""
import warnings

import pytest
import timm
import torch

import diffbackbones  # noqa: F401  (registers the entry points)
from diffbackbones.integrations import timm_models

from conftest import random_images


def test_entry_points_are_registered():
    names = set(timm.list_models())
    for name in ['sd15_practical', 'sd15_legacy', 'sd21_practical', 'sdxl_practical', 'sdxl_legacy', 'pgv2_practical',
                 'test_sd_tiny_practical', 'test_sdxl_tiny_practical']:
        assert name in names
    cfg = timm.models.get_pretrained_cfg('sd15_practical').to_dict()
    assert cfg['hf_hub_id'] == 'stable-diffusion-v1-5/stable-diffusion-v1-5'
    assert cfg['mean'] == cfg['std'] == (0.5, 0.5, 0.5) and cfg['input_size'] == (3, 512, 512)
    assert timm.models.get_pretrained_cfg('sdxl_practical').to_dict()['input_size'] == (3, 1024, 1024)
    assert cfg['pool_size'] == (16, 16) and cfg['first_conv'] == 'backbone.vae.encoder.conv_in'
    for name in ['pixart_alpha_default', 'pixart_sigma_default', 'sd3_default', 'sd35_medium_default',
                 'sd35_large_default', 'flux_dev_default', 'flux_schnell_default', 'dit_xl_default',
                 'hunyuan_dit_default', 'test_flux_tiny_default', 'test_pixart_tiny_default']:
        assert name in names, name
    flux = timm.models.get_pretrained_cfg('flux_dev_default').to_dict()
    assert flux['hf_hub_id'] == 'black-forest-labs/FLUX.1-dev' and flux['pool_size'] == (64, 64)  # stride 16 at 1024


def test_features_only_matches_feature_info():
    model = timm.create_model('test_sd_tiny_practical', features_only=True)
    assert model.feature_info.channels() == [32, 64, 128]
    assert model.feature_info.reduction() == [8, 16, 32]
    with torch.no_grad():
        feats = model(random_images(2, 64, 96))
    assert [f.shape[1] for f in feats] == model.feature_info.channels()
    assert [96 // f.shape[-1] for f in feats] == model.feature_info.reduction()


def test_out_indices_prune_the_pyramid_and_the_forward():
    model = timm.create_model('test_sd_tiny_practical', features_only=True, out_indices=(1,))
    assert model.feature_info.channels() == [64] and model.feature_info.reduction() == [16]
    unet = model.model.backbone.denoiser
    ran = []
    handle = unet.up_blocks[3].register_forward_pre_hook(lambda m, a: ran.append(3))
    with torch.no_grad():
        (feat,) = model(random_images(1, 64, 64))
    handle.remove()
    assert feat.shape == (1, 64, 4, 4)
    assert ran == []  # level 2 (stride 8) was pruned, so up_blocks[3] never runs


def test_frozen_classifier_trains_only_its_head():
    model = timm.create_model('test_sdxl_tiny_practical', num_classes=5, frozen=True)
    assert model.num_classes == 5 and model.get_classifier().out_features == 5
    model.train()
    assert not model.backbone.denoiser.training and not model.backbone.vae.training
    logits = model(random_images(2, 64, 64))
    assert logits.shape == (2, 5)
    logits.sum().backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    reached = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trainable == reached == {'head.fc.weight', 'head.fc.bias'}
    assert 'backbone.denoiser.conv_in.weight' in model.state_dict()  # frozen is not left out


TINY_ENTRIES = ['test_sd_tiny_practical', 'test_sd_tiny_legacy', 'test_sdxl_tiny_practical', 'test_sdxl_tiny_legacy',
                'test_flux_tiny_default', 'test_sd3_tiny_default',
                'test_sd_sdxl_tiny']  # the last: a CombinedDiffusionBackbone


@pytest.mark.parametrize('name', TINY_ENTRIES)
def test_timm_model_contract(name):
    """What timm's own test suite checks of every model (test_model_forward/backward/default_cfgs)."""
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    for key in ('input_size', 'pool_size', 'first_conv', 'classifier', 'mean', 'std', 'license'):
        assert cfg.get(key), key  # hf_hub_id: None for test models, real ids checked above
    x = torch.randn(2, *cfg['input_size'])  # timm feeds any normalised tensor: no [-1, 1] promise

    # backward: a fresh model is trainable, VAE included, and the loss reaches every parameter
    model = timm.create_model(name, num_classes=7)
    model.train()
    with pytest.warns(UserWarning, match=r'values in \[-1, 1\]'):
        out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, no_grad[:5]
    assert any(n.startswith(('backbone.vae.', 'backbone.members.0.vae.')) for n, _ in model.named_parameters())
    state_dict = model.state_dict()
    for key in (cfg['first_conv'], cfg['classifier']):
        assert key + '.weight' in state_dict, key
    assert set(dict(model.named_parameters())) <= set(state_dict)  # complete: frozen or not
    first_member = model.backbone.members[0] if hasattr(model.backbone, 'members') else model.backbone
    assert first_member.vae.encoder.conv_in is model.get_submodule(cfg['first_conv'])

    # default cfg: forward_features unpooled at pool_size, heads of head_hidden_size
    model = timm.create_model(name).eval()
    assert model.num_classes == 0 and model.num_features > 0 and model.head_hidden_size > 0
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        feats = model.forward_features(x)
        assert feats.shape == (2, model.num_features, *cfg['pool_size'])
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.head_hidden_size)
        model.reset_classifier(0)
        assert model(x).shape == (2, model.head_hidden_size)
        model.reset_classifier(0, '')
        assert model(x).shape == (2, model.num_features, *cfg['pool_size'])
        unpooled = timm.create_model(name, num_classes=0, global_pool='').eval()
        assert unpooled(x).shape == (2, unpooled.num_features, *cfg['pool_size'])


def test_forward_intermediates_contract():
    model = timm.create_model('test_sd_tiny_legacy')
    x = random_images(1, 64, 64)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        only = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert [f.shape[1] for f in inter] == [96, 64, 64]
    assert torch.equal(final, model.forward_features(x))  # every level on the coarsest grid
    assert final.shape == (1, 96 + 64 + 64, 2, 2) and torch.equal(final[:, -64:], inter[-1])
    assert torch.allclose(final[:, :96], torch.nn.functional.avg_pool2d(inter[0], 4), atol=1e-6)
    assert len(only) == 2 and torch.equal(only[0], inter[1])


def test_in_chans_other_than_three_is_refused():
    with pytest.raises(ValueError, match='in_chans must be 3'):
        timm.create_model('test_sd_tiny_practical', in_chans=1)


# Entries with fewer than three levels, and why timm's test_model_forward_features (at least three: a rule for
# its CNN families) does not apply to them:
# - by definition: the paper's SDXL presets sit at two strides ('practical' 16 and 32, 'legacy' 8 and 16); a
#   third level would make the entry something other than the preset it is named after;
# - by size: a transformer's 'default' is four mid-depth block outputs (1/4 to 5/8 of its depth), and these
#   test models have 2 to 3 blocks; their real-size models (REAL_SIZE) have all four.
def _real_size_of(tiny: str) -> str:
    from diffbackbones.models.zoo import MODELS
    spec = MODELS[tiny]
    return next(n for n, s in MODELS.items() if s.hub_id and s.architecture == spec.architecture)


_TINY_TRANSFORMERS = sorted(n for n in timm_models._ENTRIES if n.startswith('test_') and n.endswith('_default'))
FEWER_THAN_THREE_LEVELS = {'test_sdxl_tiny_practical': 2, 'test_sdxl_tiny_legacy': 2,
                           **{n: 2 for n in _TINY_TRANSFORMERS if n not in ('test_flux_tiny_default',)}}
REAL_SIZE = {n: _real_size_of(n.removesuffix('_default')) for n in _TINY_TRANSFORMERS}


def test_the_real_size_transformers_have_four_default_levels():
    from diffbackbones.models.zoo import MODELS
    assert len(REAL_SIZE) >= 15  # every transformer family with a tiny model, the new ones included
    assert all(len(MODELS[real].presets['default']) == 4 for real in REAL_SIZE.values())


@pytest.mark.parametrize('name', sorted(n for n in timm_models._ENTRIES if n.startswith(('test_', 'shapes_'))))
def test_timm_forward_features_check(name):
    """timm's own test_model_forward_features (tests/test_models.py), for every tiny entry: its checks at its
    input size (the default, at most 96 px), the level count apart for the entries listed above."""
    import math
    model = timm.create_model(name, pretrained=False, features_only=True).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) == FEWER_THAN_THREE_LEVELS.get(name, len(channels)) and \
        (len(channels) >= 3 or name in FEWER_THAN_THREE_LEVELS)
    size = [min(x, 96) for x in model.default_cfg['input_size']]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')   # randn input: outside the VAE's range, as timm feeds every model
        outputs = model(torch.randn(1, *size))
    assert len(outputs) == len(channels)
    for expected, reduction, output in zip(channels, reductions, outputs):
        assert output.shape[1] == expected and output.shape[0] == 1 and not torch.isnan(output).any()
        assert output.shape[2] <= math.ceil(size[1] / reduction) + 1
        assert output.shape[3] <= math.ceil(size[2] / reduction) + 1
