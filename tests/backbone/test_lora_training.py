"""Trainable LoRA adapters (``lora=dict(rank=..., targets=...)``): peft layers on a frozen denoiser.

Only the adapter weights train and get gradients; pruning keeps peft's layers runnable; lean checkpoints
hold the adapter weights and no base weight, and load back exactly into a rebuilt backbone.
"""
import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from diffbackbones import DiffusionBackbone
from diffbackbones.backbone.denoiser.stage import DenoiserStage
from diffbackbones.backbone.denoiser.lora import TrainableLora, is_lora_weight
from diffbackbones.backbone.denoiser.pruning import SkippedLinear

from conftest import random_images

ATTENTION = ['to_q', 'to_k', 'to_v', 'to_out.0']
OPTIONS = dict(pretrained=False, lora=dict(rank=4, targets=ATTENTION), fusion=True)


@pytest.fixture(scope='module')
def adapted():
    return DiffusionBackbone('test_sd_tiny', **OPTIONS)


@pytest.fixture(scope='module')
def plain():
    return DiffusionBackbone('test_sd_tiny', pretrained=False, fusion=True)


def test_only_the_adapter_weights_train_and_get_gradients(adapted, plain):
    names = dict(adapted.named_parameters())
    lora = {n for n in names if is_lora_weight(n)}
    assert lora and all('.lora_A.' in n or '.lora_B.' in n for n in lora)
    assert {n for n, p in names.items() if p.requires_grad} == lora | {n for n in names if n.startswith('fusion.')}
    # peft's init (B = 0) starts from the base model: the same features as without the adapter
    images = random_images(2, 128, 128)  # 64 px leaves one token at the middle block: q and k would not matter
    with torch.no_grad():
        for a, b in zip(adapted(images), plain(images)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    adapted.train()
    assert not adapted.denoiser.training  # the base stays in eval mode
    features = adapted(images)
    assert all(f.requires_grad for f in features)  # a frozen denoiser with an adapter still builds a graph
    adapted.zero_grad(set_to_none=True)
    sum(f.square().mean() for f in features).backward()
    adapted.eval()
    got = {n for n, p in adapted.named_parameters() if p.grad is not None}
    assert not {n for n in got if not n.startswith('fusion.')} - lora  # no frozen weight gets a gradient
    assert got >= lora  # every adapter that ran (the skipped ones are gone)
    assert all(names[n].grad.abs().sum() > 0 for n in lora if '.lora_B.' in n)  # B = 0: only B's grad is non-zero


def test_pruning_keeps_the_adapted_layers_runnable(adapted, plain):
    assert adapted.pruned == plain.pruned  # the same modules go with and without the adapter
    # a to_q that feeds nothing captured is skipped as a whole: peft's forward cannot run on skipped parts
    skipped = [n for n in adapted.pruned if isinstance(adapted.denoiser.get_submodule(n), SkippedLinear)]
    assert skipped and not any('.lora_' in n or 'base_layer' in n for n in adapted.pruned)
    assert any(isinstance(m, BaseTunerLayer) for m in adapted.denoiser.modules())


def test_gradient_checkpointing_gives_the_same_adapter_gradients():
    backbone = DiffusionBackbone('test_sd_tiny', pretrained=False, lora=dict(rank=2, targets=['to_k', 'proj_in']))
    with torch.no_grad():
        for n, p in backbone.named_parameters():
            if '.lora_B.' in n:
                p.normal_(std=0.1)  # a trained B, so the A weights get gradients too
    images = random_images(1, 64, 64)

    def gradients():
        backbone.zero_grad(set_to_none=True)
        sum(f.square().mean() for f in backbone(images)).backward()
        return {n: p.grad.clone() for n, p in backbone.named_parameters() if p.grad is not None}

    backbone.train()
    plain = gradients()
    backbone.set_grad_checkpointing(True)
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys() and any('.lora_A.' in n for n in plain)
    for n, g in plain.items():
        torch.testing.assert_close(checkpointed[n], g, rtol=1e-4, atol=1e-6, msg=n)


def test_a_lean_checkpoint_holds_the_adapters_and_loads_back_exactly():
    first = DiffusionBackbone('test_sd_tiny', **OPTIONS)
    b_key = next(k for k in first.state_dict() if '.lora_B.' in k)
    with torch.no_grad():
        for n, p in first.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p), alpha=0.05)  # trained adapters and fusion
    frozen = first.frozen_prefixes  # computed from the module tree: once, not per key
    lean = {k: v for k, v in first.state_dict().items() if not k.startswith(frozen)}
    denoiser_keys = {k for k in lean if k.startswith('denoiser.')}
    assert denoiser_keys == {k for k in first.state_dict() if is_lora_weight(k)}  # the adapters, no base weight
    assert any('.lora_A.' in k for k in denoiser_keys) and any('.lora_B.' in k for k in denoiser_keys)
    assert not any(k.startswith('vae.') or 'base_layer' in k for k in lean)
    rebuilt = DiffusionBackbone('test_sd_tiny', **OPTIONS)
    assert not torch.equal(rebuilt.state_dict()[b_key], lean[b_key])
    result = rebuilt.load_state_dict(lean, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(rebuilt.state_dict()[b_key], lean[b_key], rtol=0, atol=0)  # the trained B survived
    images = random_images(1, 64, 64)
    with torch.no_grad():
        for a, b in zip(first(images), rebuilt(images)):
            assert torch.equal(a, b)
    # a checkpoint without the adapters does not load strictly: what trained is missing, and it says so
    with pytest.raises(RuntimeError, match=r'Missing key\(s\).*lora_'):
        DiffusionBackbone('test_sd_tiny', **OPTIONS).load_state_dict(
            {k: v for k, v in lean.items() if not is_lora_weight(k)}, strict=True)


def test_the_mmseg_lean_checkpoint_hook_keeps_the_adapters():
    hooks = pytest.importorskip('diffbackbones.integrations.mmseg.hooks')
    backbone = DiffusionBackbone('test_sd_tiny', pretrained=False, lora=dict(rank=2, targets=['to_v']))
    model = torch.nn.Module()
    model.backbone = backbone
    checkpoint = {'state_dict': model.state_dict()}
    hooks.LeanCheckpointHook().before_save_checkpoint(type('Runner', (), {'model': model})(), checkpoint)
    kept = set(checkpoint['state_dict'])
    assert kept and kept == {f'backbone.{k}' for k in backbone.state_dict() if is_lora_weight(k)}


def test_dropout_follows_the_backbone_mode():
    backbone = DiffusionBackbone('test_sd_tiny', pretrained=False, lora=dict(rank=2, targets=['to_q'], dropout=0.1))
    dropouts = [m for n, m in backbone.denoiser.named_modules() if isinstance(m, torch.nn.Dropout) and 'lora_' in n]
    assert dropouts and not any(m.training for m in dropouts)
    backbone.train()
    assert all(m.training for m in dropouts) and not backbone.denoiser.training
    backbone.eval()
    assert not any(m.training for m in dropouts)


def test_options_are_checked_with_what_to_do():
    assert DenoiserStage(lora=dict(rank=8, targets='to_q')).lora == TrainableLora(8, ('to_q',))
    with pytest.raises(ValueError, match="'rnak' \\(did you mean 'rank'\\?\\)"):
        DenoiserStage(lora=dict(rnak=4, targets=['to_q']))
    with pytest.raises(ValueError, match='lacks'):
        DenoiserStage(lora=dict(rank=4))
    for rank in (0, -2, 2.5, True, '4'):
        with pytest.raises(ValueError, match='positive integer'):
            DenoiserStage(lora=dict(rank=rank, targets=['to_q']))
    with pytest.raises(ValueError, match='non-empty list'):
        DenoiserStage(lora=dict(rank=4, targets=[]))
    with pytest.raises(ValueError, match='alpha'):
        DenoiserStage(lora=dict(rank=4, targets=['to_q'], alpha=0))
    with pytest.raises(ValueError, match='dropout'):
        DenoiserStage(lora=dict(rank=4, targets=['to_q'], dropout=1.0))
    with pytest.raises(ValueError, match='not both'):
        DenoiserStage(lora=['style.safetensors', dict(rank=4, targets=['to_q'])])
    with pytest.raises(ValueError, match='give one of them'):
        DenoiserStage(trainable=True, lora=dict(rank=4, targets=['to_q']))
    with pytest.raises(ValueError, match="'to_qq' names no layer.*Did you mean 'to_q'"):
        DiffusionBackbone('test_sd_tiny', pretrained=False, lora=dict(rank=4, targets=['to_qq']))
