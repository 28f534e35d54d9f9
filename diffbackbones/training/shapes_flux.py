"""Train a tiny flow-matching transformer of the Flux topology on the embedded shapes set, on the CPU:
``train_shapes_flux(out)``, the recipe of the shipped ``shapes_flux_tiny`` (``diffbackbones train-diffusion --arch flux``).

One stage, fixed seeds, from scratch, on the latents of the shipped ``shapes_sd_tiny`` VAE (reused, its
weights copied byte for byte, so both shipped models share one encoder):

- A ``FluxTransformer2DModel`` (``FLUX_TRANSFORMER``: 4 double-stream + 4 single-stream blocks, width 96,
  3 heads of 32, guidance embedding as FLUX.1-dev) on 2x2-packed latents (4 latent channels -> 16 token
  channels; 128 px images -> 16 x 16 latents -> 8 x 8 = 64 image tokens).
- Flow matching exactly as diffusers' Flux training examples (``train_dreambooth_flux.py``) do it, with
  diffusers' own ``FlowMatchEulerDiscreteScheduler`` (FLUX.1-dev's config): ``u`` from
  ``compute_density_for_timestep_sampling`` (weighting ``'none'``: uniform, by default), timesteps
  ``scheduler.timesteps[u * 1000]``, sigmas from ``scheduler.sigmas``, ``noisy = (1 - sigma) * latents +
  sigma * noise``, target ``noise - latents``, the transformer called at ``timestep / 1000`` with guidance
  3.5, packed latents and ``img_ids`` from ``FluxPipeline``'s own helpers. The scheduler uses dynamic
  shifting (as FLUX.1-dev), so training sigmas are unshifted (sigma = t / 1000, the backbone's flow
  convention in ``backbone/noise/schedule.py``) and ``FluxPipeline`` shifts its sampling steps by the image's token
  count.
- Conditioned on one fixed prompt (empty for 10% of the samples, diffusers' ``proportion_empty_prompts``,
  so the backbone's default prompt '' is in distribution too) through tiny random frozen text encoders:
  a CLIP (pooled, ``test_flux_tiny``'s config, the character-level tokenizer of ``shapes_sd_tiny``) and
  a T5 encoder (the sequence, ``T5_TOKENS`` tokens; a Unigram T5 tokenizer over the prompt's words and
  single characters, since no vocabulary can be downloaded here).

Writes a complete diffusers folder (``transformer/ vae/ text_encoder/ tokenizer/ text_encoder_2/
tokenizer_2/ scheduler/ model_index.json``, fp16 safetensors) that ``FluxPipeline.from_pretrained`` and
``DiffusionBackbone('shapes_flux_tiny', pretrained=FOLDER)`` load, a ``README.md`` with the command and
commit, and ``training/``: ``losses.png``, ``samples.png`` (``FluxPipeline`` loaded from the written
folder, Euler, ``sample_steps`` steps), ``train_log.json``.
"""
from __future__ import annotations

import json
import shutil
import string
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .shapes_sd import PROMPT, char_tokenizer, encode_all, recipe_commit, render_images, save_grid
from diffbackbones.data.shapes import VARIANTS
from diffbackbones.models.zoo import MODELS, WEIGHTS_ROOT, load_config

__all__ = ['train_shapes_flux', 'FLUX_TRANSFORMER', 'T5_TOKENS', 'GUIDANCE', 'SCHEDULER_CONFIG', 't5_tokenizer']

# The transformer of the shipped model: Flux's topology (double then single blocks, RoPE over [0, row, col]
# ids, guidance embedding), narrow. joint_attention_dim / pooled_projection_dim: the tiny T5's and CLIP's widths.
FLUX_TRANSFORMER = dict(patch_size=1, in_channels=16, out_channels=None, num_layers=4, num_single_layers=4,
                        attention_head_dim=32, num_attention_heads=3, joint_attention_dim=32,
                        pooled_projection_dim=24, guidance_embeds=True, axes_dims_rope=[4, 14, 14])
T5_TOKENS = 32     # the T5 sequence length (max_sequence_length of the pipeline; the zoo entry's max_length)
GUIDANCE = 3.5     # the embedded guidance scale, constant in training (train_dreambooth_flux's default)
# FLUX.1-dev's scheduler config
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                        base_image_seq_len=256, max_image_seq_len=4096)
SOURCE_VAE = WEIGHTS_ROOT / 'shapes_sd_tiny' / 'vae'


def t5_tokenizer():
    """A real T5 tokenizer (Unigram, SentencePiece-style '▁' word starts) over the prompt's words and single
    characters: the fixed prompt is 9 tokens + EOS; any other lowercase prompt falls back to characters."""
    from transformers import T5Tokenizer
    chars = list(string.ascii_lowercase + string.digits + ',.')
    words = dict.fromkeys(PROMPT.replace(',', ' ').split())
    vocab = ([('<pad>', 0.0), ('</s>', 0.0), ('<unk>', 0.0), ('\u2581', -2.0)] + [(c, -5.0) for c in chars]
             + [('\u2581' + c, -5.0) for c in chars] + [('\u2581' + w, -1.0) for w in words])
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=T5_TOKENS)


def text_encoders(seed: int):
    """The two frozen random text encoders and their tokenizers (test_flux_tiny's configs, seeded)."""
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel
    spec = MODELS['test_flux_tiny']
    tokenizer, tokenizer_2 = char_tokenizer(), t5_tokenizer()
    clip = load_config(spec, 'text_encoder')
    clip.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    t5 = {k: v for k, v in load_config(spec, 'text_encoder_2').items() if k != 'model_type'}
    t5.update(eos_token_id=tokenizer_2.eos_token_id, pad_token_id=tokenizer_2.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(**clip)).eval()
        text_encoder_2 = T5EncoderModel(T5Config(**t5)).eval()
    return text_encoder, tokenizer, text_encoder_2, tokenizer_2


def train_transformer(latents: tuple[torch.Tensor, torch.Tensor], scaling: float, shift: float, conds: list,
                      steps: int, batch: int, lr: float, weighting: str, empty_prompts: float, log: dict,
                      progress: bool):
    """The flow-matching loop of diffusers' train_dreambooth_flux.py, on the fixed latents' posteriors."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3
    transformer = FluxTransformer2DModel(**FLUX_TRANSFORMER).train()
    scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)
    schedule_timesteps, schedule_sigmas = scheduler.timesteps, scheduler.sigmas
    opt = torch.optim.AdamW(transformer.parameters(), lr=lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.05)
    (embeds, pooled, text_ids), (empty_embeds, empty_pooled, _) = conds
    mean, std = latents
    h, w = mean.shape[-2:]
    img_ids = FluxPipeline._prepare_latent_image_ids(batch, h // 2, w // 2, 'cpu', torch.float32)
    guidance = torch.full((batch,), GUIDANCE)
    bar = tqdm(range(steps), desc='transformer', disable=not progress)
    for step in bar:
        idx = torch.randint(len(mean), (batch,))
        z0 = (mean[idx] + std[idx] * torch.randn_like(mean[idx]) - shift) * scaling
        if torch.rand(()) < 0.5:  # horizontal flips keep every shape valid (triangles still point up)
            z0 = z0.flip(-1)
        noise = torch.randn_like(z0)
        u = compute_density_for_timestep_sampling(weighting_scheme=weighting, batch_size=batch, logit_mean=0.0,
                                                  logit_std=1.0, mode_scale=1.29)
        indices = (u * scheduler.config.num_train_timesteps).long()
        timesteps = schedule_timesteps[indices]
        step_indices = [(schedule_timesteps == t).nonzero().item() for t in timesteps]
        sigmas = schedule_sigmas[step_indices].flatten().view(-1, 1, 1, 1)
        noisy = (1.0 - sigmas) * z0 + sigmas * noise
        empty = (torch.rand(batch) < empty_prompts).view(-1, 1, 1)
        text = torch.where(empty, empty_embeds, embeds)
        pool = torch.where(empty.view(-1, 1), empty_pooled, pooled)
        packed = FluxPipeline._pack_latents(noisy, batch, z0.shape[1], h, w)
        pred = transformer(hidden_states=packed, timestep=timesteps / 1000, guidance=guidance, pooled_projections=pool,
                           encoder_hidden_states=text, txt_ids=text_ids, img_ids=img_ids, return_dict=False)[0]
        pred = FluxPipeline._unpack_latents(pred, h * 8, w * 8, 8)  # vae_scale_factor 8: back to (B, 4, h, w)
        weights = compute_loss_weighting_for_sd3(weighting_scheme=weighting, sigmas=sigmas)
        target = noise - z0
        loss = torch.mean((weights.float() * (pred.float() - target.float()) ** 2).reshape(batch, -1), 1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        opt.step()
        sched.step()
        log['flow_mse'].append(loss.item())
        bar.set_postfix(mse=f'{loss.item():.4f}')
    return transformer.eval(), scheduler


def plot_losses(log: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    values = np.asarray(log['flow_mse'])
    ax.plot(values, alpha=0.3, lw=0.8)
    k = max(1, len(values) // 50)
    if len(values) >= k:
        ax.plot(np.arange(k - 1, len(values)), np.convolve(values, np.ones(k) / k, 'valid'), lw=1.5)
    ax.set_title('Flux transformer: velocity MSE (noise - latents)')
    ax.set_xlabel('step')
    ax.set_yscale('log')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train_shapes_flux(out: str | Path, *, variant: str = 'both', images: int = 2000, transformer_steps: int = 2400,
                      transformer_batch: int = 32, transformer_lr: float = 1e-3, weighting: str = 'none',
                      empty_prompts: float = 0.1, samples: int = 16, sample_steps: int = 28, seed: int = 0,
                      threads: int = 1, overwrite: bool = False, progress: bool = False,
                      command: str | None = None) -> dict:
    """Train the Flux transformer on the shapes_sd_tiny VAE's latents and write the diffusers folder ``out``.

    Args:
        out: Output folder (a diffusers FluxPipeline folder is written here); a non-empty one is refused
            unless ``overwrite``.
        variant: Shapes variant(s) to train on: ``'texture'``, ``'geometry'`` or ``'both'``.
        images: Training images rendered in memory (the same renders as shapes_sd_tiny's for one seed).
        transformer_steps: Training steps.
        transformer_batch: Batch size.
        transformer_lr: Peak learning rate (one-cycle, 5% warm-up).
        weighting: Timestep density of diffusers' ``compute_density_for_timestep_sampling``: ``'none'``
            (uniform, the Flux examples' default) or ``'logit_normal'`` (mean 0, std 1).
        empty_prompts: Share of samples conditioned on the empty prompt instead of the fixed one.
        samples: Images in the FluxPipeline sample grid.
        sample_steps: FluxPipeline (Euler) steps for the sample grid.
        seed: The one seed of the run (bit-identical on rerun).
        threads: torch's CPU threads for the run (restored afterwards). 1 by default: this model's matrices
            are small, and one thread ran a step 3-4x faster than two on the 2-core machine, more so while
            another process used a core; it also keeps the float reductions, and so the bytes, the same on
            any machine.
        overwrite: Replace an existing output folder.
        progress: Show progress bars.
        command: The command line recorded in the folder's README (default: this call).

    Returns:
        The summary (arguments, minutes, final loss) and the loss log.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train_shapes_flux(out, variant=variant, images=images, transformer_steps=transformer_steps,
                                  transformer_batch=transformer_batch, transformer_lr=transformer_lr,
                                  weighting=weighting, empty_prompts=empty_prompts, samples=samples,
                                  sample_steps=sample_steps, seed=seed, threads=threads, overwrite=overwrite,
                                  progress=progress, command=command)
    finally:
        torch.set_num_threads(previous)


def _train_shapes_flux(out, *, variant, images, transformer_steps, transformer_batch, transformer_lr, weighting,
                       empty_prompts, samples, sample_steps, seed, threads, overwrite, progress, command) -> dict:
    if variant not in (*VARIANTS, 'both'):
        raise ValueError(f'variant must be one of {(*VARIANTS, "both")}; got {variant!r}')
    if weighting not in ('none', 'logit_normal'):
        raise ValueError(f"weighting must be 'none' (uniform) or 'logit_normal'; got {weighting!r}")
    args = dict(out=str(out), variant=variant, images=images, transformer_steps=transformer_steps,
                transformer_batch=transformer_batch, transformer_lr=transformer_lr, weighting=weighting,
                empty_prompts=empty_prompts, samples=samples, sample_steps=sample_steps, seed=seed, threads=threads,
                overwrite=overwrite)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f'{out} exists and is not empty; pass --overwrite to replace it (nothing was written)')
    if not (SOURCE_VAE / 'diffusion_pytorch_model.safetensors').is_file():
        raise FileNotFoundError(f'the shapes_sd_tiny VAE is missing from {SOURCE_VAE}; remake shapes_sd_tiny first')
    from diffusers import AutoencoderKL, FluxPipeline

    torch.manual_seed(seed)
    start = time.time()
    log = {'flow_mse': []}
    training_images = render_images(images, variant, seed)
    # the shipped VAE, unchanged; FluxPipeline decodes with latents / scaling_factor + shift_factor, so a
    # null shift_factor becomes 0.0 (the latents stay exactly shapes_sd_tiny's)
    vae = AutoencoderKL.from_pretrained(SOURCE_VAE).float().eval()
    vae.register_to_config(shift_factor=0.0)
    scaling, shift = float(vae.config.scaling_factor), float(vae.config.shift_factor)
    mean, std = encode_all(vae, training_images)

    text_encoder, tokenizer, text_encoder_2, tokenizer_2 = text_encoders(seed)
    pipe = FluxPipeline(scheduler=None, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=None)
    with torch.no_grad():  # the pipeline's own prompt encoding: training sees what sampling will
        conds = [pipe.encode_prompt(p, p, max_sequence_length=T5_TOKENS) for p in (PROMPT, '')]

    transformer, scheduler = train_transformer((mean, std), scaling, shift, conds, transformer_steps,
                                               transformer_batch, transformer_lr, weighting, empty_prompts, log,
                                               progress)
    minutes = (time.time() - start) / 60

    if out.exists():
        shutil.rmtree(out)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae.half(), text_encoder=text_encoder.half(), tokenizer=tokenizer,
                        text_encoder_2=text_encoder_2.half(), tokenizer_2=tokenizer_2, transformer=transformer.half())
    pipe.save_pretrained(out, safe_serialization=True)
    shutil.copyfile(SOURCE_VAE / 'diffusion_pytorch_model.safetensors', out / 'vae' / 'diffusion_pytorch_model.safetensors')
    vae_config = json.loads((out / 'vae' / 'config.json').read_text())
    vae_config.pop('_name_or_path', None)  # where this machine's copy was read from: not part of the model
    (out / 'vae' / 'config.json').write_text(json.dumps(vae_config, indent=2, sort_keys=True) + '\n')
    del pipe

    report = out / 'training'
    report.mkdir()
    sampler = FluxPipeline.from_pretrained(out, dtype=torch.float32)
    sampler.set_progress_bar_config(disable=not progress)
    with torch.no_grad():
        grid = sampler(PROMPT, height=128, width=128, num_inference_steps=sample_steps, guidance_scale=GUIDANCE,
                       num_images_per_prompt=samples, max_sequence_length=T5_TOKENS, output_type='pt',
                       generator=torch.Generator().manual_seed(seed)).images
    save_grid(grid * 2 - 1, report / 'samples.png', cols=8)
    plot_losses(log, report / 'losses.png')
    n_params = sum(p.numel() for p in transformer.parameters())
    tail = float(np.mean(log['flow_mse'][-50:])) if log['flow_mse'] else float('nan')
    summary = dict(args=args, prompt=PROMPT, scaling_factor=scaling, shift_factor=shift, train_minutes=round(minutes, 2),
                   transformer_parameters=n_params, final_flow_mse=tail)
    (report / 'train_log.json').write_text(json.dumps(dict(summary, flow_mse=[float(f'{v:.4g}') for v in log['flow_mse']])))
    write_readme(out, summary, command or f'diffbackbones.training.shapes_flux.train_shapes_flux({str(out)!r}, ...)')
    return dict(summary, **log)


def write_readme(out: Path, summary: dict, command: str) -> None:
    commit = recipe_commit(['diffbackbones/training/shapes_flux.py', 'diffbackbones/training/shapes_sd.py',
                            'diffbackbones/commands/train_diffusion.py', 'diffbackbones/data',
                            'diffbackbones/models/weights/shapes_sd_tiny/vae'])
    t = FLUX_TRANSFORMER
    (out / 'README.md').write_text(f'''# A tiny flow-matching transformer of the Flux topology, trained on the shapes set

Made on the CPU by diffbackbones' own tool, from scratch, with fixed seeds:

    {command}

at commit {commit}, in {summary['train_minutes']:.1f} minutes.
`FluxTransformer2DModel`: {t['num_layers']} double-stream + {t['num_single_layers']} single-stream blocks, width
{t['num_attention_heads'] * t['attention_head_dim']} ({t['num_attention_heads']} heads of {t['attention_head_dim']}),
{summary['transformer_parameters'] / 1e6:.2f} M parameters, guidance embedding (trained at {GUIDANCE}).
Flow matching with diffusers' `FlowMatchEulerDiscreteScheduler` (FLUX.1-dev's config), timestep density
'{summary['args']['weighting']}', target noise - latents; final velocity MSE (mean of the last 50 steps)
{summary['final_flow_mse']:.4f}. Prompt: "{summary['prompt']}" (empty for {summary['args']['empty_prompts']:.0%} of the samples).

`vae/` is the shipped shapes_sd_tiny VAE, its weights copied unchanged (scaling factor
{summary['scaling_factor']:.5f}); its config sets `shift_factor` 0.0 where shapes_sd_tiny's has none, since
`FluxPipeline` decodes latents / scaling_factor + shift_factor. The text encoders (a tiny CLIP for the
pooled embedding, a tiny T5 for the {T5_TOKENS}-token sequence) are random and frozen.

A diffusers folder (fp16 safetensors): `FluxPipeline.from_pretrained` loads it (sample with
`max_sequence_length={T5_TOKENS}`), and so does `DiffusionBackbone('shapes_flux_tiny', pretrained=True)`.
`training/` holds the loss curve and a FluxPipeline sample grid of this run. Licence: Apache-2.0, like the package.
''')
