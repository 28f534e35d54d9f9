"""Transformer denoisers (PixArt, DiT, SD3 / SD3.5, Flux): parity with the original implementation,
catalogs of the real architectures on the meta device, tiny backbones of every family, attention maps,
the prompt-embedding cache, flow-matching noise, fused projections."""
import pytest
import torch
from diffusers import FluxTransformer2DModel, PixArtTransformer2DModel
from safetensors.torch import load_file

from conftest import random_images, reference_fixture
from diffbackbones import ActivationCapture, DiffusionBackbone, list_activations
from diffbackbones.backbone.denoiser.capture import tokens_to_grid
from diffbackbones.models.loading import build_denoiser
from diffbackbones.backbone.noise.schedule import NoiseSchedule, matched_flow_t, noise_to_signal
from diffbackbones.backbone.denoiser.pruning import PrunedModule
from diffbackbones.backbone.conditioning.text_encoders import TEXT_ENCODER_LOADS
from diffbackbones.models.zoo import MODELS

TINY = ['test_pixart_tiny', 'test_dit_tiny', 'test_hunyuan_tiny', 'test_sd3_tiny', 'test_flux_tiny']


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def run_fixture(topology: str, cls, names, extra_hooks=()):
    root = reference_fixture(topology)
    model = cls.from_pretrained(root / 'transformer', torch_dtype=torch.float32).eval()
    inputs = load_file(root / 'inputs.safetensors')
    if topology == 'pixart':
        inputs['hidden_states'] = inputs.pop('sample')
        inputs['added_cond_kwargs'] = {'resolution': None, 'aspect_ratio': None}
    handles = [model.get_submodule(path).register_forward_pre_hook(hook, with_kwargs=True) for path, hook in extra_hooks]
    with torch.no_grad(), ActivationCapture(model, names) as cap:
        model(**inputs)
    for h in handles:
        h.remove()
    return cap.activations, load_file(root / 'activations.safetensors')


def test_pixart_matches_the_original_implementation():
    reference = load_file(reference_fixture('pixart') / 'activations.safetensors')
    names = [n for n in reference if n != 'transformer-noise-pred']
    ours, reference = run_fixture('pixart', PixArtTransformer2DModel, names)
    assert len(names) == 24
    for name in names:
        assert rel_l2(ours[name], reference[name]) < 1e-4, name


def test_flux_matches_the_original_implementation_and_out_is_the_true_block_output():
    reference = load_file(reference_fixture('flux') / 'activations.safetensors')
    names = [n for n in reference if n != 'transformer-noise-pred']  # its own ids: vit-block{k}-q, ...
    double = ['vit-block0-norm-out', 'vit-block1-norm-out']
    ours_out = ['vit-block0-out', 'vit-block1-out']
    block_inputs = {}

    def keep(path):
        def hook(module, args, kwargs):
            block_inputs[path] = kwargs['hidden_states']
        return hook
    # the true output of double block k is what the next block receives
    hooks = [('transformer_blocks.1', keep('transformer_blocks.1')),
             ('single_transformer_blocks.0', keep('single_transformer_blocks.0'))]
    ours, reference = run_fixture('flux', FluxTransformer2DModel, names + double, hooks)
    for name in names:
        if name in ours_out:  # the original stores the norm before the feed-forward under -out
            assert rel_l2(ours[name.replace('-out', '-norm-out')], reference[name]) < 1e-4, name
            assert rel_l2(ours[name], reference[name]) > 0.1, name
        else:
            assert rel_l2(ours[name], reference[name]) < 1e-4, name
    for k, path in enumerate(['transformer_blocks.1', 'single_transformer_blocks.0']):
        assert torch.allclose(ours[f'vit-block{k}-out'], tokens_to_grid(block_inputs[path], (8, 8)))


@pytest.mark.parametrize('model, blocks, width, extra', [
    ('pixart_alpha', 28, 1152, 'vit-block27-cross-q'), ('pixart_sigma', 28, 1152, 'vit-block0-attn-out'),
    ('sd3', 24, 1536, 'vit-block23-norm-out'), ('sd35_medium', 24, 1536, 'vit-block12-self2-k'),
    ('sd35_large', 38, 2432, 'vit-block37-self-q'), ('flux_dev', 57, 3072, 'vit-block18-norm-out'),
    ('flux_schnell', 57, 3072, 'vit-block56-ffn-inner'), ('dit_xl', 28, 1152, 'vit-block27-self-v'),
    ('hunyuan_dit', 40, 1408, 'vit-block39-cross-map')])
def test_catalogs_of_the_real_architectures_on_the_meta_device(model, blocks, width, extra):
    spec = MODELS[model]
    denoiser = build_denoiser(spec, 'meta')
    assert next(denoiser.parameters()).device.type == 'meta'
    catalog = list_activations(denoiser, (48, 80), n_text_tokens=spec.n_text_tokens or 77)  # a 384 x 640 image
    outs = [a for a in catalog if a.kind == 'vit-block-out']
    assert [a.name for a in outs] == [f'vit-block{k}-out' for k in range(blocks)]
    assert {a.channels for a in outs} == {width}
    assert {a.size for a in catalog} == {(24, 40)}  # stride 16, never a square guess
    assert extra in {a.name for a in catalog}
    for level in spec.presets['default']:
        assert all(name in {a.name for a in catalog} for name in level)
    if model == 'sd35_medium':  # dual attention in blocks 0-12 only
        assert {a.name for a in catalog if '-self2-q' in a.name} == {f'vit-block{k}-self2-q' for k in range(13)}
    if spec.n_text_tokens:
        assert next(a for a in catalog if a.kind == 'cross-map').channels == spec.n_text_tokens


@pytest.fixture(scope='module')
def tiny():
    return {name: DiffusionBackbone(name, 'default', pretrained=False) for name in TINY}


@pytest.mark.parametrize('name', TINY)
def test_tiny_backbones_batch_non_square_deterministic_frozen(tiny, name):
    backbone = tiny[name]
    x = random_images(3, 48, 80)
    with torch.no_grad():
        three = backbone(x)
        one = backbone(x[1:2])
        again = backbone(x)
    assert all(info['reduction'] == 16 for info in backbone.feature_info)
    for f, info in zip(three, backbone.feature_info):
        assert f.shape == (3, info['num_chs'], 3, 5)
    for a, b, c in zip(three, one, again):
        assert torch.allclose(a[1:2], b, atol=1e-5)  # an image's features do not depend on its batch
        assert torch.equal(a, c)  # seeded noise
    assert not torch.allclose(three[0][0], three[0][1])

    # a trainable VAE behind the frozen denoiser: gradients cross the denoiser but never land on it
    trains_vae = DiffusionBackbone(name, 'default', pretrained=False, trainable_vae=True)
    sum(f.sum() for f in trains_vae(x)).backward()
    assert all(p.grad is None for p in trains_vae.denoiser.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trains_vae.vae.parameters())


def test_flux_early_exit_holds_no_weights_of_later_blocks():
    backbone = DiffusionBackbone('test_flux_tiny', ['vit-block1-out'], pretrained=False)
    assert isinstance(backbone.denoiser.single_transformer_blocks[0], PrunedModule)
    assert isinstance(backbone.denoiser.single_transformer_blocks[1], PrunedModule)
    assert not isinstance(backbone.denoiser.transformer_blocks[1], PrunedModule)
    ran = []
    for block in backbone.denoiser.transformer_blocks:
        block.register_forward_hook(lambda *a: ran.append(1))
    with torch.no_grad():
        backbone(random_images(1, 64, 64))
    assert len(ran) == 2
    full = DiffusionBackbone('test_flux_tiny', ['vit-block1-out'], pretrained=False, prune=False)
    held = sum(p.numel() for p in backbone.denoiser.parameters())
    assert held < sum(p.numel() for p in full.denoiser.parameters())
    assert held <= sum(p.numel() for n, p in full.denoiser.named_parameters()
                       if not n.startswith(('single_transformer_blocks', 'norm_out', 'proj_out')))
    assert not any(n.startswith('single_transformer_blocks') for n, _ in backbone.denoiser.named_parameters())


@pytest.mark.parametrize('name, maps', [
    ('test_pixart_tiny', ['vit-block1-self-map', 'vit-block1-cross-map']),
    ('test_flux_tiny', ['vit-block0-self-map', 'vit-block0-cross-map', 'vit-block3-self-map', 'vit-block3-cross-map']),
    ('test_sd3_tiny', ['vit-block0-self-map', 'vit-block0-cross-map', 'vit-block0-self2-map']),
    ('test_hunyuan_tiny', ['vit-block1-self-map', 'vit-block1-cross-map'])])
def test_attention_maps_sum_to_one_over_keys(name, maps):
    backbone = DiffusionBackbone(name, maps, pretrained=False)
    with torch.no_grad():
        acts = backbone.activations(random_images(2, 48, 64))
    n_text = backbone.conditioning.n_tokens
    for level in maps:
        assert acts[level].shape[1] == (n_text if 'cross' in level else 3 * 4)
        assert (acts[level] >= 0).all()
    if name in ('test_pixart_tiny', 'test_hunyuan_tiny'):  # separate softmaxes: each map sums to 1
        for level in maps:
            assert torch.allclose(acts[level].sum(1), torch.ones(2, 3, 4), atol=1e-5)
    else:  # joint attention: image and text keys share one softmax
        for block in {m.rsplit('-', 2)[0] for m in maps}:
            total = acts[f'{block}-self-map'].sum(1) + acts[f'{block}-cross-map'].sum(1)
            assert torch.allclose(total, torch.ones(2, 3, 4), atol=1e-5)
        if name == 'test_sd3_tiny':
            assert torch.allclose(acts['vit-block0-self2-map'].sum(1), torch.ones(2, 3, 4), atol=1e-5)
    plain = DiffusionBackbone(name, 'default', pretrained=False)
    both = DiffusionBackbone(name, list(plain.levels[-1]) + maps, pretrained=False, prune=False)
    with torch.no_grad():  # computing maps never changes a feature (and RoPE still reaches the processor)
        x = random_images(1, 48, 64)
        assert torch.allclose(plain.activations(x)[plain.levels[-1][0]], both.activations(x)[plain.levels[-1][0]],
                              atol=1e-6)


def test_the_prompt_cache_makes_a_second_build_load_no_text_encoder(tmp_path):
    kwargs = dict(pretrained=False, prompt='a prompt only this test uses', prompt_cache=str(tmp_path))
    before = len(TEXT_ENCODER_LOADS)
    first = DiffusionBackbone('test_flux_tiny', 'default', **kwargs)
    assert [sub for _, sub in TEXT_ENCODER_LOADS[before:]] == ['text_encoder', 'text_encoder_2']
    assert len(list(tmp_path.glob('*.safetensors'))) == 1
    before = len(TEXT_ENCODER_LOADS)
    second = DiffusionBackbone('test_flux_tiny', 'default', **kwargs)
    assert len(TEXT_ENCODER_LOADS) == before  # nothing loaded
    assert torch.equal(first.conditioning.prompt_embeds, second.conditioning.prompt_embeds)
    assert torch.equal(first.conditioning.pooled_embeds, second.conditioning.pooled_embeds)
    DiffusionBackbone('test_flux_tiny', 'default', pretrained=False, prompt='a prompt only this test uses',
                      prompt_cache=False)
    assert len(TEXT_ENCODER_LOADS) == before + 2  # off: encoded again


def test_sd3_conditioning_joins_clips_and_t5_as_the_pipeline_does():
    backbone = DiffusionBackbone('test_sd3_tiny', 'default', pretrained=False, prompt_cache=False)
    embeds, pooled = backbone.conditioning.prompt_embeds, backbone.conditioning.pooled_embeds
    assert embeds.shape == (1, 77 + 16, 32)  # [CLIP-L + CLIP-G (16 + 16 ch); T5 (32 ch)] along tokens
    assert pooled.shape == (1, 64)  # both CLIPs' projections
    assert MODELS['sd3'].n_text_tokens == 77 + 256


def test_flow_matching_noise_and_its_matched_default_t():
    t = matched_flow_t(50)
    assert t == MODELS['flux_dev'].default_t == MODELS['sd3'].default_t == 184
    assert abs(noise_to_signal(MODELS['flux_dev'], t) - noise_to_signal(MODELS['sd15'], 50)) < 0.005
    schedule = NoiseSchedule(MODELS['test_flux_tiny'])
    z, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    noisy = schedule.add_noise(z, eps, torch.tensor([184, 500]))
    assert torch.allclose(noisy[0], 0.816 * z[0] + 0.184 * eps[0], atol=1e-6)
    assert torch.allclose(noisy[1], 0.5 * z[1] + 0.5 * eps[1], atol=1e-6)
    backbone = DiffusionBackbone('test_flux_tiny', 'default', pretrained=False, t=[100, 300], ensemble_size=2)
    assert backbone.stages.noise.members == 4
    with torch.no_grad():
        assert backbone(random_images(1, 32, 32))[0].shape == (1, 16, 2, 2)


def test_dit_class_label_conditions_the_features():
    null = DiffusionBackbone('test_dit_tiny', 'default', pretrained=False)
    cat = DiffusionBackbone('test_dit_tiny', 'default', pretrained=False, class_label=281)
    with torch.no_grad():
        x = random_images(1, 32, 32)
        assert not torch.allclose(null(x)[0], cat(x)[0])
    with pytest.raises(ValueError, match='null class'):
        DiffusionBackbone('test_dit_tiny', 'default', pretrained=False, class_label=5000)
    with pytest.raises(ValueError, match='class-conditioned'):
        DiffusionBackbone('test_flux_tiny', 'default', pretrained=False, class_label=1)


@pytest.mark.parametrize('name', ['test_pixart_tiny', 'test_flux_tiny'])
def test_fused_qkv_projections_are_refused_with_a_fix(name):
    backbone = DiffusionBackbone(name, ['vit-block0-self-k'], pretrained=False, prune=False)
    backbone.denoiser.fuse_qkv_projections()
    with pytest.raises(ValueError, match='unfuse_qkv_projections'):
        backbone(random_images(1, 32, 32))
    backbone.denoiser.unfuse_qkv_projections()
    with torch.no_grad():
        assert backbone(random_images(1, 32, 32))[0].shape[-2:] == (2, 2)


def test_presets_of_another_transformer_family_are_refused():
    with pytest.raises(ValueError, match='topology'):
        DiffusionBackbone('test_flux_tiny', 'pixart_alpha_default', pretrained=False)
    with pytest.raises(ValueError, match='closest valid ids'):
        DiffusionBackbone('test_flux_tiny', ['vit-block9-out'], pretrained=False)


def test_embedded_configs_match_the_published_parameter_counts():
    """Every real architecture config (Flux 11.9 B, T5-XXL 4.76 B, ..., IF and Hunyuan too) built on meta."""
    import subprocess
    import sys
    from conftest import REPO
    done = subprocess.run([sys.executable, str(REPO / 'tools' / 'check_model_configs.py')], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert 'all configs ok' in done.stdout


def test_deepfloyd_if_in_pixel_space():
    """IF-I: SimpleCrossAttn blocks (bare attention, [text; image] keys), ResnetBlock2D resamplers, no VAE,
    inputs resized to the 64 px working size and features resized back."""
    spec = MODELS['if_xl']
    catalog = {a.name: a for a in list_activations(build_denoiser(spec, 'meta'), (64, 64), n_text_tokens=77)}
    assert catalog['down-level1-repeat0-attn-self-k'].channels == 1408
    assert catalog['mid-attn-cross-map'].channels == 77 and catalog['mid-attn-cross-map'].size == (8, 8)
    assert catalog['down-level0-downsampler-out'].size == (32, 32)  # a ResnetBlock2D(down=True)
    assert catalog['up-level3-repeat2-res-out'].size == (64, 64)
    names = ['down-level1-repeat0-attn-self-k', 'up-level0-repeat0-attn-self-map', 'up-level0-repeat0-attn-cross-map',
             'up-level1-upsampler-out']
    backbone = DiffusionBackbone('test_if_tiny', names, pretrained=False)
    assert backbone.stages.image.size == (64, 64) and backbone.vae.downsample_factor == 1
    with torch.no_grad():
        feats = backbone(random_images(2, 100, 80))
        acts = backbone.activations(random_images(1, 64, 64))
    assert [tuple(f.shape[-2:]) for f in feats] == [(100, 80), (50, 40), (25, 20)]  # strides 1, 2, 4 of the input
    total = acts['up-level0-repeat0-attn-self-map'].sum(1) + acts['up-level0-repeat0-attn-cross-map'].sum(1)
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)  # one softmax over [text; image] keys


def test_flux_in_fp16_warns_to_use_bf16():
    with pytest.warns(UserWarning, match="dtype='bf16'"):
        with torch.device('meta'):
            DiffusionBackbone('flux_schnell', 'default', pretrained=False, dtype='fp16', prompt_cache=False)


def test_hunyuan_builds_on_the_meta_device_without_running_its_text_encoders():
    with torch.device('meta'):  # BERT's mask handling reads values: on meta no encoder runs at all
        backbone = DiffusionBackbone('hunyuan_dit', 'default', pretrained=False, prompt_cache=False)
    assert backbone.conditioning.prompt_embeds.shape == (1, 77 + 256, 2048)
    assert backbone.conditioning.attention_mask.shape == (1, 77 + 256)
    assert not any(n.startswith('blocks.26.') for n, _ in backbone.denoiser.named_parameters())


def test_a_flux_dev_backbone_stopping_at_block_30_holds_no_later_block():
    """On the meta device, at full size: blocks 31-56 (single blocks 12-37) hold no weights."""
    with torch.device('meta'):
        backbone = DiffusionBackbone('flux_dev', ['vit-block30-out'], pretrained=False, prompt_cache=False)
    held = {name.split('.')[0] + '.' + name.split('.')[1] for name, _ in backbone.denoiser.named_parameters()
            if name.startswith('single_transformer_blocks.')}
    assert held == {f'single_transformer_blocks.{j}' for j in range(12)}  # block 30 = single block 11
    assert len(backbone.denoiser.transformer_blocks) == 19 and len(backbone.denoiser.single_transformer_blocks) == 38


def test_missing_weights_offline_say_how_to_supply_them(monkeypatch, tmp_path):
    from diffbackbones.models.loading import WeightsNotFoundError
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HOME', str(tmp_path))  # an empty cache
    with pytest.raises(WeightsNotFoundError, match='(?s)transformer/.*DIFFBACKBONES_CACHE'):
        DiffusionBackbone('pixart_sigma', 'default', pretrained=True)
