"""The backbone's options by stage: nested dicts, stage objects and the flat keywords of before build the same
backbone; mistakes are named; a registered variant plugs in without touching the backbone."""
import pytest
import torch

from diffbackbones import DiffusionBackbone
from diffbackbones.backbone.noise.schedule import NoiseStage
from diffbackbones.backbone.stages import FLAT_KEYWORDS, STAGE_VARIANTS, register_stage

from conftest import random_images


def test_nested_options_flat_keywords_and_stage_objects_build_the_same_backbone():
    images = random_images(2, 64, 48)
    nested = DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False, noise=dict(t=100, seed=3, ensemble=2),
                               image=dict(size=(64, 64), antialias=False), conditioning=dict(prompt='a cat'),
                               fusion=dict(style='residual'))
    flat = DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False, t=100, noise_seed=3, ensemble_size=2,
                             image_size=64, antialias=False, prompt='a cat', fusion=True)
    objects = DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False, noise=NoiseStage(t=100, seed=3, ensemble=2),
                                image_size=(64, 64), antialias=False, prompt='a cat', fusion='residual')
    assert nested.stages == flat.stages == objects.stages
    assert nested.stages.noise.timesteps == (100,) and nested.stages.noise.members == 2
    assert nested.stages.image.size == (64, 64) and nested.conditioning.prompt == 'a cat'
    with torch.no_grad():
        for a, b, c in zip(nested(images), flat(images), objects(images)):
            assert torch.equal(a, b) and torch.equal(a, c)
    # the defaults are filled from the model where the stage leaves them open
    assert DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False).stages.noise.t == 50


def test_every_flat_keyword_names_a_real_stage_option():
    import dataclasses
    for key, (kind, option) in FLAT_KEYWORDS.items():
        default = next(iter(STAGE_VARIANTS[kind].values()))
        assert option in {f.name for f in dataclasses.fields(default)}, key


def test_option_mistakes_are_named_with_the_fix():
    build = lambda **kw: DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False, **kw)  # noqa: E731
    with pytest.raises(ValueError, match=r"t= and noise=dict\(t=...\) set the same option"):
        build(t=50, noise=dict(t=60))
    with pytest.raises(ValueError, match="unknown noise option\\(s\\) 'sed' \\(did you mean 'seed'\\?\\)"):
        build(noise=dict(sed=1))
    with pytest.raises(TypeError, match="'noise_sed' \\(did you mean 'noise_seed'"):
        build(noise_sed=1)
    with pytest.raises(ValueError, match=r"unknown noise type 'ddim'; available: \['sampled', 'ddim-inversion', 'clean'\]"):
        build(noise='ddim')
    with pytest.raises(ValueError, match='noise ensemble .* must be a positive integer'):
        build(noise=dict(ensemble=0))
    with pytest.raises(ValueError, match="fusion_repeats apply to fusion='paper' blocks"):
        build(fusion=dict(style='residual', repeats=(2, 1)))
    with pytest.raises(ValueError, match='noise= takes a dict of options'):
        build(noise=50)


def test_a_registered_variant_plugs_into_the_backbone_without_a_new_keyword():
    @register_stage('noise', 'zero-noise')
    class ZeroNoise(NoiseStage):
        """No noise at all: the denoiser sees the clean latent at the timestep."""

        def sample(self, shape, device):
            return torch.zeros((self.members * shape[0], *shape[1:]), device=device)
    try:
        images = random_images(1, 64, 64)
        clean = DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False, noise=dict(type='zero-noise', seed=None))
        assert isinstance(clean.stages.noise, ZeroNoise)
        noisy = DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False, noise=dict(seed=None))
        with torch.no_grad():
            # fresh noise each call changes the default stage's features, never the clean variant's
            assert all(torch.equal(a, b) for a, b in zip(clean(images), clean(images)))
            assert not all(torch.equal(a, b) for a, b in zip(noisy(images), noisy(images)))
            latents = clean.encode(images)
            abar = clean.stages.noise.schedule.alphas_cumprod[50]
            kwargs = clean.denoiser_inputs(latents, (64, 64))
            assert torch.allclose(kwargs['sample'], abar.sqrt() * latents)
    finally:
        del STAGE_VARIANTS['noise']['zero-noise']


def test_timm_and_mmseg_take_the_nested_options():
    import timm
    from mmseg.registry import MODELS
    model = timm.create_model('test_sd_tiny_practical', features_only=True, noise=dict(t=100),
                              denoiser=dict(trainable=False))
    stages = next(m for m in model.modules() if isinstance(m, DiffusionBackbone)).stages
    # timm's default (trainable, frozen=False) fills what the user left open, never what they set
    assert stages.noise.t == 100 and stages.denoiser.trainable is False and stages.vae.trainable is True
    built = MODELS.build(dict(type='DiffusionBackbone', model='test_sd_tiny', pretrained=False,
                              noise=dict(t=100, seed=1, ensemble=2), image=dict(size=64)))
    assert (built.stages.noise.t, built.stages.noise.seed, built.stages.noise.members) == (100, 1, 2)
    combined = MODELS.build(dict(type='CombinedDiffusionBackbone', pretrained=False, t=60,
                                 members=[dict(model='test_sd_tiny', noise=dict(t=80)), dict(model='test_sdxl_tiny')]))
    assert [m.stages.noise.t for m in combined.members] == [80, 60]  # the member's own option wins
