"""MMSegmentation: configs build, heads train, checkpoints hold no frozen weights, resume, torchrun."""
import argparse
import os
import re
import subprocess
import sys

import pytest
import torch

mmseg = pytest.importorskip('mmseg')
from mmengine.config import Config  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402

import diffbackbones  # noqa: E402,F401  (registers DiffusionBackbone and ShapesDataset)
from diffbackbones.integrations.mmseg import check_segmentor  # noqa: E402
from diffbackbones.data.shapes import make_shapes_dataset  # noqa: E402

from conftest import REPO  # noqa: E402

register_all_modules()  # what Runner does for default_scope='mmseg'

TOY = REPO / 'configs' / 'toy' / 'upernet_test-sd-tiny-practical_1xb8-300_shapes-128x128.py'
RECOMMENDED_CONFIGS = sorted((REPO / 'configs' / 'diffusion').glob('*.py'))  # configs/paper/: test_combined.py
# the segmentation toys trained by one process (the detection toy, mask-rcnn_*, is mmdet's and runs in
# tests/integrations/test_mmdet.py; the sharded fine-tuning toy, *_fsdp-*, needs two ranks: test_fsdp.py)
TOY_CONFIGS = sorted(p for p in (REPO / 'configs' / 'toy').glob('*.py')
                     if not p.name.startswith('mask-rcnn_') and '_fsdp-' not in p.name)


def _no_sync_bn(cfg):
    # SyncBN needs a process group; swapping it for BN does not change any shape
    for head in ('decode_head', 'auxiliary_head'):
        if cfg.model.get(head) and cfg.model[head].get('norm_cfg'):
            cfg.model[head].norm_cfg = dict(type='BN', requires_grad=True)


@pytest.mark.parametrize('path', RECOMMENDED_CONFIGS, ids=lambda p: p.name)
def test_recommended_configs_build_at_real_size_on_the_meta_device(path):
    cfg = Config.fromfile(path)
    assert cfg.model.backbone.noise.t == 50 and cfg.optim_wrapper.optimizer.lr == 1.6e-4
    assert cfg.train_dataloader.batch_size == 2 and cfg.train_cfg.max_iters == 80000
    assert cfg.model.test_cfg.mode == 'slide' and cfg.model.backbone.conditioning.prompt
    assert re.search(r'mIoU', path.read_text().splitlines()[0] + path.read_text().splitlines()[1])
    cfg.model.backbone.pretrained = False  # the real architecture, without weights
    _no_sync_bn(cfg)
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
    check_segmentor(model)  # raises if any head's in_channels disagree with the backbone
    channels = [level['num_chs'] for level in model.backbone.feature_info]
    assert list(model.decode_head.in_channels) == channels
    assert sum(channels) in {'sd15-practical': {3520}, 'sd15-legacy': {3520}, 'sdxl-practical': {3840},
                             'sdxl-legacy': {2240}, 'pgv2-practical': {2560}}[path.name.split('_')[1]]


TRANSFORMER_CONFIGS = sorted((REPO / 'configs' / 'transformers').glob('*.py'))


@pytest.mark.parametrize('path', TRANSFORMER_CONFIGS, ids=lambda p: p.name)
def test_transformer_configs_build_at_real_size_on_the_meta_device(path):
    # every transformer family's ADE20K recipe: the real denoiser on meta, four levels of one stride, and the
    # MultiLevelNeck's scales bringing them to strides 4 / 8 / 16 / 32 whatever that stride (16, or SANA's and
    # HunyuanImage's 32)
    cfg = Config.fromfile(path)
    assert cfg.model.backbone.activations == 'default'
    cfg.model.backbone.pretrained = False  # the real architecture, without weights
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
    check_segmentor(model)
    info = model.backbone.feature_info
    assert [level['num_chs'] for level in info] == list(cfg.model.neck.in_channels) and len(info) == 4
    assert [level['reduction'] / scale for level, scale in zip(info, cfg.model.neck.scales)] == [4, 8, 16, 32]


@pytest.fixture(scope='module')
def shapes_root(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp('data') / 'shapes', n_train=8, n_val=2)


def run_tool(script, *args, env_extra=None, launcher=None, timeout=600):
    env = dict(os.environ, HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1', **(env_extra or {}))
    cmd = [sys.executable, str(REPO / 'tools' / script), *map(str, args)]  # an absolute script path wins
    if launcher:
        cmd = [sys.executable, '-m', 'torch.distributed.run', *launcher, *cmd[1:]]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stdout + proc.stderr


def short_run(shapes_root, iters=2):
    return ['--cfg-options', f'train_dataloader.dataset.data_root={shapes_root}',
            f'val_dataloader.dataset.data_root={shapes_root}', f'test_dataloader.dataset.data_root={shapes_root}',
            'train_dataloader.batch_size=2', f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
            'default_hooks.checkpoint.interval=1', 'default_hooks.logger.interval=1', 'default_hooks.checkpoint.max_keep_ckpts=3']


def train_in_process(path, work_dir, options: list[str]) -> str:
    """What tools/train.py does (the same load_tool_config and build_runner, a real mmengine Runner), in this
    process: the scripts themselves get their end-to-end runs below, once each; eight more interpreter starts
    (torch + diffusers + mmseg imports) would add minutes and prove nothing more. Returns the run's log."""
    from mmengine.config import DictAction
    from diffbackbones.integrations.mmseg import build_runner, load_tool_config
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    cfg = load_tool_config(str(path), parser.parse_args(options).cfg_options, str(work_dir), 'none')
    build_runner(cfg).train()
    return '\n'.join(log.read_text() for log in sorted(work_dir.glob('*/*.log')))


@pytest.mark.slow
@pytest.mark.parametrize('path', TOY_CONFIGS, ids=lambda p: p.name)
def test_toy_configs_train_a_step_and_predict(path, shapes_root, tmp_path):
    log = train_in_process(path, tmp_path, short_run(shapes_root, iters=1))
    assert 'Iter(train) [1/1]' in log
    assert re.search(r'Iter\(val\) \[2/2\].*mIoU: [\d.]+', log)
    keys = torch.load(tmp_path / 'iter_1.pth', map_location='cpu')['state_dict']
    assert any('decode_head.' in k for k in keys)
    assert not any('.denoiser.' in k or '.vae.' in k for k in keys)  # frozen parts left out, timm route too


def test_bad_configs_fail_at_build_time_naming_the_problem():
    cfg = Config.fromfile(TOY)
    cfg.model.decode_head.in_channels = [32, 64, 64]
    with pytest.raises(ValueError, match=r'decode_head.in_channels=\[32, 64, 64\].*\[32, 64, 128\]'):
        check_segmentor(MODELS.build(cfg.model))
    cfg = Config.fromfile(TOY)
    cfg.model.auxiliary_head.in_index = 5
    with pytest.raises(ValueError, match=r'auxiliary_head.in_index=5.*only 3 levels'):
        check_segmentor(MODELS.build(cfg.model))
    cfg = Config.fromfile(TOY)
    cfg.model.backbone.activations = ['up-level1-repeat0-vit-block0-crossq']
    with pytest.raises(ValueError, match=r'up-level1-repeat0-vit-block0-cross-q'):
        MODELS.build(cfg.model)


MMSEG_TOOLS = os.path.join(os.path.dirname(mmseg.__file__), '.mim', 'tools')


@pytest.fixture(scope='module')
def stock_trained(shapes_root, tmp_path_factory):
    """Two iterations of the toy config through mmseg's own tools/train.py: one run, one work dir, shared by
    the tests that only need a trained checkpoint (iter_2.pth stays; the resume test adds iter_3.pth)."""
    work_dir = tmp_path_factory.mktemp('stock-train')
    run_tool(os.path.join(MMSEG_TOOLS, 'train.py'), TOY, '--work-dir', work_dir, *short_run(shapes_root, iters=2))
    return work_dir


@pytest.mark.slow
def test_stock_mmseg_tools_and_apis_train_resume_test_and_predict(shapes_root, stock_trained, tmp_path):
    """mmseg's own tools/train.py, --resume, tools/test.py, init_model, inference_model, MMSegInferencer."""
    from mmengine.runner import load_checkpoint
    from mmseg.apis import MMSegInferencer, inference_model, init_model

    work_dir, pictures = stock_trained, tmp_path / 'pictures'
    ckpt = torch.load(work_dir / 'iter_2.pth', map_location='cpu')  # torch's safe loader, after import diffbackbones
    keys = list(ckpt['state_dict'])
    assert any(k.startswith('backbone.fusion.') for k in keys) and any(k.startswith('decode_head.') for k in keys)
    assert not any(k.startswith(('backbone.denoiser.', 'backbone.vae.')) for k in keys)  # LeanCheckpointHook
    frozen = diffbackbones.DiffusionBackbone('test_sd_tiny', pretrained=False)
    frozen_bytes = sum(p.numel() * p.element_size() for p in frozen.parameters())
    assert (work_dir / 'iter_2.pth').stat().st_size < frozen_bytes  # the file is smaller than what it leaves out

    # --resume continues from iteration 2 with the trained weights and optimizer state
    log = run_tool(os.path.join(MMSEG_TOOLS, 'train.py'), TOY, '--work-dir', work_dir, '--resume',
                   *short_run(shapes_root, iters=3))
    assert re.search(r'resumed .*iter_2.pth|Load checkpoint from .*iter_2.pth', log, re.I), log[-3000:]
    assert 'Iter(train) [3/3]' in log and 'Iter(train) [1/3]' not in log
    assert torch.load(work_dir / 'iter_3.pth', map_location='cpu')['meta']['iter'] == 3

    # mmseg's test.py restores exactly what was trained and evaluates it
    log = run_tool(os.path.join(MMSEG_TOOLS, 'test.py'), TOY, work_dir / 'iter_3.pth', '--work-dir',
                   work_dir / 'test', '--show-dir', pictures, *short_run(shapes_root)[:5],
                   'default_hooks.visualization.interval=1')  # mmseg draws every 50th image by default
    assert re.search(r'mIoU: [\d.]+', log)
    assert list(pictures.rglob('*.png'))

    # the inference APIs: the lean checkpoint loads strictly, and both APIs predict the same map
    image = str(next((shapes_root / 'img_dir' / 'val').glob('*.png')))
    model = init_model(str(TOY), str(work_dir / 'iter_3.pth'), device='cpu')
    trained = torch.load(work_dir / 'iter_3.pth', map_location='cpu')['state_dict']
    assert torch.equal(model.state_dict()['decode_head.conv_seg.weight'], trained['decode_head.conv_seg.weight'])
    load_checkpoint(model, str(work_dir / 'iter_3.pth'), map_location='cpu', strict=True)
    assert model.dataset_meta['classes'] == ('background', 'circle', 'square', 'triangle')
    predicted = inference_model(model, image).pred_sem_seg.data[0]
    assert predicted.shape == (128, 128) and set(predicted.unique().tolist()) <= {0, 1, 2, 3}
    inferencer = MMSegInferencer(model=str(TOY), weights=str(work_dir / 'iter_3.pth'), device='cpu')
    result = inferencer(image, return_datasamples=True)
    assert torch.equal(result.pred_sem_seg.data[0], predicted)


@pytest.mark.slow
def test_project_test_tool_evaluates_and_draws(shapes_root, stock_trained, tmp_path):
    log = run_tool('test.py', TOY, stock_trained / 'iter_2.pth', '--work-dir', tmp_path / 'test',
                   '--show-dir', tmp_path / 'pictures', *short_run(shapes_root)[:5])
    assert re.search(r'mIoU: [\d.]+', log)
    assert len(list((tmp_path / 'pictures').rglob('*.png'))) == 2  # every image drawn (--show-interval 1)


@pytest.mark.slow
def test_two_process_torchrun_trains_and_evaluates(shapes_root, tmp_path):
    log = run_tool('train.py', TOY, '--launcher', 'pytorch', '--work-dir', tmp_path, *short_run(shapes_root, iters=2),
                   launcher=['--nproc_per_node=2', '--master_port=29531'])
    assert 'Distributed training is not used' not in log
    assert re.search(r'Iter\(val\) \[\d+/\d+\].*mIoU: [\d.]+', log)
    assert (tmp_path / 'iter_2.pth').exists()


def test_shapes_generator_is_deterministic_and_labels_every_class(tmp_path):
    import numpy as np
    from PIL import Image
    a = make_shapes_dataset(tmp_path / 'a', n_train=6, n_val=2)
    b = make_shapes_dataset(tmp_path / 'b', n_train=6, n_val=2)
    labels = []
    for split, n in (('train', 6), ('val', 2)):
        for i in range(n):
            for kind in ('img_dir', 'ann_dir'):
                assert (a / kind / split / f'{i:05d}.png').read_bytes() == (b / kind / split / f'{i:05d}.png').read_bytes()
            labels.append(np.asarray(Image.open(a / 'ann_dir' / split / f'{i:05d}.png')))
    assert set(np.unique(np.stack(labels)).tolist()) == {0, 1, 2, 3}
    dataset = diffbackbones.integrations.mmseg.ShapesDataset(data_root=str(a), data_prefix=dict(
        img_path='img_dir/train', seg_map_path='ann_dir/train'), pipeline=[])
    assert len(dataset) == 6 and dataset.metainfo['classes'] == ('background', 'circle', 'square', 'triangle')


def test_geometry_variant_appearance_says_nothing_about_the_class():
    import numpy as np
    from diffbackbones.data.shapes import render_sample

    def mean_colour_per_class(variant):
        rng = np.random.default_rng(0)
        sums, counts = np.zeros((4, 3)), np.zeros(4)
        for _ in range(300):
            image, label = render_sample(rng, 64, variant)
            for c in range(4):
                sums[c] += image[label == c].sum(0)
                counts[c] += (label == c).sum()
        return sums / counts[:, None]

    texture, geometry = mean_colour_per_class('texture'), mean_colour_per_class('geometry')
    spread = lambda colours: np.abs(colours[:, None] - colours[None]).max()  # noqa: E731
    assert spread(texture) > 60  # a colour rule segments the texture variant ...
    assert spread(geometry) < 12  # ... but not the geometry one: every class wears every look
    with pytest.raises(ValueError, match='variant must be one of'):
        render_sample(np.random.default_rng(0), 64, 'colour')


class _Smuggler:
    """A checkpoint object reaching past HistoryBuffer's statistics through an allow-listed class."""

    def __reduce__(self):
        from mmengine.logging import HistoryBuffer
        return getattr, (HistoryBuffer, '__init__')


def test_safe_loading_allows_mmengine_globals_but_not_a_general_getattr(tmp_path):
    from diffbackbones.integrations.mmseg import allow_mmengine_checkpoints
    allow_mmengine_checkpoints()
    torch.save({'x': _Smuggler()}, tmp_path / 'crafted.pth')
    with pytest.raises(Exception, match='only HistoryBuffer statistics methods are allowed'):
        torch.load(tmp_path / 'crafted.pth')
