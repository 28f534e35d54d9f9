"""DiffusionBackbone: shapes, determinism, freezing, early exit, loading and errors on tiny models."""
import math

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from diffbackbones import DiffusionBackbone, WeightsNotFoundError
from diffbackbones.models.zoo import MODELS, load_config

from conftest import random_images


@pytest.fixture(scope='module')
def sd_tiny():
    return DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False)


@pytest.mark.parametrize('model,preset', [('test_sd_tiny', 'practical'), ('test_sd_tiny', 'legacy'),
                                          ('test_sdxl_tiny', 'practical'), ('test_sdxl_tiny', 'legacy')])
@pytest.mark.parametrize('batch,hw', [(1, (64, 64)), (3, (64, 96)), (2, (70, 100))])
def test_levels_match_feature_info_at_any_size(model, preset, batch, hw):
    backbone = DiffusionBackbone(model, preset, pretrained=False)
    with torch.no_grad():
        feats = backbone(random_images(batch, *hw))
    assert len(feats) == len(backbone.feature_info)
    reductions = [info['reduction'] for info in backbone.feature_info]
    assert reductions == sorted(reductions)
    for feat, info in zip(feats, backbone.feature_info):
        s = info['reduction']
        assert feat.shape == (batch, info['num_chs'], math.ceil(hw[0] / s), math.ceil(hw[1] / s))
        assert torch.isfinite(feat).all()
        assert feat.is_contiguous()   # NCHW memory, though the VAE runs channels-last on the CPU (test_mmdet.py)


def test_seeded_noise_is_deterministic_and_the_seed_matters(sd_tiny):
    x = random_images(2, 64, 64)
    with torch.no_grad():
        a, b = sd_tiny(x), sd_tiny(x)
        other = DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False, noise_seed=1)(x)
        fresh = DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False, noise_seed=None)
        f1, f2 = fresh(x), fresh(x)
    for fa, fb, fo in zip(a, b, other):
        assert torch.equal(fa, fb)
        assert not torch.allclose(fa, fo, atol=1e-4)
    assert not torch.allclose(f1[0], f2[0], atol=1e-4)


def test_features_of_an_image_do_not_depend_on_its_batch(sd_tiny):
    x = random_images(3, 64, 64)
    with torch.no_grad():
        batched = sd_tiny(x)
        single = sd_tiny(x[1:2])
    for fb, fs in zip(batched, single):
        torch.testing.assert_close(fb[1:2], fs, rtol=1e-4, atol=1e-5)


def test_padding_crops_back_to_the_unpadded_content(sd_tiny):
    """A 70x100 image is padded to 128x128; its features are the top-left crop, not resampled."""
    x = random_images(1, 70, 100)
    with torch.no_grad():
        cropped = sd_tiny(x)
        padded = sd_tiny(torch.nn.functional.pad(x, (0, 28, 0, 58), mode='replicate'))
    for fc, fp in zip(cropped, padded):
        torch.testing.assert_close(fc, fp[..., :fc.shape[-2], :fc.shape[-1]])


@pytest.mark.parametrize('timesteps,ensemble', [(50, 3), ([10, 200], 2)])
def test_batched_members_are_the_mean_of_separate_runs(timesteps, ensemble):
    """Timesteps x noise samples run as one batch and equal the mean of one run per member."""
    x = random_images(2, 64, 64)
    ens = DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False, t=timesteps, ensemble_size=ensemble)
    assert ens.stages.noise.members == len(ens.stages.noise.timesteps) * ensemble
    calls = []
    handle = ens.denoiser.conv_in.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    with torch.no_grad():
        together = ens(x)
    handle.remove()
    assert calls == [2 * ens.stages.noise.members]  # one batched forward, not a loop
    with torch.no_grad():
        latents = ens.encode(x)
        noise = ens.stages.noise.sample(latents.shape, latents.device).view(ens.stages.noise.members, 2, *latents.shape[1:])
        members = []
        for m, t in enumerate(s for s in ens.stages.noise.timesteps for _ in range(ensemble)):
            abar = ens.stages.noise.schedule.alphas_cumprod[t]
            noisy = abar.sqrt() * latents + (1 - abar).sqrt() * noise[m]
            with ens.capture:
                ens.denoiser(noisy, torch.full((2,), t), encoder_hidden_states=ens.conditioning.prompt_embeds.expand(2, -1, -1))
            members.append(ens.capture.activations)
            ens.capture.activations = {}
    for level, feat in zip(ens.levels, together):
        expected = torch.cat([torch.stack([m[n] for m in members]).mean(0) for n in level], 1)
        torch.testing.assert_close(feat, expected, rtol=1e-4, atol=1e-5)


def test_frozen_by_default_and_after_train(sd_tiny):
    sd_tiny.train()
    assert not sd_tiny.denoiser.training and not sd_tiny.vae.training
    assert not any(p.requires_grad for p in sd_tiny.parameters())
    x = random_images(1, 64, 64)
    feats = sd_tiny(x)
    assert not any(f.requires_grad for f in feats)  # no graph is kept for a frozen denoiser


def test_trainable_denoiser_gets_gradients_exactly_where_it_ran():
    backbone = DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False, trainable_denoiser=True)
    backbone.train()
    assert backbone.denoiser.training and not backbone.vae.training
    ran = set()
    handles = [m.register_forward_pre_hook(lambda mod, a, name=name: ran.add(name))
               for name, m in backbone.denoiser.named_modules() if not list(m.children())]
    feats = backbone(random_images(2, 64, 64))
    for h in handles:
        h.remove()
    sum(f.square().mean() for f in feats).backward()
    assert not any(p.requires_grad or p.grad is not None for p in backbone.vae.parameters())
    got_grad = {n.rsplit('.', 1)[0] for n, p in backbone.denoiser.named_parameters() if p.grad is not None}
    assert got_grad and got_grad <= ran  # nothing after the exit point is touched
    assert 'conv_out' not in got_grad and 'up_blocks.3.resnets.1.conv1' not in got_grad
    assert 'up_blocks.1.resnets.2.conv2' in got_grad and 'down_blocks.0.resnets.0.conv1' in got_grad


def test_early_exit_counts_the_blocks_that_ran(sd_tiny):
    calls = []
    unet = sd_tiny.denoiser
    watched = {'up3.res0': unet.up_blocks[3].resnets[0], 'up3.attn0': unet.up_blocks[3].attentions[0],
               'up3.res1': unet.up_blocks[3].resnets[1], 'conv_out': unet.conv_out,
               'up3.attn0.block0.ff': unet.up_blocks[3].attentions[0].transformer_blocks[0].ff}
    handles = [m.register_forward_pre_hook(lambda mod, a, k=k: calls.append(k)) for k, m in watched.items()]
    with torch.no_grad():
        sd_tiny(random_images(1, 64, 64))
    for h in handles:
        h.remove()
    # practical's deepest activation is up-level3-repeat0-vit-block0-self-k: stop inside attn1
    assert calls == ['up3.res0', 'up3.attn0']


def test_dtype_bf16_runs_and_stays_close_to_fp32(sd_tiny):
    x = random_images(1, 64, 64)
    bf16 = DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False, dtype='bf16')
    with torch.no_grad():
        ref, low, low_in = sd_tiny(x), bf16(x), bf16(x.to(torch.bfloat16))
    assert next(bf16.denoiser.parameters()).dtype == torch.bfloat16
    for r, l, b in zip(ref, low, low_in):
        assert l.dtype == torch.float32  # the input's dtype: an fp32 head takes it as it is
        assert b.dtype == torch.bfloat16  # bf16 in (timm's model.to(torch.bfloat16) way), bf16 out
        assert ((l - r).norm() / r.norm()) < 0.05
        assert torch.equal(b.float(), l)  # the same computation either way; only the hand-over differs


def test_sdxl_time_ids_follow_the_working_size():
    backbone = DiffusionBackbone('test_sdxl_tiny', 'practical', pretrained=False)
    kwargs = backbone.family.inputs(backbone.denoiser, torch.zeros(2, 4, 8, 12), torch.tensor([50, 50]),
                                    backbone.conditioning, (64, 96))
    assert kwargs['added_cond_kwargs']['time_ids'].tolist() == [[64, 96, 0, 0, 64, 96]] * 2
    assert kwargs['added_cond_kwargs']['text_embeds'].shape == (2, 32)
    assert kwargs['encoder_hidden_states'].shape == (2, 77, 32)


def test_prompt_changes_the_conditioning_and_text_encoders_are_released():
    a = DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False, prompt='a photo of a horse')
    b = DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False, prompt='an urban street scene')
    assert not torch.allclose(a.conditioning.prompt_embeds, b.conditioning.prompt_embeds)
    names = {type(m).__name__ for m in a.modules()}
    assert not any('CLIP' in n for n in names) and 'Decoder' not in names
    assert not any(k.startswith('conditioning') for k in a.state_dict())


def test_image_size_resizes_the_work_and_keeps_the_output_contract():
    backbone = DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False, image_size=64)
    with torch.no_grad():
        feats = backbone(random_images(1, 96, 128))
    assert [tuple(f.shape[-2:]) for f in feats] == [(12, 16), (6, 8), (3, 4)]


def test_local_diffusers_folder_loads_its_weights(tmp_path):
    spec = MODELS['test_sd_tiny']
    torch.manual_seed(123)  # different from the random-init seed: the loaded weights must win
    unet = UNet2DConditionModel.from_config(load_config(spec, 'unet'))
    unet.save_pretrained(tmp_path / 'unet')
    AutoencoderKL.from_config(load_config(spec, 'vae')).save_pretrained(tmp_path / 'vae')
    CLIPTextModel(CLIPTextConfig(**load_config(spec, 'text_encoder'))).save_pretrained(tmp_path / 'text_encoder')
    write_tiny_clip_tokenizer(tmp_path / 'tokenizer')
    backbone = DiffusionBackbone('test_sd_tiny', 'practical', pretrained=str(tmp_path))
    theirs = unet.state_dict()
    for name, mine in backbone.denoiser.state_dict().items():  # the kept (unpruned) part
        assert torch.equal(mine, theirs[name]), name
    with torch.no_grad():
        assert all(torch.isfinite(f).all() for f in backbone(random_images(1, 64, 64)))


def write_tiny_clip_tokenizer(folder):
    """A real CLIPTokenizer with a handful of tokens (no vocabulary can be downloaded here)."""
    from transformers import CLIPTokenizer
    vocab = {t: i for i, t in enumerate(['a', 'h', 'o', 'p', 't', 'a</w>', 'o</w>', 'ph', 'photo</w>',
                                         '<|startoftext|>', '<|endoftext|>'])}
    CLIPTokenizer(vocab=vocab, merges=[('p', 'h')], model_max_length=77).save_pretrained(folder)


# -- errors ---------------------------------------------------------------------------------------

def test_unknown_layer_id_names_the_closest_ones():
    with pytest.raises(ValueError, match='up-level1-repeat1-vit-block0-cross-q'):
        DiffusionBackbone('test_sd_tiny', ['up-level1-repeat1-vit-block0-cros-q'], pretrained=False)


def test_preset_of_another_family_is_refused():
    with pytest.raises(ValueError, match=r"'sd15_practical' belongs to 'sd15' \(sd topology\).*'sdxl_practical'|"
                                         r"'sd15_practical' belongs to 'sd15' \(sd topology\)"):
        DiffusionBackbone('test_sdxl_tiny', 'sd15_practical', pretrained=False)
    with pytest.raises(ValueError, match="Unknown preset 'fancy'.*available"):
        DiffusionBackbone('test_sd_tiny', 'fancy', pretrained=False)
    # the same topology shares layer ids, so a sibling's preset is fine
    assert DiffusionBackbone('test_sd_tiny', 'sd15_legacy', pretrained=False).feature_info[0]['num_chs'] == 96


def test_levels_must_share_a_stride_and_go_fine_to_coarse():
    with pytest.raises(ValueError, match='share a stride'):
        DiffusionBackbone('test_sd_tiny', [['up-level3-repeat0-res-out', 'up-level2-repeat0-res-out']], pretrained=False)
    with pytest.raises(ValueError, match='fine to coarse'):
        DiffusionBackbone('test_sd_tiny', [['up-level2-repeat0-res-out'], ['up-level3-repeat0-res-out']], pretrained=False)


def test_flat_lists_are_grouped_by_stride(sd_tiny):
    backbone = DiffusionBackbone('test_sd_tiny', ['up-level1-repeat0-res-out', 'up-level3-repeat0-vit-block0-self-k',
                                                  'up-level1-repeat1-res-out'], pretrained=False)
    assert backbone.levels == (('up-level3-repeat0-vit-block0-self-k',),
                               ('up-level1-repeat0-res-out', 'up-level1-repeat1-res-out'))
    assert [i['reduction'] for i in backbone.feature_info] == [8, 32]


def _with_nan_and_inf():
    x = random_images(1, 64, 64)
    x[0, 0, 3, 3], x[0, 1, 4, 4] = float('nan'), float('inf')
    return x


@pytest.mark.parametrize('images,match', [
    (torch.rand(3, 64, 64), r'shape \(B, 3, H, W\).*shape \(3, 64, 64\)'),
    (torch.rand(1, 4, 64, 64), r'got a torch.float32 tensor of shape \(1, 4, 64, 64\)'),
    (torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8), 'float tensor.*torch.uint8'),
    (_with_nan_and_inf(), r'contain NaN or inf values \(2 of 12288\)'),
    ('not a tensor', 'got a str'),
])
def test_bad_images_are_refused_with_a_reason(sd_tiny, images, match):
    with pytest.raises(ValueError, match=match):
        sd_tiny(images)


def test_out_of_range_input_warns_once_or_raises_when_strict():
    backbone = DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False)
    x = torch.rand(1, 3, 64, 64) * 255
    with pytest.warns(UserWarning, match=r'values in \[-1, 1\].*got values in \[.*, 25\d.*127.5.*once per model') as record:
        with torch.no_grad():
            feats = backbone(x)
            backbone(x)  # a second out-of-range batch runs without a second warning
    assert len([w for w in record if 'values in [-1, 1]' in str(w.message)]) == 1
    assert record[0].filename == __file__  # points at the caller's line, not at torch internals
    assert all(torch.isfinite(f).all() for f in feats)
    strict = DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False, strict_input=True)
    with pytest.raises(ValueError, match=r'values in \[-1, 1\].*127.5'):
        strict(x)


def test_an_empty_batch_gives_empty_levels_of_the_right_shapes(sd_tiny):
    feats = sd_tiny(torch.zeros(0, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(0, i['num_chs'], math.ceil(64 / i['reduction']),
                                               math.ceil(96 / i['reduction'])) for i in sd_tiny.feature_info]


def test_missing_weights_offline_say_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path / 'empty-cache'))
    with pytest.raises(WeightsNotFoundError, match=r"(?s)stable-diffusion-v1-5.*HF_HUB_OFFLINE.*pretrained=\"/path/to"):
        DiffusionBackbone('sd15', 'practical', pretrained=True)
    with pytest.raises(WeightsNotFoundError, match='neither a local diffusers folder nor a hub id'):
        DiffusionBackbone('sd15', 'practical', pretrained=str(tmp_path / 'nowhere' / 'x' / 'y'))
    with pytest.raises(ValueError, match='random-weight test model'):
        DiffusionBackbone('test_sd_tiny', 'practical', pretrained=True)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match='Unknown diffusion model'):
        DiffusionBackbone('sd99', pretrained=False)
    with pytest.raises(ValueError, match='timestep'):
        DiffusionBackbone('test_sd_tiny', t=1000, pretrained=False)
    with pytest.raises(ValueError, match='dtype'):
        DiffusionBackbone('test_sd_tiny', dtype='int8', pretrained=False)
    with pytest.raises(ValueError, match='channels_last must be None'):
        DiffusionBackbone('test_sd_tiny', channels_last='yes', pretrained=False)
    with pytest.raises(ValueError, match='latent_scale must be a positive number'):
        DiffusionBackbone('test_sd_tiny', latent_scale=0, pretrained=False)
    with pytest.raises(ValueError, match='trainable_vae=True changes the encoder'):
        DiffusionBackbone('test_sd_tiny', latent_cache='memory', trainable_vae=True, pretrained=False)


def test_latent_scale_replaces_the_vae_scaling_factor(sd_tiny):
    doubled = DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False, latent_scale=2 * sd_tiny.vae.scaling_factor)
    x = random_images(1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(doubled.encode(x), 2 * sd_tiny.encode(x), rtol=1e-5, atol=1e-6)


def test_state_dict_is_complete_and_a_lean_one_loads_strictly():
    a = DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False, fusion=True)
    full = a.state_dict()
    assert 'vae.encoder.conv_in.weight' in full and 'denoiser.conv_in.weight' in full
    assert set(dict(a.named_parameters())) <= set(full)
    with torch.no_grad():
        for p in a.fusion.parameters():
            p.add_(0.5)  # a trained fusion, to tell loaded from fresh
    lean = {k: v for k, v in a.state_dict().items() if not k.startswith(a.frozen_prefixes)}
    assert lean and len(lean) < len(full)
    b = DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False, fusion=True)
    result = b.load_state_dict(lean, strict=True)  # frozen weights come from b's own (identical) source
    assert not result.missing_keys and not result.unexpected_keys
    x = random_images(1, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(p, q) for p, q in zip(a(x), b(x)))
    # a trainable denoiser is not filled in: a lean checkpoint lacks what was trained, and says so
    c = DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False, fusion=True, trainable_denoiser=True)
    assert c.frozen_prefixes == ('vae.',)
    with pytest.raises(RuntimeError, match=r'Missing key\(s\).*denoiser\.'):
        c.load_state_dict(lean, strict=True)


def test_pixels_to_input_maps_0_255_onto_the_vae_range():
    from diffbackbones.backbone.diffusion_backbone import pixels_to_input
    pixels = torch.tensor([[[0, 255, 127]]], dtype=torch.uint8).expand(2, 4, 3)  # (H, W, 3)
    x = pixels_to_input(pixels.numpy())
    assert x.shape == (1, 3, 2, 4) and x.dtype == torch.float32
    assert x[0, 0].eq(-1).all() and x[0, 1].eq(1).all() and torch.allclose(x[0, 2], torch.tensor(127 / 127.5 - 1))
    assert pixels_to_input(pixels[None].expand(3, 2, 4, 3)).shape == (3, 3, 2, 4)


def test_meta_build_after_a_cpu_build_of_the_same_prompt():
    # The second build reads the prompt's embeddings from the cache (CPU tensors); on the meta device they
    # must land beside the meta weights, or the first attention call mixes devices.
    prompt = 'a prompt built on the CPU, then on the meta device'
    DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False, prompt=prompt)
    with torch.device('meta'):
        meta = DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False, prompt=prompt)
    assert meta.conditioning.prompt_embeds.is_meta
    assert [i['num_chs'] for i in meta.feature_info] == [32, 64, 128]
