"""Check the embedded architecture configs of the big diffusion pipelines (diffbackbones/models/model_configs/).

Builds every component on the meta device (no memory, no weights, CPU-cheap) the way the package builds
it (``build_denoiser``, ``build_text_encoder`` with the zoo entry's encoder kind, ``AutoencoderKL``), prints
its parameter count next to the published one and fails when a count is off by more than the tolerance,
when the package builds another class than the published one (CLIP with or without its projection), or
when a denoiser's forward-relevant field is not the expected one.

    python tools/check_model_configs.py            # all models
    python tools/check_model_configs.py flux_dev   # some of them
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from diffbackbones.models.loading import build_denoiser
from diffbackbones.backbone.conditioning.text_encoders import build_text_encoder
from diffbackbones.models.zoo import MODELS as ZOO, load_config

CONFIG_ROOT = Path(__file__).resolve().parents[1] / 'diffbackbones' / 'models' / 'model_configs'

# Published sizes (millions of parameters) and the relative tolerance accepted for each. A fourth item says
# what the published number counts when it is not the diffusers/transformers parameter count:
#   'with_pos_embed': parameters + the fixed sin-cos position table (a buffer in diffusers, a tensor of the
#                     original checkpoint; SD3.5 medium's 384x384x1536 table is 0.23 B of its '2.5 B').
#   'unique':         parameters without the per-block copies of the timestep/class embedder that diffusers'
#                     AdaLayerNormZero holds in every DiT block (the original DiT-XL/2 has one: 675 M;
#                     the diffusers model holds 750 M parameters).
T5_XXL = ('t5', 4762.3, 0.01)            # T5-v1.1-XXL encoder, 4.76 B
CLIP_L_PROJ = ('clip_proj', 123.7, 0.01)  # CLIP ViT-L/14 text tower + projection
CLIP_L = ('clip', 123.1, 0.01)            # CLIP ViT-L/14 text tower, 123 M
CLIP_G_PROJ = ('clip_proj', 694.7, 0.01)  # OpenCLIP ViT-bigG/14 text tower + projection, 695 M
MT5_XL = ('mt5', 1670.0, 0.01)            # mT5-XL encoder, 1.67 B
BERT_L = ('bert', 351.0, 0.05)            # Chinese-CLIP RoBERTa-large text tower (47020-token vocabulary)
SD_VAE = ('diffusers', 83.65, 0.01)       # SD VAE, encoder + decoder, 83.7 M
SD3_VAE = ('diffusers', 83.8, 0.01)       # 16-channel VAE without quant convs, ~84 M

MODELS: dict[str, dict[str, tuple]] = {
    'pixart_alpha': {'transformer': ('diffusers', 611.0, 0.02), 'vae': SD_VAE, 'text_encoder': T5_XXL},
    'pixart_sigma': {'transformer': ('diffusers', 611.0, 0.02), 'vae': SD_VAE, 'text_encoder': T5_XXL},
    'sd3': {'transformer': ('diffusers', 2028.0, 0.01), 'vae': SD3_VAE, 'text_encoder': CLIP_L_PROJ,
            'text_encoder_2': CLIP_G_PROJ, 'text_encoder_3': T5_XXL},
    'sd35_medium': {'transformer': ('diffusers', 2470.0, 0.03, 'with_pos_embed'), 'vae': SD3_VAE, 'text_encoder': CLIP_L_PROJ,
                    'text_encoder_2': CLIP_G_PROJ, 'text_encoder_3': T5_XXL},
    'sd35_large': {'transformer': ('diffusers', 8060.0, 0.02), 'vae': SD3_VAE, 'text_encoder': CLIP_L_PROJ,
                   'text_encoder_2': CLIP_G_PROJ, 'text_encoder_3': T5_XXL},
    'flux_dev': {'transformer': ('diffusers', 11900.0, 0.01), 'vae': SD3_VAE, 'text_encoder': CLIP_L,
                 'text_encoder_2': T5_XXL},
    'flux_schnell': {'transformer': ('diffusers', 11900.0, 0.01), 'vae': SD3_VAE, 'text_encoder': CLIP_L,
                     'text_encoder_2': T5_XXL},
    'dit_xl': {'transformer': ('diffusers', 675.0, 0.01, 'unique'), 'vae': SD_VAE},
    'hunyuan_dit': {'transformer': ('diffusers', 1500.0, 0.04), 'vae': SD_VAE, 'text_encoder': BERT_L,
                    'text_encoder_2': MT5_XL},
    'if_xl': {'unet': ('diffusers', 4300.0, 0.03), 'text_encoder': T5_XXL},
}

# Fields the denoiser's forward depends on: (model, component) -> expected values.
SD3_COMMON = {'patch_size': 2, 'in_channels': 16, 'out_channels': 16, 'sample_size': 128,
              'joint_attention_dim': 4096, 'pooled_projection_dim': 2048, 'attention_head_dim': 64}
FLUX_COMMON = {'patch_size': 1, 'in_channels': 64, 'joint_attention_dim': 4096, 'pooled_projection_dim': 768,
               'axes_dims_rope': [16, 56, 56], 'num_layers': 19, 'num_single_layers': 38,
               'num_attention_heads': 24, 'attention_head_dim': 128}
PIXART_COMMON = {'patch_size': 2, 'in_channels': 4, 'out_channels': 8, 'caption_channels': 4096,
                 'cross_attention_dim': 1152, 'num_layers': 28, 'norm_type': 'ada_norm_single'}
FIELDS: dict[tuple[str, str], dict] = {
    ('pixart_alpha', 'transformer'): {**PIXART_COMMON, 'sample_size': 64, 'use_additional_conditions': False},
    ('pixart_sigma', 'transformer'): {**PIXART_COMMON, 'sample_size': 128, 'interpolation_scale': 2,
                                      'use_additional_conditions': False},
    ('sd3', 'transformer'): {**SD3_COMMON, 'num_layers': 24, 'num_attention_heads': 24,
                             'caption_projection_dim': 1536, 'pos_embed_max_size': 192, 'qk_norm': None,
                             'dual_attention_layers': []},
    ('sd35_medium', 'transformer'): {**SD3_COMMON, 'num_layers': 24, 'num_attention_heads': 24,
                                     'caption_projection_dim': 1536, 'pos_embed_max_size': 384,
                                     'qk_norm': 'rms_norm', 'dual_attention_layers': list(range(13))},
    ('sd35_large', 'transformer'): {**SD3_COMMON, 'num_layers': 38, 'num_attention_heads': 38,
                                    'caption_projection_dim': 2432, 'pos_embed_max_size': 192,
                                    'qk_norm': 'rms_norm', 'dual_attention_layers': []},
    ('flux_dev', 'transformer'): {**FLUX_COMMON, 'guidance_embeds': True},
    ('flux_schnell', 'transformer'): {**FLUX_COMMON, 'guidance_embeds': False},
    ('dit_xl', 'transformer'): {'patch_size': 2, 'in_channels': 4, 'out_channels': 8, 'sample_size': 32,
                                'num_embeds_ada_norm': 1000, 'norm_type': 'ada_norm_zero'},
    ('hunyuan_dit', 'transformer'): {'patch_size': 2, 'in_channels': 4, 'sample_size': 128, 'hidden_size': 1408,
                                     'num_layers': 40, 'cross_attention_dim': 1024, 'cross_attention_dim_t5': 2048,
                                     'pooled_projection_dim': 1024, 'text_len': 77, 'text_len_t5': 256,
                                     'learn_sigma': True, 'use_style_cond_and_image_meta_size': False},
    ('if_xl', 'unet'): {'in_channels': 3, 'out_channels': 6, 'sample_size': 64, 'encoder_hid_dim': 4096,
                        'addition_embed_type': 'text', 'mid_block_type': 'UNetMidBlock2DSimpleCrossAttn'},
    ('pixart_alpha', 'vae'): {'latent_channels': 4, 'scaling_factor': 0.18215},
    ('pixart_sigma', 'vae'): {'latent_channels': 4, 'scaling_factor': 0.13025},
    ('dit_xl', 'vae'): {'latent_channels': 4, 'scaling_factor': 0.18215},
    ('hunyuan_dit', 'vae'): {'latent_channels': 4, 'scaling_factor': 0.13025},
    **{(m, 'vae'): {'latent_channels': 16, 'scaling_factor': 1.5305, 'shift_factor': 0.0609,
                    'use_quant_conv': False, 'use_post_quant_conv': False}
       for m in ('sd3', 'sd35_medium', 'sd35_large')},
    **{(m, 'vae'): {'latent_channels': 16, 'scaling_factor': 0.3611, 'shift_factor': 0.1159,
                    'use_quant_conv': False, 'use_post_quant_conv': False}
       for m in ('flux_dev', 'flux_schnell')},
}


# The transformers class each published encoder is: what the package must build from the zoo entry.
ENCODER_CLASSES = {'t5': 'T5EncoderModel', 'mt5': 'MT5EncoderModel', 'clip': 'CLIPTextModel',
                   'clip_proj': 'CLIPTextModelWithProjection', 'bert': 'BertModel'}


def build(name: str, component: str) -> torch.nn.Module:
    """One component of a zoo model, built on the meta device by the package's own builders."""
    spec = ZOO[name]
    if component == spec.denoiser_component:
        return build_denoiser(spec, 'meta')
    with torch.device('meta'):
        if component == 'vae':
            return AutoencoderKL.from_config(load_config(spec, 'vae'))
        return build_text_encoder(spec, next(te for te in spec.text_encoders if te.subfolder == component))


def count(model: torch.nn.Module, mode: str) -> tuple[float, str]:
    """Millions of parameters as the published number counts them, and a note on what was counted."""
    params = dict(model.named_parameters())
    n = sum(p.numel() for p in params.values())
    if mode == 'with_pos_embed':
        table = model.pos_embed.pos_embed
        return (n + table.numel()) / 1e6, f'params {n / 1e6:.2f} M + pos_embed table {table.numel() / 1e6:.2f} M'
    if mode == 'unique':
        copies = sum(p.numel() for k, p in params.items()
                     if k.startswith('transformer_blocks.') and '.norm1.emb.' in k
                     and not k.startswith('transformer_blocks.0.'))
        return (n - copies) / 1e6, f'params {n / 1e6:.2f} M - {copies / 1e6:.2f} M per-block embedder copies'
    return n / 1e6, ''


def check_model(name: str) -> list[str]:
    errors = []
    folder = CONFIG_ROOT / name
    present = {p.stem for p in folder.glob('*.json')}
    if present != set(MODELS[name]):
        errors.append(f'{name}: files {sorted(present)} != expected {sorted(MODELS[name])}')
    for component, (kind, published_m, tol, *mode) in MODELS[name].items():
        path = folder / f'{component}.json'
        if not path.is_file():
            continue
        cfg = json.loads(path.read_text())
        if kind == 'diffusers' and '_class_name' not in cfg:
            errors.append(f'{name}/{component}: no _class_name')
        if kind != 'diffusers' and 'model_type' not in cfg:
            errors.append(f'{name}/{component}: no model_type')
        model = build(name, component)
        if kind in ENCODER_CLASSES and type(model).__name__ != ENCODER_CLASSES[kind]:
            errors.append(f'{name}/{component}: the package builds {type(model).__name__}, '
                          f'published is {ENCODER_CLASSES[kind]}')
        n, note = count(model, mode[0] if mode else 'params')
        ok = abs(n - published_m) <= tol * published_m
        print(f'{name:14s} {component:15s} {type(model).__name__:30s} {n:10.2f} M   published {published_m:9.1f} M'
              f'  {"ok" if ok else "MISMATCH"}  {note}')
        if not ok:
            errors.append(f'{name}/{component}: {n:.2f} M params, published {published_m} M')
        for key, want in FIELDS.get((name, component), {}).items():
            got = model.config[key] if kind == 'diffusers' else getattr(model.config, key)
            if isinstance(got, tuple):
                got = list(got)
            if got != want:
                errors.append(f'{name}/{component}: {key} = {got!r}, expected {want!r}')
        del model
    return errors


def main(argv: list[str]) -> int:
    names = argv or list(MODELS)
    errors = []
    for name in names:
        errors += check_model(name)
    for e in errors:
        print('ERROR', e)
    print('all configs ok' if not errors else f'{len(errors)} error(s)')
    return 1 if errors else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
