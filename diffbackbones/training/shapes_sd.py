"""Train a tiny latent diffusion model of the SD1.5 topology on the embedded shapes set, on the CPU:
``train_shapes_model(out)``, the recipe of the shipped ``shapes_sd_tiny`` (``diffbackbones train-diffusion``).

Two stages, fixed seeds, from scratch:

1. A tiny ``AutoencoderKL`` (SD VAE topology: 4 down blocks, factor 8, 4 latent channels) trained with
   L1 reconstruction plus a small KL term; its ``scaling_factor`` is then set to 1 / std of the
   latents, the role 0.18215 plays for SD's VAE.
2. A tiny ``UNet2DConditionModel`` with ``test_sd_tiny``'s layout, epsilon objective, SD's
   scaled_linear schedule (0.00085..0.012, 1000 steps), conditioned on one fixed prompt through a
   tiny CLIP text encoder (random, frozen: the prompt is constant, so its embedding acts as a learned
   bias the UNet adapts to) and a character-level CLIP tokenizer.

Writes a complete diffusers folder (``unet/ vae/ text_encoder/ tokenizer/ scheduler/ model_index.json``,
fp16 safetensors) that ``StableDiffusionPipeline.from_pretrained`` and
``DiffusionBackbone('shapes_sd_tiny', pretrained=FOLDER)`` load, a ``README.md`` with the command and
commit that made it, and ``training/``: ``losses.png`` (loss curves), ``samples.png`` (DDIM samples,
50 steps), ``reconstructions.png`` (held-out images over their VAE reconstructions), ``train_log.json``.
"""
from __future__ import annotations

import json
import shutil
import string
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from diffbackbones.backbone.diffusion_backbone import pixels_to_input
from diffbackbones.data.shapes import VARIANTS, render_sample
from diffbackbones.models.zoo import MODELS, load_config

__all__ = ['train_shapes_model', 'texture_energy', 'texture_loss', 'PROMPT', 'VAE_CONFIG']

PROMPT = 'a synthetic picture of circles, squares and triangles'
# The VAE of the shipped model: SD's topology (4 levels, factor 8, 4 latent channels), narrow.
VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
                  block_out_channels=[16, 32, 64, 64], sample_size=128, act_fn='silu',
                  down_block_types=['DownEncoderBlock2D'] * 4, up_block_types=['UpDecoderBlock2D'] * 4)


def render_images(n: int, variant: str, seed: int) -> torch.Tensor:
    """(n, 3, 128, 128) images in [-1, 1]; 'both' alternates the two variants."""
    rng = np.random.default_rng(seed)
    variants = VARIANTS if variant == 'both' else (variant,)
    images = [render_sample(rng, 128, variants[i % len(variants)])[0] for i in tqdm(range(n), desc='render', disable=not _PROGRESS[0])]
    return pixels_to_input(np.stack(images))


def char_tokenizer():
    """A real CLIPTokenizer over single characters, no merges (no vocabulary can be downloaded here)."""
    from transformers import CLIPTokenizer
    chars = list(string.ascii_lowercase + string.digits + ',.')
    vocab = {t: i for i, t in enumerate(['<|startoftext|>', '<|endoftext|>'] + chars + [c + '</w>' for c in chars])}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def texture_energy(x: torch.Tensor, window: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean |horizontal| and |vertical| pixel differences per channel over ``window``-pixel cells.

    Phase-free texture statistics: stripes, checkerboards, dots and smooth blotches differ in them, whatever
    the pattern's phase. L1 alone lets the VAE average a texture it cannot place exactly into a flat colour,
    and where a shape differs from its background only by texture, the shape is then gone from the latents
    (the geometry variant draws textures independently of the class)."""
    dx = (x[..., :-1, 1:] - x[..., :-1, :-1]).abs()
    dy = (x[..., 1:, :-1] - x[..., :-1, :-1]).abs()
    return F.avg_pool2d(dx, window), F.avg_pool2d(dy, window)


def texture_loss(recon: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """L1 between the texture energies of the reconstruction and the input."""
    return sum((r - x).abs().mean() for r, x in zip(texture_energy(recon), texture_energy(x0)))


def train_vae(images: torch.Tensor, steps: int, batch: int, crop: int, lr: float, kl_weight: float,
              texture_weight: float, log: dict):
    from diffusers import AutoencoderKL
    vae = AutoencoderKL.from_config(VAE_CONFIG).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.05)
    bar = tqdm(range(steps), desc='vae', disable=not _PROGRESS[0])
    for step in bar:
        idx = torch.randint(len(images), (batch,))
        y, x = torch.randint(0, 128 - crop + 1, (2,)).tolist()
        x0 = images[idx, :, y:y + crop, x:x + crop]  # convolutional: crops train it as well, 4x cheaper
        posterior = vae.encode(x0).latent_dist
        recon = vae.decode(posterior.sample()).sample
        l1 = (recon - x0).abs().mean()
        kl = posterior.kl().mean() / x0[0].numel()
        texture = texture_loss(recon, x0)
        loss = l1 + kl_weight * kl + texture_weight * texture
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        log['vae_l1'].append(l1.item())
        log['vae_kl'].append(kl.item())
        log['vae_texture'].append(texture.item())
        bar.set_postfix(l1=f'{l1.item():.4f}', kl=f'{kl.item():.3f}', texture=f'{texture.item():.4f}')
    return vae.eval()


@torch.no_grad()
def encode_all(vae, images: torch.Tensor, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image (the UNet stage samples from them each step)."""
    means, stds = [], []
    for i in range(0, len(images), batch):
        dist = vae.encode(images[i:i + batch]).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def train_unet(latents: tuple[torch.Tensor, torch.Tensor], scaling: float, cond: torch.Tensor, steps: int,
               batch: int, lr: float, log: dict):
    from diffusers import DDPMScheduler, UNet2DConditionModel
    unet = UNet2DConditionModel.from_config(load_config(MODELS['test_sd_tiny'], 'unet')).train()
    schedule = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule='scaled_linear',
                             num_train_timesteps=1000)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.05)
    mean, std = latents
    bar = tqdm(range(steps), desc='unet', disable=not _PROGRESS[0])
    for step in bar:
        idx = torch.randint(len(mean), (batch,))
        z0 = (mean[idx] + std[idx] * torch.randn_like(mean[idx])) * scaling
        if torch.rand(()) < 0.5:  # horizontal flips keep every shape valid (triangles still point up)
            z0 = z0.flip(-1)
        noise = torch.randn_like(z0)
        t = torch.randint(0, 1000, (batch,))
        pred = unet(schedule.add_noise(z0, noise, t), t, encoder_hidden_states=cond.expand(batch, -1, -1)).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        log['unet_mse'].append(loss.item())
        bar.set_postfix(mse=f'{loss.item():.4f}')
    return unet.eval(), schedule


@torch.no_grad()
def ddim_samples(unet, vae, scaling: float, cond: torch.Tensor, n: int, seed: int, steps: int = 50) -> torch.Tensor:
    from diffusers import DDIMScheduler
    ddim = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule='scaled_linear', num_train_timesteps=1000,
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    ddim.set_timesteps(steps)
    z = torch.randn(n, 4, 16, 16, generator=torch.Generator().manual_seed(seed))
    for t in tqdm(ddim.timesteps, desc='ddim', disable=not _PROGRESS[0]):
        eps = unet(z, t, encoder_hidden_states=cond.expand(n, -1, -1)).sample
        z = ddim.step(eps, t, z).prev_sample
    return vae.decode(z / scaling).sample.clamp(-1, 1)


def save_grid(images: torch.Tensor, path: Path, cols: int) -> None:
    from PIL import Image
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    rows = [np.concatenate(list(pixels[i:i + cols]), 1) for i in range(0, len(pixels), cols)]
    Image.fromarray(np.concatenate(rows, 0)).save(path)


def plot_losses(log: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, key, title in ((axes[0], 'vae_l1', 'VAE L1 reconstruction'), (axes[1], 'unet_mse', 'UNet epsilon MSE')):
        values = np.asarray(log[key])
        ax.plot(values, alpha=0.3, lw=0.8)
        k = max(1, len(values) // 50)
        if len(values) >= k:
            ax.plot(np.arange(k - 1, len(values)), np.convolve(values, np.ones(k) / k, 'valid'), lw=1.5)
        ax.set_title(title)
        ax.set_xlabel('step')
        ax.set_yscale('log')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# Progress bars on or off for the whole run (the helpers below are called from one place only).
_PROGRESS = [False]


def train_shapes_model(out: str | Path, *, variant: str = 'both', images: int = 2000, vae_steps: int = 2000,
                       vae_batch: int = 16, vae_crop: int = 64, vae_lr: float = 2e-3, kl_weight: float = 1e-4,
                       texture_weight: float = 1.0, unet_steps: int = 1500, unet_batch: int = 16,
                       unet_lr: float = 1e-3, samples: int = 16, sample_steps: int = 50, seed: int = 0,
                       overwrite: bool = False, progress: bool = False, command: str | None = None) -> dict:
    """Train the VAE, then the UNet, and write the diffusers folder ``out`` with its ``training/`` report.

    Args:
        out: Output folder (a diffusers pipeline folder is written here); a non-empty one is refused
            unless ``overwrite``.
        variant: Shapes variant(s) to train on: ``'texture'``, ``'geometry'`` or ``'both'``.
        images: Training images rendered in memory.
        vae_steps: VAE training steps.
        vae_batch: VAE batch size.
        vae_crop: Side of the square crops the VAE trains on (pixels).
        vae_lr: VAE learning rate.
        kl_weight: Weight of the per-dimension KL term.
        texture_weight: Weight of the texture-energy term (phase-free local gradient statistics); 0: L1 + KL.
        unet_steps: UNet training steps.
        unet_batch: UNet batch size.
        unet_lr: UNet learning rate.
        samples: Images in the DDIM sample grid.
        sample_steps: DDIM steps for the sample grid.
        seed: The one seed of the run (bit-identical on rerun).
        overwrite: Replace an existing output folder.
        progress: Show progress bars.
        command: The command line recorded in the folder's README (default: this call).

    Returns:
        The summary (arguments, scaling factor, minutes, final losses) and the loss log.
    """
    if variant not in (*VARIANTS, 'both'):
        raise ValueError(f'variant must be one of {(*VARIANTS, "both")}; got {variant!r}')
    args = dict(out=str(out), variant=variant, images=images, vae_steps=vae_steps, vae_batch=vae_batch,
                vae_crop=vae_crop, vae_lr=vae_lr, kl_weight=kl_weight, texture_weight=texture_weight,
                unet_steps=unet_steps, unet_batch=unet_batch, unet_lr=unet_lr, samples=samples,
                sample_steps=sample_steps, seed=seed, overwrite=overwrite)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f'{out} exists and is not empty; pass --overwrite to replace it (nothing was written)')
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    _PROGRESS[0] = progress
    torch.manual_seed(seed)
    start = time.time()
    log = {'vae_l1': [], 'vae_kl': [], 'vae_texture': [], 'unet_mse': []}
    training_images = render_images(images, variant, seed)

    vae = train_vae(training_images, vae_steps, vae_batch, vae_crop, vae_lr, kl_weight, texture_weight, log)
    mean, std = encode_all(vae, training_images)
    scaling = float(1 / mean.std())
    vae.register_to_config(scaling_factor=round(scaling, 5))
    vae_minutes = (time.time() - start) / 60

    tokenizer = char_tokenizer()
    te_config = load_config(MODELS['test_sd_tiny'], 'text_encoder')
    te_config.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id)
    text_encoder = CLIPTextModel(CLIPTextConfig(**te_config)).eval()
    with torch.no_grad():
        ids = tokenizer(PROMPT, padding='max_length', max_length=77, truncation=True, return_tensors='pt').input_ids
        cond = text_encoder(ids).last_hidden_state

    unet, _ = train_unet((mean, std), scaling, cond, unet_steps, unet_batch, unet_lr, log)
    minutes = (time.time() - start) / 60

    # a diffusers folder in fp16 safetensors: the same loading path as real weights
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule='scaled_linear', num_train_timesteps=1000,
                              clip_sample=False, steps_offset=1)
    if out.exists():
        shutil.rmtree(out)
    pipe = StableDiffusionPipeline(vae=vae.half(), text_encoder=text_encoder.half(), tokenizer=tokenizer,
                                   unet=unet.half(), scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)
    vae, unet = vae.float(), unet.float()

    report = out / 'training'
    report.mkdir()
    held_out = render_images(8, variant, seed + 1)
    with torch.no_grad():
        recon = vae.decode(vae.encode(held_out).latent_dist.mean).sample
    save_grid(torch.cat([held_out, recon]), report / 'reconstructions.png', cols=8)
    save_grid(ddim_samples(unet, vae, scaling, cond, samples, seed, sample_steps), report / 'samples.png', cols=8)
    plot_losses(log, report / 'losses.png')
    tail = lambda key: float(np.mean(log[key][-50:])) if log[key] else float('nan')  # noqa: E731
    summary = dict(args=args, prompt=PROMPT, scaling_factor=scaling, train_minutes=round(minutes, 2),
                   vae_minutes=round(vae_minutes, 2), final_vae_l1=tail('vae_l1'), final_unet_mse=tail('unet_mse'),
                   held_out_recon_l1=float((recon - held_out).abs().mean()))
    (report / 'train_log.json').write_text(json.dumps(dict(summary, **log)))
    write_readme(out, summary, command or f'diffbackbones.train_shapes_model({str(out)!r}, ...)')
    return dict(summary, **log)


def recipe_commit(recipe: Sequence[str]) -> str:
    """The checkout's HEAD, marked when files of the ``recipe`` (paths from the repository root) have
    uncommitted changes; 'unknown' outside a git checkout."""
    import subprocess
    here = Path(__file__).parent
    try:
        commit = subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True, cwd=here,
                                check=True).stdout.strip()
        # ':/' pathspecs are relative to the repository root, wherever this file sits in it
        dirty = subprocess.run(['git', 'status', '--porcelain', '--', *(f':/{path}' for path in recipe)],
                               capture_output=True, text=True, cwd=here).stdout.strip()
        return commit + (' (with uncommitted changes to the recipe)' if dirty else '')
    except (OSError, subprocess.CalledProcessError):
        return 'unknown (not run from a git checkout)'


def write_readme(out: Path, summary: dict, command: str) -> None:
    commit = recipe_commit(['diffbackbones/training/shapes_sd.py', 'diffbackbones/commands/train_diffusion.py',
                            'diffbackbones/data'])
    (out / 'README.md').write_text(f'''# A tiny latent diffusion model of the SD1.5 topology, trained on the shapes set

Made on the CPU by diffbackbones' own tool, from scratch, with fixed seeds:

    {command}

at commit {commit}, in {summary['train_minutes']:.1f} minutes (VAE {summary['vae_minutes']:.1f}).
Final losses (mean of the last 50 steps): VAE L1 {summary['final_vae_l1']:.4f} (held-out reconstruction
L1 {summary['held_out_recon_l1']:.4f}), UNet epsilon MSE {summary['final_unet_mse']:.4f}. VAE scaling factor
{summary['scaling_factor']:.5f}. Prompt: "{summary['prompt']}".

A diffusers folder (fp16 safetensors): `StableDiffusionPipeline.from_pretrained` loads it, and so does
`DiffusionBackbone('shapes_sd_tiny', pretrained=True)`. `training/` holds the loss curves, DDIM samples
and VAE reconstructions of this run. Licence: Apache-2.0, like the package.
''')
