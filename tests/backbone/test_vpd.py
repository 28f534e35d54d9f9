"""VPD's input mode and feature preset (docs/vpd.md): clean, unscaled latents at t=1 (``noise='clean'``,
diffbackbones/backbone/noise/clean.py, with ``vae=dict(scale=1.0)``) and ``activations='vpd'``, the decoder outputs
VPD's UNetWrapper returns (LDM ``output_blocks`` 1, 4, 7 and the last one), fine to coarse.
"""
import inspect

import pytest
import torch
from diffusers import AutoencoderKL

from conftest import random_images
from diffbackbones import DiffusionBackbone
from diffbackbones.models.catalog import activation_points, catalog_index
from diffbackbones.backbone.noise.clean import CleanLatentStage
from diffbackbones.models.loading import build_denoiser
from diffbackbones.backbone.stages import build_stages
from diffbackbones.models.zoo import MODELS, get_model_spec, load_config


def _rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x - y).norm() / y.norm())


def test_clean_stage_options():
    stage = build_stages(dict(noise='clean'), {}).noise
    assert type(stage) is CleanLatentStage and stage.t == 1 and stage.ensemble == 1  # VPD's t
    assert build_stages(dict(noise=dict(type='clean', t=[1, 10])), {}).noise.t == [1, 10]
    assert build_stages(dict(noise='clean'), dict(t=5)).noise.t == 5  # the flat keyword of earlier releases
    with pytest.raises(ValueError, match='deterministic'):
        build_stages(dict(noise=dict(type='clean', ensemble=2)), {})
    with pytest.raises(ValueError, match='unknown noise option'):
        build_stages(dict(noise=dict(type='clean', inversion_steps=10)), {})
    stage.bind(get_model_spec('sd15'))
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noisy, timesteps = stage(z)
    assert torch.equal(noisy, z) and timesteps.tolist() == [1, 1] and stage.members == 1
    several = CleanLatentStage(t=[1, 10])
    several.bind(get_model_spec('sd15'))
    noisy, timesteps = several(z)  # timestep-major, no noise in either copy
    assert torch.equal(noisy, torch.cat([z, z])) and timesteps.tolist() == [1, 1, 10, 10] and several.members == 2
    with pytest.raises(ValueError, match=r't must be an integer training timestep'):
        CleanLatentStage(t=1000).bind(get_model_spec('sd15'))


def _posterior_mode(bb: DiffusionBackbone, x: torch.Tensor) -> torch.Tensor:
    # diffusers' own AutoencoderKL.encode(...).latent_dist.mode(), with the backbone's encoder weights: VPD's
    # encoder_vq.encode(x).mode(), which no scaling factor touches
    with torch.device('meta'):
        vae = AutoencoderKL.from_config(load_config(bb.spec, 'vae'))
    vae.encoder, vae.quant_conv = bb.vae.encoder, bb.vae.quant_conv
    return vae.encode(x).latent_dist.mode()


@pytest.mark.parametrize('scale', [1.0, None])
def test_denoiser_input_is_the_posterior_mode_at_t1(scale):
    bb = DiffusionBackbone('test_sd_tiny', 'sd15_vpd', pretrained=False, noise='clean', vae=dict(scale=scale),
                           channels_last=False)
    seen = {}
    handle = bb.denoiser.register_forward_pre_hook(lambda m, args, kwargs: seen.update(kwargs), with_kwargs=True)
    images = random_images(2, 64, 64)
    with torch.no_grad():
        bb(images)
        mode = _posterior_mode(bb, images)
    handle.remove()
    factor = 1.0 if scale == 1.0 else float(load_config(bb.spec, 'vae')['scaling_factor'])
    assert factor != 1.0 or scale == 1.0  # the default scales: the test model's factor is not 1
    assert torch.equal(seen['sample'], mode * factor)  # exactly: no noise, no other scaling
    assert seen['timestep'].tolist() == [1, 1]


def _ldm_output_blocks(unet, latents, timesteps, context) -> list[torch.Tensor]:
    """Every LDM ``output_blocks`` output, in order, computed the way VPD's ``register_hier_output`` forward
    runs the UNet (h = cat(h, hs.pop()); h = block(h)), with diffusers' modules: an LDM output block is a
    resnet, the attention after it, and the level's upsampler after its last resnet."""
    temb = unet.time_embedding(unet.time_proj(timesteps).to(latents.dtype))
    h = unet.conv_in(latents)
    hs = [h]
    for block in unet.down_blocks:
        if getattr(block, 'attentions', None):
            h, res = block(h, temb, encoder_hidden_states=context)
        else:
            h, res = block(h, temb)
        hs.extend(res)
    h = unet.mid_block(h, temb, encoder_hidden_states=context)
    outputs = []
    for block in unet.up_blocks:
        attentions = getattr(block, 'attentions', None) or [None] * len(block.resnets)
        for j, (resnet, attention) in enumerate(zip(block.resnets, attentions)):
            h = resnet(torch.cat([h, hs.pop()], dim=1), temb)
            if attention is not None:
                h = attention(h, encoder_hidden_states=context).sample
            if j == len(block.resnets) - 1 and block.upsamplers:
                h = block.upsamplers[0](h)
            outputs.append(h)
    return outputs


def test_vpd_levels_are_ldm_output_blocks_1_4_7_and_the_last():
    # test_sd_tiny has SD1.5's topology, so SD1.5's preset applies to it by its qualified name
    bb = DiffusionBackbone('test_sd_tiny', 'sd15_vpd', pretrained=False, noise='clean', vae=dict(scale=1.0))
    images = random_images(2, 64, 128)
    with torch.no_grad():
        x, hw = bb.working_input(images)
        z = bb.encode(x)
        context = bb.conditioning.prompt_embeds.expand(2, -1, -1)
        outputs = _ldm_output_blocks(bb.denoiser, z, torch.ones(2, dtype=torch.long), context)
        assert len(outputs) == 12  # LDM's output_blocks of a 4-level, 2-resnet UNet
        vpd = [outputs[i] for i in (1, 4, 7)] + [outputs[-1]]  # VPD's out_list ...
        expected = vpd[::-1]  # ... returned reversed: fine to coarse
        features = bb(images)
    assert [tuple(f.shape) for f in features] == [tuple(e.shape) for e in expected]
    for i, (f, e) in enumerate(zip(features, expected)):
        assert _rel(f, e) < 1e-5, i


@pytest.mark.parametrize('model', ['sd15', 'sd21'])
def test_vpd_preset_names_the_ldm_output_blocks_on_the_real_architecture(model):
    unet = build_denoiser(MODELS[model], 'meta')
    names = []  # LDM output_blocks[k] in our catalog's names, read off diffusers' module tree
    for i, block in enumerate(unet.up_blocks):
        for j in range(len(block.resnets)):
            if j == len(block.resnets) - 1 and block.upsamplers:
                names.append(f'up-level{i}-upsampler-out')
            else:
                names.append(f'up-level{i}-repeat{j}-{"vit" if getattr(block, "attentions", None) else "res"}-out')
    assert len(names) == 12
    assert MODELS[model].presets['vpd'] == tuple((names[k],) for k in (11, 7, 4, 1))
    index = catalog_index(activation_points(unet, (64, 64)))
    modules = [index[level[0]].module for level in MODELS[model].presets['vpd']]
    assert modules == ['up_blocks.3.attentions.2', 'up_blocks.2.attentions.1', 'up_blocks.1.attentions.1',
                       'up_blocks.0.resnets.1']
    assert 'up-level3-repeat2-vit-out' == [p.name for p in activation_points(unet, (64, 64))
                                           if p.kind != 'unet-out' and 'map' not in p.kind][-1]  # the last one


def _vpd_depth_head_in_channels() -> list[int]:
    from mmseg.models.decode_heads.vpd_depth_head import VPDDepthHead
    return list(inspect.signature(VPDDepthHead.__init__).parameters['in_channels'].default)


@pytest.mark.parametrize('model', ['sd15', 'sd21'])
def test_vpd_preset_feeds_vpd_depth_head_on_the_real_architecture(model):
    import mmseg.models  # noqa: F401  (registers VPDDepthHead's loss)
    from mmseg.models.decode_heads.vpd_depth_head import VPDDepthHead

    with torch.device('meta'):
        bb = DiffusionBackbone(model, 'vpd', pretrained=False, noise='clean', vae=dict(scale=1.0))
        head = VPDDepthHead()
    assert type(bb.stages.noise) is CleanLatentStage and bb.stages.noise.timesteps == (1,)
    assert bb.vae.scaling_factor == 1.0
    assert [info['num_chs'] for info in bb.feature_info] == _vpd_depth_head_in_channels()  # [320, 640, 1280, 1280]
    assert [info['reduction'] for info in bb.feature_info] == [8, 16, 32, 64]
    assert bb.pruned == ['conv_norm_out', 'conv_out']  # as VPD deletes diffusion_model.out
    # the head joins the levels at stride 32 (conv1: /4, conv2: /2, the last level upsampled x2): it runs on
    # the backbone's level shapes at sides that are multiples of 64 (VPD pads its 480 crops to 512)
    for hw in [(512, 512), (512, 640)]:
        levels = [torch.empty(2, info['num_chs'], hw[0] // info['reduction'], hw[1] // info['reduction'],
                              device='meta') for info in bb.feature_info]
        assert tuple(head(levels).shape) == (2, 1, *hw)  # depth at the input size


@pytest.fixture(scope='module')
def class_table(tmp_path_factory):
    path = tmp_path_factory.mktemp('vpd') / 'classes.pth'
    torch.save(torch.randn(3, 32, generator=torch.Generator().manual_seed(0)), path)
    return str(path)


def _select_backbone(class_table, **noise):
    return DiffusionBackbone('test_sd_tiny', 'sd15_vpd', pretrained=False, noise=noise or 'clean',
                             vae=dict(scale=1.0), conditioning=dict(type='vpd-classes', class_embed_select=True,
                                                                     class_embeddings=class_table, gamma=0.5))


@pytest.mark.parametrize('noise', [{}, dict(t=50, ensemble=2)])
def test_class_embed_select_conditions_each_image_on_its_own_class(class_table, noise):
    bb = _select_backbone(class_table, **noise)
    assert bb.class_embed_select and bb.conditioning.n_tokens == 1
    images = random_images(3, 64, 64)
    ids = torch.tensor([2, 0, -1])
    with torch.no_grad():
        batch = bb((images, ids))
        for i in range(3):  # image i alone, with its own class, gives row i of the batch
            alone = bb((images[i:i + 1], ids[i:i + 1]))
            assert all(_rel(b[i:i + 1], a) < 1e-5 for b, a in zip(batch, alone)), i
        other = bb((images[:1], torch.tensor([1])))
        mean = bb(images[2:3])  # no ids: the mean embedding, VPD's row -1
    assert _rel(batch[-1][:1], other[-1]) > 1e-3  # the class changes the features
    assert all(_rel(b[2:3], m) < 1e-5 for b, m in zip(batch, mean))
    # the context of class 2 is the adapter applied to embedding 2; of -1, to the mean embedding
    conditioning = bb.conditioning
    with conditioning.per_image(ids, 3):
        context = conditioning.prompt_embeds.detach()
    table = conditioning.class_embeddings
    expected = conditioning.text_adapter(torch.stack([table[2], table[0], table.mean(0)])).detach()
    assert context.shape == (3, 1, 32) and torch.allclose(context[:, 0], expected)


def test_mmseg_depth_estimator_passes_category_ids_to_the_backbone(class_table):
    import diffbackbones  # noqa: F401  (registers DiffusionBackbone in mmseg)
    from mmseg.registry import MODELS as MMSEG_MODELS
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    head = dict(type='VPDDepthHead', in_channels=[32, 64, 64, 64], embed_dim=16, feature_dim=128, max_depth=10)
    model = MMSEG_MODELS.build(dict(
        type='DepthEstimator', decode_head=head,
        backbone=dict(type='DiffusionBackbone', model='test_sd_tiny', activations='sd15_vpd', pretrained=False,
                      noise='clean', vae=dict(scale=1.0), conditioning=dict(
                          type='vpd-classes', class_embed_select=True, class_embeddings=class_table, gamma=0.5))))
    images = random_images(2, 64, 64)
    metas = [dict(category_id=1), dict(category_id=-1)]
    with torch.no_grad():
        got = model.extract_feat(images, metas)
        expected = model.backbone((images, torch.tensor([1, -1])))
        unselected = model.backbone(images)
    assert all(_rel(g, e) < 1e-6 for g, e in zip(got, expected))
    assert _rel(got[-1][:1], unselected[-1][:1]) > 1e-3  # image 0 got class 1, not the mean


def test_class_ids_are_refused_where_they_cannot_apply(class_table):
    images = random_images(2, 64, 64)
    bb = _select_backbone(class_table)
    with pytest.raises(ValueError, match=r'one per image \(2\), each in \[0, 3\) or -1'):
        bb((images, torch.tensor([0])))
    with pytest.raises(ValueError, match=r'got \[0, 3\]'):
        bb((images, torch.tensor([0, 3])))
    with pytest.raises(ValueError, match=r'\(images, class_ids\).*a tuple of 3 items'):
        bb((images, torch.tensor([0, 1]), None))
    plain = DiffusionBackbone('test_sd_tiny', 'sd15_vpd', pretrained=False, noise='clean')
    assert not plain.class_embed_select
    with pytest.raises(ValueError, match="does not select a context per image.*class_embed_select=True"):
        plain((images, torch.tensor([0, 1])))
    with pytest.raises(ValueError, match='class_embed_select must be True or False'):
        DiffusionBackbone('test_sd_tiny', 'sd15_vpd', pretrained=False, conditioning=dict(
            type='vpd-classes', class_embeddings=class_table, class_embed_select='yes'))


def test_pad_to_pads_like_vpd_and_the_levels_keep_the_padding():
    options = dict(pretrained=False, noise='clean', vae=dict(scale=1.0))
    padded = DiffusionBackbone('test_sd_tiny', 'sd15_vpd', image=dict(pad_to=128, pad_value=0.0), **options)
    plain = DiffusionBackbone('test_sd_tiny', 'sd15_vpd', **options)
    images = random_images(2, 96, 80)  # not multiples of 64: VPD's 480 crops padded to 512, in small
    with torch.no_grad():
        got = padded(images)
        by_hand = plain(torch.nn.functional.pad(images, (0, 48, 0, 32), value=0.0))
        empty = padded(images[:0])
    assert [tuple(f.shape[-2:]) for f in got] == [(16, 16), (8, 8), (4, 4), (2, 2)]  # 128 / 8, 16, 32, 64
    assert all(_rel(g, b) < 1e-6 for g, b in zip(got, by_hand))
    assert [tuple(f.shape[-2:]) for f in empty] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    with pytest.raises(ValueError, match="pad_to must be a positive int.*VPD's pad_shape"):
        DiffusionBackbone('test_sd_tiny', 'sd15_vpd', image=dict(pad_to=0), **options)
