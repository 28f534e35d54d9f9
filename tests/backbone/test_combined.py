"""Combined backbones (the paper's Ours-XL-t), the paper's fusion block, and configs/paper/ against its code."""
import math
import re

import pytest
import torch
import torch.nn as nn

from diffbackbones import CombinedDiffusionBackbone, DiffusionBackbone
from diffbackbones.backbone.fusion import LevelFusion, PaperResBlock

from conftest import REPO, random_images


@pytest.fixture(scope='module')
def sd_and_sdxl():
    return CombinedDiffusionBackbone([dict(model='test_sd_tiny', activations='practical'),
                                      dict(model='test_sdxl_tiny', activations='practical')], pretrained=False)


def test_levels_are_the_members_levels_joined_by_stride(sd_and_sdxl):
    combined = sd_and_sdxl
    sd, sdxl = (DiffusionBackbone(m, 'practical', pretrained=False) for m in ('test_sd_tiny', 'test_sdxl_tiny'))
    assert [i['reduction'] for i in sd.feature_info] == [8, 16, 32]
    assert [i['reduction'] for i in sdxl.feature_info] == [16, 32]
    assert combined.feature_info == [dict(num_chs=32, reduction=8, module='levels.0'),
                                     dict(num_chs=64 + 64, reduction=16, module='levels.1'),
                                     dict(num_chs=128 + 128, reduction=32, module='levels.2')]
    assert combined.shared_vaes == []  # different VAE architectures: nothing shared
    x = random_images(2, 64, 96)  # batch 2, not square
    with torch.no_grad():
        joined, a, b = combined(x), sd(x), sdxl(x)
    assert [tuple(f.shape) for f in joined] == [(2, 32, 8, 12), (2, 128, 4, 6), (2, 256, 2, 3)]
    # member order within a level: the first member's channels first, as the paper's concatenation
    assert torch.equal(joined[0], a[0])
    assert torch.equal(joined[1], torch.cat([a[1], b[0]], 1)) and torch.equal(joined[2], torch.cat([a[2], b[1]], 1))


def test_members_with_an_identical_vae_share_it_and_encode_once():
    members = [dict(model='test_sd_tiny', activations='practical'),
               dict(model='test_sd_tiny', activations='legacy', t=200)]
    combined = CombinedDiffusionBackbone(members, pretrained=False)
    assert combined.shared_vaes == [(0, 1)] and combined.members[0].vae is combined.members[1].vae
    calls = []
    combined.members[0].vae.register_forward_hook(lambda *args: calls.append(1))
    x = random_images(1, 64, 64)
    with torch.no_grad():
        joined = combined(x)
    assert len(calls) == 1  # two members, one encode
    alone = [DiffusionBackbone(m['model'], m['activations'], t=m.get('t', 50), pretrained=False) for m in members]
    with torch.no_grad():
        expected = [torch.cat(pair, 1) for pair in zip(alone[0](x), alone[1](x))]
    for got, want in zip(joined, expected):
        assert torch.equal(got, want)
    # another scaling factor is another encoder: not shared, and each member encodes
    other = CombinedDiffusionBackbone([members[0], dict(members[1], latent_scale=1.0)], pretrained=False)
    assert other.shared_vaes == [] and other.members[0].vae is not other.members[1].vae


def test_select_levels_keeps_strides_and_drops_members_left_without_levels():
    combined = CombinedDiffusionBackbone([dict(model='test_sd_tiny', activations='practical'),
                                          dict(model='test_sdxl_tiny', activations='practical')],
                                         pretrained=False, fusion=True)
    combined.select_levels([0])  # stride 8: only the SD member has it
    assert len(combined.members) == 1 and combined.feature_info == [dict(num_chs=32, reduction=8, module='levels.0')]
    assert len(combined.fusion) == 1
    with torch.no_grad():
        assert combined(random_images(1, 64, 64))[0].shape == (1, 32, 8, 8)


def test_a_member_given_a_device_stays_there_when_the_rest_moves():
    combined = CombinedDiffusionBackbone([dict(model='test_sd_tiny'), dict(model='test_sd_tiny', device='cpu')],
                                         activations='practical', pretrained=False, fusion=True)
    assert combined.shared_vaes == []  # one pinned, one not: never one module on two device settings
    combined.to('meta')
    assert {p.device.type for p in combined.members[0].parameters()} == {'meta'}
    assert {p.device.type for p in combined.members[1].parameters()} == {'cpu'}
    assert {p.device.type for p in combined.fusion.parameters()} == {'meta'}
    assert [name for name, _ in combined.members.named_children()] == ['0', '1']  # order kept


def test_members_on_different_grids_are_refused_by_name():
    combined = CombinedDiffusionBackbone([dict(model='test_sd_tiny', image_size=64),
                                          dict(model='test_sd_tiny', image_size=128)],
                                         activations='practical', pretrained=False, resize_features=False)
    with pytest.raises(ValueError, match=r'combined level 0 \(stride 8\).*\[\(8, 8\), \(16, 16\)\].*same image_size'):
        with torch.no_grad():
            combined(random_images(1, 64, 64))
    with pytest.raises(ValueError, match="members must be a non-empty list of dicts, each with at least 'model'"):
        CombinedDiffusionBackbone([dict(activations='practical')])
    with pytest.raises(ValueError, match="fusion must be False, True .* or one of \\('residual', 'paper'\\)"):
        CombinedDiffusionBackbone([dict(model='test_sd_tiny')], fusion='zero')


def test_paper_fusion_block_is_the_papers_and_only_its_last_bias_ever_learns():
    """The paper's ResBlock with every conv and BN weight and bias at 0 (diffusion_segmentor.py).

    Measured consequence: the second conv's input is 0 and the second BN's scale is 0, so the gradient
    reaches only that BN's bias; after training the block is still x + (a per-channel bias).
    """
    block = PaperResBlock(8, repeats=4)
    assert [type(m) for m in block.conv1] == [nn.Conv2d, nn.BatchNorm2d] == [type(m) for m in block.conv2]
    assert block.conv1[0].kernel_size == (3, 3) and block.conv1[0].padding == (1, 1)
    assert all(float(p.detach().abs().sum()) == 0 for p in block.parameters())
    assert sum(p.numel() for p in block.parameters()) == sum(p.numel() for p in PaperResBlock(8).parameters())
    x, target = torch.randn(4, 8, 6, 6), torch.randn(4, 8, 6, 6) + 1
    assert torch.equal(block(x), x)  # identity at init
    opt = torch.optim.AdamW(block.parameters(), lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        (block(x) - target).pow(2).mean().backward()
        opt.step()
    changed = {name for name, p in block.named_parameters() if float(p.detach().abs().sum()) > 0}
    assert changed == {'conv2.1.bias'}
    delta = block.eval()(x) - x  # a per-channel constant, 4 applications of the shared block
    assert torch.allclose(delta, 4 * block.conv2[1].bias.view(1, -1, 1, 1).expand_as(delta), atol=1e-6)
    # the package's default block learns from the first step: every parameter gets a gradient by step 2
    ours = LevelFusion([8])
    opt = torch.optim.AdamW(ours.parameters(), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        (ours([x]) - target).pow(2).mean().backward()
        opt.step()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in ours.parameters())


def test_features_on_the_working_grid_and_resize_without_antialias():
    x = random_images(1, 64, 64)
    with torch.no_grad():
        back = DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False, image_size=128)(x)
        kept = DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False, image_size=128,
                                 resize_features=False)(x)
        empty = DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False, image_size=128,
                                  resize_features=False)(x[:0])
        big = random_images(1, 128, 128)
        smooth = DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False, image_size=64)(big)
        sharp = DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False, image_size=64, antialias=False)(big)
    assert [f.shape[-1] for f in back] == [8, 4, 2]
    assert [f.shape[-1] for f in kept] == [16, 8, 4] == [f.shape[-1] for f in empty]  # 128 px grid
    assert not torch.allclose(smooth[0], sharp[0])  # shrinking with and without antialias differ


# --- configs/paper/ against the paper's code (Darkbblue/generic-diffusion-feature, segmentation/configs) ---

SD15_PRACTICAL = {'up-level1-repeat1-vit-block0-cross-q', 'up-level1-repeat2-res-out',
                  'up-level2-repeat1-vit-block0-cross-q', 'up-level3-repeat0-vit-block0-self-k'}
SD15_LEGACY = {'up-level0-upsampler-out', 'up-level1-upsampler-out', 'up-level2-upsampler-out',
               'up-level3-repeat2-vit-out'}
SDXL_PRACTICAL = {'up-level0-repeat0-vit-block7-out', 'up-level0-repeat0-vit-block5-out',
                  'up-level1-repeat0-vit-block0-cross-q', 'up-level1-repeat0-vit-block0-out'}
SDXL_LEGACY = {'up-level0-upsampler-out', 'up-level1-upsampler-out', 'up-level2-repeat2-res-out'}
PGV2_XLT = {'up-level0-repeat0-vit-block5-out', 'up-level1-repeat0-vit-block0-cross-q', 'up-level1-upsampler-out'}
# run: (its c_per_level (coarse to fine), pool_scales, its activation sets per model, t the UNet received,
#       working size, the paper's mIoU on ADE20K and Cityscapes)
PAPER_RUNS = {
    'sd15-legacy': ([1280, 1280, 960], (1, 2, 3), [SD15_LEGACY], 51, 512, (40.26, 64.01)),
    'sd15-practical': ([2560, 640, 320], (1, 2, 3), [SD15_PRACTICAL], 51, 512, (41.07, 64.10)),
    'sdxl-legacy': ([1280, 960], (1, 2), [SDXL_LEGACY], 50, 1024, (27.78, 71.67)),
    'sdxl-practical': ([2560, 1280], (1, 2), [SDXL_PRACTICAL], 50, 1024, (43.45, 74.47)),
    'sdxl-pgv2-xlt': ([3840, 1920, 1280], (1, 2, 3), [SDXL_PRACTICAL | {'up-level1-upsampler-out'}, PGV2_XLT],
                      50, 1024, (45.71, 75.89)),
}
PAPER_CONFIGS = sorted((REPO / 'configs' / 'paper').glob('*.py'))


def test_every_paper_run_has_a_config():
    names = {(p.name.split('_')[1], p.name.split('_')[3].split('-')[0]) for p in PAPER_CONFIGS}
    assert names == {(run, data) for run in PAPER_RUNS for data in ('ade20k', 'cityscapes')}


@pytest.mark.parametrize('path', PAPER_CONFIGS, ids=lambda p: p.name)
def test_paper_config_is_the_papers_run_and_builds_at_real_size_on_meta(path):
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    from diffbackbones.integrations.mmseg import check_segmentor
    register_all_modules()
    run, data = path.name.split('_')[1], path.name.split('_')[3].split('-')[0]
    c_per_level, pool_scales, layer_sets, t, size, numbers = PAPER_RUNS[run]
    cfg = Config.fromfile(path)
    header = ' '.join(path.read_text().splitlines()[:2])
    assert f'{numbers[0 if data == "ade20k" else 1]:.2f} mIoU' in header
    # heads: the paper's c_per_level, coarse to fine; its pool scales; 512-channel FCN on its level 1
    head, aux = cfg.model.decode_head, cfg.model.auxiliary_head
    assert list(head.in_channels) == c_per_level and list(head.in_index) == list(range(len(c_per_level)))[::-1]
    assert tuple(head.pool_scales) == pool_scales and head.channels == 512 and aux.channels == 512
    assert aux.in_channels == c_per_level[1] and aux.in_index == head.in_index[1] and aux.num_convs == 1
    assert [loss.type for loss in head.loss_decode] == ['CrossEntropyLoss', 'LovaszLoss']
    assert aux.loss_decode.loss_weight == 0.4
    # schedule: AdamW 1.6e-4 / 1e-3, poly(0.9) to 1e-4, 80k iterations, batch 2, val every 2000
    assert cfg.optim_wrapper.optimizer == dict(type='AdamW', lr=1.6e-4, weight_decay=1e-3)
    assert [(s.type, s.power, s.eta_min, s.end) for s in cfg.param_scheduler] == [('PolyLR', 0.9, 1e-4, 80000)]
    assert (cfg.train_cfg.max_iters, cfg.train_cfg.val_interval, cfg.train_dataloader.batch_size) == (80000, 2000, 2)
    # data: slide (512, 512); Cityscapes 1024 crops at the fixed (2048, 1024) size; label padding 1 (sic)
    crop = (512, 512) if data == 'ade20k' else (1024, 1024)
    assert cfg.model.test_cfg == dict(mode='slide', crop_size=crop, stride=(512, 512))
    assert cfg.model.data_preprocessor.seg_pad_val == 1 and tuple(cfg.model.data_preprocessor.size) == crop
    steps = {s.type: s for s in cfg.train_dataloader.dataset.pipeline}
    assert tuple(steps['RandomCrop'].crop_size) == crop
    if data == 'cityscapes':
        assert 'RandomResize' not in steps and tuple(steps['Resize'].scale) == (2048, 1024)
    # backbone: fresh noise, posterior samples, fp16, the effective t, square working size, working grid
    backbone = cfg.model.backbone
    assert (backbone.noise.seed, backbone.vae.sample_posterior, backbone.dtype) == (None, True, 'fp16')
    assert (backbone.noise.t, backbone.image.size, backbone.image.resize_features, backbone.image.antialias) == \
        (t, size, False, False)
    assert backbone.fusion == 'paper'
    members = backbone.get('members', [backbone])
    assert len(members) == len(layer_sets)
    if len(members) > 1:
        assert all(m.fusion.style == 'paper' and tuple(m.fusion.repeats) == (4, 2) for m in members)
        assert [m.model for m in members] == ['sdxl', 'pgv2']
        for m in members:
            m.device = 'meta'  # the paper's cuda:1, here the meta device
    for h in (head, aux):
        h.norm_cfg = dict(type='BN', requires_grad=True)  # SyncBN needs a process group; shapes unchanged
    backbone.pretrained = False  # the real architecture, without weights
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
    check_segmentor(model)
    built = list(model.backbone.members) if len(members) > 1 else [model.backbone]
    assert [{n for level in m.levels for n in level} for m in built] == layer_sets
    # the nested config options arrive in the built stages (inherited dicts merged key by key)
    assert all((m.stages.noise.t, m.stages.noise.seed, m.stages.vae.sample_posterior) == (t, None, True) for m in built)
    assert all(m.stages.image.size == (size, size) and m.stages.fusion.style == 'paper' for m in built)
    assert [i['num_chs'] for i in model.backbone.feature_info] == c_per_level[::-1]


def _effective_timestep(scheduler, t: int) -> int:
    # what the paper's FeatureExtractor does: set_timesteps(1000), then img2img's get_timesteps with
    # strength t / 1000, and the first of the remaining timesteps is the one the UNet receives
    scheduler.set_timesteps(1000)
    init_timestep = min(int(1000 * t / 1000), 1000)
    return int(scheduler.timesteps[max(1000 - init_timestep, 0) * scheduler.order])


def test_paper_timesteps_are_what_its_schedulers_gave_the_unet():
    from diffusers import EulerDiscreteScheduler, PNDMScheduler
    common = dict(beta_start=0.00085, beta_end=0.012, beta_schedule='scaled_linear', num_train_timesteps=1000,
                  steps_offset=1)
    sd15 = PNDMScheduler(skip_prk_steps=True, set_alpha_to_one=False, **common)  # SD1.5's scheduler_config
    sdxl = EulerDiscreteScheduler(timestep_spacing='leading', interpolation_type='linear', **common)  # SDXL's
    assert _effective_timestep(sd15, 50) == PAPER_RUNS['sd15-practical'][3] == 51
    assert _effective_timestep(sdxl, 50) == PAPER_RUNS['sdxl-practical'][3] == 50


TOY = REPO / 'configs' / 'toy' / 'upernet_test-sd-sdxl-tiny-combined-paper_1xb8-300_shapes-128x128.py'


@pytest.mark.slow
def test_combined_toy_trains_and_tests_through_the_tools_with_the_paper_wiring(tmp_path):
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    from diffbackbones.data.shapes import make_shapes_dataset
    from test_segmentation import run_tool, short_run
    register_all_modules()
    model = MODELS.build(Config.fromfile(TOY).model).eval()
    x = random_images(1, 128, 128)
    with torch.no_grad():
        levels = model.backbone(x)
        head_inputs = model.decode_head._transform_inputs(levels)
        logits = model.decode_head(levels)
    assert [f.shape[-1] for f in levels] == [32, 16, 8]  # 256 px working grid of a 128 px crop
    assert [f.shape[1] for f in head_inputs] == [256, 128, 32]  # coarse to fine
    assert logits.shape[-2:] == levels[-1].shape[-2:]  # pyramid pooling on the finest, prediction at the coarsest
    assert math.isclose(model.backbone.members[0].fusion[0].per_activation[0].repeats, 4)

    shapes_root = make_shapes_dataset(tmp_path / 'shapes', n_train=4, n_val=2)
    log = run_tool('train.py', TOY, '--work-dir', tmp_path / 'work', *short_run(shapes_root, iters=2))
    assert 'Iter(train) [2/2]' in log
    checkpoint = torch.load(tmp_path / 'work' / 'iter_2.pth', map_location='cpu')['state_dict']
    assert any(k.startswith('backbone.members.1.fusion.') for k in checkpoint)
    assert not any('.denoiser.' in k or '.vae.' in k for k in checkpoint)  # lean, both members
    log = run_tool('test.py', TOY, tmp_path / 'work' / 'iter_2.pth', '--work-dir', tmp_path / 'test',
                   '--cfg-options', f'test_dataloader.dataset.data_root={shapes_root}')
    assert re.search(r'mIoU: [\d.]+', log)
