"""fp16 / bf16 paths, channels_last, torch.compile and gradient checkpointing on a tiny model."""
import pytest
import torch

from diffbackbones import DiffusionBackbone

from conftest import random_images


@pytest.fixture(scope='module')
def reference():
    x = random_images(1, 64, 64)
    with torch.no_grad():
        return x, DiffusionBackbone('test_sdxl_tiny', 'practical', pretrained=False)(x)


@pytest.mark.parametrize('dtype,vae_dtype', [('fp16', torch.float32), ('bf16', torch.bfloat16)])
def test_low_precision_is_finite_and_close_to_fp32(reference, dtype, vae_dtype):
    x, ref = reference
    backbone = DiffusionBackbone('test_sdxl_tiny', 'practical', pretrained=False, dtype=dtype)
    assert next(backbone.vae.parameters()).dtype == vae_dtype  # fp16 keeps the VAE in fp32 (SDXL overflows)
    with torch.no_grad():
        feats = backbone(x)
    for f, r in zip(feats, ref):
        assert f.dtype == x.dtype and torch.isfinite(f).all()  # features leave in the input's dtype
        assert ((f.float() - r).norm() / r.norm()) < 0.05


@pytest.mark.parametrize('channels_last,vae_cl,denoiser_cl', [(None, True, False), (False, False, False),
                                                                (True, True, True)])
def test_channels_last_picks_the_formats_and_matches(reference, channels_last, vae_cl, denoiser_cl):
    x, ref = reference  # built with the default, channels_last=None
    backbone = DiffusionBackbone('test_sdxl_tiny', 'practical', pretrained=False, channels_last=channels_last)
    seen = {}

    def record_format(part):
        def hook(_, args):
            seen[part] = args[0].is_contiguous(memory_format=torch.channels_last)
        return hook
    backbone.vae.encoder.conv_in.register_forward_pre_hook(record_format('vae'))
    backbone.denoiser.conv_in.register_forward_pre_hook(record_format('denoiser'))
    with torch.no_grad():
        feats = backbone(x)
    assert seen == {'vae': vae_cl, 'denoiser': denoiser_cl}  # None: channels-last VAE on the CPU only
    for f, r in zip(feats, ref):
        torch.testing.assert_close(f, r, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compile_matches_eager():
    """The smallest case that still shows compiled == eager: one early activation, so pruning leaves only the
    stem and the first ResNet block, and compile descends into the hooked block to compile its layers (a cold
    machine builds every kernel's C++ from scratch: a whole tiny SDXL took 289 s there, this takes seconds)."""
    x, layer = random_images(1, 64, 64), ['down-level0-repeat0-res-out']
    with torch.no_grad():
        ref = DiffusionBackbone('test_sd_tiny', layer, pretrained=False)(x)
    backbone = DiffusionBackbone('test_sd_tiny', layer, pretrained=False, compile=True)
    # whole parts without a capture point, and the layers inside the hooked block; never the hooked block itself
    assert {'conv_in', 'time_embedding', 'down_blocks.0.resnets.0.conv1'} <= set(backbone.compiled)
    assert 'down_blocks.0.resnets.0' not in backbone.compiled and 'down_blocks.0' not in backbone.compiled
    # every part keeps its graphs: the one shared compile wrapper must not hit dynamo's recompile limit
    assert torch._dynamo.config.recompile_limit >= 2 * len(backbone.compiled)
    counters = torch._dynamo.utils.counters
    counters.clear()
    with torch.no_grad(), torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        feats = backbone(x)
    # dynamo really traced graphs for the compiled parts (not a silent eager fallback)
    assert counters['stats']['unique_graphs'] > 0, dict(counters['stats'])
    for f, r in zip(feats, ref):
        torch.testing.assert_close(f, r, rtol=1e-3, atol=1e-4)


def test_grad_checkpointing_gives_the_same_gradients():
    x = random_images(1, 64, 64)
    grads = []
    for checkpointing in (False, True):
        backbone = DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False, trainable_denoiser=True).train()
        backbone.set_grad_checkpointing(checkpointing)
        assert backbone.denoiser.is_gradient_checkpointing == checkpointing
        sum(f.square().mean() for f in backbone(x)).backward()
        grads.append({n: p.grad.clone() for n, p in backbone.denoiser.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)
