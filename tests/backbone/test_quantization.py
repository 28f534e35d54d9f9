"""Big denoisers in little memory: quantized through diffusers' backends (torchao int8 / float8 after pruning,
GGUF files through from_single_file), offloaded through diffusers' group offloading; and what is refused."""
import pytest
import torch
import torch.nn as nn

from diffbackbones import DiffusionBackbone, WeightsNotFoundError

from conftest import random_images

torchao = pytest.importorskip('torchao')
gguf = pytest.importorskip('gguf')

# measured on shapes_sd_tiny at 64 px: int8 0.5 %, float8 (CPU emulation) 2.9 %, GGUF Q8_0 0.5 % relative error
INT8_TOLERANCE = 0.02
FLOAT8_TOLERANCE = 0.08


def relative_errors(features, reference):
    return [float((f - r).norm() / r.norm()) for f, r in zip(features, reference)]


@pytest.fixture(scope='module')
def images():
    return random_images(2, 64, 64)


@pytest.fixture(scope='module')
def full_precision(images):
    backbone = DiffusionBackbone('shapes_sd_tiny', 'practical')
    with torch.no_grad():
        return backbone, backbone(images)


def test_int8_quantizes_every_kept_linear_after_pruning_and_stays_close(images, full_precision):
    reference_backbone, reference = full_precision
    backbone = DiffusionBackbone('shapes_sd_tiny', 'practical', denoiser=dict(quantization='int8'))
    kept = [n for n, m in reference_backbone.denoiser.named_modules() if type(m) is nn.Linear]
    assert sorted(backbone.quantized) == sorted(kept) and kept
    assert backbone.pruned == reference_backbone.pruned   # pruning ran first, on the unquantized model
    for name in kept:
        assert type(backbone.denoiser.get_submodule(name).weight).__name__ == 'Int8Tensor', name
    convolution = next(m for m in backbone.denoiser.modules() if isinstance(m, nn.Conv2d))
    assert convolution.weight.dtype == torch.float32          # only linear layers, as diffusers' torchao loader
    assert next(backbone.vae.parameters()).dtype == torch.float32
    with torch.no_grad():
        features = backbone(images)
    errors = relative_errors(features, reference)
    assert max(errors) < INT8_TOLERANCE and min(errors) > 0, errors   # quantized, and close
    assert all(f.dtype == torch.float32 for f in features)


def test_float8_and_a_diffusers_config_object(images, full_precision):
    from diffusers import TorchAoConfig
    from torchao.quantization import Int8WeightOnlyConfig
    _, reference = full_precision
    backbone = DiffusionBackbone('shapes_sd_tiny', 'practical', denoiser=dict(quantization='float8'))
    with torch.no_grad():
        assert max(relative_errors(backbone(images), reference)) < FLOAT8_TOLERANCE
    config = TorchAoConfig(Int8WeightOnlyConfig(), modules_to_not_convert=['attn2'])
    custom = DiffusionBackbone('shapes_sd_tiny', 'practical', denoiser=dict(quantization=config))
    assert custom.quantized and not any('attn2' in name for name in custom.quantized)
    assert any('attn1' in name for name in custom.quantized)


def test_a_lora_adapter_trains_on_an_int8_denoiser(images):
    backbone = DiffusionBackbone('shapes_sd_tiny', 'practical', denoiser=dict(
        quantization='int8', lora=dict(rank=4, targets=['to_q', 'to_k', 'to_v'])))
    assert not any('lora_' in name for name in backbone.quantized)
    sum(f.square().mean() for f in backbone(images)).backward()
    trained = {n for n, p in backbone.named_parameters() if p.grad is not None}
    assert trained and all('lora_' in n for n in trained)
    assert all(p.grad.abs().sum() > 0 for n, p in backbone.named_parameters() if 'lora_B' in n)


@pytest.mark.parametrize('options,match', [
    (dict(quantization='int4'), "unknown quantization 'int4'"),
    (dict(quantization='int8', trainable=True), 'cannot train'),
    (dict(quantization=3), 'quantization must be one of'),
    (dict(offload='disk'), 'offload type must be one of'),
    (dict(offload='block', trainable=True), 'frozen denoiser'),
])
def test_bad_quantization_and_offload_options_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False, denoiser=options)


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the refusal on a machine without CUDA')
def test_bitsandbytes_is_refused_by_name_without_cuda():
    with pytest.raises(RuntimeError, match="'nf4' \\(bitsandbytes\\) needs a CUDA GPU"):
        DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False, denoiser=dict(quantization='nf4'))


def write_gguf(denoiser: nn.Module, path) -> int:
    """The denoiser's weights as a GGUF file, as the community's converters write them: every matrix whose rows
    split into 32-value blocks in Q8_0, the rest in F32. The number of quantized tensors."""
    writer = gguf.GGUFWriter(str(path), 'diffbackbones-test')
    quantized = 0
    for name, value in denoiser.state_dict().items():
        array = value.float().numpy()
        if array.ndim == 2 and array.shape[-1] % 32 == 0:
            writer.add_tensor(name, gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            quantized += 1
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return quantized


def test_a_gguf_denoiser_loads_quantized_and_runs(tmp_path, images, full_precision, monkeypatch):
    from diffbackbones.models import loading
    reference_backbone, reference = full_precision
    unpruned = DiffusionBackbone('shapes_sd_tiny', 'practical', prune=False)
    assert write_gguf(unpruned.denoiser, tmp_path / 'unet.gguf') > 0
    loaded = []   # what is read from the zoo entry's weights: the VAE only, never its own denoiser as well
    real_from_pretrained = loading.from_pretrained
    monkeypatch.setattr(loading, 'from_pretrained', lambda cls, source, subfolder, spec, **kw: (
        loaded.append(subfolder), real_from_pretrained(cls, source, subfolder, spec, **kw))[1])
    backbone = DiffusionBackbone('shapes_sd_tiny', 'practical', pretrained=tmp_path / 'unet.gguf')
    assert loaded == ['vae']
    monkeypatch.undo()
    layers = {type(m).__name__ for m in backbone.denoiser.modules()}
    assert 'GGUFLinear' in layers
    assert backbone.pruned == reference_backbone.pruned
    with torch.no_grad():
        errors = relative_errors(backbone(images), reference)
    assert max(errors) < INT8_TOLERANCE and min(errors) > 0, errors   # Q8_0, close to the fp32 weights
    adapted = DiffusionBackbone('shapes_sd_tiny', 'practical', pretrained=tmp_path / 'unet.gguf',
                                denoiser=dict(lora=dict(rank=4, targets=['to_q', 'to_k'])))  # QLoRA on GGUF layers
    sum(f.square().mean() for f in adapted(images)).backward()
    trained = {n for n, p in adapted.named_parameters() if p.grad is not None}
    assert trained and all('lora_' in n for n in trained)
    with pytest.raises(ValueError, match='quantized already'):
        DiffusionBackbone('shapes_sd_tiny', pretrained=tmp_path / 'unet.gguf', denoiser=dict(quantization='int8'))
    with pytest.raises(ValueError, match='GGUF denoiser cannot train'):
        DiffusionBackbone('shapes_sd_tiny', pretrained=tmp_path / 'unet.gguf', trainable_denoiser=True)
    with pytest.raises(WeightsNotFoundError, match='no such GGUF file'):
        DiffusionBackbone('shapes_sd_tiny', pretrained=tmp_path / 'missing.gguf')
    with pytest.raises(WeightsNotFoundError, match='did not load as the UNet2DConditionModel of .test_sdxl_tiny'):
        DiffusionBackbone('test_sdxl_tiny', pretrained=tmp_path / 'unet.gguf')


@pytest.mark.parametrize('offload', ['block', 'leaf', dict(type='block', blocks_per_group=2)])
def test_offloaded_features_are_identical_and_the_denoiser_stays_on_the_cpu(offload, images, full_precision):
    _, reference = full_precision
    backbone = DiffusionBackbone('shapes_sd_tiny', 'practical', denoiser=dict(offload=offload))
    with torch.no_grad():
        for _ in range(2):   # the hooks attach at the first call, and run at every one
            for feature, expected in zip(backbone(images), reference):
                torch.testing.assert_close(feature, expected, rtol=0, atol=0)
    assert any(hasattr(m, '_diffusers_hook') for m in backbone.denoiser.modules())   # diffusers' own hooks
    backbone.to(torch.float64)   # what .to('cuda') does: everything moves but the offloaded denoiser
    assert next(backbone.vae.parameters()).dtype == torch.float64
    assert next(backbone.denoiser.parameters()).dtype == torch.float32
    with pytest.raises(RuntimeError, match='fixed at the first forward'):
        backbone.stages.denoiser.offload.attach(backbone.denoiser, torch.device('meta'))


def stored_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor holds, a torchao tensor's inner tensors (values, scales, zero points) included."""
    if hasattr(tensor, '__tensor_flatten__') and type(tensor) is not nn.Parameter:
        return sum(getattr(tensor, name).nbytes for name in tensor.__tensor_flatten__()[0])
    return tensor.nbytes


@pytest.mark.parametrize('fmt', ['bf16', 'int8', 'float8'])
def test_the_memory_tables_count_what_a_quantized_backbone_holds(fmt):
    from diffbackbones.tasks.memory import GIB, backbone_memory, memory_tables
    counted = backbone_memory('test_sd_tiny', 'practical')   # on the meta device
    options = {} if fmt == 'bf16' else dict(quantization=fmt)
    backbone = DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False, dtype='bf16', denoiser=options)
    held = sum(stored_bytes(p) for m in (backbone.denoiser, backbone.vae) for p in m.parameters())
    assert counted.gib(fmt) * GIB == pytest.approx(held, rel=1e-6)
    assert counted.denoiser_kept == sum(p.numel() for p in backbone.denoiser.parameters())
    tables = memory_tables([counted])
    assert '| test_sd_tiny | practical |' in tables and 'rank' in tables


def test_feature_fidelity_is_zero_against_itself_and_measures_int8(images, full_precision):
    from diffbackbones.tasks.fidelity import feature_fidelity
    reference_backbone, reference = full_precision
    same = feature_fidelity(reference_backbone, reference_backbone, images.split(1))
    assert [level['relative_error'] for level in same] == [0.0] * len(reference)
    assert all(level['cosine'] == pytest.approx(1.0, abs=1e-6) for level in same)
    quantized = DiffusionBackbone('shapes_sd_tiny', 'practical', denoiser=dict(quantization='int8'))
    errors = feature_fidelity(reference_backbone, quantized, images.split(1))
    with torch.no_grad():   # the pooled error over both images is the whole batch's relative error
        expected = relative_errors(quantized(images), reference)
    assert [level['relative_error'] for level in errors] == pytest.approx(expected, rel=1e-4)
    assert all(0.999 < level['cosine'] < 1 for level in errors)
