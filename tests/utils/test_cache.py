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
    assert backbone.stages.vae.latent_cache.hits == 3 and backbone.stages.vae.latent_cache.misses == 3
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


@pytest.mark.parametrize('damage', ['truncated', 'garbage'])
def test_a_damaged_disk_entry_is_a_miss_that_is_recomputed_and_rewritten(damage, tmp_path):
    folder = tmp_path / 'latents'
    x = random_images(1, 64, 64)
    backbone = DiffusionBackbone('test_sd_tiny', pretrained=False, latent_cache=str(folder))
    with torch.no_grad():
        reference = backbone(x)
    (entry,) = folder.rglob('*.safetensors')
    data = entry.read_bytes()
    entry.write_bytes(data[: len(data) // 2] if damage == 'truncated' else b'\x00' * 64)
    calls = count_vae_calls(backbone)
    with pytest.warns(UserWarning, match=r'unreadable entry .*recomputing'), torch.no_grad():
        again = backbone(x)
    assert calls == [1] and all(torch.equal(a, b) for a, b in zip(reference, again))
    assert entry.read_bytes() == data  # rewritten whole
    with torch.no_grad():
        backbone(x)
    assert calls == [1]  # and read back from then on
    assert not list(folder.rglob('*.tmp'))


def _put_many(folder, namespace, n, ready, go):
    from diffbackbones.utils.cache import LatentCache
    cache = LatentCache(folder, namespace)
    ready.set()
    go.wait(60)  # both writers start together, after their (slow) imports
    for i in range(n):
        cache.put('same-key', torch.full((4, 8, 8), float(i)))


def test_concurrent_writers_of_one_key_never_collide(tmp_path):
    import multiprocessing as mp
    ctx = mp.get_context('spawn')
    go, ready = ctx.Event(), [ctx.Event() for _ in range(2)]
    procs = [ctx.Process(target=_put_many, args=(tmp_path, 'ns', 500, r, go)) for r in ready]
    for p in procs:
        p.start()
    for r in ready:
        assert r.wait(120)
    go.set()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]  # with one shared .tmp name, a rename finds it gone
    from diffbackbones.utils.cache import LatentCache
    latent = LatentCache(tmp_path, 'ns').get('same-key')
    assert latent is not None and latent.shape == (4, 8, 8)
    assert not list(tmp_path.rglob('*.tmp'))
