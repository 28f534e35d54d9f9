"""Latent cache: hits are bit-identical, a changed image is a miss, the disk cache survives a rebuild."""
import pytest
import torch

from diffbackbones import DiffusionBackbone

from conftest import random_images


def count_vae_calls(backbone):
    calls = []
    backbone.vae.encoder.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    return calls


@pytest.mark.parametrize('where', ['memory', 'disk'])
def test_hits_are_bit_identical_and_changes_miss(where, tmp_path):
    location = 'memory' if where == 'memory' else str(tmp_path / 'latents')
    backbone = DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False, latent_cache=location)
    uncached = DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False)
    calls = count_vae_calls(backbone)
    x = random_images(2, 64, 64)
    with torch.no_grad():
        first, second, reference = backbone(x), backbone(x), uncached(x)
    assert calls == [2]  # the second pass never ran the encoder
    for a, b, r in zip(first, second, reference):
        assert torch.equal(a, b) and torch.equal(a, r)
    changed = x.clone()
    changed[1, 0, 5, 5] += 1e-3
    with torch.no_grad():
        backbone(changed)
    assert calls == [2, 1]  # image 0 hit, the changed image 1 missed
    assert backbone.latent_cache.hits == 3 and backbone.latent_cache.misses == 3
    with torch.no_grad():
        backbone(x[:, :, :, :48])  # another size is another key, even with equal leading bytes
    assert calls[-1] == 2


def test_disk_cache_is_shared_by_a_rebuilt_backbone_and_namespaced(tmp_path):
    folder = str(tmp_path / 'latents')
    x = random_images(1, 64, 64)
    with torch.no_grad():
        DiffusionBackbone('test_sd_tiny', pretrained=False, latent_cache=folder)(x)
        again = DiffusionBackbone('test_sd_tiny', pretrained=False, latent_cache=folder)
        calls = count_vae_calls(again)
        again(x)
        assert calls == []
        other_vae = DiffusionBackbone('test_sdxl_tiny', pretrained=False, latent_cache=folder)
        calls = count_vae_calls(other_vae)
        other_vae(x)
        assert calls == [1]  # a different encoder never reads these latents


def test_cache_refuses_posterior_sampling():
    with pytest.raises(ValueError, match='posterior mean'):
        DiffusionBackbone('test_sd_tiny', pretrained=False, latent_cache='memory', sample_posterior=True)
