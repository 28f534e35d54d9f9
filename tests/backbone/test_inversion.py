"""DDIM inversion as a noise stage (``noise='ddim-inversion'``, diffbackbones/backbone/noise/inversion.py), on real
diffusers models: the walk equals a plain DDIM loop written here from the formula, the features come from the
inverted latent, and on the trained shapes model DDIM sampling returns from it to the clean latent."""
import pytest
import torch
from diffusers import DDIMScheduler

from conftest import random_images
from diffbackbones import DiffusionBackbone, get_model_spec
from diffbackbones.training.shapes_sd import PROMPT, render_images
from diffbackbones.models.families import pack_latents, unpack_latents
from diffbackbones.backbone.noise.inversion import DdimInversionStage
from diffbackbones.backbone.stages import build_stages


@pytest.fixture(scope='module')
def tiny() -> DiffusionBackbone:
    return DiffusionBackbone('test_sd_tiny', pretrained=False, noise='ddim-inversion')


def _rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x - y).norm() / y.norm())


def test_options_and_schedule():
    stage = build_stages(dict(noise='ddim-inversion'), {}).noise
    assert type(stage) is DdimInversionStage and stage.inversion_steps == 100  # the paper code's 100
    stage.bind(get_model_spec('test_sd_tiny'))
    # steps of 1000 // 100 = 10 timesteps, ending at t itself; one forward each
    assert stage.walk(50) == [10, 20, 30, 40, 50] and stage.forwards == 5
    assert stage.walk(51) == [1, 11, 21, 31, 41, 51] and stage.walk(0) == [0] and stage.walk(7) == [7]
    assert build_stages(dict(noise=dict(type='ddim-inversion', t=500, inversion_steps=10)), {}).noise.inversion_steps == 10
    with pytest.raises(ValueError, match='deterministic'):
        build_stages(dict(noise=dict(type='ddim-inversion', ensemble=4)), {})
    with pytest.raises(ValueError, match='inversion_steps'):
        build_stages(dict(noise=dict(type='ddim-inversion', inversion_steps=0)), {})
    with pytest.raises(ValueError, match='ddim-inversion needs the denoiser'):
        stage(torch.zeros(1, 4, 8, 8))


def test_walk_equals_a_plain_ddim_loop_and_features_come_from_it(tiny):
    images = random_images(2, 64, 64)
    with torch.no_grad():
        x, hw = tiny.working_input(images)
        z = tiny.encode(x)
        # The paper's update, written out with diffusers' own DDIM table: predict at the next timestep,
        # x <- (x - sqrt(1 - a_cur) eps) sqrt(a_next / a_cur) + sqrt(1 - a_next) eps, from the clean latent (a = 1).
        abar = DDIMScheduler(beta_schedule='scaled_linear', beta_start=0.00085, beta_end=0.012).alphas_cumprod
        text = tiny.conditioning.prompt_embeds.expand(2, -1, -1)
        loop, a_cur = z.clone(), torch.tensor(1.0)
        for t in (10, 20, 30, 40, 50):
            eps = tiny.denoiser(loop, torch.full((2,), t), encoder_hidden_states=text).sample
            a_next = abar[t]
            loop = (loop - (1 - a_cur).sqrt() * eps) * (a_next / a_cur).sqrt() + (1 - a_next).sqrt() * eps
            a_cur = a_next
        inverted, timesteps = tiny.stages.noise(z, lambda n, s: tiny.predict(n, s, hw))
        assert timesteps.tolist() == [50, 50]
        assert _rel(inverted, loop) < 1e-5
        assert _rel(inverted, z) > 0.01  # it did move

        # The capture forward runs on the inverted latent at t: the same activations as capturing on the loop's
        kwargs = tiny.family.inputs(tiny.denoiser, loop, timesteps, tiny.conditioning, hw)
        expected = tiny.stages.denoiser(tiny.denoiser, tiny.capture, kwargs, 1, keep_graph=False)
        acts = tiny.activations(images)
        assert acts.keys() == expected.keys()
        for name in acts:
            assert _rel(acts[name], expected[name]) < 1e-5, name
        sampled = DiffusionBackbone('test_sd_tiny', pretrained=False).activations(images)
        assert all(_rel(sampled[n], acts[n]) > 1e-3 for n in acts)  # not the sampled-noise features


def test_a_list_of_timesteps_inverts_to_each(tiny):
    stage = DdimInversionStage(t=[20, 50])
    stage.bind(tiny.spec)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    predict = lambda n, t: tiny.predict(n, t, (64, 64))
    noisy, timesteps = stage(z, predict)
    assert stage.members == 2 and stage.forwards == 2 + 5 and timesteps.tolist() == [20, 20, 50, 50]
    with torch.no_grad():  # timestep-major, each walk its own
        torch.testing.assert_close(noisy, torch.cat([stage.invert(z, 20, predict), stage.invert(z, 50, predict)]))


def test_batch_independence(tiny):
    images = random_images(3, 64, 64, seed=1)
    with torch.no_grad():
        whole = tiny(images)
        for i in range(3):
            for level, alone in zip(whole, tiny(images[i:i + 1])):
                torch.testing.assert_close(level[i:i + 1], alone, rtol=1e-4, atol=1e-5)


def test_pruning_is_skipped(tiny):
    count = lambda bb: sum(p.numel() for p in bb.denoiser.parameters())
    sampled = DiffusionBackbone('test_sd_tiny', pretrained=False)
    unpruned = DiffusionBackbone('test_sd_tiny', pretrained=False, prune=False)
    assert sampled.pruned and tiny.pruned == []  # the inversion needs the whole denoiser's prediction
    assert count(tiny) == count(unpruned) > count(sampled)
    # the untouched denoiser predicts what the unpruned sampled-noise backbone's does
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(tiny.predict(z, torch.tensor([50]), (64, 64)),
                                   unpruned.predict(z, torch.tensor([50]), (64, 64)))


@pytest.mark.parametrize('model', ['test_hunyuan_tiny', 'test_sd3_tiny', 'test_flux_tiny', 'test_chroma_tiny',
                                   'test_flux2_tiny', 'test_qwen_image_tiny', 'test_zimage_tiny', 'test_sana_tiny',
                                   'test_lumina2_tiny', 'test_cogview4_tiny', 'test_wan_tiny', 'test_hidream_tiny',
                                   'test_hunyuan_image_tiny'])
def test_v_prediction_and_flow_models_follow_their_formulas(model):
    # (each family's prediction is the velocity its own pipeline steps with: tests/models/test_family_*.py)
    """v-prediction is turned into eps (eps = a v + b x); flow models take Euler steps of their velocity."""
    bb = DiffusionBackbone(model, 'default', pretrained=False, noise=dict(type='ddim-inversion', inversion_steps=20))
    spec, stage = bb.spec, bb.stages.noise
    images = random_images(1, 64, 64)
    with torch.no_grad():
        x, hw = bb.working_input(images)
        z = bb.encode(x)
        predict = lambda n, t: bb.predict(n, torch.full((n.shape[0],), t), hw).float()
        loop = z.clone()
        if spec.schedule == 'flow':  # x_s = (1 - s) z + s eps, v = eps - z: x <- x + (s_next - s) v
            assert stage.walk(stage.t) == [34, 84, 134, 184]  # default t=184, steps of 1000 // 20 = 50
            s = 0
            for t in (34, 84, 134, 184):
                loop = loop + (t / 1000 - s) * predict(loop, t)
                s = t / 1000
        else:
            abar = DDIMScheduler(beta_schedule='scaled_linear', beta_start=spec.beta_start,
                                 beta_end=spec.beta_end).alphas_cumprod
            a_cur = torch.tensor(1.0)
            for t in stage.walk(stage.t):
                v = predict(loop, t)
                eps = a_cur.sqrt() * v + (1 - a_cur).sqrt() * loop
                x0 = a_cur.sqrt() * loop - (1 - a_cur).sqrt() * v
                loop = abar[t].sqrt() * x0 + (1 - abar[t]).sqrt() * eps
                a_cur = abar[t]
        inverted, _ = stage(z, lambda n, t: bb.predict(n, t, hw))
        assert _rel(inverted, loop) < 1e-5
        assert all(f.isfinite().all() for f in bb(images))
        if model == 'test_flux_tiny':  # the packed tokens come back in the latent layout
            tokens = torch.randn(2, 16, 64)
            torch.testing.assert_close(pack_latents(unpack_latents(tokens, (2, 16, 8, 8))), tokens)


def test_shapes_model_round_trip():
    """DDIM sampling with the same steps returns from the inverted latent to the clean one, far closer
    than from sampled noise at the same t (the shipped trained model; t=50, the paper's default)."""
    bb = DiffusionBackbone('shapes_sd_tiny', pretrained=True, prompt=PROMPT, noise='ddim-inversion')
    stage = bb.stages.noise
    with torch.no_grad():
        x, hw = bb.working_input(render_images(2, 'both', seed=3))
        z = bb.encode(x).float()
        predict = lambda n, t: bb.predict(n, torch.full((n.shape[0],), t), hw).float()

        def sample_back(x: torch.Tensor) -> torch.Tensor:  # DDIM, eta 0: 50, 40, ..., 10, then the clean latent
            walk = stage.walk(stage.t)[::-1]
            abar = bb.stages.noise.schedule.alphas_cumprod
            for cur, prev in zip(walk, walk[1:] + [None]):
                eps = predict(x, cur)
                a_prev = abar[prev] if prev is not None else torch.tensor(1.0)
                x0 = (x - (1 - abar[cur]).sqrt() * eps) / abar[cur].sqrt()
                x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
            return x

        inverted, _ = stage(z, lambda n, t: bb.predict(n, t, hw))
        noisy = stage.schedule.add_noise(z, torch.randn(z.shape, generator=torch.Generator().manual_seed(0)),
                                         torch.full((2,), 50))
        inversion_error, sampled_error = _rel(sample_back(inverted), z), _rel(sample_back(noisy), z)
    print(f'round trip at t=50, 5 steps: relative error {inversion_error:.4f} from the inverted latent, '
          f'{sampled_error:.4f} from sampled noise')
    assert inversion_error < 0.05 and inversion_error < sampled_error / 3


def test_deterministic_without_a_seed_and_builds_on_the_meta_device(tiny):
    images = random_images(2, 64, 64, seed=2)
    unseeded = DiffusionBackbone('test_sd_tiny', pretrained=False, noise=dict(type='ddim-inversion', seed=None))
    with torch.no_grad():
        first, again = unseeded(images), unseeded(images)
        assert all(torch.equal(a, b) for a, b in zip(first, again))  # no noise drawn: the image alone decides
        unseeded_sampled = DiffusionBackbone('test_sd_tiny', pretrained=False, noise=dict(seed=None))
        assert not torch.equal(unseeded_sampled(images)[0], unseeded_sampled(images)[0])  # what seed=None means there
    with torch.device('meta'):
        meta = DiffusionBackbone('test_sd_tiny', pretrained=False, prompt='on the meta device', noise='ddim-inversion')
    assert meta.feature_info == tiny.feature_info and meta.pruned == [] and meta.stages.noise.forwards == 5
