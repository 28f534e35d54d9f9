"""The model zoo as data: hub ids, embedded architecture configs, conditioning, presets.

Per-model facts live here and nowhere else; the backbone, loader and conditioning code read them.
Architecture configs sit in ``model_configs/<config_dir>/{unet,vae,text_encoder*}.json`` so that
``pretrained=False`` builds the exact architecture offline. Models whose weights ship inside the
package (``weights/<packaged>/``, a diffusers folder) take their configs from that folder instead.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

__all__ = ['TextEncoderSpec', 'PipelinePrompt', 'ModelSpec', 'FLOW_DEFAULT_T', 'MODELS', 'COMBINATIONS', 'get_model_spec', 'load_config', 'layer_stride', 'Levels',
           'default_weights']

CONFIG_ROOT = Path(__file__).parent / 'model_configs'
WEIGHTS_ROOT = Path(__file__).parent / 'weights'

# A feature pyramid: levels fine to coarse, each a tuple of layer ids concatenated along channels.
Levels = tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder of a pipeline, and what the denoiser takes from it.

    Attributes:
        subfolder: Pipeline subfolder of the encoder (its tokenizer is ``tokenizer_subfolder``).
        hidden_layer: ``'last'`` (final layer norm applied, SD1/SD2, T5) or ``'penultimate'`` (SDXL, SD3).
        pooled: This encoder's pooled embedding is (part of) the denoiser's pooled conditioning:
            ``'projected'`` (CLIP's text projection: SDXL, SD3) or ``'pooler'`` (the EOS state: Flux).
        kind: ``'clip'``, ``'t5'``, ``'mt5'`` or ``'bert'`` (which transformers class loads it).
        max_length: Tokens per prompt (padded): 77 for CLIP, 120 / 300 / 256 / 512 for T5 by model.
        group: Encoders of one group are joined along channels (SDXL's two CLIPs); groups are then
            joined along tokens, narrower ones zero-padded to the widest (SD3: [CLIP-L + CLIP-G; T5]).
        sequence: Its hidden states are part of the token sequence (Flux uses CLIP for the pooled only).
        mask: The tokenizer's attention mask goes to the encoder and to the denoiser (PixArt's T5).
    """

    subfolder: str
    tokenizer_subfolder: str
    hidden_layer: Literal['last', 'penultimate'] = 'last'
    pooled: Literal['projected', 'pooler'] | None = None
    kind: Literal['clip', 't5', 'mt5', 'bert'] = 'clip'
    max_length: int = 77
    group: int = 0
    sequence: bool = True
    mask: bool = False


@dataclass(frozen=True)
class PipelinePrompt:
    """Conditioning that the model's own diffusers pipeline computes (``encode_prompt``), for the families whose text
    encoders are language models: their prompt templates, chat templates, layer picks and masks stay the pipeline's.

    Attributes:
        pipeline: The diffusers pipeline class (``'QwenImagePipeline'``); its text encoders and tokenizers are the
            components loaded (the denoiser, VAE and scheduler are not).
        max_length: ``max_sequence_length`` as the pipeline's default (tokens of the prompt after its template).
        options: Further ``encode_prompt`` keywords, as (name, value) pairs.
    """

    pipeline: str
    max_length: int
    options: tuple[tuple[str, object], ...] = ()
    components: tuple[tuple[str, str], ...] = ()  # (component, hub id) the checkpoint does not ship (HiDream's Llama)
    instance: object = field(default=None, compare=False, repr=False)  # a live pipeline to encode with (from_pipeline)


@dataclass(frozen=True)
class ModelSpec:
    """Everything diffbackbones needs to know about one pretrained diffusion model."""

    name: str
    description: str
    hub_id: str | None
    config_dir: str
    family: str                   # denoiser topology: presets are only valid within a family
    text_encoders: tuple[TextEncoderSpec, ...]
    image_size: int               # the paper's working size (a transformer's native size otherwise)
    license: str
    presets: dict[str, Levels] = field(default_factory=dict)
    time_ids: bool = False        # SDXL-style micro-conditioning (original size, crop, target size)
    schedule: Literal['scaled_linear', 'linear', 'squaredcos_cap_v2', 'flow'] = 'scaled_linear'
    beta_start: float = 0.00085   # DDPM betas: 'scaled_linear' (SD1.x/2.x/SDXL/PGv2) or 'linear' (PixArt, DiT)
    beta_end: float = 0.012
    num_train_timesteps: int = 1000
    default_t: int = 50           # flow models: the t whose noise-to-signal ratio is SD's t=50 (noise/schedule.py)
    prediction: str = 'epsilon'   # what the denoiser predicts: 'epsilon', 'v_prediction', 'flow' (velocity)
    guidance: float | None = None  # guidance-distilled models (FLUX.1-dev): the embedded guidance scale
    class_conditional: bool = False  # DiT: a class label instead of a prompt (1000 = the null class)
    working_size: int | None = None  # pixel-space models (IF-I: 64): inputs are resized to it by default
    fp16_overflows: bool = False  # activations beyond fp16's range (Flux clips them): bf16 is the half precision
    packaged: str | None = None   # weights shipped in the package: weights/<packaged>/ (pretrained=True)
    prompt_pipeline: PipelinePrompt | None = None  # the pipeline's encode_prompt makes the conditioning
    notes: str = ''               # what the README's model table says of it (its text encoder, its VAE)
    folder: str | None = None     # a diffusers pipeline folder holding the configs (specs made by from_pipeline)

    @property
    def architecture(self) -> str:
        """The denoiser's diffusers class, read off its embedded config."""
        return load_config(self, self.denoiser_component).get('_class_name', 'UNet2DConditionModel')

    @property
    def pixel_space(self) -> bool:
        """No VAE: the denoiser works on pixels (DeepFloyd IF)."""
        return not self.config_path('vae').is_file()

    @property
    def vae_factor(self) -> int:
        """Pixels per latent pixel (1 in pixel space)."""
        from .latents import downsample_factor
        return 1 if self.pixel_space else downsample_factor(load_config(self, 'vae'))

    @property
    def n_text_tokens(self) -> int:
        """Length of the prompt's token sequence: each group's tokens, groups end to end (SD3: 77 + 256)."""
        if self.prompt_pipeline is not None:
            return self.prompt_pipeline.max_length
        groups: dict[int, int] = {}
        for te in self.text_encoders:
            if te.sequence:
                groups[te.group] = max(groups.get(te.group, 0), te.max_length)
        return sum(groups.values())

    @property
    def denoiser_component(self) -> str:
        """Pipeline subfolder of the denoiser: ``unet`` or ``transformer``."""
        return 'unet' if self.config_path('unet').is_file() else 'transformer'

    @property
    def weights_dir(self) -> Path | None:
        """The diffusers folder shipped in the package, for models that have one."""
        if self.folder is not None:
            return Path(self.folder)
        return None if self.packaged is None else WEIGHTS_ROOT / self.packaged

    def config_path(self, component: str) -> Path:
        if self.weights_dir is not None:
            return self.weights_dir / component / 'config.json'
        return CONFIG_ROOT / self.config_dir / f'{component}.json'

    @property
    def available(self) -> bool:
        """Its configs are here (shipped weights can be absent only while tools/train_diffusion.py remakes them)."""
        return self.config_path('unet').is_file() or self.config_path('transformer').is_file()

    def __post_init__(self):
        if self.packaged is None and self.folder is None and not self.available:
            raise ValueError(f'model {self.name!r}: no embedded config at {self.config_path("unet")} '
                             f'or {self.config_path("transformer")}')
        for preset, levels in self.presets.items():
            if not levels or any(not level for level in levels):
                raise ValueError(f'model {self.name!r}: preset {preset!r} has an empty level')


SD_PRESETS: dict[str, Levels] = {
    # Meng et al. 2024: strides 8 / 16 / 32 at any input size.
    'practical': (('up-level3-repeat0-vit-block0-self-k',),
                  ('up-level2-repeat1-vit-block0-cross-q',),
                  ('up-level1-repeat1-vit-block0-cross-q', 'up-level1-repeat2-res-out')),
    'legacy': (('up-level2-upsampler-out', 'up-level3-repeat2-vit-out'),
               ('up-level1-upsampler-out',),
               ('up-level0-upsampler-out',)),
}
# VPD (Zhao et al. 2023, wl-zhao/VPD): the four decoder outputs its UNetWrapper returns, fine to coarse: LDM
# output_blocks 11, 7, 4 and 1. output_blocks[3i + j] is diffusers' up_blocks[i]: resnets[j], attentions[j],
# and the upsampler after j = 2. 320 / 640 / 1280 / 1280 channels at strides 8 / 16 / 32 / 64 (SD1.x/2.x).
# VPD's input is the clean, unscaled latent at t=1: noise='clean', vae=dict(scale=1.0) (docs/vpd.md).
# Only SD1.5 (VPD's model) and SD2.1 (same decoder) list it; the tiny SD-topology models can ask for 'sd15_vpd'.
SD_VPD_PRESETS: dict[str, Levels] = dict(SD_PRESETS, vpd=(('up-level3-repeat2-vit-out',),
                                                          ('up-level2-repeat1-vit-out',),
                                                          ('up-level1-repeat1-vit-out',),
                                                          ('up-level0-repeat1-res-out',)))
SDXL_PRESETS: dict[str, Levels] = {
    'practical': (('up-level1-repeat0-vit-block0-cross-q', 'up-level1-repeat0-vit-block0-out'),
                  ('up-level0-repeat0-vit-block7-out', 'up-level0-repeat0-vit-block5-out')),
    'legacy': (('up-level1-upsampler-out', 'up-level2-repeat2-res-out'),
               ('up-level0-upsampler-out',)),
}
PGV2_PRESETS: dict[str, Levels] = {
    # From the paper's combined activation set for Playground v2.
    'practical': (('up-level1-upsampler-out',),
                  ('up-level1-repeat0-vit-block0-cross-q',),
                  ('up-level0-repeat0-vit-block5-out',)),
}


def middle_block_outputs(n_blocks: int) -> Levels:
    """The ``default`` preset of a single-stride transformer: four block outputs from the middle of the
    network, one level each, at 1/4, 3/8, 1/2 and 5/8 of its depth. The paper's property 1: blocks near
    the input and the output carry diffusion noise. A starting point, not a preset the paper measured."""
    picks = sorted({min(n_blocks - 1, round(n_blocks * f)) for f in (0.25, 0.375, 0.5, 0.625)})
    return tuple((f'vit-block{k}-out',) for k in picks)


_ONE_CLIP = (TextEncoderSpec('text_encoder', 'tokenizer'),)
_TWO_CLIPS = (TextEncoderSpec('text_encoder', 'tokenizer', 'penultimate'),
              TextEncoderSpec('text_encoder_2', 'tokenizer_2', 'penultimate', pooled='projected'))


def _t5(tokens: int, subfolder: str = 'text_encoder', group: int = 0, mask: bool = False) -> TextEncoderSpec:
    return TextEncoderSpec(subfolder, subfolder.replace('text_encoder', 'tokenizer'), kind='t5', max_length=tokens,
                           group=group, mask=mask)


# SD3: [CLIP-L penultimate + CLIP-G penultimate (channels), zero-padded to 4096; T5 (256 tokens)]; pooled = L + G.
_SD3_TEXT = (TextEncoderSpec('text_encoder', 'tokenizer', 'penultimate', pooled='projected'),
             TextEncoderSpec('text_encoder_2', 'tokenizer_2', 'penultimate', pooled='projected'),
             _t5(256, 'text_encoder_3', group=1))


def _flux_text(t5_tokens: int) -> tuple[TextEncoderSpec, ...]:
    # Flux: T5 tokens as the sequence; CLIP-L's pooled (EOS) state as the pooled projection input.
    return (TextEncoderSpec('text_encoder', 'tokenizer', pooled='pooler', sequence=False), _t5(t5_tokens, 'text_encoder_2'))


# Hunyuan-DiT: [BERT (77 tokens, 1024 ch); mT5-XL (256 tokens, 2048 ch)], both masked, kept apart by the family.
def _hunyuan_text(bert_tokens: int, t5_tokens: int) -> tuple[TextEncoderSpec, ...]:
    return (TextEncoderSpec('text_encoder', 'tokenizer', kind='bert', max_length=bert_tokens, mask=True),
            TextEncoderSpec('text_encoder_2', 'tokenizer_2', kind='mt5', max_length=t5_tokens, group=1, mask=True))


_IF_DDPM = dict(schedule='squaredcos_cap_v2', working_size=64)  # pixel space, no VAE
_HUNYUAN_DDPM = dict(schedule='scaled_linear', beta_start=0.00085, beta_end=0.03, prediction='v_prediction')
_PIXART_DDPM = dict(schedule='linear', beta_start=0.0001, beta_end=0.02)   # PixArt, DiT: DDPM linear betas
FLOW_DEFAULT_T = 184  # the flow-matching t whose noise-to-signal ratio is SD's at t=50 (noise/schedule.py)
_FLOW = dict(schedule='flow', prediction='flow', default_t=FLOW_DEFAULT_T)

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in [
    ModelSpec('sd15', 'Stable Diffusion 1.5', 'stable-diffusion-v1-5/stable-diffusion-v1-5', 'sd15', 'sd',
              _ONE_CLIP, 512, 'creativeml-openrail-m', SD_VPD_PRESETS),
    ModelSpec('sd21', 'Stable Diffusion 2.1 base (512 px, epsilon prediction)', 'stabilityai/stable-diffusion-2-1-base',
              'sd21', 'sd', _ONE_CLIP, 512, 'openrail++', SD_VPD_PRESETS),
    ModelSpec('sdxl', 'Stable Diffusion XL base 1.0', 'stabilityai/stable-diffusion-xl-base-1.0', 'sdxl', 'sdxl',
              _TWO_CLIPS, 1024, 'openrail++', SDXL_PRESETS, time_ids=True),
    ModelSpec('pgv2', 'Playground v2 1024px aesthetic (SDXL architecture)', 'playgroundai/playground-v2-1024px-aesthetic',
              'sdxl', 'sdxl', _TWO_CLIPS, 1024, 'playground-v2-community', PGV2_PRESETS, time_ids=True),
    # Trained here (tools/train_diffusion.py) and shipped in the package: the offline model that has
    # learned something. pretrained=True loads weights/shapes_sd_tiny/; False: same architecture, random.
    ModelSpec('shapes_sd_tiny', 'tiny SD1.5-topology latent diffusion model trained on the shapes set', None,
              'shapes_sd_tiny', 'sd', _ONE_CLIP, 128, 'apache-2.0', SD_PRESETS, packaged='shapes_sd_tiny'),
    # Its Flux-topology sibling (tools/train_diffusion.py --arch flux): a flow-matching transformer, 4 double +
    # 4 single blocks, on shapes_sd_tiny's VAE (the same encoder, copied). Its own family: 8 blocks, so the
    # layer ids of FLUX.1's presets (57 blocks) and of test_flux_tiny's (4) do not carry over.
    ModelSpec('shapes_flux_tiny', 'tiny Flux-topology flow-matching transformer (4 double + 4 single blocks) trained on '
              'the shapes set', None, 'shapes_flux_tiny', 'shapes_flux', _flux_text(32), 128, 'apache-2.0',
              {'default': middle_block_outputs(8)}, guidance=3.5, packaged='shapes_flux_tiny', **_FLOW),
    # Tiny random-weight variants with the fixture topologies, for tests (as timm's test_* models).
    # Their VAE scaling factors (3.0, 4.0) give the random-init encoders unit-variance latents, the
    # role 0.18215 plays for SD's trained VAE; otherwise the noise at t=50 would drown the signal.
    ModelSpec('test_sd_tiny', 'tiny SD1.5-topology model for tests', None, 'test_sd_tiny', 'sd',
              _ONE_CLIP, 64, 'apache-2.0', SD_PRESETS),
    ModelSpec('test_sdxl_tiny', 'tiny SDXL-topology model for tests', None, 'test_sdxl_tiny', 'sdxl',
              _TWO_CLIPS, 64, 'apache-2.0', SDXL_PRESETS, time_ids=True),

    # Transformer denoisers: every activation at stride 16 (VAE 8 x patch 2); the `default` presets take
    # four block outputs from the middle of the network (a starting point, not the paper's).
    ModelSpec('pixart_alpha', 'PixArt-alpha XL-2 512x512', 'PixArt-alpha/PixArt-XL-2-512x512', 'pixart_alpha', 'pixart',
              (_t5(120, mask=True),), 512, 'openrail++', {'default': middle_block_outputs(28)}, **_PIXART_DDPM),
    ModelSpec('pixart_sigma', 'PixArt-Sigma XL-2 1024-MS (SDXL VAE)', 'PixArt-alpha/PixArt-Sigma-XL-2-1024-MS',
              'pixart_sigma', 'pixart', (_t5(300, mask=True),), 1024, 'openrail++',
              {'default': middle_block_outputs(28)}, **_PIXART_DDPM),
    ModelSpec('sd3', 'Stable Diffusion 3 medium', 'stabilityai/stable-diffusion-3-medium-diffusers', 'sd3', 'sd3',
              _SD3_TEXT, 1024, 'stabilityai-ai-community', {'default': middle_block_outputs(24)}, **_FLOW),
    ModelSpec('sd35_medium', 'Stable Diffusion 3.5 medium (dual attention in blocks 0-12)',
              'stabilityai/stable-diffusion-3.5-medium', 'sd35_medium', 'sd35_medium', _SD3_TEXT, 1024,
              'stabilityai-ai-community', {'default': middle_block_outputs(24)}, **_FLOW),
    ModelSpec('sd35_large', 'Stable Diffusion 3.5 large', 'stabilityai/stable-diffusion-3.5-large', 'sd35_large',
              'sd35_large', _SD3_TEXT, 1024, 'stabilityai-ai-community', {'default': middle_block_outputs(38)}, **_FLOW),
    ModelSpec('flux_dev', 'FLUX.1-dev (guidance-distilled; 19 double + 38 single blocks)', 'black-forest-labs/FLUX.1-dev',
              'flux_dev', 'flux', _flux_text(512), 1024, 'flux-1-dev-non-commercial',
              {'default': middle_block_outputs(57)}, guidance=3.5, fp16_overflows=True, **_FLOW),
    ModelSpec('flux_schnell', 'FLUX.1-schnell', 'black-forest-labs/FLUX.1-schnell', 'flux_schnell', 'flux',
              _flux_text(256), 1024, 'apache-2.0', {'default': middle_block_outputs(57)}, fp16_overflows=True, **_FLOW),
    ModelSpec('dit_xl', 'DiT-XL/2 256 (ImageNet class-conditioned; the null class by default)',
              'facebook/DiT-XL-2-256', 'dit_xl', 'dit', (), 256, 'cc-by-nc-4.0', {'default': middle_block_outputs(28)},
              class_conditional=True, **_PIXART_DDPM),
    ModelSpec('hunyuan_dit', 'Hunyuan-DiT v1.2 (40 blocks with U-shaped long skips)',
              'Tencent-Hunyuan/HunyuanDiT-v1.2-Diffusers', 'hunyuan_dit', 'hunyuan', _hunyuan_text(77, 256), 1024,
              'tencent-hunyuan-community', {'default': middle_block_outputs(40)}, **_HUNYUAN_DDPM),
    ModelSpec('test_hunyuan_tiny', 'tiny Hunyuan-DiT-topology model for tests (4 blocks, long skips)', None,
              'test_hunyuan_tiny', 'hunyuan_tiny', _hunyuan_text(8, 16), 64, 'apache-2.0',
              {'default': middle_block_outputs(4)}, **_HUNYUAN_DDPM),
    ModelSpec('if_xl', 'DeepFloyd IF-I-XL v1.0 (pixel space, 64 px; SimpleCrossAttn UNet with T5 added k/v)',
              'DeepFloyd/IF-I-XL-v1.0', 'if_xl', 'if', (_t5(77, mask=True),), 64, 'deepfloyd-if-license', {}, **_IF_DDPM),
    ModelSpec('test_if_tiny', 'tiny IF-topology model for tests (pixel space, SimpleCrossAttn blocks)', None,
              'test_if_tiny', 'if_tiny', (_t5(16, mask=True),), 64, 'apache-2.0', {}, **_IF_DDPM),
    ModelSpec('test_pixart_tiny', 'tiny PixArt-topology model for tests (the fixture topology)', None,
              'test_pixart_tiny', 'pixart_tiny', (_t5(16, mask=True),), 64, 'apache-2.0',
              {'default': middle_block_outputs(4)}, **_PIXART_DDPM),
    ModelSpec('test_flux_tiny', 'tiny Flux-topology model for tests (2 double + 2 single blocks, the fixture)', None,
              'test_flux_tiny', 'flux_tiny', _flux_text(16), 64, 'apache-2.0',
              {'default': tuple((f'vit-block{k}-out',) for k in range(4))}, guidance=3.5, **_FLOW),
    ModelSpec('test_sd3_tiny', 'tiny SD3.5-topology model for tests (2 joint blocks, the first dual)', None,
              'test_sd3_tiny', 'sd3_tiny', (_SD3_TEXT[0], _SD3_TEXT[1], _t5(16, 'text_encoder_3', group=1)), 64,
              'apache-2.0', {'default': (('vit-block0-out',), ('vit-block1-out',))}, **_FLOW),
    ModelSpec('test_dit_tiny', 'tiny DiT-topology model for tests', None, 'test_dit_tiny', 'dit_tiny', (), 64,
              'apache-2.0', {'default': middle_block_outputs(4)}, class_conditional=True, **_PIXART_DDPM),

    # Today's families (2025-26): the model's own pipeline encodes the prompt (PipelinePrompt), whatever its
    # text encoder; the VAE's class picks the latent convention (latents.py). Flow matching throughout: the
    # default t is the one whose noise-to-signal ratio is SD's at t=50, whatever the sampler's shift.
    ModelSpec('chroma', 'Chroma1-HD (FLUX.1-schnell derivative, 8.9 B: 19 double + 38 single blocks)', 'lodestones/Chroma1-HD',
              'chroma', 'chroma', (), 1024, 'apache-2.0', {'default': middle_block_outputs(57)},
              prompt_pipeline=PipelinePrompt('ChromaPipeline', 512), fp16_overflows=True,
              notes='T5-XXL only, masked to the prompt and one pad token; modulation from a small approximator; '
                    'FLUX.1 VAE', **_FLOW),
    ModelSpec('test_chroma_tiny', 'tiny Chroma-topology model for tests (2 double + 2 single blocks)', None,
              'test_chroma_tiny', 'chroma_tiny', (), 64, 'apache-2.0', {'default': middle_block_outputs(4)},
              prompt_pipeline=PipelinePrompt('ChromaPipeline', 32), **_FLOW),
    ModelSpec('z_image_turbo', 'Z-Image-Turbo (6.2 B single-stream DiT: 2 noise-refiner + 30 main blocks)',
              'Tongyi-MAI/Z-Image-Turbo', 'z_image_turbo', 'zimage', (), 1024, 'apache-2.0',
              {'default': middle_block_outputs(32)}, prompt_pipeline=PipelinePrompt('ZImagePipeline', 512),
              notes='Qwen3-4B with its chat template (unpadded prompt tokens); FLUX.1 VAE; distilled (8 steps)', **_FLOW),
    ModelSpec('test_zimage_tiny', 'tiny Z-Image-topology model for tests (1 noise-refiner + 2 main blocks)', None,
              'test_zimage_tiny', 'zimage_tiny', (), 64, 'apache-2.0', {'default': middle_block_outputs(3)},
              prompt_pipeline=PipelinePrompt('ZImagePipeline', 64), **_FLOW),
    ModelSpec('qwen_image', 'Qwen-Image (20.4 B MMDiT, 60 dual-stream blocks)', 'Qwen/Qwen-Image', 'qwen_image',
              'qwen_image', (), 1024, 'apache-2.0', {'default': middle_block_outputs(60)},
              prompt_pipeline=PipelinePrompt('QwenImagePipeline', 512),
              notes="Qwen2.5-VL-7B under the pipeline's system template (its 34 template tokens dropped); the Wan 2.1 "
                    'video VAE, an image as one frame, normalised per channel', **_FLOW),
    ModelSpec('test_qwen_image_tiny', 'tiny Qwen-Image-topology model for tests (2 blocks)', None,
              'test_qwen_image_tiny', 'qwen_image_tiny', (), 64, 'apache-2.0', {'default': middle_block_outputs(2)},
              # the byte tokenizer spells the system template out in ~200 tokens; 512 leaves room for the prompt
              prompt_pipeline=PipelinePrompt('QwenImagePipeline', 512), **_FLOW),
    ModelSpec('wan21_t2v_1_3b', 'Wan 2.1 text-to-video 1.3 B (30 blocks); an image is a one-frame video',
              'Wan-AI/Wan2.1-T2V-1.3B-Diffusers', 'wan21_t2v_1_3b', 'wan', (), 480, 'apache-2.0',
              {'default': middle_block_outputs(30)}, prompt_pipeline=PipelinePrompt('WanPipeline', 512),
              notes='UMT5-XXL; 3D causal VAE (4 frames to 1 latent frame after the first), normalised per channel',
              **_FLOW),
    ModelSpec('wan21_t2v_14b', 'Wan 2.1 text-to-video 14 B (40 blocks); an image is a one-frame video',
              'Wan-AI/Wan2.1-T2V-14B-Diffusers', 'wan21_t2v_14b', 'wan', (), 720, 'apache-2.0',
              {'default': middle_block_outputs(40)}, prompt_pipeline=PipelinePrompt('WanPipeline', 512),
              notes='as the 1.3 B: UMT5-XXL, the same VAE', **_FLOW),
    ModelSpec('sana_1600m', 'SANA 1.6 B 1024 px (20 linear-attention blocks; stride 32)',
              'Efficient-Large-Model/Sana_1600M_1024px_diffusers', 'sana_1600m', 'sana', (), 1024,
              'nvidia-nsclv2-non-commercial', {'default': middle_block_outputs(20)},
              prompt_pipeline=PipelinePrompt('SanaPipeline', 300),
              notes="Gemma 2 2B under the pipeline's complex human instruction; DC-AE at 32x (one stride: 32)", **_FLOW),
    ModelSpec('test_sana_tiny', 'tiny SANA-topology model for tests (2 blocks, DC-AE at 32x)', None, 'test_sana_tiny',
              'sana_tiny', (), 64, 'apache-2.0', {'default': middle_block_outputs(2)},
              prompt_pipeline=PipelinePrompt('SanaPipeline', 300), **_FLOW),
    ModelSpec('lumina2', 'Lumina-Image 2.0 (2.6 B unified next-DiT: 2 noise-refiner + 26 joint blocks)',
              'Alpha-VLLM/Lumina-Image-2.0', 'lumina2', 'lumina2', (), 1024, 'apache-2.0',
              {'default': middle_block_outputs(28)}, prompt_pipeline=PipelinePrompt('Lumina2Pipeline', 256),
              notes="Gemma 2 2B under the pipeline's system prompt; one [text; image] sequence; FLUX.1 VAE", **_FLOW),
    ModelSpec('test_lumina2_tiny', 'tiny Lumina 2-topology model for tests (1 noise-refiner + 2 joint blocks)', None,
              'test_lumina2_tiny', 'lumina2_tiny', (), 64, 'apache-2.0', {'default': middle_block_outputs(3)},
              prompt_pipeline=PipelinePrompt('Lumina2Pipeline', 256), **_FLOW),  # its system prompt: ~190 tokens
    ModelSpec('cogview4', 'CogView4-6B (28 blocks of joint attention through shared projections)', 'THUDM/CogView4-6B',
              'cogview4', 'cogview4', (), 1024, 'apache-2.0', {'default': middle_block_outputs(28)},
              prompt_pipeline=PipelinePrompt('CogView4Pipeline', 1024),
              notes='GLM-4 9B; timestep fed before the resolution shift, as CogView4 was trained', **_FLOW),
    ModelSpec('test_cogview4_tiny', 'tiny CogView4-topology model for tests (2 blocks)', None, 'test_cogview4_tiny',
              'cogview4_tiny', (), 64, 'apache-2.0', {'default': middle_block_outputs(2)},
              prompt_pipeline=PipelinePrompt('CogView4Pipeline', 64), **_FLOW),
    ModelSpec('flux2_dev', 'FLUX.2 [dev] (32 B: 8 double + 48 single blocks)', 'black-forest-labs/FLUX.2-dev', 'flux2_dev',
              'flux2', (), 1024, 'flux-2-dev-non-commercial', {'default': middle_block_outputs(56)}, guidance=4.0,
              prompt_pipeline=PipelinePrompt('Flux2Pipeline', 512), fp16_overflows=True,
              notes='Mistral Small 3.2 24B, hidden layers 10, 20 and 30 joined; its own VAE, normalised per 2x2 patch by '
                    'batch-norm statistics; guidance-distilled', **_FLOW),
    ModelSpec('flux2_klein_4b', 'FLUX.2 [klein] 4B (5 double + 20 single blocks; step-distilled)',
              'black-forest-labs/FLUX.2-klein-4B', 'flux2_klein_4b', 'flux2_klein', (), 1024, 'apache-2.0',
              {'default': middle_block_outputs(25)}, prompt_pipeline=PipelinePrompt('Flux2KleinPipeline', 512),
              fp16_overflows=True, notes='Qwen3-4B, hidden layers 9, 18 and 27 joined; the FLUX.2 VAE', **_FLOW),
    ModelSpec('test_flux2_tiny', 'tiny FLUX.2-topology model for tests (2 double + 2 single blocks)', None,
              'test_flux2_tiny', 'flux2_tiny', (), 64, 'apache-2.0', {'default': middle_block_outputs(4)}, guidance=4.0,
              # the byte tokenizer spells the system message out in ~190 tokens: 256 leaves room for the prompt
              prompt_pipeline=PipelinePrompt('Flux2Pipeline', 256), **_FLOW),
    ModelSpec('hunyuan_image21', 'HunyuanImage 2.1 (17.4 B: 20 double + 40 single blocks; stride 32)',
              'hunyuanvideo-community/HunyuanImage-2.1-Diffusers', 'hunyuan_image21', 'hunyuan_image', (), 2048,
              'tencent-hunyuan-community', {'default': middle_block_outputs(60)},
              prompt_pipeline=PipelinePrompt('HunyuanImagePipeline', 1000),
              notes='Qwen2.5-VL-7B (ByT5 for quoted glyph text, empty otherwise); its own VAE at 32x', **_FLOW),
    ModelSpec('test_hunyuan_image_tiny', 'tiny HunyuanImage-topology model for tests (2 double + 2 single blocks)', None,
              'test_hunyuan_image_tiny', 'hunyuan_image_tiny', (), 64, 'apache-2.0', {'default': middle_block_outputs(4)},
              prompt_pipeline=PipelinePrompt('HunyuanImagePipeline', 1000), **_FLOW),
    ModelSpec('hidream_i1_full', 'HiDream-I1 Full (17 B sparse-MoE DiT: 16 double + 32 single blocks)',
              'HiDream-ai/HiDream-I1-Full', 'hidream_i1_full', 'hidream', (), 1024, 'mit',
              {'default': middle_block_outputs(48)},
              # the checkpoint ships CLIP-L, CLIP-G and T5; its Llama comes from Meta's (gated) repository, as
              # diffusers' examples load it
              prompt_pipeline=PipelinePrompt('HiDreamImagePipeline', 128, components=(
                  ('text_encoder_4', 'meta-llama/Meta-Llama-3.1-8B-Instruct'),
                  ('tokenizer_4', 'meta-llama/Meta-Llama-3.1-8B-Instruct'))),
              notes='CLIP-L + CLIP-G (pooled), T5-XXL and all 32 layers of Llama 3.1 8B Instruct (tokens); FLUX.1 VAE; '
                    'mixture-of-experts blocks', **_FLOW),
    ModelSpec('test_hidream_tiny', 'tiny HiDream-topology model for tests (2 double + 2 single MoE blocks)', None,
              'test_hidream_tiny', 'hidream_tiny', (), 64, 'apache-2.0', {'default': middle_block_outputs(4)},
              prompt_pipeline=PipelinePrompt('HiDreamImagePipeline', 32), **_FLOW),
    ModelSpec('test_wan_tiny', 'tiny Wan-topology model for tests (2 blocks)', None, 'test_wan_tiny', 'wan_tiny', (), 64,
              'apache-2.0', {'default': middle_block_outputs(2)}, prompt_pipeline=PipelinePrompt('WanPipeline', 32),
              **_FLOW),
]}


# Combined backbones (``CombinedDiffusionBackbone``) as data: name -> description and member arguments.
# Each is also a timm entry of that name.
COMBINATIONS: dict[str, dict] = {
    # The paper's Ours-XL-t (its ade_full.py / city_full.py): SDXL with the practical set plus
    # up-level1-upsampler-out, and Playground v2 with three activations; levels joined by stride.
    'sdxl_pgv2_xlt': dict(
        description="SDXL + Playground v2 combined, the paper's Ours-XL-t activations",
        members=(dict(model='sdxl', activations=(('up-level1-upsampler-out',),) + SDXL_PRESETS['practical']),
                 dict(model='pgv2', activations='practical'))),
    'test_sd_sdxl_tiny': dict(
        description='tiny SD1.5 + tiny SDXL topologies combined, for tests',
        members=(dict(model='test_sd_tiny', activations='practical'),
                 dict(model='test_sdxl_tiny', activations='practical'))),
}


def get_model_spec(name: str) -> ModelSpec:
    """Look a zoo entry up by name; unknown names list the available ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f'Unknown diffusion model {name!r}; available: {sorted(MODELS)}. '
                         'To use another checkpoint of a listed architecture, pass its zoo name and '
                         "pretrained='/path/to/diffusers/folder'.") from None


@lru_cache(maxsize=None)
def _read_config(path: Path) -> str:
    return path.read_text()


def load_config(spec: ModelSpec, component: str) -> dict:
    """A fresh copy of one embedded component config (``'unet'``, ``'vae'``, ``'text_encoder'``, ...)."""
    if not spec.available:
        raise FileNotFoundError(f'model {spec.name!r}: its shipped weights are missing from {spec.weights_dir}; '
                                f'reinstall diffbackbones, or remake them with tools/train_diffusion.py '
                                f'(see {spec.weights_dir}/README.md in the source repository).')
    return json.loads(_read_config(spec.config_path(component)))


def layer_stride(spec: ModelSpec, name: str) -> int:
    """Pixel stride of a UNet layer id, read off the embedded configs without building the model.

    For registry metadata (timm's ``pool_size``), where building even a meta-device model per entry
    would slow ``import diffbackbones`` down; the catalog stays the authority (a test checks every id
    of every zoo model against it). Every UNet block but the last halves the resolution on the way
    down and doubles it on the way up; a resampler's output lives at the next level's resolution.
    """
    vae_factor = spec.vae_factor
    if spec.denoiser_component == 'transformer':  # one stride for every activation: VAE x token patch
        from .families import family_by_class
        return vae_factor * family_by_class(spec.architecture).token_patch(load_config(spec, 'transformer'))
    n_levels = len(load_config(spec, 'unet')['block_out_channels'])
    match = re.match(r'(down|up)-level(\d+)', name)
    if match is None:
        latent = 2 ** (n_levels - 1) if name.startswith('mid-') else 1  # unet-in / after-conv-in / out
    else:
        level = int(match.group(2))
        latent = 2 ** level if match.group(1) == 'down' else 2 ** (n_levels - 1 - level)
        if name.endswith('-downsampler-out'):
            latent *= 2
        elif name.endswith('-upsampler-out'):
            latent //= 2
    return vae_factor * latent


def default_weights(spec: ModelSpec, pretrained: bool | str | None = None) -> bool | str:
    """``pretrained`` for the library's tasks: None means the zoo's own weights where the entry has any
    (a hub id or weights shipped in the package) and random weights for the test models."""
    if pretrained is None:
        return spec.hub_id is not None or spec.packaged is not None
    return pretrained
