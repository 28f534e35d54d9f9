"""Exact early exit and pruning: the forward ends at the last requested module; the tail is not kept."""
import pytest
import torch

from diffbackbones import DiffusionBackbone
from diffbackbones.backbone.denoiser.pruning import PrunedModule, SkippedLinear

from conftest import random_images


@pytest.fixture(scope='module')
def pair():
    pruned = DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False)
    full = DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False, prune=False)
    return pruned, full


def test_pruned_backbone_gives_the_same_features(pair):
    pruned, full = pair
    x = random_images(2, 64, 96)
    with torch.no_grad():
        for a, b in zip(pruned(x), full(x)):
            assert torch.equal(a, b)


def test_the_forward_ends_at_the_deepest_activation_itself(pair):
    """practical's last activation is up-level3-repeat0-vit-block0-self-k: to_k runs, to_v never does."""
    _, full = pair
    attn1 = full.denoiser.up_blocks[3].attentions[0].transformer_blocks[0].attn1
    calls = []
    handles = [m.register_forward_hook(lambda mod, a, out, k=k: calls.append(k))
               for k, m in {'to_q': attn1.to_q, 'to_k': attn1.to_k, 'to_v': attn1.to_v, 'to_out': attn1.to_out[0]}.items()]
    with torch.no_grad():
        full(random_images(1, 64, 64))
    for h in handles:
        h.remove()
    assert calls == ['to_q', 'to_k']


def test_the_tail_is_not_kept(pair):
    pruned, full = pair
    unet = pruned.denoiser
    assert isinstance(unet.conv_out, PrunedModule) and isinstance(unet.up_blocks[3].resnets[1], PrunedModule)
    assert isinstance(unet.up_blocks[3].attentions[0].transformer_blocks[0].attn1.to_v, PrunedModule)
    assert not isinstance(unet.up_blocks[3].attentions[0].transformer_blocks[0].attn1.to_k, PrunedModule)
    # to_q runs before to_k but feeds nothing captured: its weights go, a zero stand-in keeps the call
    assert isinstance(unet.up_blocks[3].attentions[0].transformer_blocks[0].attn1.to_q, SkippedLinear)
    assert 'up_blocks.3.attentions.0.transformer_blocks.0.attn1.to_q' in pruned.pruned
    assert len(unet.up_blocks[3].resnets) == 3  # indices kept: the UNet's own forward is unchanged
    n_pruned = sum(p.numel() for p in pruned.denoiser.parameters())
    n_full = sum(p.numel() for p in full.denoiser.parameters())
    assert n_pruned < n_full
    with pytest.raises(RuntimeError, match='was pruned.*prune=False'):
        unet.conv_out(torch.zeros(1, 32, 8, 8))


def test_selecting_levels_keeps_working_after_pruning():
    backbone = DiffusionBackbone('test_sd_tiny', 'legacy', pretrained=False)
    backbone.select_levels([1, 2])
    with torch.no_grad():
        feats = backbone(random_images(1, 64, 64))
    assert [f.shape[1] for f in feats] == [64, 64]


def test_pruning_works_on_the_meta_device():
    with torch.device('meta'):
        backbone = DiffusionBackbone('sdxl', 'practical', pretrained=False)
    assert 'conv_out' in backbone.pruned and 'up_blocks.2' in backbone.pruned
    assert 'up_blocks.1.attentions.1' in backbone.pruned  # practical stops inside up_blocks[1].attentions[0]


def test_a_stop_before_any_attention_of_a_block_keeps_its_lists_iterable():
    """Stopping at a block's first resnet: none of its attentions ran, yet the block's forward starts
    with zip(self.resnets, self.attentions); the list stays a list, its members are pruned one by one."""
    names = ['up-level1-repeat2-vit-out', 'up-level2-repeat0-res-out']
    pruned = DiffusionBackbone('test_sd_tiny', names, pretrained=False)
    full = DiffusionBackbone('test_sd_tiny', names, pretrained=False, prune=False)
    block = pruned.denoiser.up_blocks[2]
    assert isinstance(block.attentions, torch.nn.ModuleList) and len(block.attentions) == 3
    assert all(isinstance(a, PrunedModule) for a in block.attentions)
    x = random_images(1, 64, 64)
    with torch.no_grad():
        for a, b in zip(pruned(x), full(x)):
            assert torch.equal(a, b)


def test_on_meta_a_denoiser_whose_forward_reads_values_is_pruned_by_catalog_order():
    # Lumina 2's forward reads its caption lengths (nonzero, .item()): no probe runs on meta, so the blocks whose
    # activations all come after the last requested one go by catalog order (memory tables count what is kept)
    with torch.device('meta'):
        backbone = DiffusionBackbone('lumina2', 'default', pretrained=False)
    last = max(backbone.capture.points, key=lambda p: p.order).module  # 'layers.<k>'
    k = int(last.split('.')[1])
    layers = backbone.denoiser.layers
    assert all(isinstance(layers[j], PrunedModule) for j in range(k + 1, len(layers)))
    assert not any(isinstance(layers[j], PrunedModule) for j in range(k + 1))
    assert backbone.pruned == [f'layers.{j}' for j in sorted(range(k + 1, len(layers)), key=str)]
