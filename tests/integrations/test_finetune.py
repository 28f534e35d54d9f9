"""Fine-tuning the denoiser under mmseg: VPD's learning-rate multipliers on this package's parameter names
(mmengine's own optimizer builder), and gradient checkpointing inside a training step of a real segmentor."""
import pytest
import torch

pytest.importorskip('mmseg')
from mmengine.config import Config  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402

import diffbackbones  # noqa: E402,F401  (registers DiffusionBackbone)

from conftest import REPO, segmentation_batch  # noqa: E402

register_all_modules()

TOY = REPO / 'configs' / 'toy' / 'upernet_test-sd-tiny-practical_1xb8-300_shapes-128x128.py'
FINETUNE = REPO / 'configs' / '_base_' / 'schedules' / 'schedule_80k_adamw_finetune-denoiser.py'


@pytest.fixture(scope='module')
def segmentor():
    """The toy segmentor (UPerHead + FCN auxiliary on test_sd_tiny, random weights) with a trainable
    denoiser and a learned context, as a VPD-style fine-tuning config builds it."""
    cfg = Config.fromfile(TOY)
    cfg.model.backbone.update(denoiser=dict(trainable=True), image=dict(size=128),
                              conditioning=dict(type='learned', tokens=2, init='random'))
    torch.manual_seed(0)
    return MODELS.build(cfg.model)


def _lr_by_name(segmentor, optim_cfg) -> dict[str, float]:
    optimizer = build_optim_wrapper(segmentor, optim_cfg).optimizer
    names = {id(p): n for n, p in segmentor.named_parameters()}
    lrs = {}
    for group in optimizer.param_groups:
        for p in group['params']:
            assert names[id(p)] not in lrs  # each parameter in one group
            assert group['weight_decay'] == optim_cfg.optimizer.weight_decay  # lr_mult only: decay as configured
            lrs[names[id(p)]] = group['lr']
    return lrs


def _part(name: str) -> str:
    return '.'.join(name.split('.')[:2]) if name.startswith('backbone.') else 'heads'


def _lr_per_part(lrs: dict[str, float]) -> dict[str, float]:
    """The one lr of each part (backbone.denoiser, backbone.fusion, ..., the heads); fails on a part with two."""
    by_part = {}
    for name, lr in lrs.items():
        by_part.setdefault(_part(name), set()).add(lr)
    assert all(len(part_lrs) == 1 for part_lrs in by_part.values()), by_part
    return {part: part_lrs.pop() for part, part_lrs in by_part.items()}


def test_vpd_multipliers_give_each_parameter_group_its_lr(segmentor):
    cfg = Config.fromfile(FINETUNE)
    assert (cfg.optim_wrapper.optimizer.type, cfg.optim_wrapper.optimizer.lr, cfg.param_scheduler[0].end) == \
        ('AdamW', 1.6e-4, 80000)  # the recommended schedule, inherited
    lrs = _lr_by_name(segmentor, cfg.optim_wrapper)
    # mmengine leaves out what does not require grad: the frozen VAE
    assert set(lrs) == {n for n, p in segmentor.named_parameters() if p.requires_grad}
    assert not any(n.startswith('backbone.vae.') for n in lrs)
    assert _lr_per_part(lrs) == pytest.approx(
        {'backbone.denoiser': 1.6e-6, 'backbone.conditioning': 1.6e-4, 'backbone.fusion': 1.6e-4, 'heads': 1.6e-4})
    assert len([n for n in lrs if n.startswith('backbone.denoiser.')]) == \
        len(list(segmentor.backbone.denoiser.parameters()))  # the whole denoiser trains, at 0.01x

    # a trainable VAE (vae=dict(trainable=True) is requires_grad_(True) on it at construction) gets lr 0
    segmentor.backbone.vae.requires_grad_(True)
    try:
        lrs = _lr_by_name(segmentor, cfg.optim_wrapper)
    finally:
        segmentor.backbone.vae.requires_grad_(False)
    assert {lr for n, lr in lrs.items() if _part(n) == 'backbone.vae'} == {0.0}
    assert len(lrs) == len(list(segmentor.parameters()))


def _gradients(segmentor) -> dict[str, torch.Tensor]:
    """One training step's gradients, the way mmseg's ``train_step`` gets there: the data preprocessor in
    training mode, the losses of the decode and auxiliary heads, ``parse_losses``, backward."""
    segmentor.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the heads' dropout draws the same masks in both runs
    data = segmentor.data_preprocessor(segmentation_batch(), True)
    loss, _ = segmentor.parse_losses(segmentor(**data, mode='loss'))
    loss.backward()
    return {n: p.grad.clone() for n, p in segmentor.named_parameters() if p.grad is not None}


def test_grad_checkpointing_gives_the_same_gradients_in_a_training_step(segmentor):
    backbone = segmentor.backbone
    segmentor.train()
    assert backbone.training and backbone.denoiser.training  # a trainable denoiser follows train()
    assert not backbone.vae.training  # a frozen one stays in eval mode

    # counts the calls of one resnet: recomputed in the backward pass once checkpointing is on (a pre-hook:
    # torch's recomputation stops inside the forward, after the last tensor it needs, so post-hooks never run)
    calls = []
    handle = backbone.denoiser.down_blocks[1].resnets[0].register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        plain = _gradients(segmentor)
        assert len(calls) == 1
        backbone.set_grad_checkpointing(True)
        calls.clear()
        checkpointed = _gradients(segmentor)
        assert len(calls) == 2
    finally:
        handle.remove()
        backbone.set_grad_checkpointing(False)

    trainable = {n for n, p in segmentor.named_parameters() if p.requires_grad}
    assert set(plain) == set(checkpointed) == trainable  # every trainable parameter gets a gradient
    assert plain['backbone.denoiser.down_blocks.1.resnets.0.conv1.weight'].abs().sum() > 0
    assert plain['backbone.conditioning.tokens'].abs().sum() > 0
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_a_leaf_config_composes_the_schedule_at_real_size_on_the_meta_device(tmp_path):
    """The leaf of docs/mmseg.md: the bases of the recommended recipe with the fine-tuning schedule in place of
    schedule_80k_adamw.py (mmengine refuses a key two bases both set, so the schedule must replace, not add)."""
    bases = [REPO / 'configs' / '_base_' / part for part in (
        'models/upernet_diffusion.py', 'datasets/ade20k.py', 'default_runtime.py')] + [FINETUNE]
    leaf = tmp_path / 'upernet_sd15-practical-finetune.py'
    leaf.write_text(f'_base_ = {[str(b) for b in bases]}\nmodel = dict(backbone=dict(denoiser=dict(trainable=True)))\n')
    cfg = Config.fromfile(leaf)
    cfg.model.backbone.pretrained = False  # sd15's architecture, without weights
    for head in ('decode_head', 'auxiliary_head'):  # SyncBN needs a process group
        cfg.model[head].norm_cfg = dict(type='BN', requires_grad=True)
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
    lrs = _lr_by_name(model, cfg.optim_wrapper)
    assert _lr_per_part(lrs) == pytest.approx({'backbone.denoiser': 1.6e-6, 'backbone.fusion': 1.6e-4, 'heads': 1.6e-4})
    numel = {}
    for name in lrs:
        numel[_part(name)] = numel.get(_part(name), 0) + model.get_parameter(name).numel()
    assert numel['backbone.denoiser'] > 800e6  # sd15's UNet (less the pruned tail) trains, at 0.01x
