"""Memory of a backbone at real size, counted on the meta device: what it holds at each weight format, what fits
on a GPU, and what fine-tuning its denoiser needs per rank when sharded.

Everything is counted, nothing allocated: the backbone is built on the meta device (its denoiser pruned as
``DiffusionBackbone`` prunes it), and each parameter is charged the bytes of its format:

- bf16: 2 bytes a parameter;
- int8 and float8 (torchao weight-only, ``denoiser=dict(quantization='int8' | 'float8')``): the denoiser's
  linear weights 1 byte, plus per row what torchao 0.18 stores (int8: an fp32 scale and an int8 zero point,
  5 bytes; float8: an fp32 scale, 4 bytes); everything else (convolutions, norms, biases, the VAE) bf16, as the
  quantizer leaves it (a test checks these counts against the bytes of a quantized tiny backbone);
- nf4 (bitsandbytes): linear weights 4 bits plus one fp32 absmax per 64-value block (0.5625 bytes), the rest bf16.

A model "fits" a GPU when its parameters take at most ``FIT_FRACTION`` of the GPU's memory, leaving the rest to
the activations and the framework (a rule of thumb, stated with every table). The first call of a new prompt
also loads the text encoders, one at a time, in bf16, and releases each (``conditioning``): the largest of them
is counted on top, as what that call needs at its peak.

Fine-tuning with AdamW in mixed precision keeps, per trained parameter, fp32 weights, fp32 gradients and two fp32
moments: 16 bytes (2.6 B parameters of SDXL's UNet are 42 GB). Full sharding (FSDP's FULL_SHARD, ZeRO-3) divides
all of it by the number of ranks; the frozen VAE is replicated in bf16 on every rank.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

__all__ = ['FORMATS', 'GPUS_GIB', 'FIT_FRACTION', 'TRAINING_BYTES', 'BackboneMemory', 'backbone_memory',
           'memory_tables', 'backbone_flops', 'cost_table']

LINEAR_BYTES = {'bf16': 2.0, 'int8': 1.0, 'float8': 1.0, 'nf4': 0.5 + 4 / 64}   # bytes per linear weight
ROW_BYTES = {'bf16': 0, 'int8': 5, 'float8': 4, 'nf4': 0}   # bytes per linear row: scales (and zero points)
FORMATS = tuple(LINEAR_BYTES)
GPUS_GIB = (24, 48, 80)
FIT_FRACTION = 0.8
TRAINING_BYTES = 16   # fp32 weights + fp32 gradients + AdamW's two fp32 moments
GIB = 2 ** 30


@dataclass
class BackboneMemory:
    """Parameter counts of one backbone at real size, split by what quantization changes."""

    model: str
    preset: str
    denoiser_full: int   # parameters of the whole denoiser
    denoiser_kept: int   # after pruning
    linear_weights: int  # of those kept: linear-layer weight matrices (what quantization converts)
    linear_rows: int     # their rows (a scale each under int8 / float8)
    vae: int             # the VAE encoder the backbone holds
    largest_text_encoder: int = 0   # loaded for a new prompt's first call only, then released

    def gib(self, fmt: str) -> float:
        """Parameter GiB of the backbone (pruned denoiser + VAE encoder) with the denoiser in ``fmt``."""
        rest = self.denoiser_kept - self.linear_weights + self.vae
        return (self.linear_weights * LINEAR_BYTES[fmt] + self.linear_rows * ROW_BYTES[fmt] + 2 * rest) / GIB

    def first_call_gib(self, fmt: str) -> float:
        """``gib(fmt)`` plus the largest text encoder in bf16: a new prompt's first call, at its peak."""
        return self.gib(fmt) + 2 * self.largest_text_encoder / GIB

    def training_gib_per_rank(self, ranks: int) -> float:
        """Fine-tuning the pruned denoiser with AdamW, fully sharded over ``ranks``; the bf16 VAE on every rank."""
        return (self.denoiser_kept * TRAINING_BYTES / ranks + 2 * self.vae) / GIB


def backbone_memory(model: str, preset: str) -> BackboneMemory:
    """Count ``model``'s backbone with ``preset`` on the meta device (no weights, no allocation)."""
    from diffbackbones.backbone.diffusion_backbone import DiffusionBackbone
    from diffbackbones.models.loading import build_denoiser
    from diffbackbones.models.zoo import MODELS
    from .benchmarking import pipeline_parts_on_meta
    with torch.device('meta'):
        backbone = DiffusionBackbone(model, preset, pretrained=False, prompt_cache=False)
        full = build_denoiser(MODELS[model], 'meta')
    linears = [m for m in backbone.denoiser.modules() if type(m) is nn.Linear]
    count = lambda module: sum(p.numel() for p in module.parameters())
    _, encoders = pipeline_parts_on_meta(MODELS[model])
    # the text encoders load one at a time (a pipeline's several too: conditioning/one_at_a_time.py): the largest
    return BackboneMemory(model, preset, count(full), count(backbone.denoiser), sum(m.weight.numel() for m in linears),
                          sum(m.out_features for m in linears), count(backbone.vae),
                          max((count(encoder) for encoder in encoders.values()), default=0))


def memory_tables(entries: list[BackboneMemory]) -> str:
    """The three Markdown tables: parameter GiB per format, what fits each GPU, fine-tuning GiB per rank."""
    lines = ['| model | preset | denoiser kept | ' + ' | '.join(f'{f} GiB' for f in FORMATS) +
             ' | largest text encoder (bf16) |', '| --- | --- | --- |' + ' --- |' * (len(FORMATS) + 1)]
    for e in entries:
        kept = f'{e.denoiser_kept / 1e9:.2f} B of {e.denoiser_full / 1e9:.2f} B ({e.denoiser_kept / e.denoiser_full:.2f}x)'
        lines.append(f'| {e.model} | {e.preset} | {kept} | ' + ' | '.join(f'{e.gib(f):.1f}' for f in FORMATS) +
                     f' | +{2 * e.largest_text_encoder / GIB:.1f} GiB, first call of a prompt |')
    lines += ['', f'Formats whose parameters take at most {FIT_FRACTION:.0%} of the GPU (steady state; in brackets, '
              'those that also fit the first call of a new prompt, text encoder included):', '',
              '| model | preset | ' + ' | '.join(f'{g} GB' for g in GPUS_GIB) + ' |', '| --- | --- |' + ' --- |' * len(GPUS_GIB)]
    for e in entries:
        cells = [(', '.join(f for f in FORMATS if e.gib(f) <= FIT_FRACTION * g) or 'none') + ' (' +
                 (', '.join(f for f in FORMATS if e.first_call_gib(f) <= FIT_FRACTION * g) or 'none') + ')'
                 for g in GPUS_GIB]
        lines.append(f'| {e.model} | {e.preset} | ' + ' | '.join(cells) + ' |')
    ranks = (1, 2, 4, 8)
    lines += ['', f'Fine-tuning the pruned denoiser with AdamW ({TRAINING_BYTES} bytes a parameter), fully sharded, '
              'GiB per rank before activations:', '',
              '| model | preset | ' + ' | '.join(f'{r} rank{"s" if r > 1 else ""}' for r in ranks) + ' |',
              '| --- | --- |' + ' --- |' * len(ranks)]
    for e in entries:
        lines.append(f'| {e.model} | {e.preset} | ' + ' | '.join(f'{e.training_gib_per_rank(r):.1f}' for r in ranks) + ' |')
    return '\n'.join(lines)


def backbone_flops(model: str, preset: str, size: int = 1024) -> tuple[float, float, float] | None:
    """(VAE encoder, pruned denoiser, whole denoiser) FLOPs of one ``size`` x ``size`` image, counted by torch's
    ``FlopCounterMode`` on the meta device: the backbone's forward split at the latent, and one call of the unpruned
    denoiser on the same input. None where the forward reads tensor values (Lumina 2's and HunyuanImage's caption
    lengths, HiDream's expert routing), which the meta device does not hold."""
    from torch.utils.flop_counter import FlopCounterMode
    from diffbackbones.backbone.diffusion_backbone import DiffusionBackbone
    from diffbackbones.models.loading import build_denoiser
    from diffbackbones.models.zoo import MODELS
    with torch.device('meta'):
        backbone = DiffusionBackbone(model, preset, pretrained=False, prompt_cache=False, dtype='bf16')
        working, work_hw = backbone.working_input(torch.zeros(1, 3, size, size))
        try:
            with FlopCounterMode(display=False) as vae:
                latents = backbone.encode(working)
            with FlopCounterMode(display=False) as kept:
                backbone.extract(latents, work_hw, working)
            full = build_denoiser(MODELS[model], 'meta').to(torch.bfloat16)
            timesteps = torch.full((1,), backbone.stages.noise.timesteps[0])
            with FlopCounterMode(display=False) as whole:
                full(**backbone.family.inputs(full, latents.to(torch.bfloat16), timesteps, backbone.conditioning,
                                              work_hw))
        except (RuntimeError, NotImplementedError):
            return None
    return float(vae.get_total_flops()), float(kept.get_total_flops()), float(whole.get_total_flops())


def cost_table(entries: list[BackboneMemory], size: int = 1024) -> str:
    """One row a backbone: parameters kept, bf16 GiB, TFLOPs per ``size``-px image, what fits 80 / 48 / 24 GB GPUs
    (steady state), and what a new prompt's first call adds (its largest text encoder, bf16)."""
    lines = [f'| model | preset | denoiser parameters kept | backbone bf16 GiB | TFLOPs / {size} px: VAE encoder + '
             'pruned denoiser (whole denoiser) | ' + ' | '.join(f'fits {g} GB' for g in reversed(GPUS_GIB)) +
             ' | first call of a prompt |',
             '| --- | --- | --- | --- | --- |' + ' --- |' * (len(GPUS_GIB) + 1)]
    for e in entries:
        flops = backbone_flops(e.model, e.preset, size)
        cost = 'n/a' if flops is None else f'{flops[0] / 1e12:.1f} + {flops[1] / 1e12:.1f} ({flops[2] / 1e12:.1f})'
        fits = [', '.join(f for f in FORMATS if e.gib(f) <= FIT_FRACTION * g) or 'none' for g in reversed(GPUS_GIB)]
        lines.append(f'| {e.model} | {e.preset} | {e.denoiser_kept / 1e9:.2f} B of {e.denoiser_full / 1e9:.2f} B | '
                     f'{e.gib("bf16"):.1f} | {cost} | ' + ' | '.join(fits) +
                     f' | +{2 * e.largest_text_encoder / GIB:.1f} GiB |')
    return '\n'.join(lines)
