"""LoRA adapters (``lora=``): read with diffusers' loaders, fused once, no peft layers left.

LoRAs are made here with peft on the tiny UNet (``init_lora_weights=False``: A and B non-zero) and saved
with diffusers' own ``save_lora_weights``; the reference is the same weights merged by hand,
W + scale * alpha / r * B @ A for each LoRA.
"""
import copy

import pytest
import safetensors.torch
import timm
import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig, get_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer

import diffbackbones  # noqa: F401  (registers the timm entry points)
from diffbackbones import DiffusionBackbone
from diffbackbones.backbone.denoiser.stage import DenoiserStage
from diffbackbones.models.families import family_of
from diffbackbones.models.loading import WeightsNotFoundError, build_denoiser
from diffbackbones.models.zoo import MODELS

from conftest import random_images

ATTENTION = ['to_q', 'to_k', 'to_v', 'to_out.0']


def _make_lora(model: str, folder, seed: int, rank: int, alpha: float, targets=ATTENTION) -> dict:
    """A LoRA with non-zero A and B, saved by diffusers; its layers as {module path: (A, B, alpha / rank)}."""
    unet = build_denoiser(MODELS[model])
    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=False, target_modules=targets)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet.add_adapter(config)
    state = get_peft_model_state_dict(unet)
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=state,
                                              unet_lora_adapter_metadata=config.to_dict())  # keeps alpha
    return {k.removesuffix('.lora_A.weight'): (v, state[k.replace('lora_A', 'lora_B')], alpha / rank)
            for k, v in state.items() if k.endswith('.lora_A.weight')}


@pytest.fixture(scope='session')
def loras(tmp_path_factory):
    root = tmp_path_factory.mktemp('loras')
    made = {'a': _make_lora('test_sd_tiny', root / 'a', seed=1, rank=4, alpha=8),
            'b': _make_lora('test_sd_tiny', root / 'b', seed=2, rank=2, alpha=2, targets=['to_k', 'to_v', 'proj_in'])}
    _make_lora('test_sdxl_tiny', root / 'sdxl', seed=3, rank=4, alpha=4)
    # the same LoRA a in kohya's format (as A1111 / ComfyUI files hold it): lora_down/lora_up/alpha per layer
    kohya = {}
    for path, (down, up, scale) in made['a'].items():
        name = 'lora_unet_' + path.replace('.', '_')
        kohya |= {f'{name}.lora_down.weight': down, f'{name}.lora_up.weight': up,
                  f'{name}.alpha': torch.tensor(scale * down.shape[0])}
    safetensors.torch.save_file(kohya, root / 'a_kohya.safetensors')
    safetensors.torch.save_file({'conv.weight': torch.zeros(2, 2)}, root / 'not_a_lora.safetensors')
    return root, made


def _merged_by_hand(denoiser: torch.nn.Module, *loras: tuple[dict, float]) -> torch.nn.Module:
    modules = dict(denoiser.named_modules())
    with torch.no_grad():
        for layers, scale in loras:
            for path, (down, up, alpha_over_rank) in layers.items():
                weight = getattr(modules.get(path), 'weight', None)  # pruned modules hold none
                if weight is not None:  # Linear (out, in) or 1x1 Conv2d (out, in, 1, 1)
                    weight += (scale * alpha_over_rank * up.flatten(1) @ down.flatten(1)).view_as(weight)
    return denoiser


def _peft_layers(module: torch.nn.Module) -> list[str]:
    return [name for name, m in module.named_modules() if isinstance(m, BaseTunerLayer)]


def _fused(*entries) -> torch.nn.Module:
    """The tiny UNet with ``lora=entries`` applied through the denoiser stage, as the backbone applies it."""
    unet = build_denoiser(MODELS['test_sd_tiny'])
    DenoiserStage(lora=list(entries)).load_lora(unet, family_of(unet))
    return unet


def _assert_same_weights(fused: torch.nn.Module, reference: torch.nn.Module) -> None:
    expected = reference.state_dict()
    assert fused.state_dict().keys() == expected.keys()  # the plain model's keys: no lora_A/lora_B, no base_layer
    for key, value in fused.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.fixture(scope='module')
def base():
    return DiffusionBackbone('test_sd_tiny', pretrained=False)


def test_features_equal_those_of_weights_merged_by_hand(loras, base):
    root, made = loras
    images = random_images(2, 64, 64)
    backbone = DiffusionBackbone('test_sd_tiny', pretrained=False, lora=[(root / 'a', 0.7)])
    assert backbone.stages.denoiser.lora == ((str(root / 'a'), 0.7),)
    assert [(a.scale, a.layers) for a in backbone.lora] == [(0.7, len(made['a']))]
    assert not _peft_layers(backbone) and backbone.pruned == base.pruned  # fused first, then pruned as usual
    reference = copy.deepcopy(base)
    _merged_by_hand(reference.denoiser, (made['a'], 0.7))
    with torch.no_grad():
        features, expected, plain = backbone(images), reference(images), base(images)
        alone = backbone(images[1:])
    for f, e, p in zip(features, expected, plain):
        torch.testing.assert_close(f, e, rtol=1e-5, atol=1e-5)
        assert (f - p).abs().max() > 1e-2  # the LoRA changed the features
    for f, one in zip(features, alone):  # batch independence holds through the fused weights
        torch.testing.assert_close(f[1:], one, rtol=1e-5, atol=1e-5)
    assert backbone.state_dict().keys() == base.state_dict().keys()



def test_a_lean_checkpoint_of_a_lora_backbone_loads_into_a_rebuilt_one(loras):
    """Lean checkpoints leave the frozen (fused) denoiser out: a backbone rebuilt with the same lora= fuses
    it again, so the checkpoint loads strictly and gives the same features."""
    root, _ = loras
    options = dict(pretrained=False, lora=[(root / 'a', 0.7)], fusion=True)
    first = DiffusionBackbone('test_sd_tiny', **options)
    with torch.no_grad():
        for p in first.fusion.parameters():
            p.add_(0.01)  # trained fusion weights, so the checkpoint holds something of its own
    lean = {k: v for k, v in first.state_dict().items() if not k.startswith(first.frozen_prefixes)}
    assert lean and not any(k.startswith('denoiser.') for k in lean)
    rebuilt = DiffusionBackbone('test_sd_tiny', **options)
    rebuilt.load_state_dict(lean, strict=True)
    images = random_images(1, 64, 64)
    with torch.no_grad():
        for a, b in zip(first(images), rebuilt(images)):
            torch.testing.assert_close(a, b)

def test_scale_zero_is_the_base_model(loras):
    root, _ = loras
    _assert_same_weights(_fused((root / 'a', 0.0)), build_denoiser(MODELS['test_sd_tiny']))


def test_two_loras_add_up_as_diffusers_combines_them(loras):
    """Each LoRA scaled by its own scale * alpha / rank (diffusers' set_adapters), both merged into W."""
    root, made = loras
    fused = _fused((root / 'a', 0.7), (root / 'b', -1.5))
    assert not _peft_layers(fused)
    reference = _merged_by_hand(build_denoiser(MODELS['test_sd_tiny']), (made['a'], 0.7), (made['b'], -1.5))
    _assert_same_weights(fused, reference)
    # and as a diffusers pipeline of the same UNet fuses them, through its own public calls
    unet = build_denoiser(MODELS['test_sd_tiny'])
    pipe = StableDiffusionPipeline(vae=None, text_encoder=None, tokenizer=None, unet=unet, scheduler=None,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.load_lora_weights(root / 'a', adapter_name='a')
    pipe.load_lora_weights(root / 'b', adapter_name='b')
    pipe.set_adapters(['a', 'b'], [0.7, -1.5])
    pipe.fuse_lora(components=['unet'])
    pipe.unload_lora_weights()
    _assert_same_weights(fused, pipe.unet)


def test_a_kohya_file_gives_the_same_weights(loras):
    root, made = loras
    fused = _fused(str(root / 'a_kohya.safetensors'))  # a bare source: scale 1
    _assert_same_weights(fused, _merged_by_hand(build_denoiser(MODELS['test_sd_tiny']), (made['a'], 1.0)))


_PIPELINES = {'test_sd3_tiny': 'StableDiffusion3Pipeline', 'test_flux_tiny': 'FluxPipeline',
              'test_chroma_tiny': 'ChromaPipeline', 'test_flux2_tiny': 'Flux2Pipeline',
              'test_qwen_image_tiny': 'QwenImagePipeline', 'test_zimage_tiny': 'ZImagePipeline',
              'test_sana_tiny': 'SanaPipeline', 'test_lumina2_tiny': 'Lumina2Pipeline',
              'test_cogview4_tiny': 'CogView4Pipeline', 'test_wan_tiny': 'WanPipeline',
              'test_hidream_tiny': 'HiDreamImagePipeline'}


@pytest.mark.parametrize('model', sorted(_PIPELINES))
def test_transformer_families_use_their_own_diffusers_loader(model, tmp_path):
    import diffusers
    pipeline = getattr(diffusers, _PIPELINES[model])
    transformer = build_denoiser(MODELS[model])
    config = LoraConfig(r=2, lora_alpha=4, init_lora_weights=False, target_modules=['to_q', 'to_k', 'to_v'])
    transformer.add_adapter(config)
    state = get_peft_model_state_dict(transformer)
    pipeline.save_lora_weights(tmp_path, transformer_lora_layers=state, transformer_lora_adapter_metadata=config.to_dict())
    layers = {k.removesuffix('.lora_A.weight'): (v, state[k.replace('lora_A', 'lora_B')], 2.0)
              for k, v in state.items() if k.endswith('.lora_A.weight')}
    fused = build_denoiser(MODELS[model])
    DenoiserStage(lora=(tmp_path, 0.5)).load_lora(fused, family_of(fused))
    assert not _peft_layers(fused)
    _assert_same_weights(fused, _merged_by_hand(build_denoiser(MODELS[model]), (layers, 0.5)))


def _assert_passed_through(backbone: DiffusionBackbone, loras) -> None:
    """``backbone`` was built with LoRA a at scale 0.5 by a wrapper (timm, mmseg): fused as by hand."""
    root, made = loras
    assert backbone.stages.denoiser.lora == ((str(root / 'a'), 0.5),) and not _peft_layers(backbone)
    reference = _merged_by_hand(build_denoiser(MODELS['test_sd_tiny']), (made['a'], 0.5))
    q = 'down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight'
    torch.testing.assert_close(backbone.denoiser.state_dict()[q], reference.state_dict()[q])


def test_timm_passes_lora_through(loras):
    root, _ = loras
    model = timm.create_model('test_sd_tiny_practical', frozen=True, lora=[(str(root / 'a'), 0.5)])
    _assert_passed_through(model.backbone, loras)


def test_an_mmseg_config_passes_lora_through(loras, tmp_path):
    from mmengine.config import Config
    from mmseg.registry import MODELS as MMSEG_MODELS
    root, _ = loras
    # written as a config file and read back by mmengine: the (path, scale) pairs arrive as lists
    config = tmp_path / 'lora_config.py'
    config.write_text("backbone = dict(type='DiffusionBackbone', model='test_sd_tiny', pretrained=False,\n"
                      f"                lora=[({str(root / 'a')!r}, 0.5)])\n")
    _assert_passed_through(MMSEG_MODELS.build(Config.fromfile(config).backbone), loras)


def test_lora_works_on_the_meta_device(loras):
    root, _ = loras
    # its own prompt: the embeddings of an earlier CPU build of the same prompt are cached on the CPU
    with torch.device('meta'):
        backbone = DiffusionBackbone('test_sd_tiny', pretrained=False, prompt='on the meta device',
                                     lora=[(root / 'a', 0.7)])
    assert not _peft_layers(backbone) and backbone.lora[0].layers > 0
    with torch.device('meta'), pytest.raises(ValueError, match='does not fit'):  # still checked there
        DiffusionBackbone('test_sd_tiny', pretrained=False, prompt='on the meta device', lora=root / 'sdxl')


def test_a_lora_for_another_architecture_names_the_model_it_fits(loras):
    root, _ = loras
    with pytest.raises(ValueError, match='does not fit') as e:
        DiffusionBackbone('test_sd_tiny', pretrained=False, lora=[(root / 'sdxl', 1.0)])
    message = str(e.value)
    assert 'made for: test_sdxl_tiny' in message and 'to_q' in message and 'model' in message


def test_a_file_that_is_not_a_lora_says_so(loras):
    root, _ = loras
    with pytest.raises(ValueError, match='is not a LoRA'):
        DiffusionBackbone('test_sd_tiny', pretrained=False, lora=root / 'not_a_lora.safetensors')


def test_missing_files_and_hub_ids_say_so_offline(tmp_path):
    unet = build_denoiser(MODELS['test_sd_tiny'])
    with pytest.raises(WeightsNotFoundError, match='not found'):
        DenoiserStage(lora=tmp_path / 'missing.safetensors').load_lora(unet, family_of(unet))
    with pytest.raises(WeightsNotFoundError, match='HF_HUB_OFFLINE'):  # conftest sets it: tests never go online
        DenoiserStage(lora=[('no-such-org/no-such-lora', 0.5)]).load_lora(unet, family_of(unet))
    with pytest.raises(WeightsNotFoundError, match='not found'):  # a relative path, not a hub id
        DenoiserStage(lora='missing/style.safetensors').load_lora(unet, family_of(unet))
    with pytest.raises(WeightsNotFoundError, match='not a local file or folder.*HF_HUB_OFFLINE'):  # org/name/file
        DenoiserStage(lora='no-such-org/no-such-lora/style.safetensors').load_lora(unet, family_of(unet))


def test_option_forms_are_normalised_and_files_and_a_dict_are_not_mixed():
    assert DenoiserStage(lora='x.safetensors').lora == (('x.safetensors', 1.0),)
    assert DenoiserStage(lora=('x.safetensors', 0.5)).lora == (('x.safetensors', 0.5),)
    assert DenoiserStage(lora=[['x.safetensors', 1], 'org/name']).lora == (('x.safetensors', 1.0), ('org/name', 1.0))
    assert DenoiserStage(lora=None).lora == DenoiserStage().lora == ()
    with pytest.raises(ValueError, match='not both'):  # a dict trains a new adapter (test_lora_training.py)
        DiffusionBackbone('test_sd_tiny', pretrained=False, lora=['x.safetensors', dict(rank=4, targets=['to_q'])])
    with pytest.raises(ValueError, match='number'):
        DenoiserStage(lora=[('x.safetensors', '0.5')])


def test_families_without_a_diffusers_loader_are_named():
    from diffbackbones.models.families import FAMILIES
    with pytest.raises(ValueError, match='no LoRA loader for PixArtTransformer2DModel.*UNet2DConditionModel'):
        DenoiserStage(lora='x.safetensors').load_lora(None, FAMILIES['pixart'])
